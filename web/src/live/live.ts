// Live updates, all in one place: socket.io namespaces of the node when it offers them, and
// the fallbacks the pages use until (or whenever) a socket is not connected.
//
//   /voting         subscribe {decision_id, since_offset}  ─▶ vote_count_updated, vote_breakdown
//   /decisions      decision_status                          (fallback: the page re-reads)
//   /notifications  vote_confirmed, decision_completed       (fallback: my-votes every 15 s)
//   /admin          stats, alert                             (fallback: the SSE alert stream)
//
// Results fall back to polling the results route every 2 s with `min_offset` (the next
// offset after the results' `as_of`), so a read returns as soon as a new vote is counted
// (or after the server's 5 s wait, answered 504 `results_timeout`, and asked again).
import { io, type Socket } from "socket.io-client";
import { ApiError, accessToken, api, refreshTokens } from "../api/client";
import type { Breakdown, MyVote, Page, Results, SensorAlert } from "../api/types";
import {
  breakdownReceived,
  connection,
  modeChanged,
  noticed,
  resultsReceived,
  statusChanged,
  store,
} from "../store";

export const POLL_MS = 2000;
const sockets = new Map<string, Socket>();
const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    });
  });

/** The namespace's socket, shared by every page; it keeps reconnecting with backoff. */
export function socket(namespace: "voting" | "decisions" | "notifications" | "admin"): Socket {
  const existing = sockets.get(namespace);
  if (existing) return existing;
  const s = io(`${window.location.origin}/${namespace}`, {
    auth: (cb) => cb({ token: accessToken() }),
    transports: ["websocket"],
    reconnectionDelay: 2000,
    reconnectionDelayMax: 15000,
  });
  s.on("connect_error", async (err) => {
    // A refusal by the server's auth middleware ends the attempts; a transport error does not.
    if (err.message === "token_expired" && (await refreshTokens())) s.connect();
  });
  sockets.set(namespace, s);
  return s;
}

/** Closes every socket (on sign-out). */
export function closeSockets() {
  sockets.forEach((s) => s.close());
  sockets.clear();
}

/**
 * Keeps `live.results[decisionId]` and `live.breakdown[decisionId]` current until the
 * returned function is called: through the /voting socket while it is connected, by polling
 * otherwise.
 */
export function watchDecision(decisionId: string): () => void {
  const dispatch = store.dispatch;
  const voting = socket("voting");
  const decisions = socket("decisions");
  let stopped = false;
  let poller: AbortController | null = null;
  let lastOffset: number | undefined;

  const onCount = (msg: Results) => {
    if (msg.decision_id !== decisionId) return;
    lastOffset = msg.as_of?.offset;
    dispatch(resultsReceived(msg));
  };
  const onBreakdown = (msg: Breakdown) => {
    if (msg.decision_id === decisionId) dispatch(breakdownReceived(msg));
  };
  const onStatus = (msg: { decision_id: string; status: string; at: number }) => {
    if (msg.decision_id === decisionId) dispatch(statusChanged(msg));
  };
  const onConnect = () => {
    poller?.abort();
    poller = null;
    dispatch(modeChanged({ decisionId, mode: "socket" }));
    voting.emit("subscribe", { decision_id: decisionId, since_offset: lastOffset });
    voting.emit("breakdown", { decision_id: decisionId });
  };
  const onDisconnect = () => startPolling();

  const startPolling = () => {
    if (stopped || poller) return;
    dispatch(modeChanged({ decisionId, mode: "polling" }));
    poller = new AbortController();
    void poll(poller.signal);
  };

  const poll = async (signal: AbortSignal) => {
    let minOffset: number | undefined;
    let breakdownAt = 0;
    while (!signal.aborted) {
      const started = Date.now();
      try {
        const query = minOffset !== undefined ? `?min_offset=${minOffset}` : "";
        const r = await api.get<Results>(`/api/v1/voting/decision/${decisionId}/results${query}`, { signal });
        if (signal.aborted) return;
        const changed = r.as_of?.offset !== lastOffset;
        lastOffset = r.as_of?.offset;
        minOffset = lastOffset;
        dispatch(resultsReceived(r));
        if (changed || Date.now() - breakdownAt > 30_000) {
          breakdownAt = Date.now();
          api
            .get<Breakdown>(`/api/v1/voting/decision/${decisionId}/breakdown`, { signal })
            .then((b) => dispatch(breakdownReceived(b)))
            .catch(() => {});
        }
      } catch (e) {
        if (signal.aborted) return;
        if (e instanceof ApiError && e.code === "results_timeout") continue; // nothing new in 5 s
        minOffset = undefined; // too many waits, or an error: plain reads until one succeeds
        await sleep(e instanceof ApiError && e.retryAfter ? e.retryAfter * 1000 : POLL_MS, signal);
        continue;
      }
      await sleep(Math.max(0, POLL_MS - (Date.now() - started)), signal);
    }
  };

  voting.on("vote_count_updated", onCount);
  voting.on("vote_breakdown", onBreakdown);
  voting.on("connect", onConnect);
  voting.on("disconnect", onDisconnect);
  decisions.on("decision_status", onStatus);
  if (voting.connected) onConnect();
  else startPolling();

  return () => {
    stopped = true;
    poller?.abort();
    voting.off("vote_count_updated", onCount);
    voting.off("vote_breakdown", onBreakdown);
    voting.off("connect", onConnect);
    voting.off("disconnect", onDisconnect);
    decisions.off("decision_status", onStatus);
    if (voting.connected) voting.emit("unsubscribe", { decision_id: decisionId });
  };
}

/** Asks for a fresh breakdown (over the socket, else the route). */
export function requestBreakdown(decisionId: string) {
  const voting = socket("voting");
  if (voting.connected) voting.emit("breakdown", { decision_id: decisionId });
  else
    api
      .get<Breakdown>(`/api/v1/voting/decision/${decisionId}/breakdown`)
      .then((b) => store.dispatch(breakdownReceived(b)))
      .catch(() => {});
}

/**
 * The notification centre's feed, for the signed-in user until the returned function is
 * called: the /notifications socket, and while it is not connected my-votes every 15 s
 * (a vote whose proof is no longer pending is confirmed).
 */
export function watchNotifications(): () => void {
  const dispatch = store.dispatch;
  const s = socket("notifications");
  const seen = new Map<string, string>();
  let timer: ReturnType<typeof setTimeout> | undefined;
  let stopped = false;

  const onConfirmed = (m: { decision_id: string; vote_id: string; leaf_hash: string; tree_size: number }) =>
    dispatch(
      noticed({
        id: `confirmed-${m.vote_id}`,
        kind: "vote_confirmed",
        title: "Your vote is in the signed record",
        body: `Checkpoint of ${m.tree_size} votes covers it.`,
        decisionId: m.decision_id,
        leafHash: m.leaf_hash,
      }),
    );
  const onCompleted = (m: { decision_id: string; outcome?: { kind: string; option?: number } }) =>
    dispatch(
      noticed({
        id: `completed-${m.decision_id}`,
        kind: "decision_completed",
        title: "A decision you voted in is final",
        body: m.outcome ? `Outcome: ${m.outcome.kind}${m.outcome.option !== undefined ? ` (option ${m.outcome.option + 1})` : ""}` : undefined,
        decisionId: m.decision_id,
      }),
    );
  let first = true;
  const check = async () => {
    if (stopped || s.connected) return;
    try {
      const page = await api.get<Page<MyVote>>("/api/v1/voting/my-votes");
      for (const v of page.votes ?? []) {
        // Pending when last seen, or cast since: confirmed once a checkpoint covers it.
        const before = seen.get(v.receipt.vote_id) ?? (first ? undefined : "pending");
        if (before === "pending" && v.proof.status !== "pending")
          onConfirmed({ decision_id: v.decision_id, vote_id: v.receipt.vote_id, leaf_hash: v.receipt.leaf_hash, tree_size: v.proof.checkpoint_size ?? 0 });
        seen.set(v.receipt.vote_id, v.proof.status);
      }
      first = false;
    } catch {
      /* signed out or offline: try again later */
    }
    timer = setTimeout(check, 15_000);
  };
  const onConnect = () => dispatch(connection(true));
  const onDisconnect = () => {
    dispatch(connection(false));
    clearTimeout(timer);
    void check();
  };
  s.on("vote_confirmed", onConfirmed);
  s.on("decision_completed", onCompleted);
  s.on("connect", onConnect);
  s.on("disconnect", onDisconnect);
  void check();
  return () => {
    stopped = true;
    clearTimeout(timer);
    s.off("vote_confirmed", onConfirmed);
    s.off("decision_completed", onCompleted);
    s.off("connect", onConnect);
    s.off("disconnect", onDisconnect);
  };
}

/**
 * Threshold alerts as they happen, from the node's server-sent events (read with fetch, so
 * the bearer token goes in a header). Reconnects after a drop; stops with the signal.
 */
export async function streamAlerts(onAlert: (a: SensorAlert) => void, signal: AbortSignal, onState?: (open: boolean) => void) {
  while (!signal.aborted) {
    try {
      const token = accessToken();
      const res = await fetch("/api/v1/data/alerts/stream", {
        headers: { accept: "text/event-stream", ...(token ? { authorization: `Bearer ${token}` } : {}) },
        signal,
      });
      if (res.status === 401 && (await refreshTokens())) continue;
      if (!res.ok || !res.body) throw new Error(`alerts ${res.status}`);
      onState?.(true);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end: number;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = /^event: ?(.*)$/m.exec(block)?.[1];
          const data = block
            .split("\n")
            .filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5).replace(/^ /, ""))
            .join("\n");
          if (event === "alert" && data) {
            try {
              onAlert(JSON.parse(data));
            } catch {
              /* a malformed event is skipped */
            }
          }
        }
      }
    } catch {
      /* dropped: wait and reconnect */
    }
    onState?.(false);
    await sleep(3000, signal);
  }
}

/** The /admin feed: stats and alerts, for operators and admins. */
export function watchAdmin(onStats: (s: Record<string, unknown>) => void, onAlert: (a: SensorAlert) => void, onState: (connected: boolean) => void) {
  const s = socket("admin");
  const up = () => onState(true);
  const down = () => onState(false);
  s.on("stats", onStats);
  s.on("alert", onAlert);
  s.on("connect", up);
  s.on("disconnect", down);
  s.on("connect_error", down);
  onState(s.connected);
  return () => {
    s.off("stats", onStats);
    s.off("alert", onAlert);
    s.off("connect", up);
    s.off("disconnect", down);
    s.off("connect_error", down);
  };
}
