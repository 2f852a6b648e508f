// The stock socket.io client against a running Canopy node (started by tests/push.rs, which
// passes CANOPY_BASE and the admin's password): each namespace joined and each event
// received, refusals without a token, with a bad one and for the wrong role.
import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";

const BASE = process.env.CANOPY_BASE;
const PASSWORD = process.env.CANOPY_PASSWORD;
assert.ok(BASE && PASSWORD, "CANOPY_BASE and CANOPY_PASSWORD are set by tests/push.rs");

async function api(method, path, token, body) {
  const response = await fetch(BASE + path, {
    method,
    headers: {
      "content-type": "application/json",
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: response.status, json };
}

async function login(username) {
  const { status, json } = await api("POST", "/api/v1/auth/login", null, { username, password: PASSWORD });
  assert.equal(status, 200, JSON.stringify(json));
  return json.access_token;
}

async function citizen(username) {
  const { status, json } = await api("POST", "/api/v1/auth/register", null, { username, password: PASSWORD });
  assert.equal(status, 201, JSON.stringify(json));
  return login(username);
}

/**
 * Connects to `namespace`; resolves with the socket once connected, rejects with the
 * refusal. Every event is kept from the start, so none is missed before a test waits for it.
 */
function connect(namespace, auth) {
  return new Promise((resolve, reject) => {
    const socket = io(BASE + namespace, { auth, transports: ["websocket"], reconnection: false });
    socket.seen = [];
    socket.onAny((event, payload) => socket.seen.push([event, payload]));
    socket.on("connect", () => resolve(socket));
    socket.on("connect_error", (error) => {
      socket.close();
      reject(error);
    });
  });
}

/** The first `event` on `socket` (kept or to come) that `accept` takes, within `ms`. */
function next(socket, event, accept = () => true, ms = 5000) {
  const kept = socket.seen.findIndex(([name, payload]) => name === event && accept(payload));
  if (kept >= 0) {
    const [[, payload]] = socket.seen.splice(kept, 1);
    return Promise.resolve(payload);
  }
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off(event, listener);
      reject(new Error(`no ${event} within ${ms} ms`));
    }, ms);
    const listener = (payload) => {
      if (accept(payload)) {
        clearTimeout(timer);
        socket.off(event, listener);
        const index = socket.seen.findIndex(([, seen]) => seen === payload);
        if (index >= 0) socket.seen.splice(index, 1);
        resolve(payload);
      }
    };
    socket.on(event, listener);
  });
}

const admin = await login("root");
const voter = await citizen("push-voter");
const watcher = await citizen("push-watcher");
const now = Date.now() * 1000;
const created = await api("POST", "/api/v1/voting/decision/create", admin, {
  title: "Light the river path?",
  options: ["yes", "no"],
  opens_at: now,
  closes_at: now + 3_600_000_000,
});
assert.equal(created.status, 201, JSON.stringify(created.json));
const decision = created.json.id;

test("a handshake without a token, with a bad one, or of the wrong role is refused", async () => {
  await assert.rejects(connect("/voting", {}), { message: "unauthenticated" });
  await assert.rejects(connect("/voting", { token: "not-a-token" }), { message: "invalid_token" });
  await assert.rejects(connect("/decisions", { token: watcher + "x" }), { message: "invalid_token" });
  await assert.rejects(connect("/admin", { token: watcher }), { message: "forbidden" });
});

test("/voting: the current results on subscribe, then a push within a second of a vote", async () => {
  const socket = await connect("/voting", { token: watcher });
  try {
    const first = next(socket, "vote_count_updated", (p) => p.decision_id === decision);
    socket.emit("subscribe", { decision_id: decision });
    const current = await first;
    assert.equal(current.turnout, 0);
    assert.equal(current.options.length, 2);

    const pushed = next(socket, "vote_count_updated", (p) => p.turnout === 1, 1000);
    const cast = await api("POST", "/api/v1/voting/cast-vote", voter, { decision_id: decision, option: 1 });
    assert.equal(cast.status, 201, JSON.stringify(cast.json));
    const started = Date.now();
    const update = await pushed;
    assert.ok(update.as_of.offset > cast.json.position.offset, JSON.stringify(update));
    assert.deepEqual(update.leading, { kind: "winner", option: 1 });
    // The consensus model's prediction travels with the results: a probability per option.
    assert.equal(update.prediction.probabilities.length, 2, JSON.stringify(update));
    const total = update.prediction.probabilities.reduce((a, b) => a + b, 0);
    assert.ok(Math.abs(total - 1) < 1e-9, JSON.stringify(update.prediction));
    console.log(`vote_count_updated ${Date.now() - started} ms after the cast was acknowledged`);

    const breakdown = next(socket, "vote_breakdown");
    socket.emit("breakdown", { decision_id: decision });
    const cells = (await breakdown).cells;
    assert.deepEqual(cells.map((c) => [c.option, c.component, c.count]), [[1, "democratic", 1]]);
    assert.equal(cells[0].weight, undefined, "a citizen sees no weighted sums");

    const refused = next(socket, "refused");
    socket.emit("subscribe", { decision_id: "not-a-uuid" });
    assert.equal((await refused).code, "bad_request");
    const unknown = next(socket, "refused");
    socket.emit("subscribe", { decision_id: "00000000-0000-4000-8000-000000000000" });
    assert.equal((await unknown).code, "not_found");
  } finally {
    socket.close();
  }
});

test("/voting: a subscribe sent the moment a socket connects is answered, on every socket", async () => {
  // Many sockets connecting at once, each subscribing as soon as it hears it is connected
  // (as a page does): the server's handlers are in place before it says so, else the
  // subscribes that come first are dropped without a word.
  const eager = await citizen("push-eager");
  const sockets = await Promise.all(Array.from({ length: 30 }, () => connect("/voting", { token: eager })));
  try {
    const answers = sockets.map((socket) => {
      const answered = Promise.race([
        next(socket, "vote_count_updated", (p) => p.decision_id === decision),
        next(socket, "refused").then((refusal) => assert.fail(`refused: ${JSON.stringify(refusal)}`)),
      ]);
      socket.emit("subscribe", { decision_id: decision });
      return answered;
    });
    const results = await Promise.allSettled(answers);
    const unanswered = results.filter((result) => result.status === "rejected").map((result) => result.reason.message);
    assert.deepEqual(unanswered, [], `${unanswered.length} of ${sockets.length} sockets got no answer`);
  } finally {
    for (const socket of sockets) socket.close();
  }
});

test("/voting: a guess loop of decision ids is throttled, an oversized message ends the session", async () => {
  const guesser = await citizen("push-guesser");
  const socket = await connect("/voting", { token: guesser });
  try {
    // Each subscribe costs the account a request's share of its rate (20 a second, 40 at
    // once): a loop of guessed ids is told not_found, then rate_limited.
    const codes = [];
    for (let n = 0; n < 60; n++) {
      const refused = next(socket, "refused");
      socket.emit("subscribe", { decision_id: crypto.randomUUID() });
      codes.push((await refused).code);
    }
    assert.ok(codes.every((code) => code === "not_found" || code === "rate_limited"), codes.join());
    assert.equal(codes[0], "not_found");
    assert.ok(codes.includes("rate_limited"), `a guess loop is throttled: ${codes.join()}`);
    // Past the 4 kB a client message may take, the server ends the session.
    const closed = new Promise((resolve, reject) => {
      socket.on("disconnect", resolve);
      setTimeout(() => reject(new Error("a 10 kB message did not end the session")), 5000);
    });
    socket.emit("subscribe", { decision_id: "x".repeat(10_000) });
    assert.equal(await closed, "transport close");
  } finally {
    socket.close();
  }
  // The node still answers, and the guesses joined nothing: once the rate refills, a new
  // socket of the same account gets the one decision it names.
  await new Promise((resolve) => setTimeout(resolve, 2500));
  const again = await connect("/voting", { token: guesser });
  try {
    const current = next(again, "vote_count_updated", (p) => p.decision_id === decision);
    again.emit("subscribe", { decision_id: decision });
    assert.equal((await current).decision_id, decision);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(
      again.seen.filter(([name]) => name === "vote_count_updated").map(([, p]) => p.decision_id).filter((id) => id !== decision),
      [],
    );
  } finally {
    again.close();
  }
});

test("/notifications: the voter hears that a checkpoint covers their vote", async () => {
  const socket = await connect("/notifications", { token: voter });
  const other = await connect("/notifications", { token: watcher });
  try {
    const cast = await api("POST", "/api/v1/voting/cast-vote", voter, { decision_id: decision, option: 0 });
    assert.equal(cast.status, 201, JSON.stringify(cast.json));
    const confirmed = await next(socket, "vote_confirmed", (p) => p.vote_id === cast.json.vote_id, 10000);
    assert.equal(confirmed.leaf_hash, cast.json.leaf_hash);
    assert.ok(confirmed.tree_size >= 1);
    const proof = await api("GET", confirmed.proof);
    assert.equal(proof.status, 200, JSON.stringify(proof.json));
    // Another account's socket, connected all along, heard nothing of it.
    assert.deepEqual(other.seen.filter(([event]) => event === "vote_confirmed"), []);
  } finally {
    socket.close();
    other.close();
  }
});

test("/decisions: what was missed since a position, then each status change as it happens", async () => {
  // The watcher names the decision it voted in, to hear when it is final.
  const notifications = await connect("/notifications", { token: watcher, decisions: [decision] });
  const completedSeen = next(notifications, "decision_completed", (p) => p.decision_id === decision, 20000)
    .finally(() => notifications.close());
  const socket = await connect("/decisions", { token: watcher, since_seq: 0 });
  try {
    await next(socket, "decision_status", (p) => p.decision_id === decision && p.status === "created");
    const closed = next(socket, "decision_status", (p) => p.decision_id === decision && p.status === "closed");
    const close = await api("POST", `/api/v1/voting/decisions/${decision}/close`, admin, { reason: "push test" });
    assert.equal(close.status, 200, JSON.stringify(close.json));
    const event = await closed;
    assert.ok(event.seq > 0 && event.at > 0, JSON.stringify(event));
    await next(socket, "decision_status", (p) => p.decision_id === decision && p.status === "final", 15000);
  } finally {
    socket.close();
  }
  const completed = await completedSeen;
  assert.equal(completed.decision_id, decision);
  assert.equal(completed.outcome.kind, "winner", JSON.stringify(completed));
});

test("/admin: an operator's figures at once", async () => {
  const socket = await connect("/admin", { token: admin });
  try {
    const stats = await next(socket, "stats");
    assert.ok(stats.log_end >= 1, JSON.stringify(stats));
    assert.equal(typeof stats.lag, "number");
    assert.equal(typeof stats.internal_errors, "number");
    assert.equal(typeof stats.unanchored_checkpoints, "number", JSON.stringify(stats));
    assert.equal(typeof stats.pending_anchor_batches, "number", JSON.stringify(stats));
    // The next round (every 5 s) has measured the ingest rate between two rounds.
    const later = await next(socket, "stats", (s) => s.at > stats.at, 7000);
    assert.equal(typeof later.ingest_per_s, "number", JSON.stringify(later));
    assert.ok(later.ingest_per_s >= 0);
  } finally {
    socket.close();
  }
});
