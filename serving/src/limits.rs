//! Token-bucket rate limits, per user and per client address.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// A rate: `per_second` tokens added each second, up to `burst`.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    /// `count` an hour, all of them at once at most.
    pub fn per_hour(count: u32) -> Self {
        Self {
            per_second: f64::from(count) / 3600.0,
            burst: f64::from(count),
        }
    }
}

/// The block an address belongs to: its IPv4 /24 or IPv6 /48, what one holder of
/// addresses usually has to rotate through.
pub fn address_block(address: std::net::IpAddr) -> String {
    match address {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

/// Buckets keyed by a string (a user id or an address). Idle buckets are dropped once the
/// map grows large, so a flood of distinct keys cannot grow it without bound.
///
/// Among `replicas` API replicas each enforces `1/replicas` of the rate and burst, so a
/// user's requests spread over all of them never get more than the configured rate in all
/// (and a user a load balancer keeps on one replica gets less, never more). The live
/// replica count comes from Redis (see `redis_views::ReplicaCoordinator`).
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    replicas: AtomicU32,
}

const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: Mutex::new(HashMap::new()),
            replicas: AtomicU32::new(1),
        }
    }

    /// Shares the rate among this many live replicas (at least 1).
    pub fn share_among(&self, replicas: u32) {
        self.replicas.store(replicas.max(1), Ordering::Relaxed);
    }

    /// This replica's part of the rate.
    fn local_rate(&self) -> Rate {
        let replicas = f64::from(self.replicas.load(Ordering::Relaxed));
        Rate {
            per_second: self.rate.per_second / replicas,
            burst: (self.rate.burst / replicas).max(1.0),
        }
    }

    /// Takes one token for `key`; on refusal, the whole seconds until one is available.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let now = Instant::now();
        let rate = self.local_rate();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate.per_second < rate.burst
            });
        }
        let (tokens, at) = buckets.entry(key.to_string()).or_insert((rate.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * rate.per_second).min(rate.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - *tokens) / rate.per_second;
        Err(wait.ceil().max(1.0) as u64)
    }
}
