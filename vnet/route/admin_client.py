"""`vnet-route admin ...`: the admin API from a shell, as tables or as JSON.

The admin token comes from the environment (VNET_ADMIN_TOKEN) or a file
(--token-file), never from the command line, where `ps` would show it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime

import grpc

from vnet import wire
from vnet.core.admin import (
    DrainReport,
    KickReport,
    ReloadReport,
    as_json,
    nodes_table,
    serves_table,
    tunnels_table,
)
from vnet.core.config import resolve_secret
from vnet.core.errors import ConfigError
from vnet.files import read_pem, read_text
from vnet.wire.admin_messages import AdminStub
from vnet.wire.options import common_options

TOKEN_ENV = "VNET_ADMIN_TOKEN"
COMMANDS = ("nodes", "serves", "tunnels", "unserves", "kick", "close", "drain", "reload")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vnet-route admin",
        description="Ask a running route who is connected, and act on it: kick a node, close "
        "a tunnel, drain, reload credentials and limits. The admin token is read from "
        f"${TOKEN_ENV} or --token-file.",
    )
    p.add_argument(
        "--route",
        default="127.0.0.1:7749",
        metavar="HOST:PORT",
        help="the route (default: 127.0.0.1:7749)",
    )
    p.add_argument("--token-file", metavar="FILE", help=f"the admin token (else ${TOKEN_ENV})")
    p.add_argument(
        "--tls-ca", metavar="FILE", help="connect with TLS, trusting this CA (or certificate)"
    )
    p.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system CAs")
    p.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="a client certificate named in the route's [admin] client_names (with --tls-key)",
    )
    p.add_argument("--tls-key", metavar="FILE", help="the client certificate's key")
    p.add_argument("--tls-server-name", metavar="NAME", help="the name in the route's certificate")
    p.add_argument("--json", action="store_true", help="JSON for scripts instead of a table")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("nodes", help="the joined nodes, of every group")
    sub.add_parser("serves", help="the registered serves, of every group")
    sub.add_parser("tunnels", help="the open tunnels")
    sub.add_parser("unserves", help="the serves registered on request (unserve)")
    kick = sub.add_parser("kick", help="end a node's session (it may rejoin)")
    kick.add_argument("vnetid")
    close = sub.add_parser("close", help="reset one tunnel")
    close.add_argument("tunnel_id")
    drain = sub.add_parser(
        "drain", help="refuse new nodes and tunnels; wait for open tunnels, then reset them"
    )
    drain.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long open tunnels may still run (default: 30)",
    )
    drain.add_argument("--undo", action="store_true", help="stop draining")
    sub.add_parser("reload", help="re-read the route's config file: credentials and limits")
    return p


def _token(args: argparse.Namespace) -> str:
    """The admin token, with the file/env rules of config tokens (printable, not empty)."""
    if args.token_file:
        return resolve_secret(
            "--token-file", "admin", "", "", args.token_file, os.environ, read_text
        )
    value = os.environ.get(TOKEN_ENV, "").strip()
    if not value:
        return ""
    return resolve_secret("$" + TOKEN_ENV, "admin", "", TOKEN_ENV, "", os.environ, read_text)


def _channel(args: argparse.Namespace) -> grpc.aio.Channel:
    options = list(common_options())
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError(
            "(command line)", "admin", "tls_key", "--tls-cert and --tls-key go together"
        )
    if args.tls_ca or args.tls or args.tls_cert:
        ca = read_pem("--tls-ca", "admin", "tls_ca", args.tls_ca) if args.tls_ca else None
        cert = read_pem("--tls-cert", "admin", "tls_cert", args.tls_cert) if args.tls_cert else None
        key = read_pem("--tls-key", "admin", "tls_key", args.tls_key) if args.tls_key else None
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
        return grpc.aio.secure_channel(args.route, creds, options=options)
    return grpc.aio.insecure_channel(args.route, options=options)


async def run(argv: Sequence[str], out: Callable[[str], None] = print) -> int:
    args = parser().parse_args(argv)
    try:
        token = _token(args)
        channel = _channel(args)
    except ConfigError as exc:
        print(f"vnet-route admin: {exc}", file=sys.stderr)
        return 1
    metadata = [(wire.MD_AUTH, f"Bearer {token}")] if token else []
    stub = AdminStub(channel, metadata)
    try:
        result = await _call(stub, args)
    except grpc.aio.AioRpcError as exc:
        print(
            f"vnet-route admin: {args.command} at {args.route}: {exc.code().name}: {exc.details()}",
            file=sys.stderr,
        )
        return 1
    finally:
        await channel.close()
    if args.json:
        value = [as_json(r) for r in result] if isinstance(result, list) else as_json(result)
        out(json.dumps(value, indent=2, ensure_ascii=False))
    else:
        for line in _lines(args, result):
            out(line)
    return 0


async def _call(stub: AdminStub, args: argparse.Namespace) -> object:
    command = args.command
    if command == "nodes":
        return await stub.nodes()
    if command == "serves":
        return await stub.serves()
    if command == "unserves":
        return await stub.unserves()
    if command == "tunnels":
        return await stub.tunnels()
    if command == "kick":
        return await stub.kick(args.vnetid)
    if command == "close":
        await stub.close_tunnel(args.tunnel_id)
        return {"closed": args.tunnel_id}
    if command == "drain":
        return await stub.drain(args.grace, undo=args.undo)
    return await stub.reload()


def _lines(args: argparse.Namespace, result: object) -> list[str]:
    command = args.command
    if command == "nodes":
        return nodes_table(result, joined_text)  # type: ignore[arg-type]
    if command in ("serves", "unserves"):
        return serves_table(result)  # type: ignore[arg-type]
    if command == "tunnels":
        return tunnels_table(result)  # type: ignore[arg-type]
    if isinstance(result, KickReport):
        return [
            f"kicked vnet {args.vnetid} ({result.name}) of group {result.group}: "
            f"{result.tunnels_reset} tunnel(s) reset, {result.serves_withdrawn} serve(s) withdrawn"
        ]
    if isinstance(result, DrainReport):
        if not result.draining:
            return ["not draining: new nodes and tunnels are accepted again"]
        finished = result.tunnels_at_start - result.tunnels_reset
        return [
            f"drained in {result.waited_ms / 1000:.1f}s: {finished} tunnel(s) finished, "
            f"{result.tunnels_reset} reset; the route is empty and refuses new nodes and tunnels"
        ]
    if isinstance(result, ReloadReport):
        lines = [f"changed: {c}" for c in result.changes] or ["nothing changed"]
        lines += [f"ended: {e}" for e in result.ended]
        lines += [f"warning: {w}" for w in result.needs_restart]
        return lines
    if isinstance(result, dict):
        return [f"closed tunnel {result.get('closed')}"]
    return [str(result)]


def joined_text(ms: int) -> str:
    """When a node joined, in this machine's local time."""
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
