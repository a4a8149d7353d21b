#!/usr/bin/env node
// A vnet node in JavaScript, written from protos/vnetrpc/v1/route.proto alone.
//
// It joins a group, keeps its Control stream open (the session dies with it),
// and either lists the group's serves (--list) or maps one serve to a local
// TCP port: every connection accepted there becomes one Dial stream.
//
//   node client.js --route 127.0.0.1:7749 --group home --list
//   node client.js --route 127.0.0.1:7749 --group home --serveid 701 --listen-port 8080
//
// Logs go to stderr; stdout carries only the results a script may read
// (the serves with --list, "listening on IP:PORT" otherwise).
'use strict';

const net = require('node:net');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'protos', 'vnetrpc', 'v1', 'route.proto');
// The route accepts messages up to 4 MiB; the Python node sends data frames of up to 1 MiB.
const MAX_MESSAGE = 4 * 1024 * 1024 + 1024;
const JOIN_TIMEOUT_MS = 10_000;

const USAGE = `usage: node client.js --route HOST:PORT [--group G] [--token T]
                      (--list | --serveid N [--listen-ip IP] [--listen-port P])
  --route HOST:PORT     the route (required)
  --group G             the group to join (default: default)
  --name NAME           this node's name in listings (default: node-client)
  --token T             the group's token; default: $VNET_TOKEN
  --list                print the group's serves and exit
  --serveid N           the serve to map (1-999)
  --listen-ip IP        where to listen (default: 127.0.0.1)
  --listen-port P       where to listen; 0 picks a free port (default: 0)
  --tls                 connect with TLS (system CAs unless --tls-ca)
  --tls-ca FILE         trust exactly this CA (PEM)
  --tls-cert FILE       client certificate (PEM), for routes that require one
  --tls-key FILE        its key (PEM)
  --tls-server-name N   the name in the route's certificate, if not HOST`;

function fail(message, code = 2) {
  process.stderr.write(`vnet-node-client: ${message}\n`);
  process.exit(code);
}

function log(message) {
  process.stderr.write(`${new Date().toISOString()} ${message}\n`);
}

function parseOptions(argv) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        route: { type: 'string' },
        group: { type: 'string', default: 'default' },
        name: { type: 'string', default: 'node-client' },
        token: { type: 'string' },
        list: { type: 'boolean', default: false },
        serveid: { type: 'string' },
        'listen-ip': { type: 'string', default: '127.0.0.1' },
        'listen-port': { type: 'string', default: '0' },
        tls: { type: 'boolean', default: false },
        'tls-ca': { type: 'string' },
        'tls-cert': { type: 'string' },
        'tls-key': { type: 'string' },
        'tls-server-name': { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (err) {
    fail(`${err.message}\n${USAGE}`);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  if (!values.route) fail(`--route is required\n${USAGE}`);
  // A token on the command line shows in `ps`; the environment does not.
  values.token = values.token ?? process.env.VNET_TOKEN ?? '';
  if (!values.list) {
    const id = Number(values.serveid);
    if (!/^\d{1,3}$/.test(values.serveid ?? '') || id < 1) {
      fail(`--serveid must be a serveid 1-999 (or use --list)\n${USAGE}`);
    }
    values.serveid = id;
    const port = Number(values['listen-port']);
    if (!/^\d{1,5}$/.test(values['listen-port']) || port > 65535) {
      fail(`--listen-port must be 0-65535\n${USAGE}`);
    }
    values['listen-port'] = port;
  }
  return values;
}

function channelCredentials(opts) {
  if (!opts.tls) return grpc.credentials.createInsecure();
  const read = (file) => (file ? fs.readFileSync(file) : null);
  return grpc.credentials.createSsl(read(opts['tls-ca']), read(opts['tls-key']), read(opts['tls-cert']));
}

// The API, loaded from the .proto at run time: keepCase keeps the field names
// of the .proto (tunnel_id, not tunnelId); oneofs adds `kind` / `event`, the
// name of the member that is set; defaults: false leaves unset members absent.
function loadService() {
  const definition = protoLoader.loadSync(PROTO, {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: false,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).vnetrpc.v1.RouteService;
}

class Route {
  constructor(opts) {
    const RouteService = loadService();
    const options = {
      'grpc.max_receive_message_length': MAX_MESSAGE,
      'grpc.max_send_message_length': MAX_MESSAGE,
    };
    if (opts['tls-server-name']) options['grpc.ssl_target_name_override'] = opts['tls-server-name'];
    this.client = new RouteService(opts.route, channelCredentials(opts), options);
    this.token = opts.token;
    this.session = '';
  }

  // Every call carries the token, tunnels included; every call after Join the session.
  // Plain metadata, not grpc-js call credentials: those refuse plaintext channels,
  // and a route on loopback may well be plaintext.
  metadata(extra = {}) {
    const md = new grpc.Metadata();
    if (this.token) md.set('authorization', `Bearer ${this.token}`);
    if (this.session) md.set('vnet-session', this.session);
    for (const [key, value] of Object.entries(extra)) md.set(key, value);
    return md;
  }

  unary(method, request) {
    const deadline = Date.now() + JOIN_TIMEOUT_MS;
    return new Promise((resolve, reject) => {
      this.client[method](request, this.metadata(), { deadline }, (err, response) =>
        err ? reject(err) : resolve(response),
      );
    });
  }

  async join(name, group) {
    const joined = await this.unary('Join', { name, group });
    this.session = joined.session;
    return joined;
  }

  // Opens the control stream; resolves once its first event (the snapshot)
  // arrived, so the session is known to be held. onLost is called once if the
  // stream ends or fails later: the session, and every tunnel, is gone then.
  control(onLost) {
    return new Promise((resolve, reject) => {
      const call = this.client.Control({}, this.metadata());
      let open = false;
      let over = false;
      const end = (why) => {
        if (over) return;
        over = true;
        if (open) onLost(why);
        else reject(new Error(why));
      };
      call.on('data', (event) => {
        if (!open && event.event === 'snapshot') {
          open = true;
          resolve(call);
        }
        // open_tunnel is for nodes with serves; this one registers none.
      });
      call.on('error', (err) => end(`control stream failed: ${describe(err)}`));
      call.on('end', () => end('the route closed the control stream'));
    });
  }

  dial(serveid) {
    return this.client.Dial(this.metadata({ 'vnet-serveid': String(serveid) }));
  }

  close() {
    this.client.close();
  }
}

function describe(err) {
  if (err && typeof err.code === 'number') {
    const name = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) ?? err.code;
    return `${name} ${err.details ?? ''}`.trim();
  }
  return String(err?.message ?? err);
}

// One local connection carried over one Dial stream.
//
// Each direction ends exactly once: with a fin (clean: the peer shuts down
// its write side and keeps reading) or with a reset. Anything abnormal (a
// socket error, a reset frame, the stream failing or ending without fin)
// resets the local socket with RST, so a truncated transfer never looks
// complete, and cancels the call, so the route resets the far end.
//
// Returns a function that resets the connection (for stopping the node).
function tunnel(route, serveid, socket, label, onClose) {
  const call = route.dial(serveid);
  let gotFin = false;
  let dead = false;

  const reset = (why) => {
    if (dead) return;
    dead = true;
    log(`${label}: reset (${why})`);
    call.cancel();
    // destroy() would close with FIN, which the application reads as a clean end.
    if (!socket.destroyed) socket.resetAndDestroy();
  };
  socket.on('close', onClose);

  // Local socket -> stream. One read becomes one data frame (never empty).
  socket.on('data', (chunk) => {
    if (dead) return;
    if (!call.write({ data: chunk })) {
      // The stream's buffer is full: stop reading the socket until it drains,
      // so flow control reaches the local sender.
      socket.pause();
      call.once('drain', () => socket.resume());
    }
  });
  socket.on('end', () => {
    if (dead) return;
    // The fin must be the last frame before the half-close: a stream that
    // ends without one is a reset for the route.
    call.write({ fin: {} });
    call.end();
  });
  socket.on('error', (err) => reset(`local socket: ${err.message}`));

  // Stream -> local socket.
  call.on('data', (frame) => {
    if (dead) return;
    if (gotFin) {
      reset('frame after fin');
      return;
    }
    switch (frame.kind) {
      case 'data':
        if (!socket.write(frame.data)) {
          // The local reader is slower: stop reading the stream until the
          // socket drains, so HTTP/2 flow control reaches the far sender.
          call.pause();
          socket.once('drain', () => call.resume());
        }
        break;
      case 'fin':
        gotFin = true;
        socket.end(); // shutdown(SHUT_WR); the socket stays readable (allowHalfOpen)
        break;
      case 'reset':
        reset(`reset by peer: ${frame.reset?.reason ?? ''}`);
        break;
      default:
        reset('unknown frame');
    }
  });
  call.on('error', (err) => reset(`stream failed: ${describe(err)}`));
  call.on('end', () => {
    if (!gotFin) reset('stream ended without fin');
  });
  call.on('status', (status) => {
    if (status.code === grpc.status.OK && !dead) log(`${label}: closed`);
  });
  return reset;
}

async function listServes(route) {
  const { serves = [] } = await route.unary('ListServes', {});
  const rows = serves.map((s) => [
    String(s.serveid ?? 0),
    s.vnetid ?? '',
    s.name ?? '',
    s.type ?? '',
    `${s.ip ?? ''}:${s.port ?? 0}`,
    s.info ?? '',
  ]);
  const header = ['serveid', 'vnetid', 'name', 'type', 'address', 'info'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells) => cells.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

function listen(server, port, ip) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, ip, () => {
      server.off('error', reject);
      resolve(server.address());
    });
  });
}

async function main() {
  const opts = parseOptions(process.argv.slice(2));
  const route = new Route(opts);
  const live = new Set(); // the reset functions of open connections
  let control = null;
  let stopping = false;

  // Every way out goes through here. Open connections end with RST: exiting
  // would close them with FIN, and a transfer cut short must not look complete.
  const stop = (code, message) => {
    if (stopping) return;
    stopping = true;
    for (const reset of live) reset('node stopping');
    control?.cancel(); // leaves the network now, not when the session would expire
    route.close();
    if (message) process.stderr.write(`vnet-node-client: ${message}\n`);
    process.exit(code);
  };

  try {
    const joined = await route.join(opts.name, opts.group);
    log(`joined group ${joined.group} as vnet ${joined.vnetid}`);
    control = await route.control((why) => stop(1, `${why}; the session is gone`));
  } catch (err) {
    stop(1, `cannot join group ${opts.group} at ${opts.route}: ${describe(err)}`);
  }

  if (opts.list) {
    try {
      process.stdout.write(`${await listServes(route)}\n`);
    } catch (err) {
      stop(1, `ListServes failed: ${describe(err)}`);
    }
    stop(0);
  }

  let next = 0;
  // allowHalfOpen: a local EOF must not close our write side; it becomes a fin,
  // and the far end's bytes keep flowing back until its own fin.
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    next += 1;
    const label = `serveid ${opts.serveid} conn ${next}`;
    const reset = tunnel(route, opts.serveid, socket, label, () => live.delete(reset));
    live.add(reset);
  });
  try {
    const address = await listen(server, opts['listen-port'], opts['listen-ip']);
    process.stdout.write(`listening on ${address.address}:${address.port}\n`);
  } catch (err) {
    stop(1, `cannot listen on ${opts['listen-ip']}:${opts['listen-port']}: ${err.message}`);
  }

  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => {
      log(`stopping (${signal})`);
      stop(0);
    });
  }
}

main();
