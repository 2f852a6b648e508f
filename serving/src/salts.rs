//! Voters' secrets: the salts behind the commitments that stand in for voters in the
//! record, and the keys that seal each account's id in the vote log (crypto-shredding:
//! erasing the key leaves the sealed id unreadable forever).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use canopy_schemas::clock::now_micros;
use canopy_schemas::{SEALED_VOTER_LEN, SealedVoter};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use uuid::Uuid;

use crate::ServingError;
use crate::store::MetadataStore;

/// What the seal binds the voter's id to, so a sealed id is read back only as one.
const SEAL_CONTEXT: &[u8] = b"canopy/sealed-voter/v1";
const NONCE_LEN: usize = 24;

/// Seals `voter` under `key` with a fresh random nonce: nonce ‖ ciphertext ‖ tag.
pub fn seal_voter(key: &[u8; 32], voter: Uuid) -> SealedVoter {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let cipher = XChaCha20Poly1305::new(key.into());
    let payload = Payload {
        msg: voter.as_bytes(),
        aad: SEAL_CONTEXT,
    };
    let sealed = cipher
        .encrypt(&XNonce::from(nonce), payload)
        .expect("a 16-byte message always seals");
    let mut out = [0u8; SEALED_VOTER_LEN];
    out[..NONCE_LEN].copy_from_slice(&nonce);
    out[NONCE_LEN..].copy_from_slice(&sealed);
    SealedVoter(out)
}

/// The voter sealed in `sealed`, if `key` sealed it.
pub fn open_sealed_voter(key: &[u8; 32], sealed: &SealedVoter) -> Option<Uuid> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce: [u8; NONCE_LEN] = sealed.0[..NONCE_LEN].try_into().ok()?;
    let payload = Payload {
        msg: &sealed.0[NONCE_LEN..],
        aad: SEAL_CONTEXT,
    };
    let voter = cipher.decrypt(&XNonce::from(nonce), payload).ok()?;
    Uuid::from_slice(&voter).ok()
}

/// Voters' salts and accounts' sealing keys, read through from the metadata store. A vote
/// costs no database read once both are cached.
pub struct SaltCache {
    salts: Mutex<HashMap<Uuid, [u8; 32]>>,
    keys: Mutex<HashMap<Uuid, [u8; 32]>>,
}

const SALT_CACHE_LIMIT: usize = 1_000_000;

impl Default for SaltCache {
    fn default() -> Self {
        Self {
            salts: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
        }
    }
}

/// Caches `value` under `id`, starting over when the map is full.
fn remember(map: &Mutex<HashMap<Uuid, [u8; 32]>>, id: Uuid, value: [u8; 32]) {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    if map.len() >= SALT_CACHE_LIMIT {
        map.clear();
    }
    map.insert(id, value);
}

fn cached(map: &Mutex<HashMap<Uuid, [u8; 32]>>, id: Uuid) -> Option<[u8; 32]> {
    let found = map
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&id)
        .copied();
    let result = if found.is_some() { "hit" } else { "miss" };
    metrics::counter!("canopy_cache_lookups_total", "cache" => "salts", "result" => result)
        .increment(1);
    found
}

/// Secrets read per query while loading.
const LOAD_PAGE: u32 = 10_000;

/// What [`SaltCache::load`] read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadedSecrets {
    pub salts: usize,
    pub keys: usize,
}

impl SaltCache {
    /// A cache holding every stored salt and sealing key (up to its limit, the rest read
    /// through as before): after a restart, voters' first votes find theirs here instead
    /// of queueing for the store behind its batch writers.
    pub async fn load(store: &dyn MetadataStore) -> Result<(Self, LoadedSecrets), ServingError> {
        let mut read = [HashMap::new(), HashMap::new()];
        for (keys, map) in [false, true].into_iter().zip(read.iter_mut()) {
            let mut after = None;
            while map.len() < SALT_CACHE_LIMIT {
                let page = store.voter_secrets_after(keys, after, LOAD_PAGE).await?;
                let full = page.len() == LOAD_PAGE as usize;
                after = page.last().map(|(id, _)| *id);
                map.extend(page);
                if !full {
                    break;
                }
            }
        }
        let [salts, keys] = read;
        let loaded = LoadedSecrets {
            salts: salts.len(),
            keys: keys.len(),
        };
        let cache = Self {
            salts: Mutex::new(salts),
            keys: Mutex::new(keys),
        };
        Ok((cache, loaded))
    }

    /// The salt of a ballot's subject (an account, or a roll entry).
    pub async fn salt(
        &self,
        store: &dyn MetadataStore,
        subject: Uuid,
    ) -> Result<[u8; 32], ServingError> {
        if let Some(salt) = cached(&self.salts, subject) {
            return Ok(salt);
        }
        let salt = store.voter_salt(subject, now_micros()).await?;
        remember(&self.salts, subject, salt);
        Ok(salt)
    }

    /// The account's sealing key; refused `account_erased` once the account is gone.
    pub async fn key(
        &self,
        store: &dyn MetadataStore,
        account: Uuid,
    ) -> Result<[u8; 32], ServingError> {
        if let Some(key) = cached(&self.keys, account) {
            return Ok(key);
        }
        let key = store
            .voter_key(account, now_micros())
            .await?
            .ok_or(ServingError::AccountErased)?;
        remember(&self.keys, account, key);
        Ok(key)
    }

    /// Drops every cached salt and key (this or another replica erased a voter; the
    /// voter's roll entries' salts go with them).
    pub fn forget_all(&self) {
        self.salts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_voter_opens_only_under_its_key_and_never_shows_the_id() {
        let (key, other) = (rand::random::<[u8; 32]>(), rand::random::<[u8; 32]>());
        let voter = Uuid::new_v4();
        let sealed = seal_voter(&key, voter);
        assert_eq!(open_sealed_voter(&key, &sealed), Some(voter));
        assert_eq!(open_sealed_voter(&other, &sealed), None);
        assert!(!sealed.0.windows(16).any(|w| w == voter.as_bytes()));
        assert_ne!(seal_voter(&key, voter), sealed, "a fresh nonce each time");
        let mut tampered = sealed;
        tampered.0[30] ^= 1;
        assert_eq!(open_sealed_voter(&key, &tampered), None);
    }
}
