// The vnet route's dashboard. Plain JavaScript, no build step, nothing from elsewhere.
//
// Sign-in keeps the admin token for this tab only (sessionStorage) and sends it as
// "Authorization: Bearer" on every call: no cookie, so no other site can act with it.
// The page polls /api/state; every value from the route is put in with textContent,
// never as HTML.
"use strict";

const POLL_MS = 1000;
const KEY = "vnet-admin-token";
let timer = null;
let last = null;

const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(KEY) || ""; }

async function api(path, body) {
  const init = { headers: { Authorization: "Bearer " + token() } };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = {};
  try { data = await response.json(); } catch (e) { data = { error: response.statusText }; }
  if (!response.ok) {
    const err = new Error(data.error || response.statusText);
    err.status = response.status;
    throw err;
  }
  return data;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return i === 0 ? n + " B" : v.toFixed(1) + " " + units[i];
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function button(row, label, onclick, id) {
  const td = document.createElement("td");
  const b = document.createElement("button");
  b.className = "small danger";
  b.textContent = label;
  if (id) b.id = id;
  b.addEventListener("click", onclick);
  td.appendChild(b);
  row.appendChild(td);
}

const shown = {};

function fill(tableId, rows, make) {
  // Unchanged rows are left alone: no flicker, and a button under the pointer stays.
  const key = JSON.stringify(rows);
  if (shown[tableId] === key) return;
  shown[tableId] = key;
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    make(tr, r);
    tr.dataset.search = tr.textContent.toLowerCase();
    body.appendChild(tr);
  }
  $(tableId + "-count").textContent = "(" + rows.length + ")";
  filter();
}

function filter() {
  const q = $("search").value.trim().toLowerCase();
  for (const tr of document.querySelectorAll("#board tbody tr")) {
    tr.classList.toggle("hidden", q !== "" && !tr.dataset.search.includes(q));
  }
}

function confirmThen(text, withGrace) {
  return new Promise((resolve) => {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    $("grace-label").hidden = !withGrace;
    dialog.onclose = () => resolve(dialog.returnValue === "yes");
    dialog.returnValue = "";
    dialog.showModal();
  });
}

async function act(text, path, body, withGrace, done) {
  if (!(await confirmThen(text, withGrace))) return;
  if (withGrace) body.grace = Number($("grace").value || 30);
  let answer;
  try {
    if (path === "api/drain" && !body.undo) notice("draining: waiting for open tunnels...");
    answer = await api(path, body);
  } catch (e) {
    notice("failed: " + e.message, true);
    return;
  }
  notice(done(answer));
  await refresh();
}

function notice(text, bad) {
  const n = $("notice");
  n.textContent = text;
  n.className = bad ? "error" : "ok";
}

function renderNodes(nodes) {
  fill("nodes", nodes, (tr, n) => {
    tr.id = "node-" + n.vnetid;
    tr.dataset.joined = String(n.joined_at_ms);
    cell(tr, n.vnetid); cell(tr, n.name); cell(tr, n.group); cell(tr, n.peer);
    cell(tr, n.tls_identity || "-");
    cell(tr, new Date(n.joined_at_ms).toLocaleString());
    cell(tr, String(n.serves), "num"); cell(tr, String(n.tunnels), "num");
    cell(tr, bytes(n.bytes_from_node), "num"); cell(tr, bytes(n.bytes_to_node), "num");
    button(tr, "Kick", () => act(
      "Kick vnet " + n.vnetid + " (" + n.name + ")? Its tunnels are reset and its serves " +
      "withdrawn; it may join again.", "api/kick", { vnetid: n.vnetid }, false,
      (r) => "kicked vnet " + n.vnetid + " (" + r.name + "): " + r.tunnels_reset +
        " tunnel(s) reset, " + r.serves_withdrawn + " serve(s) withdrawn"),
      "kick-" + n.vnetid);
  });
}

function renderTunnels(tunnels) {
  fill("tunnels", tunnels, (tr, t) => {
    tr.id = "tunnel-" + t.tunnel_id;
    cell(tr, t.tunnel_id); cell(tr, t.group); cell(tr, String(t.serveid).padStart(3, "0"));
    cell(tr, t.dial_vnetid); cell(tr, t.serve_vnetid);
    cell(tr, bytes(t.bytes_to_serve), "num"); cell(tr, bytes(t.bytes_to_dialer), "num");
    cell(tr, Math.round(t.age_ms / 1000) + "s", "num"); cell(tr, t.state);
    button(tr, "Close", () => act(
      "Close tunnel " + t.tunnel_id + "? Both ends are reset.", "api/close",
      { tunnel_id: t.tunnel_id }, false, () => "closed tunnel " + t.tunnel_id),
      "close-" + t.tunnel_id);
  });
}

function renderServes(serves) {
  fill("serves", serves, (tr, s) => {
    cell(tr, s.group); cell(tr, String(s.serveid).padStart(3, "0")); cell(tr, s.vnetid);
    cell(tr, s.name); cell(tr, s.unserve ? "unserve" : s.type); cell(tr, s.ip);
    cell(tr, String(s.port), "num"); cell(tr, s.info);
  });
}

const SVG = "http://www.w3.org/2000/svg";

function renderCharts(throughput, windowSeconds) {
  const box = $("charts");
  box.replaceChildren();
  const groups = Object.keys(throughput).sort();
  if (groups.length === 0) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "No traffic sampled yet.";
    box.appendChild(p);
  }
  const W = 360, H = 120, PAD = 4;
  for (const g of groups) {
    const points = throughput[g];
    // The x axis spans what has been sampled (at least a minute), up to the whole window.
    const oldest = points.length ? -points[0][0] : 0;
    const span = Math.min(windowSeconds, Math.max(60, oldest));
    const peak = Math.max(1, ...points.map((p) => p[1]));
    const div = document.createElement("div");
    div.className = "chart";
    div.dataset.group = g;
    const h3 = document.createElement("h3");
    const now = points.length ? points[points.length - 1][1] : 0;
    h3.textContent = g + ": " + bytes(Math.round(now)) + "/s now, peak " + bytes(Math.round(peak)) + "/s";
    div.appendChild(h3);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.map((p) => {
      const x = PAD + (W - 2 * PAD) * (1 + p[0] / span);
      const y = H - PAD - (H - 2 * PAD) * (p[1] / peak);
      return x.toFixed(1) + "," + y.toFixed(1);
    }).join(" "));
    svg.appendChild(line);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", "6"); label.setAttribute("y", "12");
    label.textContent = span >= 120 ? "-" + Math.round(span / 60) + " min" : "-" + Math.round(span) + " s";
    svg.appendChild(label);
    div.appendChild(svg);
    box.appendChild(div);
  }
}

function setStatus(text) { $("status").textContent = text; }

function render(state) {
  last = state;
  renderNodes(state.nodes);
  renderTunnels(state.tunnels);
  renderServes(state.serves);
  renderCharts(state.throughput, state.window);
  $("draining").hidden = !state.draining;
  $("drain").hidden = state.draining;
  $("undrain").hidden = !state.draining;
  setStatus(state.nodes.length + " node(s), " + state.tunnels.length + " tunnel(s), updated " +
    new Date().toLocaleTimeString());
}

function showBoard(on) {
  $("signin").hidden = on;
  $("board").hidden = !on;
  for (const id of ["search", "signout"]) $(id).hidden = !on;
  if (!on) { $("drain").hidden = true; $("undrain").hidden = true; }
}

async function refresh() {
  try {
    render(await api("api/state"));
  } catch (e) {
    if (e.status === 401 || e.status === 403 || e.status === 429) {
      signOut(e.status === 401 ? "The admin token was not accepted." : e.message);
    } else {
      setStatus("route unreachable: " + e.message);
    }
  }
}

function start() {
  showBoard(true);
  if (timer === null) timer = setInterval(refresh, POLL_MS);
  return refresh();
}

function signOut(why) {
  sessionStorage.removeItem(KEY);
  for (const k of Object.keys(shown)) delete shown[k];
  if (timer !== null) { clearInterval(timer); timer = null; }
  showBoard(false);
  setStatus("");
  $("signin-error").textContent = why || "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("token").value.trim());
    $("token").value = "";
    $("signin-error").textContent = "";
    await start();
  });
  $("signout").addEventListener("click", () => signOut(""));
  $("search").addEventListener("input", filter);
  $("drain").addEventListener("click", () => act(
    "Drain the route? New nodes and tunnels are refused; open tunnels get the grace, then are reset.",
    "api/drain", {}, true,
    (r) => "drained in " + (r.waited_ms / 1000).toFixed(1) + "s: " +
      (r.tunnels_at_start - r.tunnels_reset) + " tunnel(s) finished, " + r.tunnels_reset +
      " reset; the route is empty"));
  $("undrain").addEventListener("click", () => act(
    "Stop draining? New nodes and tunnels are accepted again.", "api/drain", { undo: true }, false,
    () => "not draining: new nodes and tunnels are accepted again"));
  if (token()) start(); else showBoard(false);
});
