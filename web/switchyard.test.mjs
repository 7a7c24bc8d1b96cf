// Unit tests of web/switchyard.js with a fake WebSocket: `node --test web/switchyard.test.mjs`
// (run by scripts/test). The browser test (tests/tests/rooms_browser.rs) runs it for real.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Switchyard, backoffDelay, classifyFrame, relate, shouldReconnect } from "./switchyard.js";

class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.all.push(this);
  }
  send(data) {
    this.sent.push(data);
  }
  close() {}
  open() {
    this.readyState = 1;
    this.onopen();
  }
  frame(data) {
    this.onmessage({ data: typeof data === "string" ? data : JSON.stringify(data) });
  }
  drop(code) {
    this.readyState = 3;
    this.onclose({ code, reason: "" });
  }
}

const options = { WebSocket: FakeSocket, session: "s1", storage: null, backoffMin: 1, backoffMax: 2, pingInterval: 0, stallTimeout: 0 };
const tick = (ms = 10) => new Promise((resolve) => setTimeout(resolve, ms));

test("close codes: transport and server restarts reconnect, application codes do not", () => {
  for (const code of [1001, 1006, 1012, 1013]) assert.equal(shouldReconnect(code), true, code);
  for (const code of [1000, 1002, 1008, 4000, 4404, 4999]) assert.equal(shouldReconnect(code), false, code);
});

test("backoff grows exponentially to the cap, with jitter", () => {
  assert.equal(backoffDelay(0, 500, 30000, () => 0), 250);
  assert.equal(backoffDelay(0, 500, 30000, () => 1), 500);
  assert.equal(backoffDelay(3, 500, 30000, () => 1), 4000);
  assert.equal(backoffDelay(20, 500, 30000, () => 1), 30000);
  assert.ok(backoffDelay(20, 500, 30000, () => 0.5) < 30000);
});

test("frames: tracked broadcasts, recover_failed notices, plain messages", () => {
  assert.equal(classifyFrame('{"group":"g","seq":1,"epoch":"e","text":"x"}').kind, "broadcast");
  assert.equal(classifyFrame('{"type":"recover_failed","group":"g","epoch":"e","seq":3}').kind, "recover_failed");
  assert.equal(classifyFrame('{"count":1}').kind, "message");
  assert.equal(classifyFrame("plain").kind, "message");
  assert.equal(classifyFrame("{not json").kind, "message");
});

test("positions: next, duplicate, gap, new epoch", () => {
  assert.equal(relate(null, "e", 7), "next");
  assert.equal(relate({ epoch: "e", seq: 3 }, "e", 4), "next");
  assert.equal(relate({ epoch: "e", seq: 3 }, "e", 3), "duplicate");
  assert.equal(relate({ epoch: "e", seq: 3 }, "e", 5), "gap");
  assert.equal(relate({ epoch: "e", seq: 3 }, "f", 1), "epoch");
  assert.equal(relate({ epoch: "", seq: 0 }, "f", 1), "next");
});

test("a group is joined again since its last broadcast after a reconnect, copies are dropped", async () => {
  FakeSocket.all = [];
  const sy = new Switchyard(["ws://a/ws/rooms/", "ws://b/ws/rooms/"], options);
  const seen = [];
  sy.addEventListener("broadcast", (e) => seen.push(e.detail.seq));
  sy.group("room:lobby", (at) => (at ? { join: "lobby", since: at.seq, epoch: at.epoch } : { join: "lobby" }));
  sy.connect();
  const first = FakeSocket.all[0];
  assert.equal(first.url, "ws://a/ws/rooms/?session_uuid=s1");
  first.open();
  assert.deepEqual(JSON.parse(first.sent[0]), { join: "lobby" });
  for (const seq of [1, 2, 2, 3]) first.frame({ group: "room:lobby", seq, epoch: "e", text: `t${seq}` });
  first.drop(1006);
  await tick();
  const second = FakeSocket.all[1];
  assert.equal(second.url, "ws://b/ws/rooms/?session_uuid=s1", "the next URL");
  second.open();
  assert.deepEqual(JSON.parse(second.sent[0]), { join: "lobby", since: 3, epoch: "e" });
  for (const seq of [3, 4]) second.frame({ group: "room:lobby", seq, epoch: "e" });
  assert.deepEqual(seen, [1, 2, 3, 4]);
  sy.close();
});

test("recover_failed moves the position and tells the app; 4xxx closes stop", async () => {
  FakeSocket.all = [];
  const sy = new Switchyard("ws://a/", options);
  const failed = [];
  const closes = [];
  sy.addEventListener("recover_failed", (e) => failed.push(e.detail));
  sy.addEventListener("close", (e) => closes.push(e.detail));
  sy.group("g", (at) => ({ join: "g", at }));
  sy.connect();
  const ws = FakeSocket.all[0];
  ws.open();
  ws.frame({ type: "recover_failed", group: "g", epoch: "f", seq: 9, reason: "epoch" });
  assert.equal(failed.length, 1);
  assert.deepEqual(sy.position("g"), { epoch: "f", seq: 9 });
  ws.drop(4408);
  await tick();
  assert.equal(FakeSocket.all.length, 1, "no reconnect after an application close");
  assert.equal(closes[0].reconnect, false);
  assert.equal(sy.state, "stopped");
});

test("a group joined through the URL: params at every connect, positions advanced from elsewhere", async () => {
  FakeSocket.all = [];
  const sy = new Switchyard("ws://a/ws/display/?token=t", {
    ...options,
    session: false,
    params: () => {
      const at = sy.position("school:x");
      return at ? { since: at.seq, epoch: at.epoch } : {};
    },
  });
  const seen = [];
  const connecting = [];
  sy.addEventListener("broadcast", (e) => seen.push(e.detail.seq));
  sy.addEventListener("connecting", (e) => connecting.push(e.detail.url));
  sy.group("school:x");
  assert.equal(sy.advance("school:x", { epoch: "e", seq: 4 }), true, "a snapshot's position");
  assert.equal(sy.advance("school:x", { epoch: "e", seq: 3 }), false, "never backwards");
  assert.equal(sy.advance("school:x", { epoch: "e", seq: "5" }), false, "a whole seq only");
  assert.equal(sy.advance("nope", { epoch: "e", seq: 9 }), false, "tracked groups only");
  sy.connect();
  const first = FakeSocket.all[0];
  assert.equal(first.url, "ws://a/ws/display/?token=t&since=4&epoch=e");
  assert.deepEqual(connecting, [first.url]);
  first.open();
  assert.deepEqual(first.sent, [], "nothing to send: the server joined");
  for (const seq of [4, 5, 6]) first.frame({ group: "school:x", seq, epoch: "e" });
  first.drop(1006);
  await tick();
  const second = FakeSocket.all[1];
  assert.equal(second.url, "ws://a/ws/display/?token=t&since=6&epoch=e", "since the last broadcast");
  second.open();
  second.frame({ group: "school:x", seq: 7, epoch: "e" });
  assert.equal(sy.advance("school:x", { epoch: "f", seq: 1 }), true, "another epoch is ahead");
  assert.deepEqual(seen, [5, 6, 7]);
  sy.close();
});
