// The live push on a cluster (started by tests/push.rs: one worker process, two `canopy
// serve` replicas A and B sharing Redis and PostgreSQL): a client connected to B hears of
// what happens through A, as it would through B.
import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";

const A = process.env.CANOPY_BASE_A;
const B = process.env.CANOPY_BASE_B;
const PASSWORD = process.env.CANOPY_PASSWORD;
assert.ok(A && B && PASSWORD, "CANOPY_BASE_A, CANOPY_BASE_B and CANOPY_PASSWORD are set by tests/push.rs");

async function api(base, method, path, token, body) {
  const response = await fetch(base + path, {
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

async function login(base, username) {
  const { status, json } = await api(base, "POST", "/api/v1/auth/login", null, { username, password: PASSWORD });
  assert.equal(status, 200, JSON.stringify(json));
  return json.access_token;
}

function connect(base, namespace, auth) {
  return new Promise((resolve, reject) => {
    const socket = io(base + namespace, { auth, transports: ["websocket"], reconnection: false });
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
function next(socket, event, accept = () => true, ms = 10000) {
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

test("a client on one replica hears of decisions, votes and confirmations made through the other", async () => {
  const admin = await login(A, "root");
  const registered = await api(B, "POST", "/api/v1/auth/register", null, { username: "cluster-voter", password: PASSWORD });
  assert.equal(registered.status, 201, JSON.stringify(registered.json));
  const voter = await login(B, "cluster-voter");

  const statuses = await connect(B, "/decisions", { token: voter });
  const notifications = await connect(B, "/notifications", { token: voter });
  const voting = await connect(B, "/voting", { token: voter });
  try {
    const now = Date.now() * 1000;
    const created = await api(A, "POST", "/api/v1/voting/decision/create", admin, {
      title: "Open the estuary to kayaks?",
      options: ["yes", "no"],
      opens_at: now,
      closes_at: now + 3_600_000_000,
    });
    assert.equal(created.status, 201, JSON.stringify(created.json));
    const decision = created.json.id;
    const first = await next(statuses, "decision_status", (p) => p.decision_id === decision);
    assert.ok(first.seq > 0, JSON.stringify(first));

    const current = next(voting, "vote_count_updated", (p) => p.decision_id === decision);
    voting.emit("subscribe", { decision_id: decision });
    assert.equal((await current).turnout, 0);

    // The vote goes through A; B pushes its count (from the workers' views in Redis) and,
    // once a checkpoint covers it, its confirmation (the waiting vote shared in Redis).
    const counted = next(voting, "vote_count_updated", (p) => p.decision_id === decision && p.turnout === 1);
    const cast = await api(A, "POST", "/api/v1/voting/cast-vote", voter, { decision_id: decision, option: 0 });
    assert.equal(cast.status, 201, JSON.stringify(cast.json));
    const started = Date.now();
    const update = await counted;
    assert.ok(update.as_of.offset > cast.json.position.offset, JSON.stringify(update));
    console.log(`vote_count_updated on B ${Date.now() - started} ms after A acknowledged the vote`);
    const confirmed = await next(notifications, "vote_confirmed", (p) => p.vote_id === cast.json.vote_id, 30000);
    assert.equal(confirmed.leaf_hash, cast.json.leaf_hash);
    const proof = await api(B, "GET", confirmed.proof);
    assert.equal(proof.status, 200, JSON.stringify(proof.json));
    // Pushed once: a second round of B's loop does not repeat it.
    await new Promise((resolve) => setTimeout(resolve, 2500));
    assert.equal(notifications.seen.filter(([event, p]) => event === "vote_confirmed" && p.vote_id === cast.json.vote_id).length, 0);

    // A client reconnecting to A with its last position gets what it missed since.
    const closed = await api(A, "POST", `/api/v1/voting/decisions/${decision}/close`, admin, { reason: "cluster push test" });
    assert.equal(closed.status, 200, JSON.stringify(closed.json));
    const again = await connect(A, "/decisions", { token: voter, since_seq: first.seq });
    try {
      const missed = await next(again, "decision_status", (p) => p.decision_id === decision && p.status === "closed");
      assert.ok(missed.seq > first.seq, JSON.stringify(missed));
      assert.equal(
        again.seen.filter(([, p]) => p.decision_id === decision && p.seq <= first.seq).length,
        0,
        "nothing at or before the position given is replayed",
      );
    } finally {
      again.close();
    }
  } finally {
    statuses.close();
    notifications.close();
    voting.close();
  }
});
