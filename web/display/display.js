// School display client: the WebSocket only says "fetch again"; polling takes
// over whenever the socket is down or switched off, so the screen never
// depends on it.
//
// The socket is web/switchyard.js (docs/client.md): reconnects with backoff and jitter,
// close codes by kind, the application ping with stall detection, and the school group's
// seq/epoch. The screen joins its school's group since the position it has everything up
// to — the snapshot's (`meta.seq`/`meta.epoch`), then the last broadcast's — given in the
// socket URL (`&since=S&epoch=E`): an edit broadcast while the socket was down arrives
// when it is back, from the group's history; when the history cannot serve the position,
// `recover_failed` makes the screen refetch its snapshot. What is left here is the
// display's own: the snapshot with its ETag, polling, the display's close codes and
// data-mode.
//
// Query parameters (seconds unless noted):
//   token      screen token (required)          dk        device key (default: one kept in localStorage)
//   ws         WebSocket base, e.g. ws://host:port (default: this page's origin)
//   api        HTTP base, e.g. http://host:port    (default: this page's origin)
//   poll_min / poll_max   polling interval bounds (8 / 45); the interval grows ×1.5
//              while nothing changes and drops back to poll_min on a change
//   ping       keep-alive ping interval (30)
//   backoff_min / backoff_max   reconnect backoff bounds (1 / 60), exponential with jitter
//
// <body data-mode>: "connecting" at first, "ws" while the socket is open, "poll" while
// polling (socket down, or sockets off for this screen), "rejected" while the screen is
// bound to another device or unknown (403/404, close 4408/4404) — then the snapshot is
// retried every poll_max, so an operator's unbind lets this device bind at its next try.
// <body data-ws>: "on"/"off", whether the server wants this screen on a socket (the
// switch and its school's place in the rollout).
// The browser console shows what the runbook looks for: "[WS] connecting to …",
// "[WS] connected", "[WS] invalidate received: revision N", "[WS] closed: code N", and
// "[WS] recover_failed: REASON" when missed broadcasts could not be recovered.
import { Switchyard } from "/web/switchyard.js";

const q = new URLSearchParams(location.search);
const num = (name, dflt) => {
  const v = parseFloat(q.get(name));
  return v > 0 ? v : dflt;
};
const conf = {
  token: q.get("token") || "",
  dk: q.get("dk") || deviceKey(),
  ws: (q.get("ws") || location.origin.replace(/^http/, "ws")).replace(/\/$/, ""),
  api: (q.get("api") || location.origin).replace(/\/$/, ""),
  pollMin: num("poll_min", 8) * 1000,
  pollMax: num("poll_max", 45) * 1000,
  ping: num("ping", 30) * 1000,
  backoffMin: num("backoff_min", 1) * 1000,
  backoffMax: num("backoff_max", 60) * 1000,
};
const $ = (id) => document.getElementById(id);
// group: the school's group ("school:ID", from the snapshot), tracked by the socket.
// joinedSince: whether the open socket joined it since a position (else hello is checked).
const state = { revision: null, etag: null, wsEnabled: true, group: null, joinedSince: false,
                pollTimer: null, pollEvery: conf.pollMin, rejected: false };

function deviceKey() {
  try {
    let dk = localStorage.getItem("display_dk");
    if (!dk) { dk = "dk-" + Math.random().toString(36).slice(2) + Date.now().toString(36); localStorage.setItem("display_dk", dk); }
    return dk;
  } catch (e) { return "dk-" + Math.random().toString(36).slice(2); }
}

const socketUrl = `${conf.ws}/ws/display/?token=${encodeURIComponent(conf.token)}&dk=${encodeURIComponent(conf.dk)}`;
const sy = new Switchyard(socketUrl, {
  session: false,
  storage: null,
  backoffMin: conf.backoffMin,
  backoffMax: conf.backoffMax,
  pingInterval: conf.ping,
  stallTimeout: Math.max(60000, conf.ping * 2.5),
  // The position goes in the URL: the worker joins the school's group since it.
  params: () => {
    const at = state.group && sy.position(state.group);
    state.joinedSince = !!at;
    return at ? { since: at.seq, epoch: at.epoch } : {};
  },
});
const open = () => sy.state === "open";

function setMode(mode) { document.body.dataset.mode = mode; $("mode").textContent = mode; }
function showError(text) { $("error").textContent = text || ""; }

function render(snap) {
  const schedule = snap.schedule || {};
  $("title").textContent = snap.name || snap.school || "";
  $("subtitle").textContent = schedule.title || "";
  const body = $("schedule");
  body.textContent = "";
  for (const p of schedule.periods || []) {
    const tr = document.createElement("tr");
    for (const [cls, text] of [["time", p.time], ["subject", p.subject], ["room", p.room]]) {
      const td = document.createElement("td"); td.className = cls; td.textContent = text || ""; tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  $("revision").textContent = String(snap.revision);
  $("updated").textContent = new Date().toLocaleTimeString();
}

// The snapshot was read at this position of its school's group: it holds every edit
// broadcast up to there, so the socket joins since it (or since a later broadcast).
function tookPosition(meta) {
  if (!meta || typeof meta.group !== "string") return;
  if (state.group !== meta.group) {
    if (state.group) sy.ungroup(state.group);
    state.group = meta.group;
    sy.group(meta.group);
  }
  sy.advance(meta.group, { epoch: String(meta.epoch ?? ""), seq: Number(meta.seq) || 0 });
}

// Bound elsewhere or unknown: no socket; the poll loop retries the snapshot.
function reject(detail) {
  state.rejected = true;
  showError(detail);
  stopSocket();
  startPolling();
}

// The snapshot answered 200 or 304: this device holds the screen (again).
function accepted() {
  showError("");
  if (!state.rejected) return;
  state.rejected = false;
  setMode("connecting");
  applyFlag(state.wsEnabled);
}

// GET the snapshot (conditional); resolves to true when it changed. Asked again while one
// is under way (an invalidation racing a fetch), one more follows it: the running one may
// have read the school before the edit.
let fetching = null;
let again = false;
async function fetchSnapshot() {
  if (fetching) { again = true; return fetching; }
  fetching = (async () => {
    let changed = false;
    do {
      again = false;
      changed = (await fetchOnce()) || changed;
    } while (again);
    return changed;
  })();
  try { return await fetching; } finally { fetching = null; }
}

async function fetchOnce() {
  const headers = state.etag ? { "If-None-Match": state.etag } : {};
  const url = `${conf.api}/api/display/snapshot/${encodeURIComponent(conf.token)}/?dk=${encodeURIComponent(conf.dk)}`;
  const res = await fetch(url, { headers, cache: "no-store" });
  if (res.status === 304) { accepted(); return false; }
  if (res.status === 403 || res.status === 404) {
    const body = await res.json().catch(() => ({}));
    reject(body.detail || `HTTP ${res.status}`);
    return false;
  }
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  const snap = await res.json();
  state.etag = res.headers.get("ETag");
  state.revision = snap.revision;
  render(snap);
  tookPosition(snap.meta);
  state.wsEnabled = !!(snap.meta && snap.meta.ws_enabled);
  accepted();
  applyFlag(state.wsEnabled);
  return true;
}

const refetch = () => { fetchSnapshot().catch(() => {}); };

function applyFlag(enabled) {
  state.wsEnabled = enabled;
  document.body.dataset.ws = enabled ? "on" : "off";
  $("sockets").textContent = enabled ? "on" : "off";
  if (!enabled) { stopSocket(); startPolling(); }
  else if (!state.rejected) sy.connect();
}

function stopSocket() {
  if (sy.state !== "stopped" && sy.state !== "idle") sy.close(1000);
}

// What the server says: a broadcast of the school's group (in order, once), or a frame of
// its own (hello, pong, display:all's config).
function handle(msg) {
  if (!msg) return;
  if (msg.type === "invalidate") {
    console.info(`[WS] invalidate received: revision ${msg.revision}`);
    refetch();
  } else if (msg.type === "config") {
    console.info(`[WS] config received: ws_enabled ${msg.ws_enabled}`);
    applyFlag(!!msg.ws_enabled);
  } else if (msg.type === "hello" && !state.joinedSince && msg.revision !== state.revision) {
    refetch(); // joined without a position (no snapshot yet): nothing else says what was missed
  }
}

sy.addEventListener("connecting", (e) => console.info(`[WS] connecting to ${e.detail.url}`));
sy.addEventListener("open", () => {
  console.info("[WS] connected");
  setMode("ws");
  stopPolling();
});
sy.addEventListener("broadcast", (e) => handle(e.detail.json));
sy.addEventListener("message", (e) => handle(e.detail.json));
sy.addEventListener("recover_failed", (e) => {
  console.info(`[WS] recover_failed: ${e.detail.reason}`);
  refetch();
});
sy.addEventListener("gap", refetch);
sy.addEventListener("close", (e) => {
  const { code } = e.detail;
  console.info(`[WS] closed: code ${code}`);
  if (code === 4400) {                                   // sockets off for this screen
    state.wsEnabled = false; document.body.dataset.ws = "off"; $("sockets").textContent = "off";
  } else if (code === 4404 || code === 4408) {           // unknown screen / other device / unbound
    reject(code === 4404 ? "unknown_token" : "screen_bound");
    return;
  }
  startPolling();                                        // switchyard.js reconnects, or not (4xxx)
});

function startPolling() {
  if (open()) return;
  setMode(state.rejected ? "rejected" : "poll");
  if (state.pollTimer) return;
  state.pollEvery = state.rejected ? conf.pollMax : conf.pollMin;
  state.pollTimer = setTimeout(poll, state.pollEvery);
}

function stopPolling() { clearTimeout(state.pollTimer); state.pollTimer = null; }

// One poll: the status call (a bodiless 304 while the ETag still holds), or,
// while rejected, the snapshot itself (which binds the screen if it is free).
async function poll() {
  state.pollTimer = null;
  let changed = false;
  try {
    if (state.rejected) {
      changed = await fetchSnapshot();
    } else {
      const url = `${conf.api}/api/display/status/${encodeURIComponent(conf.token)}/?v=${state.revision ?? ""}`;
      const headers = state.etag ? { "If-None-Match": state.etag } : {};
      const res = await fetch(url, { headers, cache: "no-store" });
      if (res.status === 404) reject("unknown_token");
      else if (res.ok) {
        const status = await res.json();
        if (status.fetch_required || status.ws_enabled !== state.wsEnabled) changed = await fetchSnapshot();
        if (status.ws_enabled !== state.wsEnabled) applyFlag(!!status.ws_enabled);
      }
    }
  } catch (e) { /* the next poll tries again */ }
  if (open()) return;
  // A socket the client gave up on (a close it does not retry, other than the display's
  // own codes): try again at each poll while this screen should have one.
  if (state.wsEnabled && !state.rejected && sy.state === "stopped") sy.connect();
  if (state.pollTimer) return;
  if (state.rejected) state.pollEvery = conf.pollMax;
  else state.pollEvery = changed ? conf.pollMin : Math.min(conf.pollMax, state.pollEvery * 1.5);
  setMode(state.rejected ? "rejected" : (sy.state === "connecting" ? document.body.dataset.mode : "poll"));
  state.pollTimer = setTimeout(poll, state.pollEvery);
}

if (!conf.token) {
  showError("no ?token=");
} else {
  fetchSnapshot().catch(() => {}).finally(() => {
    if (open() || sy.state === "connecting") return;
    startPolling();
    if (state.wsEnabled && !state.rejected) sy.connect();
  });
}
