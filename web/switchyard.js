// switchyard.js — the browser (and Node ≥ 22) client for Switchyard WebSockets.
// An ES module without dependencies; docs/client.md documents it.
//
// Why it exists: a socket that reconnects by itself is not enough. A client that was away
// missed broadcasts; this one keeps, per group, the `seq`/`epoch` of the last broadcast it
// got and joins again "since" it (docs/protocol.md, "Group history and recovery"), drops
// copies it already has, and tells the app when the server says the gap cannot be filled
// (`recover_failed`: refetch your state). Around that: reconnects with exponential backoff
// and full jitter across one or more URLs, close codes handled by kind, the session id kept
// in storage, an application-level ping with stall detection, and events for the app.
//
//   import { Switchyard } from "/web/switchyard.js";
//   const sy = new Switchyard(["wss://a.example/ws/rooms/", "wss://b.example/ws/rooms/"]);
//   sy.group("room:lobby", (at) => ({ join: "lobby", ...(at && { since: at.seq, epoch: at.epoch }) }));
//   sy.addEventListener("broadcast", (e) => show(e.detail.data));
//   sy.addEventListener("recover_failed", () => refetch());
//   sy.connect();

/** Close codes after which the client connects again: going away (a deploy, a drained
 * interface), abnormal closure (the network), server error, service restart, try again
 * later, bad gateway. Application codes (4000–4999) and the client's own mistakes (1002,
 * 1003, 1007–1010) do not reconnect: doing the same again would get the same answer. */
export const RECONNECT_CODES = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014]);

/** Whether a close with `code` should be followed by a reconnect. */
export function shouldReconnect(code) {
  return RECONNECT_CODES.has(code);
}

/** Delay before reconnect attempt `attempt` (0-based): exponential from `min` to `max`, with
 * full jitter (a uniformly random share of the cap, at least `min / 2`), so that thousands of
 * clients dropped at once do not come back at once. */
export function backoffDelay(attempt, min, max, random = Math.random) {
  const cap = Math.min(max, min * Math.pow(2, attempt));
  const floor = Math.min(min / 2, cap);
  return floor + random() * (cap - floor);
}

/** What a text frame means to the client: a broadcast of a tracked group (`{group, seq,
 * epoch}` set by the server), a `recover_failed` notice, or a plain message. */
export function classifyFrame(data) {
  if (typeof data !== "string" || data[0] !== "{") return { kind: "message" };
  let json;
  try {
    json = JSON.parse(data);
  } catch {
    return { kind: "message" };
  }
  if (json && json.type === "recover_failed" && typeof json.group === "string") {
    return { kind: "recover_failed", json };
  }
  if (json && typeof json.group === "string" && Number.isInteger(json.seq) && typeof json.epoch === "string") {
    return { kind: "broadcast", json };
  }
  return { kind: "message", json };
}

/** How broadcast `seq` of `epoch` relates to the last position `at` ({epoch, seq} or null):
 * "next", "duplicate" (already had it: dropped), "gap" (some are missing — the server
 * recovers them, so this means they were lost) or "epoch" (a new numbering). */
export function relate(at, epoch, seq) {
  if (!at) return "next";
  if (at.epoch !== epoch) return at.epoch === "" && at.seq === 0 ? (seq === 1 ? "next" : "gap") : "epoch";
  if (seq <= at.seq) return "duplicate";
  return seq === at.seq + 1 ? "next" : "gap";
}

const SESSION_KEY = "switchyard.session_uuid";

function storedSession(storage, key) {
  try {
    let id = storage && storage.getItem(key);
    if (!id) {
      id = globalThis.crypto && crypto.randomUUID ? crypto.randomUUID() : `s-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
      if (storage) storage.setItem(key, id);
    }
    return id;
  } catch {
    return `s-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  }
}

/**
 * A WebSocket that stays connected and keeps its groups whole.
 *
 * Events (all `CustomEvent`s, data in `detail`):
 * - `state` `{state}`: "connecting", "open", "closed" (will reconnect), "stopped" (will not);
 * - `connecting` `{url, attempt}`: a socket is being opened to `url`;
 * - `open` `{url, attempt}`; `close` `{code, reason, reconnect, delay}`;
 * - `message` `{data, json}`: every frame that is not a tracked broadcast or notice;
 * - `broadcast` `{group, seq, epoch, data, json}`: a tracked group's broadcast, in order, once;
 * - `recover_failed` `{group, epoch, seq, reason}`: broadcasts were lost for good — refetch the
 *   state; the position is already moved to where the next broadcasts continue from;
 * - `gap` `{group, from, to}`: a broadcast arrived after a hole the server did not fill (should
 *   not happen; treat like recover_failed);
 * - `stall` `{silentMs}`: nothing was heard for too long; the socket is dropped and reopened.
 */
export class Switchyard extends EventTarget {
  /**
   * @param {string|string[]} urls WebSocket URL(s); reconnects go round them in turn.
   * @param {object} [options]
   * @param {boolean|string} [options.session=true] add `session_uuid` to the URL: true — one
   *   kept in `storage` under "switchyard.session_uuid"; a string — that one; false — none.
   * @param {Storage|null} [options.storage=globalThis.localStorage]
   * @param {number} [options.backoffMin=500] @param {number} [options.backoffMax=30000] ms
   * @param {number} [options.pingInterval=25000] ms between application pings (0: none)
   * @param {() => string} [options.pingMessage] what a ping sends (default `{"type":"ping"}`)
   * @param {number} [options.stallTimeout=60000] ms without any frame before the socket is
   *   considered stalled and reopened (0: never); any frame, a pong included, resets it
   * @param {(code:number)=>boolean} [options.reconnectOn] overrides `shouldReconnect`
   * @param {() => object} [options.params] extra query parameters, asked for at every
   *   (re)connect — e.g. a position for servers that take it in the URL (the display)
   * @param {string|string[]} [options.protocols] WebSocket subprotocols
   * @param {typeof WebSocket} [options.WebSocket] the constructor (for Node or tests)
   */
  constructor(urls, options = {}) {
    super();
    this.urls = Array.isArray(urls) ? urls.slice() : [urls];
    if (this.urls.length === 0) throw new TypeError("Switchyard: at least one URL");
    this.options = {
      session: true,
      storage: globalThis.localStorage ?? null,
      backoffMin: 500,
      backoffMax: 30000,
      pingInterval: 25000,
      pingMessage: () => JSON.stringify({ type: "ping" }),
      stallTimeout: 60000,
      reconnectOn: shouldReconnect,
      params: null,
      protocols: undefined,
      WebSocket: globalThis.WebSocket,
      ...options,
    };
    this.sessionId =
      this.options.session === true ? storedSession(this.options.storage, SESSION_KEY)
      : typeof this.options.session === "string" ? this.options.session : null;
    /** group → {join, at: {epoch, seq} | null} */
    this.groups = new Map();
    this.socket = null;
    this.state = "idle";
    this.attempt = 0;
    this.urlIndex = 0;
    this.wanted = false;
    this.timers = { reconnect: null, ping: null, stall: null };
    this.lastHeard = 0;
  }

  /** Tracks `group`: `join(at)` builds the message that joins it — `at` is null the first
   * time, then the last position `{epoch, seq}` — sent now if open and after every reconnect.
   * `join` null: the server joins the group itself (from the URL: see `params`); the client
   * only tracks it (copies dropped, `gap`, `recover_failed`). */
  group(name, join = null) {
    this.groups.set(name, { join, at: null });
    if (join && this.state === "open") this.sendJSON(join(null));
    return this;
  }

  /** Moves the position of a tracked `group` to `at` ({epoch, seq}) if it is ahead of the
   * one held: the app learned from elsewhere that it has everything up to there (a snapshot
   * taken at that position, say). Another epoch counts as ahead. Returns whether it moved. */
  advance(name, at) {
    const g = this.groups.get(name);
    if (!g || !at || typeof at.epoch !== "string" || !Number.isInteger(at.seq) || at.seq < 0) return false;
    if (g.at && g.at.epoch === at.epoch && g.at.seq >= at.seq) return false;
    g.at = { epoch: at.epoch, seq: at.seq };
    return true;
  }

  /** Stops tracking `group` (send the app's own leave message too). */
  ungroup(name) {
    this.groups.delete(name);
  }

  /** The last position of `group`: {epoch, seq}, or null. */
  position(name) {
    const g = this.groups.get(name);
    return g && g.at ? { ...g.at } : null;
  }

  connect() {
    this.wanted = true;
    if (this.socket || this.timers.reconnect) return;
    this.open();
  }

  /** Closes for good (code 1000 by default): no reconnect until `connect()`. */
  close(code = 1000, reason = "") {
    this.wanted = false;
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = null;
    this.stopTimers();
    const ws = this.socket;
    this.socket = null;
    if (ws) ws.close(code, reason);
    this.setState("stopped");
  }

  /** Sends text or binary; false when not open (nothing is queued: the app decides). */
  send(data) {
    if (!this.socket || this.socket.readyState !== 1) return false;
    this.socket.send(data);
    return true;
  }

  sendJSON(value) {
    return this.send(JSON.stringify(value));
  }

  // ---- internals ------------------------------------------------------------------------

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", { state });
  }

  url() {
    const base = this.urls[this.urlIndex % this.urls.length];
    const extra = this.options.params ? this.options.params() || {} : {};
    if (!this.sessionId && Object.keys(extra).length === 0) return base;
    const u = new URL(base, globalThis.location ? globalThis.location.href : undefined);
    if (this.sessionId) u.searchParams.set("session_uuid", this.sessionId);
    for (const [name, value] of Object.entries(extra)) {
      if (value === undefined || value === null) u.searchParams.delete(name);
      else u.searchParams.set(name, String(value));
    }
    return u.toString();
  }

  open() {
    const WS = this.options.WebSocket;
    const url = this.url();
    this.setState("connecting");
    this.emit("connecting", { url, attempt: this.attempt });
    let ws;
    try {
      ws = new WS(url, this.options.protocols);
    } catch (error) {
      this.emit("close", { code: 1006, reason: String(error), reconnect: true });
      this.scheduleReconnect();
      return;
    }
    this.socket = ws;
    ws.onopen = () => {
      if (this.socket !== ws) return;
      const attempt = this.attempt;
      this.attempt = 0;
      this.heard();
      this.startTimers();
      this.setState("open");
      this.emit("open", { url, attempt });
      for (const g of this.groups.values()) if (g.join) this.sendJSON(g.join(g.at ? { ...g.at } : null));
    };
    ws.onmessage = (event) => {
      if (this.socket !== ws) return;
      this.heard();
      this.receive(event.data);
    };
    ws.onclose = (event) => {
      if (this.socket !== ws) return;
      this.socket = null;
      this.stopTimers();
      const stalled = ws.stalled === true;
      const reconnect = this.wanted && (stalled || this.options.reconnectOn(event.code));
      const delay = reconnect ? this.scheduleReconnect() : null;
      this.setState(reconnect ? "closed" : "stopped");
      this.emit("close", { code: event.code, reason: event.reason, reconnect, delay });
    };
  }

  receive(data) {
    const frame = classifyFrame(data);
    const tracked = frame.json && this.groups.get(frame.json.group);
    if (frame.kind === "broadcast" && tracked) {
      const { group, seq, epoch } = frame.json;
      const relation = relate(tracked.at, epoch, seq);
      if (relation === "duplicate") return;
      if (relation === "gap") this.emit("gap", { group, from: tracked.at ? tracked.at.seq + 1 : 1, to: seq - 1 });
      tracked.at = { epoch, seq };
      this.emit("broadcast", { group, seq, epoch, data, json: frame.json });
      return;
    }
    if (frame.kind === "recover_failed" && tracked) {
      const { group, epoch, seq, reason } = frame.json;
      tracked.at = { epoch: String(epoch), seq: Number(seq) || 0 };
      this.emit("recover_failed", { group, epoch, seq, reason });
      return;
    }
    this.emit("message", { data, json: frame.json });
  }

  scheduleReconnect() {
    if (this.timers.reconnect) return null;
    const delay = backoffDelay(this.attempt, this.options.backoffMin, this.options.backoffMax);
    this.attempt += 1;
    this.urlIndex += 1;
    this.timers.reconnect = setTimeout(() => {
      this.timers.reconnect = null;
      if (this.wanted && !this.socket) this.open();
    }, delay);
    return delay;
  }

  heard() {
    this.lastHeard = Date.now();
  }

  startTimers() {
    const { pingInterval, pingMessage, stallTimeout } = this.options;
    if (pingInterval > 0) this.timers.ping = setInterval(() => this.send(pingMessage()), pingInterval);
    if (stallTimeout > 0) {
      const every = Math.max(250, Math.min(stallTimeout / 4, 5000));
      this.timers.stall = setInterval(() => {
        const silentMs = Date.now() - this.lastHeard;
        if (silentMs < stallTimeout || !this.socket) return;
        this.emit("stall", { silentMs });
        const ws = this.socket;
        ws.stalled = true;
        // A stalled socket may never deliver its close event: act as if it had.
        try {
          ws.close(4000, "stalled");
        } catch {
          /* already closing */
        }
        ws.onclose({ code: 1006, reason: "stalled" });
      }, every);
    }
  }

  stopTimers() {
    clearInterval(this.timers.ping);
    clearInterval(this.timers.stall);
    this.timers.ping = null;
    this.timers.stall = null;
  }
}
