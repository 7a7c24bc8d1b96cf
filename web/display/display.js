// School display client: the WebSocket only says "fetch again"; polling takes
// over whenever the socket is down or switched off, so the screen never
// depends on it.
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
// "[WS] connected", "[WS] invalidate received: revision N", "[WS] closed: code N".
"use strict";
(function () {
  const q = new URLSearchParams(location.search);
  const num = (name, dflt) => { const v = parseFloat(q.get(name)); return v > 0 ? v : dflt; };
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
  const state = { revision: null, etag: null, wsEnabled: true, socket: null, attempts: 0,
                  reconnectTimer: null, pingTimer: null, pollTimer: null, pollEvery: conf.pollMin,
                  rejected: false };

  function deviceKey() {
    try {
      let dk = localStorage.getItem("display_dk");
      if (!dk) { dk = "dk-" + Math.random().toString(36).slice(2) + Date.now().toString(36); localStorage.setItem("display_dk", dk); }
      return dk;
    } catch (e) { return "dk-" + Math.random().toString(36).slice(2); }
  }

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

  // GET the snapshot (conditional); returns true when it changed.
  let fetching = null;
  async function fetchSnapshot() {
    if (fetching) return fetching;
    fetching = (async () => {
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
      state.wsEnabled = !!(snap.meta && snap.meta.ws_enabled);
      accepted();
      applyFlag(state.wsEnabled);
      return true;
    })();
    try { return await fetching; } finally { fetching = null; }
  }

  function applyFlag(enabled) {
    state.wsEnabled = enabled;
    document.body.dataset.ws = enabled ? "on" : "off";
    $("sockets").textContent = enabled ? "on" : "off";
    if (!enabled) { stopSocket(); startPolling(); }
    else if (!state.socket && !state.reconnectTimer && !state.rejected) connect();
  }

  function connect() {
    if (state.socket || state.rejected || !state.wsEnabled) return;
    const url = `${conf.ws}/ws/display/?token=${encodeURIComponent(conf.token)}&dk=${encodeURIComponent(conf.dk)}`;
    let ws;
    console.info(`[WS] connecting to ${url}`);
    try { ws = new WebSocket(url); } catch (e) { scheduleReconnect(); return; }
    state.socket = ws;
    ws.onopen = () => {
      console.info("[WS] connected");
      state.attempts = 0;
      setMode("ws");
      stopPolling();
      clearInterval(state.pingTimer);
      state.pingTimer = setInterval(() => send({ type: "ping" }), conf.ping);
    };
    ws.onmessage = (event) => {
      let msg; try { msg = JSON.parse(event.data); } catch (e) { return; }
      if (msg.type === "invalidate") console.info(`[WS] invalidate received: revision ${msg.revision}`);
      else if (msg.type === "config") console.info(`[WS] config received: ws_enabled ${msg.ws_enabled}`);
      if ((msg.type === "invalidate" || msg.type === "hello") && msg.revision !== state.revision) {
        fetchSnapshot().catch(() => {});
      } else if (msg.type === "config") {
        applyFlag(!!msg.ws_enabled);
      }
    };
    ws.onclose = (event) => {
      if (state.socket !== ws) return;
      console.info(`[WS] closed: code ${event.code}`);
      state.socket = null;
      clearInterval(state.pingTimer);
      if (event.code === 4400) {                                   // sockets off for this screen
        state.wsEnabled = false; document.body.dataset.ws = "off"; $("sockets").textContent = "off";
      } else if (event.code === 4404 || event.code === 4408) {     // unknown screen / other device / unbound
        reject(event.code === 4404 ? "unknown_token" : "screen_bound");
        return;
      }
      startPolling();
      if (state.wsEnabled && !state.rejected) scheduleReconnect();
    };
  }

  function send(msg) { if (state.socket && state.socket.readyState === 1) state.socket.send(JSON.stringify(msg)); }

  function stopSocket() {
    clearTimeout(state.reconnectTimer); state.reconnectTimer = null;
    clearInterval(state.pingTimer);
    const ws = state.socket; state.socket = null;
    if (ws) ws.close(1000);
  }

  // Exponential backoff with full jitter between backoff_min and the cap.
  function scheduleReconnect() {
    if (state.reconnectTimer) return;
    const cap = Math.min(conf.backoffMax, conf.backoffMin * Math.pow(2, state.attempts));
    const delay = conf.backoffMin / 2 + Math.random() * (cap - conf.backoffMin / 2);
    state.attempts += 1;
    state.reconnectTimer = setTimeout(() => { state.reconnectTimer = null; connect(); }, delay);
  }

  function startPolling() {
    if (state.socket && state.socket.readyState === 1) return;
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
    if (state.socket && state.socket.readyState === 1) return;
    if (state.pollTimer) return;
    if (state.rejected) state.pollEvery = conf.pollMax;
    else state.pollEvery = changed ? conf.pollMin : Math.min(conf.pollMax, state.pollEvery * 1.5);
    setMode(state.rejected ? "rejected" : (state.socket ? document.body.dataset.mode : "poll"));
    state.pollTimer = setTimeout(poll, state.pollEvery);
  }

  if (!conf.token) { showError("no ?token="); return; }
  fetchSnapshot().catch(() => {}).finally(() => { if (!state.socket) { startPolling(); connect(); } });
})();
