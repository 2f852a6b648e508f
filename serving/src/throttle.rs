//! Throttling of every secret check: a password, a TOTP code, a recovery code (and, through
//! the same API, the PostgreSQL port's sign-in). Attempts are counted per account and per
//! client address; past a free allowance each attempt makes the next one wait twice as long
//! as the one before, up to a cap.
//!
//! ```text
//!  SecretThrottle::begin(account, address) ──▶ AttemptLedger::reserve   (one atomic step)
//!     │  a key is waiting → Err(Retry): 429 too_many_attempts, Retry-After;
//!     │                     nothing is verified and nothing is counted
//!     ▼  Ok(Attempt): the attempt is counted on both keys before any secret is checked
//!  verify every secret of the sign-in together
//!     ├─ all right → Attempt::succeeded: the account's count is cleared and the address
//!     │              gets its attempt back
//!     └─ any wrong → Attempt::failed: the attempt stays counted
//! ```
//!
//! An attempt is counted before it is checked, not after it failed: a flood of concurrent
//! guesses would otherwise all pass the check before the first failure was written. While a
//! key waits, even the right secret is refused, so a guess loop learns nothing.
//!
//! The ledger is in process memory ([`InMemoryLedger`]) on one node; a cluster shares one in
//! Redis (`node/src/redis.rs`), so replicas count together. If the shared ledger cannot be
//! reached, each replica falls back to its own in-process ledger: throttling weakens to
//! per replica, it is never switched off.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::ServingError;

/// How many attempts are free and how long the wait grows after them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Attempts on one account that never wait.
    pub account_free_attempts: u32,
    /// Attempts from one client address (an IPv4 address, an IPv6 /64) that never wait:
    /// more than an account's, since many people can share an address.
    pub address_free_attempts: u32,
    /// The wait after the first attempt past the free ones; each further attempt doubles it.
    pub first_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
    /// A key's count is forgotten this long after its last attempt (or the end of its wait).
    pub forget_after: Duration,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        Self {
            account_free_attempts: 5,
            address_free_attempts: 20,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(24 * 3600),
        }
    }
}

impl ThrottlePolicy {
    /// The wait that attempt number `attempt` (1-based) imposes on the next one, for a key
    /// with `free` free attempts.
    pub fn delay_after(&self, attempt: u32, free: u32) -> Duration {
        let Some(past) = attempt.checked_sub(free + 1) else {
            return Duration::ZERO;
        };
        let doubled = self
            .first_delay
            .checked_mul(1u32 << past.min(30))
            .unwrap_or(self.max_delay);
        doubled.min(self.max_delay)
    }
}

/// One key of the ledger and its free attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerKey {
    pub key: String,
    pub free: u32,
}

/// What a reservation found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// The attempt is counted on every key.
    Granted,
    /// A key waits this long still; nothing was counted.
    Wait(Duration),
}

/// Where attempts are counted. Calls may block (a network round trip): the throttle makes
/// them off the async threads.
pub trait AttemptLedger: Send + Sync {
    /// In one atomic step: if any key still waits, `Wait` with the longest wait and no
    /// change; otherwise counts one attempt on every key and, for a key past its free
    /// attempts, starts its wait ([`ThrottlePolicy::delay_after`]).
    fn reserve(&self, keys: &[LedgerKey], policy: &ThrottlePolicy) -> Result<Reservation, String>;
    /// After a success: forgets `cleared` (the account) and gives `returned` (the address)
    /// its attempt back.
    fn release(&self, cleared: &str, returned: Option<&str>) -> Result<(), String>;
}

/// A key's attempts in process memory.
#[derive(Clone, Copy, Debug)]
struct Entry {
    attempts: u32,
    waits_until: Instant,
    forget_at: Instant,
}

/// The ledger of one process. Bounded: expired keys are dropped once it is full, and if it
/// is still full a new key is refused (with a short wait) rather than an old one forgotten,
/// since forgetting would hand a guesser fresh free attempts.
#[derive(Debug, Default)]
pub struct InMemoryLedger {
    entries: Mutex<HashMap<String, Entry>>,
}

const MAX_LEDGER_KEYS: usize = 200_000;

impl AttemptLedger for InMemoryLedger {
    fn reserve(&self, keys: &[LedgerKey], policy: &ThrottlePolicy) -> Result<Reservation, String> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let new_keys = keys
            .iter()
            .filter(|k| !entries.contains_key(&k.key))
            .count();
        if entries.len() + new_keys > MAX_LEDGER_KEYS {
            entries.retain(|_, entry| entry.forget_at > now);
            if entries.len() + new_keys > MAX_LEDGER_KEYS {
                tracing::warn!("the sign-in ledger is full; refusing attempts on new keys");
                return Ok(Reservation::Wait(Duration::from_secs(1)));
            }
        }
        let live = |entries: &HashMap<String, Entry>, key: &str| {
            entries
                .get(key)
                .filter(|entry| entry.forget_at > now)
                .copied()
        };
        let wait = keys
            .iter()
            .filter_map(|k| live(&entries, &k.key))
            .map(|entry| entry.waits_until.saturating_duration_since(now))
            .max()
            .unwrap_or(Duration::ZERO);
        if !wait.is_zero() {
            return Ok(Reservation::Wait(wait));
        }
        for key in keys {
            let attempts = live(&entries, &key.key).map_or(0, |entry| entry.attempts) + 1;
            let delay = policy.delay_after(attempts, key.free);
            entries.insert(
                key.key.clone(),
                Entry {
                    attempts,
                    waits_until: now + delay,
                    forget_at: now + delay + policy.forget_after,
                },
            );
        }
        Ok(Reservation::Granted)
    }

    fn release(&self, cleared: &str, returned: Option<&str>) -> Result<(), String> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.remove(cleared);
        if let Some(entry) = returned.and_then(|key| entries.get_mut(key)) {
            entry.attempts = entry.attempts.saturating_sub(1);
        }
        Ok(())
    }
}

/// A refusal: try again after this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    pub after: Duration,
}

impl Retry {
    /// Whole seconds, at least one (what `Retry-After` carries).
    pub fn seconds(self) -> u64 {
        self.after.as_secs() + u64::from(self.after.subsec_nanos() > 0)
    }
}

impl From<Retry> for ServingError {
    fn from(retry: Retry) -> Self {
        ServingError::TooManyAttempts {
            retry_after_s: retry.seconds().max(1),
        }
    }
}

/// The ledger key of an account: a hash of its normalised name, so that every spelling of
/// a name counts together and the shared ledger holds no usernames.
pub fn account_key(normalised_username: &str) -> String {
    let digest = Sha256::digest(normalised_username.as_bytes());
    format!("account:{}", hex::encode(&digest[..16]))
}

/// The ledger key of a client address: the IPv4 address, or the IPv6 /64 (what one
/// subscriber is usually given, and can rotate through).
pub fn address_key(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => format!("address:{v4}"),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("address:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// Counts secret checks and refuses them while their account or address waits.
pub struct SecretThrottle {
    policy: ThrottlePolicy,
    ledger: Arc<dyn AttemptLedger>,
    /// Used while `ledger` (a shared one) cannot be reached.
    fallback: Arc<InMemoryLedger>,
}

impl std::fmt::Debug for SecretThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretThrottle")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl SecretThrottle {
    pub fn new(policy: ThrottlePolicy, ledger: Arc<dyn AttemptLedger>) -> Self {
        Self {
            policy,
            ledger,
            fallback: Arc::new(InMemoryLedger::default()),
        }
    }

    /// A throttle counting in this process only (a single node).
    pub fn in_process(policy: ThrottlePolicy) -> Self {
        Self::new(policy, Arc::new(InMemoryLedger::default()))
    }

    pub fn policy(&self) -> &ThrottlePolicy {
        &self.policy
    }

    /// Counts an attempt on `account` (its normalised username) from `address`, before any
    /// secret is checked; refused while either waits. Resolve the answer with
    /// [`Attempt::succeeded`] or [`Attempt::failed`].
    pub async fn begin(&self, account: &str, address: Option<IpAddr>) -> Result<Attempt, Retry> {
        let mut keys = vec![LedgerKey {
            key: account_key(account),
            free: self.policy.account_free_attempts,
        }];
        if let Some(address) = address {
            keys.push(LedgerKey {
                key: address_key(address),
                free: self.policy.address_free_attempts,
            });
        }
        let (ledger, fallback, policy) = (
            Arc::clone(&self.ledger),
            Arc::clone(&self.fallback),
            self.policy,
        );
        let reserve_keys = keys.clone();
        let reserved = tokio::task::spawn_blocking(move || {
            match ledger.reserve(&reserve_keys, &policy) {
                Ok(reservation) => (reservation, ledger),
                Err(error) => {
                    tracing::warn!(%error, "the shared sign-in ledger is unreachable; counting in this process");
                    let reservation = fallback
                        .reserve(&reserve_keys, &policy)
                        .unwrap_or(Reservation::Wait(Duration::from_secs(1)));
                    (reservation, fallback as Arc<dyn AttemptLedger>)
                }
            }
        })
        .await;
        let (reservation, ledger) = match reserved {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(%error, "the sign-in ledger task failed");
                return Err(Retry {
                    after: Duration::from_secs(1),
                });
            }
        };
        match reservation {
            Reservation::Granted => Ok(Attempt { keys, ledger }),
            Reservation::Wait(after) => Err(Retry { after }),
        }
    }
}

/// A counted attempt, to be resolved once every secret of it was checked. Dropped
/// unresolved, it stays counted, as a failure.
#[must_use = "resolve the attempt with succeeded() or failed()"]
pub struct Attempt {
    keys: Vec<LedgerKey>,
    ledger: Arc<dyn AttemptLedger>,
}

impl Attempt {
    /// Every secret was right: the account starts afresh and the address gets its attempt
    /// back, so people sharing an address do not use up each other's allowance by signing in.
    pub async fn succeeded(self) {
        let Self { keys, ledger } = self;
        let cleared = keys[0].key.clone();
        let returned = keys.get(1).map(|k| k.key.clone());
        let released =
            tokio::task::spawn_blocking(move || ledger.release(&cleared, returned.as_deref()))
                .await;
        if !matches!(released, Ok(Ok(()))) {
            tracing::warn!("could not clear a successful sign-in's attempts");
        }
    }

    /// A secret was wrong: the attempt stays counted.
    pub fn failed(self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy {
            account_free_attempts: 2,
            address_free_attempts: 3,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            forget_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_wait_doubles_past_the_free_attempts_up_to_the_cap() {
        let policy = policy();
        let waits: Vec<u128> = (1..=7)
            .map(|n| policy.delay_after(n, 2).as_millis())
            .collect();
        assert_eq!(waits, [0, 0, 100, 200, 400, 400, 400]);
        assert_eq!(
            ThrottlePolicy::default().delay_after(u32::MAX, 5),
            Duration::from_secs(900)
        );
    }

    #[test]
    fn a_waiting_key_refuses_and_counts_nothing() {
        let ledger = InMemoryLedger::default();
        let keys = [LedgerKey {
            key: "account:a".into(),
            free: 2,
        }];
        for _ in 0..3 {
            assert_eq!(ledger.reserve(&keys, &policy()), Ok(Reservation::Granted));
        }
        let Ok(Reservation::Wait(wait)) = ledger.reserve(&keys, &policy()) else {
            panic!("the fourth attempt did not wait");
        };
        assert!(wait <= Duration::from_millis(100));
        // Refused attempts did not lengthen the wait.
        for _ in 0..10 {
            assert!(matches!(
                ledger.reserve(&keys, &policy()),
                Ok(Reservation::Wait(_))
            ));
        }
        std::thread::sleep(wait);
        assert_eq!(ledger.reserve(&keys, &policy()), Ok(Reservation::Granted));
    }

    #[test]
    fn a_success_clears_the_account_and_returns_the_address_attempt() {
        let ledger = InMemoryLedger::default();
        let keys = |account: &str| {
            [
                LedgerKey {
                    key: account.into(),
                    free: 2,
                },
                LedgerKey {
                    key: "address:x".into(),
                    free: 3,
                },
            ]
        };
        // Ten people behind one address sign in one after the other: nobody waits.
        for person in 0..10 {
            let account = format!("account:{person}");
            assert_eq!(
                ledger.reserve(&keys(&account), &policy()),
                Ok(Reservation::Granted)
            );
            ledger.release(&account, Some("address:x")).unwrap();
        }
        // A waiting address refuses every account behind it.
        for person in 0..4 {
            let _ = ledger.reserve(&keys(&format!("account:guess{person}")), &policy());
        }
        assert!(matches!(
            ledger.reserve(&keys("account:other"), &policy()),
            Ok(Reservation::Wait(_))
        ));
    }

    #[test]
    fn ipv6_addresses_count_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
    }
}
