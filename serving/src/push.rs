//! Live push over socket.io, on the API's own listener (`/socket.io/`), so a stock
//! `socket.io-client` follows results and decisions without polling.
//!
//! ```text
//!  client ─ handshake { auth: { token } } ─▶ the namespace's middleware: the access token's
//!      claims, the role checked (connect_error `unauthenticated`, `token_expired`,
//!      `forbidden`)
//!  /voting      emit subscribe {decision_id} ─▶ room <decision id>; the current results at
//!               once (a reconnecting client gets the state it missed); unsubscribe;
//!               breakdown {decision_id} ─▶ a vote_breakdown now
//!  /decisions   every socket: decision_status, one per row of the decisions' history;
//!               handshake auth.since_seq ─▶ the rows after it first
//!  /notifications  the account's own room: vote_confirmed once a checkpoint covers a vote
//!               it cast through this replica; decision_completed (with the outcome) for
//!               decisions it voted in so (or names in handshake auth.decisions)
//!  /admin       operators and admins only: stats (log end, ingest rate, counted, lag,
//!               anchoring backlog, internal errors, waits) at once and every 5 s; alert,
//!               each sensor alert as it is raised
//!  push loop (every replica, every push_interval):
//!    each /voting room whose view moved ─▶ one vote_count_updated (coalesced: votes in
//!      between are in it), each breakdown_interval a vote_breakdown
//!    history rows after the last pushed ─▶ decision_status
//!    sockets whose token expired ─▶ session_ended {code: token_expired}, disconnected
//! ```
//!
//! Results are state, not deltas: a push carries a decision's whole results at a log
//! position, so a client that missed pushes needs only the next one. Every replica pushes
//! from its own view store (Redis in a cluster) and the shared history, so a client gets the
//! same events whichever replica it is connected to.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_dataflow::DecisionView;
use canopy_ingest::Position;
use canopy_schemas::DecisionId;
use canopy_schemas::clock::unix_now;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{Data, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;

use crate::api::voting::{breakdown_body, known_decision, results_body};
use crate::auth::{Action, Claims, Role};
use crate::state::SharedState;

/// The namespaces, as clients name them.
pub const VOTING: &str = "/voting";
pub const DECISIONS: &str = "/decisions";
pub const ADMIN: &str = "/admin";
pub const NOTIFICATIONS: &str = "/notifications";

/// How often votes waiting for their confirmation are checked against the checkpoints.
const CONFIRMATION_INTERVAL: Duration = Duration::from_secs(1);

/// How often `/admin` gets the node's figures.
const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// The most decisions one socket follows at once.
pub const MAX_SUBSCRIPTIONS: usize = 100;
/// The largest message a client may send (a subscribe is a few dozen bytes).
const MAX_CLIENT_PAYLOAD: u64 = 4 * 1024;
/// Packets waiting for a slow client before its emits fail (and it falls behind to the
/// next state push).
const MAX_BUFFERED_PACKETS: usize = 64;
/// History rows pushed per round at most; the rest follow in the next rounds.
const HISTORY_PAGE: i64 = 500;
/// A gap in the history's numbering (a row numbered but not yet committed) is waited for
/// this long before the rows after it are taken as complete.
const HISTORY_GAP_WAIT: Duration = Duration::from_secs(30);

/// Why a handshake was refused: the client's `connect_error` message.
#[derive(Debug)]
struct Refusal(&'static str);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

#[derive(Deserialize)]
struct Handshake {
    token: Option<String>,
    /// `/decisions`: the last history row the client saw.
    #[serde(default)]
    since_seq: Option<i64>,
}

/// What [`push_loop`] pushes through.
pub struct Pusher {
    io: SocketIo,
    figures: AdminFigures,
}

/// The socket.io layer for the API's router, and its handle for [`push_loop`].
pub fn socket_io(state: SharedState) -> (SocketIoLayer, Pusher) {
    let figures = AdminFigures::default();
    let (layer, io) = SocketIo::builder()
        .with_state(state)
        .with_state(figures.clone())
        .max_payload(MAX_CLIENT_PAYLOAD)
        // The websocket transport has limits of its own (64 MB by default): a client's
        // message is as small there as over polling.
        .ws_max_message_size(MAX_CLIENT_PAYLOAD as usize)
        .ws_max_frame_size(MAX_CLIENT_PAYLOAD as usize)
        .max_buffer_size(MAX_BUFFERED_PACKETS)
        .build_layer();
    // socketioxide tells the client it is connected, then runs the connect handler as a task
    // of its own: what a client may use at once (message handlers, rooms) is set up in the
    // middlewares, which run before, so a subscribe sent the moment the client hears it is
    // connected is not dropped for want of a handler.
    io.ns(VOTING, connected.with(follows_results));
    io.ns(DECISIONS, on_decisions.with(may_read_results));
    io.ns(ADMIN, on_admin.with(operates));
    io.ns(NOTIFICATIONS, connected.with(hears_own_news));
    (layer, Pusher { io, figures })
}

/// The handshake's token, checked like a request's, and the role `admits`: a socket keeps
/// the claims it came with.
async fn authenticate(
    socket: &SocketRef,
    auth: &Result<Handshake, impl std::fmt::Debug>,
    state: &SharedState,
    admits: impl Fn(Role) -> bool,
) -> Result<Claims, Refusal> {
    let Some(token) = auth.as_ref().ok().and_then(|auth| auth.token.as_deref()) else {
        return Err(Refusal("unauthenticated"));
    };
    let claims = state
        .keys
        .verify(token)
        .map_err(|error| match error.code() {
            "token_expired" => Refusal("token_expired"),
            "account_erased" => Refusal("account_erased"),
            _ => Refusal("invalid_token"),
        })?;
    if !admits(claims.role) {
        return Err(Refusal("forbidden"));
    }
    socket.extensions.insert(claims.clone());
    Ok(claims)
}

async fn may_read_results(
    socket: SocketRef,
    TryData(auth): TryData<Handshake>,
    State(state): State<SharedState>,
) -> Result<(), Refusal> {
    authenticate(&socket, &auth, &state, |role| {
        Action::ReadResults.allowed(role)
    })
    .await
    .map(|_| ())
}

/// `/voting`: the results' readers, with the socket's message handlers in place.
async fn follows_results(
    socket: SocketRef,
    TryData(auth): TryData<Handshake>,
    State(state): State<SharedState>,
) -> Result<(), Refusal> {
    authenticate(&socket, &auth, &state, |role| {
        Action::ReadResults.allowed(role)
    })
    .await?;
    on_voting(&socket);
    Ok(())
}

/// `/notifications` is every account's own: the socket is in its account's room before it
/// hears it is connected.
async fn hears_own_news(
    socket: SocketRef,
    TryData(auth): TryData<Handshake>,
    TryData(watch): TryData<Watch>,
    State(state): State<SharedState>,
) -> Result<(), Refusal> {
    let claims = authenticate(&socket, &auth, &state, |_| true).await?;
    on_notifications(&socket, &claims, watch.ok());
    Ok(())
}

/// The connect handler of the namespaces whose middleware has set the socket up.
async fn connected(_socket: SocketRef) {}

/// An account's sockets share a room named by the account, which only they join.
fn account_room(account: uuid::Uuid) -> String {
    format!("account:{account}")
}

#[derive(Deserialize)]
struct Watch {
    /// Decisions the client voted in (from `my-votes`), to hear when they are final.
    #[serde(default)]
    decisions: Vec<uuid::Uuid>,
}

/// The decisions a `/notifications` socket hears `decision_completed` of: those it names
/// and those its account votes in through this replica while it is connected.
#[derive(Clone, Default)]
struct Watched(Arc<std::sync::Mutex<BTreeSet<DecisionId>>>);

fn on_notifications(socket: &SocketRef, claims: &Claims, watch: Option<Watch>) {
    socket.join(account_room(claims.sub));
    let named: BTreeSet<DecisionId> = watch
        .map(|watch| watch.decisions)
        .unwrap_or_default()
        .into_iter()
        .take(MAX_SUBSCRIPTIONS)
        .map(DecisionId::from)
        .collect();
    socket
        .extensions
        .insert(Watched(Arc::new(std::sync::Mutex::new(named))));
}

/// `/admin` is the operators' and admins'.
async fn operates(
    socket: SocketRef,
    TryData(auth): TryData<Handshake>,
    State(state): State<SharedState>,
) -> Result<(), Refusal> {
    authenticate(&socket, &auth, &state, |role| {
        matches!(role, Role::Operator | Role::Admin)
    })
    .await
    .map(|_| ())
}

/// An operator gets the figures at once, then every few seconds with everyone else.
async fn on_admin(
    socket: SocketRef,
    State(state): State<SharedState>,
    State(figures): State<AdminFigures>,
) {
    let _ = socket.emit("stats", &stats(&state, &figures.latest()));
}

/// The `/admin` figures the push loop measures between rounds (a new socket gets the last).
#[derive(Clone, Default)]
struct AdminFigures(Arc<std::sync::Mutex<Measured>>);

#[derive(Clone, Copy, Default)]
struct Measured {
    /// The log's end when last measured, and when.
    log_end: Option<(Instant, u64)>,
    /// Votes appended per second between the last two measures.
    ingest_per_s: Option<f64>,
    /// Checkpoints waiting for an anchoring round, and batches sent but not yet confirmed.
    unanchored_checkpoints: Option<usize>,
    pending_anchor_batches: Option<usize>,
}

impl AdminFigures {
    fn latest(&self) -> Measured {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Measures the ingest rate since the last call and the anchoring backlog.
    async fn measure(&self, state: &SharedState) -> Measured {
        let log_end = log_end(state);
        let backlog = state.store.unanchored_checkpoints(BACKLOG_COUNTED).await;
        let batches = state.store.pending_anchor_batches().await;
        let mut measured = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, before)) = measured.log_end {
            let seconds = at.elapsed().as_secs_f64();
            if seconds > 0.0 {
                measured.ingest_per_s = Some(log_end.saturating_sub(before) as f64 / seconds);
            }
        }
        measured.log_end = Some((Instant::now(), log_end));
        metrics::gauge!("canopy_view_lag_entries")
            .set(log_end.saturating_sub(counted(state)) as f64);
        measured.unanchored_checkpoints = backlog.ok().map(|rows| rows.len());
        measured.pending_anchor_batches = batches.ok().map(|rows| rows.len());
        *measured
    }
}

/// Unanchored checkpoints are counted up to this many (a figure, not a listing).
const BACKLOG_COUNTED: i64 = 10_000;

fn log_end(state: &SharedState) -> u64 {
    let log = state.gate.log();
    (0..log.partitions())
        .filter_map(|partition| log.end_offset(partition).ok())
        .sum()
}

/// Log entries reflected in the results, summed over the partitions.
fn counted(state: &SharedState) -> u64 {
    (0..state.gate.log().partitions())
        .map(|partition| state.views.frontier(partition))
        .sum()
}

/// The node's figures for `/admin`: the vote log's end and ingest rate, the results'
/// frontier and lag, the anchoring backlog, requests that failed inside the node, reads
/// waiting.
fn stats(state: &SharedState, measured: &Measured) -> Value {
    let log_end = log_end(state);
    let counted = counted(state);
    json!({
        "log_end": log_end,
        "counted": counted,
        "lag": log_end.saturating_sub(counted),
        "ingest_per_s": measured.ingest_per_s,
        "unanchored_checkpoints": measured.unanchored_checkpoints,
        "pending_anchor_batches": measured.pending_anchor_batches,
        "internal_errors": crate::error::internal_errors(),
        "parked_waits": state.parked_waits.parked(),
        "ready": state.ready.load(std::sync::atomic::Ordering::Acquire),
        "at": canopy_schemas::clock::now_micros(),
    })
}

#[derive(Deserialize)]
struct DecisionRef {
    decision_id: uuid::Uuid,
}

/// Counts one push of `event` (a room's broadcast once, whatever its size).
fn sent(event: &'static str) {
    metrics::counter!("canopy_push_events_total", "event" => event).increment(1);
}

/// Sockets connected per namespace, for the push metrics.
fn count_clients(io: &SocketIo) {
    for namespace in [VOTING, DECISIONS, NOTIFICATIONS, ADMIN] {
        let clients = io.of(namespace).map_or(0, |ns| ns.sockets().len());
        metrics::gauge!("canopy_push_clients", "namespace" => namespace).set(clients as f64);
    }
}

/// Tells the client why a message of theirs did nothing (`refused` event, a stable code).
fn refuse(socket: &SocketRef, code: &str, message: &str) {
    let _ = socket.emit("refused", &json!({ "code": code, "message": message }));
}

/// The decision a `/voting` message names, once the sender's per-user rate allows the
/// message (each one costs a lookup, an unknown id a read of the store, as a request
/// does); else the client is told why and `None`.
async fn requested_decision(
    socket: &SocketRef,
    body: Result<DecisionRef, impl std::fmt::Debug>,
    state: &SharedState,
    event: &str,
) -> Option<canopy_schemas::Decision> {
    let account = socket.extensions.get::<Claims>().map(|claims| claims.sub);
    if let Some(account) = account
        && let Err(retry_after_s) = state.user_limits.check(&account.to_string())
    {
        refuse(
            socket,
            "rate_limited",
            &format!("too many messages; retry after {retry_after_s} s"),
        );
        return None;
    }
    let Ok(DecisionRef { decision_id }) = body else {
        refuse(
            socket,
            "bad_request",
            &format!("{event} takes {{\"decision_id\": <uuid>}}"),
        );
        return None;
    };
    match known_decision(state, DecisionId::from(decision_id)).await {
        Ok(decision) => Some(decision),
        Err(error) => {
            refuse(socket, error.code(), &error.to_string());
            None
        }
    }
}

fn on_voting(socket: &SocketRef) {
    socket.on(
        "subscribe",
        async |socket: SocketRef,
               TryData(body): TryData<DecisionRef>,
               State(state): State<SharedState>| {
            let Some(decision) = requested_decision(&socket, body, &state, "subscribe").await
            else {
                return;
            };
            let room = decision.id.to_string();
            if !socket
                .rooms()
                .contains(&std::borrow::Cow::Owned(room.clone()))
                && socket.rooms().len() >= MAX_SUBSCRIPTIONS
            {
                return refuse(
                    &socket,
                    "too_many_subscriptions",
                    &format!("a socket follows at most {MAX_SUBSCRIPTIONS} decisions"),
                );
            }
            socket.join(room);
            // The state now: what a (re)connecting client missed is in it.
            match state.views.get(decision.id) {
                Ok(view) => {
                    let _ = socket.emit(
                        "vote_count_updated",
                        &results_body(&decision, view.as_ref()),
                    );
                }
                Err(error) => refuse(&socket, "internal", &error.to_string()),
            }
        },
    );
    socket.on(
        "unsubscribe",
        async |socket: SocketRef, Data(DecisionRef { decision_id }): Data<DecisionRef>| {
            socket.leave(decision_id.to_string());
        },
    );
    socket.on(
        "breakdown",
        async |socket: SocketRef,
               TryData(body): TryData<DecisionRef>,
               State(state): State<SharedState>| {
            let Some(decision) = requested_decision(&socket, body, &state, "breakdown").await
            else {
                return;
            };
            let sees_weights = socket
                .extensions
                .get::<Claims>()
                .is_some_and(|claims| claims.role == Role::Admin);
            if let Ok(view) = state.views.get(decision.id) {
                let body = breakdown_body(&decision, view.as_ref(), sees_weights);
                let _ = socket.emit("vote_breakdown", &body);
            }
        },
    );
}

async fn on_decisions(
    socket: SocketRef,
    TryData(auth): TryData<Handshake>,
    State(state): State<SharedState>,
) {
    // What the client missed since the row it names, oldest first.
    let Some(since) = auth.ok().and_then(|auth| auth.since_seq) else {
        return;
    };
    match state.store.history_page(since, HISTORY_PAGE).await {
        Ok(rows) => {
            for row in rows {
                let _ = socket.emit("decision_status", &status_event(&row));
            }
        }
        Err(error) => refuse(&socket, "internal", &error.to_string()),
    }
}

fn status_event(row: &crate::store::HistoryRow) -> Value {
    json!({
        "decision_id": row.decision_id,
        "status": row.status,
        "at": row.at,
        "seq": row.seq,
    })
}

/// What the push loop has sent, per decision and of the history.
struct Pushed {
    /// Per followed decision: the log position of the results last pushed.
    results_as_of: HashMap<DecisionId, Position>,
    last_breakdown: Instant,
    /// Every history row at or below this was pushed (or given up on).
    history_floor: i64,
    /// Rows above the floor already pushed.
    history_above: BTreeSet<i64>,
    /// When the first gap above the floor was seen.
    gap_since: Option<Instant>,
}

/// Pushes results, breakdowns and status changes every `push_interval` until `stop`.
pub async fn push_loop(
    pusher: Pusher,
    state: SharedState,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Pusher { io, figures } = pusher;
    let mut pushed = Pushed {
        results_as_of: HashMap::new(),
        last_breakdown: Instant::now(),
        history_floor: latest_history_seq(&state).await,
        history_above: BTreeSet::new(),
        gap_since: None,
    };
    let interval = state.config.push_interval.max(Duration::from_millis(10));
    let alerts = state
        .sensors
        .as_ref()
        .map(|sensors| tokio::spawn(forward_alerts(io.clone(), sensors.alerts.subscribe())));
    figures.measure(&state).await;
    let mut last_stats = Instant::now();
    let mut last_confirmations = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        push_results(&io, &state, &mut pushed).await;
        if last_confirmations.elapsed() >= CONFIRMATION_INTERVAL {
            last_confirmations = Instant::now();
            push_confirmations(&io, &state).await;
        }
        if last_stats.elapsed() >= STATS_INTERVAL {
            last_stats = Instant::now();
            let measured = figures.measure(&state).await;
            count_clients(&io);
            if let Some(admin) = io.of(ADMIN) {
                let _ = admin.emit("stats", &stats(&state, &measured)).await;
                sent("stats");
            }
        }
        if let Err(error) = push_history(&io, &state, &mut pushed).await {
            tracing::warn!(%error, "could not read the decisions' history to push");
        }
        end_expired_sessions(&io);
    }
    if let Some(alerts) = alerts {
        alerts.abort();
    }
}

/// Sensor alerts to `/admin` as they are raised.
async fn forward_alerts(
    io: SocketIo,
    mut alerts: tokio::sync::broadcast::Receiver<canopy_dataflow::Alert>,
) {
    loop {
        match alerts.recv().await {
            Ok(alert) => {
                if let Some(admin) = io.of(ADMIN) {
                    let _ = admin.emit("alert", &alert).await;
                    sent("alert");
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                if let Some(admin) = io.of(ADMIN) {
                    let _ = admin.emit("lagged", &json!({ "missed": missed })).await;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn latest_history_seq(state: &SharedState) -> i64 {
    let mut floor = 0;
    loop {
        match state.store.history_page(floor, 10_000).await {
            Ok(rows) if rows.is_empty() => return floor,
            Ok(rows) => floor = rows.last().map_or(floor, |row| row.seq),
            Err(error) => {
                tracing::warn!(%error, "could not read the decisions' history; pushing from the start");
                return floor;
            }
        }
    }
}

async fn push_results(io: &SocketIo, state: &SharedState, pushed: &mut Pushed) {
    let Some(voting) = io.of(VOTING) else { return };
    let rooms = voting.clone().rooms().await.unwrap_or_default();
    let followed: Vec<DecisionId> = rooms
        .iter()
        .filter_map(|room| room.parse::<uuid::Uuid>().ok())
        .map(DecisionId::from)
        .collect();
    pushed
        .results_as_of
        .retain(|decision, _| followed.contains(decision));
    let breakdown_due = pushed.last_breakdown.elapsed() >= state.config.breakdown_interval;
    if breakdown_due {
        pushed.last_breakdown = Instant::now();
    }
    for decision_id in followed {
        let Ok(view) = state.views.get(decision_id) else {
            continue;
        };
        let Some(decision) = state.gate.decision(decision_id) else {
            continue;
        };
        let room = decision_id.to_string();
        let moved = view
            .as_ref()
            .is_some_and(|view| pushed.results_as_of.get(&decision_id) != Some(&view.as_of));
        if moved && let Some(DecisionView { as_of, .. }) = view.as_ref() {
            pushed.results_as_of.insert(decision_id, *as_of);
            let mut body = results_body(&decision, view.as_ref());
            if let Some(agents) = &state.agents {
                let tally = view.as_ref().map(|v| &v.tally);
                let now = canopy_schemas::clock::now_micros();
                body["prediction"] = json!(agents.live_prediction(&decision, tally, now));
            }
            let _ = voting
                .clone()
                .to(room.clone())
                .emit("vote_count_updated", &body)
                .await;
            sent("vote_count_updated");
        }
        if breakdown_due {
            let body = breakdown_body(&decision, view.as_ref(), false);
            let _ = voting.clone().to(room).emit("vote_breakdown", &body).await;
            sent("vote_breakdown");
        }
    }
}

async fn push_history(
    io: &SocketIo,
    state: &SharedState,
    pushed: &mut Pushed,
) -> Result<(), crate::ServingError> {
    let Some(decisions) = io.of(DECISIONS) else {
        return Ok(());
    };
    let rows = state
        .store
        .history_page(pushed.history_floor, HISTORY_PAGE)
        .await?;
    for row in &rows {
        if pushed.history_above.insert(row.seq) {
            let _ = decisions
                .clone()
                .emit("decision_status", &status_event(row))
                .await;
            sent("decision_status");
            if row.status == "final" {
                push_completed(io, state, row.decision_id).await;
            }
        }
    }
    // The floor rises over every row pushed; a gap (a row numbered, not yet committed) is
    // waited for a while, then passed.
    loop {
        let next = pushed.history_floor + 1;
        if pushed.history_above.remove(&next) {
            pushed.history_floor = next;
            pushed.gap_since = None;
            continue;
        }
        let Some(&above) = pushed.history_above.first() else {
            break;
        };
        let since = *pushed.gap_since.get_or_insert_with(Instant::now);
        if since.elapsed() < HISTORY_GAP_WAIT {
            break;
        }
        tracing::warn!(
            from = next,
            to = above - 1,
            "history rows never committed; pushing on"
        );
        pushed.history_floor = above - 1;
        pushed.gap_since = None;
    }
    Ok(())
}

/// A socket lives no longer than its token: told why, then disconnected.
fn end_expired_sessions(io: &SocketIo) {
    let now = unix_now();
    for namespace in [VOTING, DECISIONS, ADMIN, NOTIFICATIONS] {
        let Some(operators) = io.of(namespace) else {
            continue;
        };
        for socket in operators.sockets() {
            let expired = socket
                .extensions
                .get::<Claims>()
                .is_none_or(|claims| claims.exp <= now);
            if expired {
                let _ = socket.emit("session_ended", &json!({ "code": "token_expired" }));
                let _ = socket.disconnect();
            }
        }
    }
}

/// Each vote cast here that a checkpoint now covers ─▶ `vote_confirmed` to its account's
/// sockets (and its decision watched for `decision_completed`).
async fn push_confirmations(io: &SocketIo, state: &SharedState) {
    let Some(notifications) = io.of(NOTIFICATIONS) else {
        return;
    };
    // Only votes whose account listens here cost a look at the checkpoints; the others wait
    // (their account may connect) until they expire.
    let listening: BTreeSet<uuid::Uuid> = notifications
        .clone()
        .sockets()
        .iter()
        .filter_map(|socket| socket.extensions.get::<Claims>().map(|claims| claims.sub))
        .collect();
    let waiting = match state.confirmations.waiting_for(&listening).await {
        Ok(waiting) => waiting,
        Err(error) => {
            tracing::warn!(%error, "could not read the votes waiting for confirmation");
            return;
        }
    };
    let mut covered_up_to: HashMap<DecisionId, Option<(i64, i64)>> = HashMap::new();
    let mut confirmed = Vec::new();
    for vote in waiting {
        if !covered_up_to.contains_key(&vote.decision) {
            if covered_up_to.len() >= MAX_SUBSCRIPTIONS {
                continue;
            }
            let latest = match state.store.checkpoints(vote.decision).await {
                Ok(checkpoints) => checkpoints
                    .iter()
                    .max_by_key(|checkpoint| checkpoint.tree_size)
                    .map(|checkpoint| (checkpoint.log_offset, checkpoint.tree_size)),
                Err(error) => {
                    tracing::warn!(%error, "could not read checkpoints to confirm votes");
                    return;
                }
            };
            covered_up_to.insert(vote.decision, latest);
        }
        let Some(Some((log_offset, tree_size))) = covered_up_to.get(&vote.decision) else {
            continue;
        };
        if (vote.position.offset as i64) >= *log_offset {
            continue;
        }
        let room = account_room(vote.account);
        for socket in notifications.clone().within(room.clone()).sockets() {
            if let Some(watched) = socket.extensions.get::<Watched>() {
                watched
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(vote.decision);
            }
        }
        let proof = format!(
            "/api/v1/audit/decisions/{}/proof?leaf={}",
            vote.decision, vote.leaf_hash
        );
        let event = json!({
            "decision_id": vote.decision,
            "vote_id": vote.vote_id,
            "leaf_hash": vote.leaf_hash,
            "tree_size": tree_size,
            "proof": proof,
        });
        let _ = notifications
            .clone()
            .to(room)
            .emit("vote_confirmed", &event)
            .await;
        sent("vote_confirmed");
        confirmed.push(vote);
    }
    state.confirmations.confirmed(&confirmed);
}

/// A decision became final ─▶ `decision_completed` with its outcome to every
/// `/notifications` socket watching it.
async fn push_completed(io: &SocketIo, state: &SharedState, decision: DecisionId) {
    let Some(notifications) = io.of(NOTIFICATIONS) else {
        return;
    };
    let outcome = match state.store.decision_result(decision).await {
        Ok(Some(row)) => serde_json::from_str::<Value>(&row.result)
            .ok()
            .and_then(|result| result.get("outcome").cloned()),
        _ => None,
    };
    let event = json!({ "decision_id": decision, "outcome": outcome });
    for socket in notifications.sockets() {
        let watching = socket.extensions.get::<Watched>().is_some_and(|watched| {
            watched
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&decision)
        });
        if watching {
            let _ = socket.emit("decision_completed", &event);
            sent("decision_completed");
        }
    }
}
