//! What the handlers share: the API's limits, the services a node hands them, and the
//! audit helper. It sits below every handler module and imports none of them.

use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use canopy_analytics::{FinalWindows, LakeQuery};
use canopy_dataflow::{
    Alert, RecordReader, RecordTiles, Scorer, SensorEngine, SensorViewRead, SensorViews,
    TallyEngine, ViewStore,
};
use canopy_ingest::{Gate, SensorLog, VoteLog};
use canopy_schemas::SensorRegistry;
use canopy_schemas::clock::now_micros;

use crate::ServingError;
use crate::auth::{HashingLimits, PasswordHashing, TokenKeys};
use crate::limits::{Rate, RateLimiter};
use crate::receipts::{PendingConfirmations, RecentCasts};
use crate::salts::SaltCache;
use crate::store::MetadataStore;
use crate::throttle::{SecretThrottle, ThrottlePolicy};

/// Limits and timeouts of the API.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub body_limit: usize,
    pub per_user: Rate,
    pub per_address: Rate,
    /// The longest a results read waits for a minimum position.
    pub max_results_wait: Duration,
    pub refresh_ttl_s: u64,
    /// A decision's trends show a (bucket, option) only with at least this many voters.
    pub trend_min_voters: u64,
    /// New accounts from one client address, and from one address block.
    pub registrations_per_address: Rate,
    pub registrations_per_block: Rate,
    /// Invitation codes tried by one account.
    pub claims_per_account: Rate,
    /// Secret checks (password, TOTP, recovery code) per account and address.
    pub signin_throttle: ThrottlePolicy,
    /// Memory and waiting line of password hashing.
    pub password_hashing: HashingLimits,
    /// Results reads waiting for a `min_offset` at once, per user and in all.
    pub max_waits_per_user: usize,
    pub max_waits: usize,
    /// Live push: at most one `vote_count_updated` per decision this often.
    pub push_interval: Duration,
    /// Live push: a `vote_breakdown` per subscribed decision this often.
    pub breakdown_interval: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit: 64 * 1024,
            per_user: Rate {
                per_second: 20.0,
                burst: 40.0,
            },
            per_address: Rate {
                per_second: 2_000.0,
                burst: 4_000.0,
            },
            max_results_wait: Duration::from_secs(5),
            refresh_ttl_s: 30 * 24 * 3600,
            trend_min_voters: 5,
            registrations_per_address: Rate::per_hour(5),
            registrations_per_block: Rate::per_hour(30),
            claims_per_account: Rate::per_hour(10),
            signin_throttle: ThrottlePolicy::default(),
            password_hashing: HashingLimits::default(),
            max_waits_per_user: 4,
            max_waits: 1024,
            push_interval: Duration::from_millis(250),
            breakdown_interval: Duration::from_secs(30),
        }
    }
}

/// Refused tokens from one address reach the audit trail once in this many seconds.
pub const REFUSAL_AUDIT_WINDOW_S: u64 = 60;

impl RateLimiter {
    /// One token per [`REFUSAL_AUDIT_WINDOW_S`] per key.
    pub fn refusal_audits() -> Self {
        Self::new(Rate {
            per_second: 1.0 / REFUSAL_AUDIT_WINDOW_S as f64,
            burst: 1.0,
        })
    }
}

/// Everything a request handler reaches.
pub struct AppState {
    pub store: Arc<dyn MetadataStore>,
    pub keys: Arc<TokenKeys>,
    pub gate: Arc<Gate<dyn VoteLog>>,
    /// The tally engine, in a node that runs one (not in a `canopy serve` replica, whose
    /// results come from the cluster's workers through the view store).
    pub engine: Option<Arc<TallyEngine>>,
    pub views: Arc<dyn ViewStore>,
    pub config: ApiConfig,
    pub user_limits: RateLimiter,
    pub address_limits: RateLimiter,
    /// The casts answered lately, for retries the record has not taken yet.
    pub recent_casts: RecentCasts,
    /// Votes cast here whose voters hear of their checkpoint on `/notifications`.
    pub confirmations: PendingConfirmations,
    /// Traced votes waiting to become visible (their `view.visible` spans).
    pub visibility: Arc<crate::traces::VisibilityTraces>,
    /// Refused tokens written to the audit trail, per client address.
    pub refusal_audits: RateLimiter,
    /// Open registration, per address and per address block.
    pub registration_limits: (RateLimiter, RateLimiter),
    /// Invitation codes tried, per account.
    pub claim_attempts: RateLimiter,
    /// Every secret check, per account and address (shared through Redis in a cluster).
    pub throttle: SecretThrottle,
    /// Argon2, bounded in memory and waiting.
    pub passwords: PasswordHashing,
    /// Results reads parked on a `min_offset`, per user.
    pub parked_waits: ParkedWaits,
    /// False until start-up finished and again once shutdown began.
    pub ready: AtomicBool,
    /// Every decision's Merkle log: the engine's trees in memory, or (in a `canopy serve`
    /// replica) the record store's tiles.
    pub record: Option<Arc<dyn RecordReader>>,
    /// The record store's tiles and checkpoints as stored, served under the C2SP
    /// tlog-tiles paths.
    pub record_tiles: Option<Arc<dyn RecordTiles>>,
    /// The record key's verifier (`<name>+<hash>+<key>`), for auditors.
    pub record_key: String,
    pub record_origin: String,
    pub salts: SaltCache,
    pub data_dir: std::path::PathBuf,
    /// In a cluster: the other replicas (shared rate limits, erasure notices).
    pub replicas: Option<Arc<dyn ReplicaNotices>>,
    /// Sensor ingest, features and alerts: in a node that runs the engine, and in a cluster's
    /// API replicas (features from Redis).
    pub sensors: Option<Arc<SensorService>>,
    /// SQL over the analytics lake, in a node that keeps one.
    pub analytics: Option<Arc<AnalyticsService>>,
    /// The analysis agents and the consensus prediction model.
    pub agents: Option<Arc<canopy_agents::AgentService>>,
}

/// The state every handler is given.
pub type SharedState = Arc<AppState>;

impl AppState {
    /// Audits an action of a user, named by their pseudonym: the append-only trail never
    /// holds a person's id or name, and erasing the pseudonym's mapping unlinks them.
    pub(crate) async fn audit_as_user(
        &self,
        user: uuid::Uuid,
        action: &str,
        detail: serde_json::Value,
    ) {
        match self.store.user_pseudonym(user).await {
            Ok(pseudonym) => self.audit(&pseudonym, action, detail).await,
            Err(error) => tracing::error!(%error, action, "could not write the audit trail"),
        }
    }

    pub(crate) async fn audit(&self, actor: &str, action: &str, detail: serde_json::Value) {
        if let Err(error) = self
            .store
            .append_audit(actor, action, &detail.to_string(), now_micros())
            .await
        {
            tracing::error!(%error, action, "could not write the audit trail");
        }
    }
}

/// What the API replicas of a cluster tell each other (a node wires Redis behind it).
pub trait ReplicaNotices: Send + Sync {
    /// Tells the other replicas that a voter's salt was erased, so they drop cached salts.
    /// Blocking: call it off the async threads.
    fn voter_erased(&self) -> Result<(), String>;
}

/// What a node that takes sensor data holds.
pub struct SensorService {
    pub log: Arc<dyn SensorLog>,
    pub registry: RwLock<SensorRegistry>,
    /// Where features are read: the in-process views, or Redis on a cluster's replica.
    pub views: Arc<dyn SensorViewRead>,
    /// The in-process views, in a node that runs the features dataflow itself.
    pub local_views: Option<Arc<SensorViews>>,
    pub engine: Option<SensorEngine>,
    pub scorer: Option<Scorer>,
    /// Why there is no scorer (no ONNX Runtime library, a model that does not load).
    pub scorer_unavailable: Option<String>,
    pub alerts: tokio::sync::broadcast::Sender<Alert>,
    /// Set when the node shuts down: alert streams end, so their connections let the
    /// server's graceful shutdown finish.
    pub closing: tokio::sync::watch::Sender<bool>,
    /// The final windows the analytics lake has yet to take (with a lake).
    pub final_windows: Option<Arc<FinalWindows>>,
}

impl std::fmt::Debug for SensorService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SensorService").finish_non_exhaustive()
    }
}

/// Results reads parked until the views include a position: each is a task and a timer,
/// no thread, but a user may park only a few and all users together a bounded number.
#[derive(Debug, Default)]
pub struct ParkedWaits {
    parked: std::sync::Mutex<WaitCounts>,
}

/// Waits parked in all, and per user.
type WaitCounts = (usize, std::collections::HashMap<uuid::Uuid, usize>);

/// A parked wait; dropping it frees its place.
#[derive(Debug)]
pub struct ParkedWait<'a> {
    waits: &'a ParkedWaits,
    user: uuid::Uuid,
}

impl ParkedWaits {
    fn lock(&self) -> std::sync::MutexGuard<'_, WaitCounts> {
        self.parked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for one more wait of `user`, or `too_many_waits`.
    pub fn park(
        &self,
        user: uuid::Uuid,
        per_user: usize,
        in_all: usize,
    ) -> Result<ParkedWait<'_>, ServingError> {
        let mut parked = self.lock();
        let (total, by_user) = &mut *parked;
        let mine = by_user.entry(user).or_insert(0);
        if *mine >= per_user || *total >= in_all {
            if *mine == 0 {
                by_user.remove(&user);
            }
            return Err(ServingError::TooManyWaits { retry_after_s: 1 });
        }
        *mine += 1;
        *total += 1;
        Ok(ParkedWait { waits: self, user })
    }

    /// Waits parked now, in all.
    pub fn parked(&self) -> usize {
        self.lock().0
    }
}

impl Drop for ParkedWait<'_> {
    fn drop(&mut self) {
        let mut parked = self.waits.lock();
        let (total, by_user) = &mut *parked;
        *total = total.saturating_sub(1);
        if let Some(mine) = by_user.get_mut(&self.user) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                by_user.remove(&self.user);
            }
        }
    }
}

/// What a node that keeps a lake holds for its readers.
#[derive(Debug)]
pub struct AnalyticsService {
    pub sql: Arc<dyn LakeQuery>,
    /// Queries running at once.
    pub running: Arc<tokio::sync::Semaphore>,
    /// Where imported external data is written (`POST /api/v1/data/import`).
    pub imports: Option<canopy_analytics::LakeConfig>,
    /// One import at a time: each takes the table's next file number.
    pub importing: tokio::sync::Mutex<()>,
}

impl AnalyticsService {
    pub fn new(sql: Arc<dyn LakeQuery>, concurrent: usize) -> Self {
        Self {
            sql,
            running: Arc::new(tokio::sync::Semaphore::new(concurrent.max(1))),
            imports: None,
            importing: tokio::sync::Mutex::new(()),
        }
    }

    /// Takes imports of external data into the lake `config` names.
    pub fn with_imports(mut self, config: canopy_analytics::LakeConfig) -> Self {
        self.imports = Some(config);
        self
    }
}
