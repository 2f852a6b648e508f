//! Voter salts for the commitments that stand in for voters in the record.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use canopy_schemas::clock::now_micros;
use uuid::Uuid;

use crate::ServingError;
use crate::store::MetadataStore;

/// Voter salts, read through from the metadata store. A vote costs no database read once
/// its voter's salt is cached.
pub struct SaltCache {
    salts: Mutex<HashMap<Uuid, [u8; 32]>>,
}

const SALT_CACHE_LIMIT: usize = 1_000_000;

impl Default for SaltCache {
    fn default() -> Self {
        Self {
            salts: Mutex::new(HashMap::new()),
        }
    }
}

impl SaltCache {
    pub async fn salt(
        &self,
        store: &dyn MetadataStore,
        voter: Uuid,
    ) -> Result<[u8; 32], ServingError> {
        if let Some(salt) = self.lock().get(&voter) {
            return Ok(*salt);
        }
        let salt = store.voter_salt(voter, now_micros()).await?;
        let mut salts = self.lock();
        if salts.len() >= SALT_CACHE_LIMIT {
            salts.clear();
        }
        salts.insert(voter, salt);
        Ok(salt)
    }

    /// Drops the voter's salt from the cache (after an erasure).
    pub fn forget(&self, voter: Uuid) {
        self.lock().remove(&voter);
    }

    /// Drops every cached salt (another replica erased a voter).
    pub fn forget_all(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, [u8; 32]>> {
        self.salts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
