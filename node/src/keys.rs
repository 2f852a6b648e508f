//! The node's 32-byte keys, each a file of its own under `<data>/keys/` (or where the
//! configuration puts it), 0600, generated on first start: the record key's seed, the Kafka
//! log's signing key, the audit key and the secrets key. The last two are the metadata
//! store's, kept outside the database so that write access to it is not enough to rewrite
//! the audit trail or read TOTP secrets.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use canopy_serving::store_keys::{AuditKey, SecretsKey, StoreKeys};

use crate::NodeError;
use crate::error::blocking;

/// The audit key's file under the data directory, unless configured elsewhere.
pub const AUDIT_KEY_FILE: &str = "audit-hmac.key";
/// The secrets key's file under the data directory, unless configured elsewhere.
pub const SECRETS_KEY_FILE: &str = "secrets.key";

/// The Kafka log's signing key's file under `<data>/keys/`: the same file on every process
/// of a cluster, as the record key's seed must be.
pub const LOG_KEY_FILE: &str = "log-hmac.key";

/// The key every record Canopy appends to a Kafka topic is signed with, and reads check:
/// `<data_dir>/keys/log-hmac.key`, made on first start (the data directory made private
/// first, as a node makes it).
pub fn load_log_key(data_dir: &Path) -> Result<canopy_ingest::LogKey, NodeError> {
    crate::data_dir::make_private(data_dir)?;
    let key = load_or_generate_key(&data_dir.join("keys").join(LOG_KEY_FILE))?;
    Ok(canopy_ingest::LogKey::from_bytes(key))
}

/// Reads the 32-byte key at `path`, or makes one there (0600) if there is none. Processes
/// starting together over one shared file agree: only one creates it, the others read it.
/// The key is written whole to a file of this process's own and then linked into place, so
/// no reader ever finds the file made but its key not yet written.
pub fn load_or_generate_key(path: &Path) -> Result<[u8; 32], NodeError> {
    let failed = |what: &str, path: &Path, e: std::io::Error| {
        NodeError::Internal(format!("{what} {}: {e}", path.display()))
    };
    match std::fs::read(path) {
        Ok(bytes) => return key_bytes(path, bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed("reading", path, e)),
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| failed("creating", dir, e))?;
    let key: [u8; 32] = rand::random();
    let staged = dir.join(format!(
        ".{}.{}-{:016x}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("key"),
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .and_then(|mut file| file.write_all(&key).and_then(|()| file.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&staged);
        return Err(failed("writing", &staged, e));
    }
    let linked = std::fs::hard_link(&staged, path);
    let _ = std::fs::remove_file(&staged);
    match linked {
        Ok(()) => {
            // The new name must survive a crash as the key does.
            if let Ok(dir_file) = std::fs::File::open(dir) {
                let _ = dir_file.sync_all();
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let bytes = std::fs::read(path).map_err(|e| failed("reading", path, e))?;
            key_bytes(path, bytes)
        }
        Err(e) => Err(failed("creating", path, e)),
    }
}

fn key_bytes(path: &Path, bytes: Vec<u8>) -> Result<[u8; 32], NodeError> {
    bytes
        .try_into()
        .map_err(|_| NodeError::Internal(format!("{} is not a 32-byte key", path.display())))
}

/// Where the store's keys are: each configured path, or its file under `<data>/keys/`.
#[derive(Clone, Debug)]
pub struct StoreKeyPaths {
    pub audit: PathBuf,
    pub secrets: PathBuf,
}

impl StoreKeyPaths {
    pub fn new(data_dir: &Path, audit: Option<&Path>, secrets: Option<&Path>) -> Self {
        let keys = data_dir.join("keys");
        Self {
            audit: audit.map_or_else(|| keys.join(AUDIT_KEY_FILE), Path::to_path_buf),
            secrets: secrets.map_or_else(|| keys.join(SECRETS_KEY_FILE), Path::to_path_buf),
        }
    }

    /// Loads both keys, generating those missing.
    pub async fn load(&self) -> Result<StoreKeys, NodeError> {
        let paths = self.clone();
        blocking(move || {
            Ok::<_, NodeError>(StoreKeys {
                audit: Some(AuditKey::from_bytes(load_or_generate_key(&paths.audit)?)),
                secrets: Some(SecretsKey::from_bytes(load_or_generate_key(
                    &paths.secrets,
                )?)),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Processes of a cluster start together over one data directory: every one of them
    /// must come away with the same whole key, never a half-written file.
    #[test]
    fn keys_made_at_once_by_many_agree() {
        for round in 0..40 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("keys").join(format!("k{round}.key"));
            let keys: Vec<[u8; 32]> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..8)
                    .map(|_| scope.spawn(|| load_or_generate_key(&path).unwrap()))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(
                keys.iter().all(|k| *k == keys[0]),
                "round {round}: {keys:?}"
            );
            assert_eq!(std::fs::read(&path).unwrap(), keys[0]);
            let mode = std::fs::metadata(&path).unwrap().permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o600
            );
            let leftovers = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
            assert_eq!(leftovers, 1, "round {round}: staged files left behind");
        }
    }
}
