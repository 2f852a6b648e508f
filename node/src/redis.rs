//! The view store over Redis, for a cluster: dataflow workers publish results into it and
//! any number of API replicas read them, with the same read-your-writes rule as in-process.
//!
//! ```text
//!  <prefix>:views     hash  decision uuid → {"tally": …, "as_of": {partition, offset}}
//!  <prefix>:frontier  hash  partition → end offset (only ever raised)
//!  <prefix>:view_offsets hash decision uuid → the as_of offset of its view (only raised)
//!  <prefix>:failure   string, set once the dataflow stopped
//!  <prefix>:changes   pub/sub channel, a message per publish (for future push)
//! ```
//!
//! One epoch's updates are written by one Lua script (atomic), so a reader never sees half an
//! epoch, and a view is only ever replaced by a newer one.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use canopy_dataflow::{
    DataflowError, DecisionView, Tally, ViewRead, ViewStore, ViewUpdate, wait_until_included,
};
use canopy_ingest::Position;
use canopy_schemas::DecisionId;
use canopy_serving::receipts::{CONFIRMATION_WAIT, PendingConfirmation};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct StoredView {
    tally: Tally,
    as_of: Position,
}

/// Raises a hash field to ARGV[2] if it is lower. KEYS: the hash; ARGV: field, value.
pub(crate) const RAISE: &str = "local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1') \
     if current < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end return 0";

/// Replaces each decision's view unless the stored one is newer (a cluster restarted from a
/// checkpoint republishes views older than those its previous run published: a reader must
/// not see results go back), all in one step, then notifies.
/// KEYS: views, view_offsets, changes; ARGV: (decision, as_of offset, json or "" to remove)*.
const PUBLISH_NEWER: &str = "for i = 1, #ARGV, 3 do \
       local stored = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '-1') \
       if stored <= tonumber(ARGV[i + 1]) then \
         redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) \
         if ARGV[i + 2] == '' then redis.call('HDEL', KEYS[1], ARGV[i]) \
         else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2]) end \
       end \
     end \
     redis.call('PUBLISH', KEYS[3], #ARGV / 3) return 0";

/// How long a writer keeps retrying Redis before it gives up and panics the worker (the
/// engine then stops and the node reports itself failed): results must not silently miss an
/// epoch.
pub(crate) const WRITE_PATIENCE: Duration = Duration::from_secs(30);

pub struct RedisViews {
    connection: Connection,
    prefix: String,
    poll: Duration,
}

impl std::fmt::Debug for RedisViews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisViews")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

pub(crate) fn unavailable(error: redis::RedisError) -> DataflowError {
    DataflowError::ViewsUnavailable(error.to_string())
}

/// A client for `url`: `redis://`, or `rediss://` (TLS) checked against the system's
/// roots or, with `sslrootcert=<PEM file>` in the query (as a PostgreSQL URL names its CA),
/// against that CA alone.
pub(crate) fn client(url: &str) -> Result<redis::Client, DataflowError> {
    let (url, root_cert) = split_root_cert(url);
    match root_cert {
        None => redis::Client::open(url.as_str()).map_err(unavailable),
        Some(path) => {
            let pem = std::fs::read(&path).map_err(|e| {
                DataflowError::ViewsUnavailable(format!("the Redis CA file {path}: {e}"))
            })?;
            redis::Client::build_with_tls(
                url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(unavailable)
        }
    }
}

/// A first connection's failure; a plain URL to a server that takes TLS only is reset at
/// the first command, which says nothing by itself.
fn first_connection_failed(url: &str, error: redis::RedisError) -> DataflowError {
    if url.starts_with("redis://") && error.is_connection_dropped() {
        return DataflowError::ViewsUnavailable(format!(
            "{error} (if the server takes TLS only, its URL starts rediss://)"
        ));
    }
    unavailable(error)
}

/// `url` without its `sslrootcert` parameter, and the parameter's value.
fn split_root_cert(url: &str) -> (String, Option<String>) {
    let (rest, fragment) = match url.split_once('#') {
        Some((rest, fragment)) => (rest, Some(fragment)),
        None => (url, None),
    };
    let Some((base, query)) = rest.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut root_cert = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("sslrootcert=") {
            Some(path) => {
                root_cert = Some(path.to_string());
                false
            }
            None => !pair.is_empty(),
        })
        .collect();
    let mut url = base.to_string();
    if !kept.is_empty() {
        url.push('?');
        url.push_str(&kept.join("&"));
    }
    if let Some(fragment) = fragment {
        url.push('#');
        url.push_str(fragment);
    }
    (url, root_cert)
}

/// One connection to Redis, reconnected once when it broke: the views' and the sensor
/// copy's.
pub(crate) struct Connection {
    client: redis::Client,
    connection: Mutex<redis::Connection>,
}

impl Connection {
    pub(crate) fn open(url: &str) -> Result<Self, DataflowError> {
        let client = client(url)?;
        let connection = client
            .get_connection()
            .map_err(|e| first_connection_failed(url, e))?;
        Ok(Self {
            client,
            connection: Mutex::new(connection),
        })
    }

    fn lock(&self) -> MutexGuard<'_, redis::Connection> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `command`, reconnecting once on a broken connection.
    pub(crate) fn run<T>(
        &self,
        command: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, DataflowError> {
        let mut connection = self.lock();
        match command(&mut connection) {
            Ok(value) => Ok(value),
            Err(error) if error.is_io_error() || error.is_connection_dropped() => {
                *connection = self.client.get_connection().map_err(unavailable)?;
                command(&mut connection).map_err(unavailable)
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    /// Writes with retries; a write that cannot be made within [`WRITE_PATIENCE`] stops the
    /// worker rather than drop results.
    pub(crate) fn write(
        &self,
        what: &str,
        command: impl Fn(&mut redis::Connection) -> redis::RedisResult<()>,
    ) {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.run(&command) {
                Ok(()) => return,
                Err(error) if started.elapsed() < WRITE_PATIENCE => {
                    tracing::warn!(%error, what, "writing to Redis failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(error) => {
                    panic!("could not write {what} to Redis for {WRITE_PATIENCE:?}: {error}")
                }
            }
        }
    }
}

impl RedisViews {
    /// `url` as `redis://host:port/db`; every key starts with `prefix`.
    pub fn connect(url: &str, prefix: &str) -> Result<Self, DataflowError> {
        Ok(Self {
            connection: Connection::open(url)?,
            prefix: prefix.to_string(),
            poll: Duration::from_millis(2),
        })
    }

    /// Clears a failure a previous run of the cluster recorded: called by a cluster starting
    /// afresh from its checkpoint.
    pub fn clear_failure(&self) -> Result<(), DataflowError> {
        let key = self.key("failure");
        self.run(|c| redis::cmd("DEL").arg(&key).query::<()>(c))
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    fn run<T>(
        &self,
        command: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, DataflowError> {
        self.connection.run(command)
    }

    fn write(
        &self,
        what: &str,
        command: impl Fn(&mut redis::Connection) -> redis::RedisResult<()>,
    ) {
        self.connection.write(what, command)
    }

    fn check(&self) -> Result<(), DataflowError> {
        match self.failure_checked()? {
            Some(reason) => Err(DataflowError::Stopped(reason)),
            None => Ok(()),
        }
    }

    fn failure_checked(&self) -> Result<Option<String>, DataflowError> {
        let key = self.key("failure");
        self.run(|c| redis::cmd("GET").arg(&key).query::<Option<String>>(c))
    }

    fn frontier_checked(&self, partition: u32) -> Result<u64, DataflowError> {
        let key = self.key("frontier");
        let end: Option<u64> =
            self.run(|c| redis::cmd("HGET").arg(&key).arg(partition).query(c))?;
        Ok(end.unwrap_or(0))
    }

    fn view(&self, decision: DecisionId) -> Result<Option<DecisionView>, DataflowError> {
        let key = self.key("views");
        let stored: Option<String> = self.run(|c| {
            redis::cmd("HGET")
                .arg(&key)
                .arg(decision.to_string())
                .query(c)
        })?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let stored: StoredView = serde_json::from_str(&stored)
            .map_err(|e| DataflowError::ViewsUnavailable(format!("a stored view is bad: {e}")))?;
        let frontier = self.frontier_checked(stored.as_of.partition)?;
        Ok(Some(DecisionView {
            decision,
            tally: stored.tally,
            as_of: Position {
                partition: stored.as_of.partition,
                offset: stored.as_of.offset.max(frontier),
            },
        }))
    }
}

impl ViewStore for RedisViews {
    fn publish(&self, updates: Vec<ViewUpdate>) {
        let views = self.key("views");
        let changes = self.key("changes");
        let encoded: Vec<(String, u64, Option<String>)> = updates
            .into_iter()
            .map(|update| {
                let value = update.tally.map(|tally| {
                    serde_json::to_string(&StoredView {
                        tally,
                        as_of: update.as_of,
                    })
                    .expect("a view serializes")
                });
                (update.decision.to_string(), update.as_of.offset, value)
            })
            .collect();
        if encoded.is_empty() {
            return;
        }
        let offsets = self.key("view_offsets");
        let publish = redis::Script::new(PUBLISH_NEWER);
        self.write("an epoch's views", |c| {
            let mut script = publish.prepare_invoke();
            script.key(&views).key(&offsets).key(&changes);
            for (decision, offset, value) in &encoded {
                script
                    .arg(decision)
                    .arg(offset)
                    .arg(value.as_deref().unwrap_or(""));
            }
            script.invoke::<i64>(c).map(|_| ())
        });
    }

    fn advance(&self, partition: u32, end: u64) {
        let key = self.key("frontier");
        self.write("a partition frontier", |c| {
            redis::Script::new(RAISE)
                .key(&key)
                .arg(partition)
                .arg(end)
                .invoke::<i64>(c)
                .map(|_| ())
        });
    }

    fn fail(&self, reason: String) {
        let key = self.key("failure");
        self.write("the failure", |c| {
            redis::cmd("SET").arg(&key).arg(&reason).query::<()>(c)
        });
    }

    fn failure(&self) -> Option<String> {
        self.failure_checked()
            .unwrap_or_else(|error| Some(format!("the view store is unreachable: {error}")))
    }

    fn frontier(&self, partition: u32) -> u64 {
        self.frontier_checked(partition).unwrap_or(0)
    }

    #[tracing::instrument(name = "redis.get", skip_all, fields(db.system = "redis", otel.kind = "client"))]
    fn get(&self, decision: DecisionId) -> Result<Option<DecisionView>, DataflowError> {
        self.check()?;
        self.view(decision)
    }

    fn wait_for(&self, decision: DecisionId, position: Position, timeout: Duration) -> ViewRead {
        wait_until_included(
            position,
            timeout,
            (),
            |()| {
                self.check()?;
                Ok((
                    self.frontier_checked(position.partition)?,
                    self.view(decision)?,
                ))
            },
            |(), _| std::thread::sleep(self.poll),
        )
    }
}

/// What API replicas of one cluster share besides the views: how many of them are alive
/// (each enforces its share of the rate limits) and a counter of voter erasures (a replica
/// that sees it move drops its cached salts, so no replica keeps voting with an erased salt
/// for more than a heartbeat), and the votes waiting for their `vote_confirmed` (a voter's
/// socket may be on another replica than the one that took the vote).
///
/// ```text
///  <prefix>:replicas   sorted set  replica id → last heartbeat (ms); stale ones are dropped
///  <prefix>:erasures   counter, raised by every erasure
///  <prefix>:confirm:<account>  list of waiting votes (JSON), the newest 1000, expiring
///                      with the confirmation wait
/// ```
pub struct ReplicaCoordinator {
    client: redis::Client,
    connection: Mutex<Option<redis::Connection>>,
    prefix: String,
    id: String,
}

/// A replica whose heartbeat is older than this is no longer counted.
const REPLICA_TIMEOUT_MS: u64 = 3_000;

impl ReplicaCoordinator {
    pub fn connect(url: &str, prefix: &str) -> Result<Self, DataflowError> {
        let client = client(url)?;
        let connection = client
            .get_connection()
            .map_err(|e| first_connection_failed(url, e))?;
        Ok(Self {
            client,
            connection: Mutex::new(Some(connection)),
            prefix: prefix.to_string(),
            id: uuid::Uuid::new_v4().to_string(),
        })
    }

    fn run<T>(
        &self,
        command: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, DataflowError> {
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(self.client.get_connection().map_err(unavailable)?);
        }
        let connection = slot.as_mut().expect("just connected");
        command(connection).map_err(|error| {
            *slot = None;
            unavailable(error)
        })
    }

    /// Announces this replica and returns (live replicas, the erasure counter).
    pub fn heartbeat(&self) -> Result<(u32, u64), DataflowError> {
        let replicas = format!("{}:replicas", self.prefix);
        let erasures = format!("{}:erasures", self.prefix);
        let now = canopy_schemas::clock::now_millis() as u64;
        let (live, erased): (u32, Option<u64>) = self.run(|c| {
            redis::pipe()
                .atomic()
                .cmd("ZADD")
                .arg(&replicas)
                .arg(now)
                .arg(&self.id)
                .ignore()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&replicas)
                .arg("-inf")
                .arg(now.saturating_sub(REPLICA_TIMEOUT_MS))
                .ignore()
                .cmd("ZCARD")
                .arg(&replicas)
                .cmd("GET")
                .arg(&erasures)
                .query(c)
        })?;
        Ok((live.max(1), erased.unwrap_or(0)))
    }

    /// Tells the other replicas that a voter's salt was erased.
    pub fn erased(&self) -> Result<(), DataflowError> {
        let erasures = format!("{}:erasures", self.prefix);
        self.run(|c| redis::cmd("INCR").arg(&erasures).query::<u64>(c))
            .map(|_| ())
    }

    /// Leaves the count at once (a clean shutdown); a killed replica ages out instead.
    pub fn leave(&self) {
        let replicas = format!("{}:replicas", self.prefix);
        let _ = self.run(|c| {
            redis::cmd("ZREM")
                .arg(&replicas)
                .arg(&self.id)
                .query::<u64>(c)
        });
    }
}

/// Waiting votes kept per account at most (a voter casting faster hears of the newest).
const MAX_WAITING_PER_ACCOUNT: isize = 1_000;

impl ReplicaCoordinator {
    fn confirm_key(&self, account: &uuid::Uuid) -> String {
        format!("{}:confirm:{account}", self.prefix)
    }
}

impl canopy_serving::receipts::SharedConfirmations for ReplicaCoordinator {
    fn publish(&self, noted: &[PendingConfirmation]) -> Result<(), String> {
        let wait_ms = CONFIRMATION_WAIT.as_millis() as u64;
        let mut pipe = redis::pipe();
        for vote in noted {
            let key = self.confirm_key(&vote.account);
            let json = serde_json::to_string(vote).map_err(|error| error.to_string())?;
            pipe.cmd("RPUSH").arg(&key).arg(json).ignore();
            pipe.cmd("LTRIM")
                .arg(&key)
                .arg(-MAX_WAITING_PER_ACCOUNT)
                .arg(-1)
                .ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(wait_ms).ignore();
        }
        self.run(|c| pipe.query::<()>(c))
            .map_err(|error| error.to_string())
    }

    fn waiting_for(&self, accounts: &[uuid::Uuid]) -> Result<Vec<PendingConfirmation>, String> {
        let mut pipe = redis::pipe();
        for account in accounts {
            pipe.cmd("LRANGE")
                .arg(self.confirm_key(account))
                .arg(0)
                .arg(-1);
        }
        let lists: Vec<Vec<String>> = self
            .run(|c| pipe.query(c))
            .map_err(|error| error.to_string())?;
        Ok(lists
            .iter()
            .flatten()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect())
    }

    fn forget_all(&self) -> Result<(), String> {
        let pattern = format!("{}:confirm:*", self.prefix);
        self.run(|c| {
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1_000)
                    .query(c)?;
                if !keys.is_empty() {
                    redis::cmd("DEL").arg(keys).query::<()>(c)?;
                }
                if next == 0 {
                    return Ok(());
                }
                cursor = next;
            }
        })
        .map_err(|error| error.to_string())
    }
}

impl canopy_serving::state::ReplicaNotices for ReplicaCoordinator {
    fn voter_erased(&self) -> Result<(), String> {
        self.erased().map_err(|error| error.to_string())
    }
}

/// Counts one sign-in attempt on every key, atomically, on Redis's clock: refused (the
/// longest wait, in ms, and no change) while any key waits; otherwise each key's count is
/// raised and, past its free attempts, its wait begins.
/// KEYS: the ledger keys; ARGV: first delay ms, max delay ms, forget after ms, then each
/// key's free attempts.
const RESERVE_ATTEMPT: &str = "local t = redis.call('TIME') \
     local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
     local wait = 0 \
     for i, key in ipairs(KEYS) do \
       local waits_until = tonumber(redis.call('HGET', key, 'until') or '0') \
       if waits_until - now > wait then wait = waits_until - now end \
     end \
     if wait > 0 then return wait end \
     local first, max, forget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]) \
     for i, key in ipairs(KEYS) do \
       local attempts = redis.call('HINCRBY', key, 'n', 1) \
       local past = attempts - tonumber(ARGV[3 + i]) - 1 \
       local delay = 0 \
       if past >= 0 then delay = math.floor(math.min(first * 2 ^ math.min(past, 40), max)) end \
       redis.call('HSET', key, 'until', now + delay) \
       redis.call('PEXPIRE', key, math.floor(delay + forget)) \
     end \
     return 0";

/// After a success: forgets KEYS[1] (the account) and returns one attempt to KEYS[2] (the
/// address), if it is still counted.
const RELEASE_ATTEMPT: &str = "redis.call('DEL', KEYS[1]) \
     if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then \
       if redis.call('HINCRBY', KEYS[2], 'n', -1) < 0 then redis.call('HSET', KEYS[2], 'n', 0) end \
     end \
     return 0";

/// The sign-in attempt ledger of a cluster: every API replica counts in the same Redis
/// hashes, so guesses spread over replicas wait as if they had hit one.
///
/// ```text
///  <prefix>:signin:account:<hash>   hash  n → attempts, until → ms its wait ends (expires)
///  <prefix>:signin:address:<addr>   the same, per client address (IPv6 per /64)
/// ```
pub struct RedisAttemptLedger {
    client: redis::Client,
    connection: Mutex<Option<redis::Connection>>,
    prefix: String,
}

impl RedisAttemptLedger {
    pub fn connect(url: &str, prefix: &str) -> Result<Self, DataflowError> {
        let client = client(url)?;
        let connection = client
            .get_connection()
            .map_err(|e| first_connection_failed(url, e))?;
        Ok(Self {
            client,
            connection: Mutex::new(Some(connection)),
            prefix: prefix.to_string(),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}:signin:{key}", self.prefix)
    }

    /// Runs `command`, reconnecting on the next call after a failure.
    fn run<T>(
        &self,
        command: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            let connection = self
                .client
                .get_connection_with_timeout(Duration::from_secs(1))
                .map_err(|e| e.to_string())?;
            *slot = Some(connection);
        }
        let connection = slot.as_mut().expect("just connected");
        command(connection).map_err(|error| {
            *slot = None;
            error.to_string()
        })
    }
}

impl canopy_serving::throttle::AttemptLedger for RedisAttemptLedger {
    fn reserve(
        &self,
        keys: &[canopy_serving::throttle::LedgerKey],
        policy: &canopy_serving::throttle::ThrottlePolicy,
    ) -> Result<canopy_serving::throttle::Reservation, String> {
        use canopy_serving::throttle::Reservation;
        let script = redis::Script::new(RESERVE_ATTEMPT);
        let wait_ms: u64 = self.run(|c| {
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(self.key(&key.key));
            }
            invocation
                .arg(policy.first_delay.as_millis() as u64)
                .arg(policy.max_delay.as_millis() as u64)
                .arg(policy.forget_after.as_millis() as u64);
            for key in keys {
                invocation.arg(key.free);
            }
            invocation.invoke(c)
        })?;
        Ok(match wait_ms {
            0 => Reservation::Granted,
            wait_ms => Reservation::Wait(Duration::from_millis(wait_ms)),
        })
    }

    fn release(&self, cleared: &str, returned: Option<&str>) -> Result<(), String> {
        let script = redis::Script::new(RELEASE_ATTEMPT);
        self.run(|c| {
            let mut invocation = script.prepare_invoke();
            invocation.key(self.key(cleared));
            if let Some(returned) = returned {
                invocation.key(self.key(returned));
            }
            invocation.invoke::<i64>(c)
        })
        .map(|_| ())
    }
}

#[cfg(test)]
mod tls_url_tests {
    use super::split_root_cert;

    #[test]
    fn the_ca_parameter_is_taken_out_and_the_rest_kept_as_written() {
        assert_eq!(
            split_root_cert("rediss://:secret@cache:6380/2?sslrootcert=/etc/ca.pem"),
            (
                "rediss://:secret@cache:6380/2".to_string(),
                Some("/etc/ca.pem".to_string())
            )
        );
        assert_eq!(
            split_root_cert("rediss://cache/?protocol=resp3&sslrootcert=ca.pem#insecure"),
            (
                "rediss://cache/?protocol=resp3#insecure".to_string(),
                Some("ca.pem".to_string())
            )
        );
        assert_eq!(
            split_root_cert("redis://127.0.0.1:6379/"),
            ("redis://127.0.0.1:6379/".to_string(), None)
        );
    }
}
