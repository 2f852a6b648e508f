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
pub fn load_or_generate_key(path: &Path) -> Result<[u8; 32], NodeError> {
    match std::fs::read(path) {
        Ok(bytes) => return key_bytes(path, bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(NodeError::Internal(format!(
                "reading {}: {e}",
                path.display()
            )));
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| NodeError::Internal(format!("creating {}: {e}", dir.display())))?;
    }
    let key: [u8; 32] = rand::random();
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    let mut file = match created {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let bytes = std::fs::read(path)
                .map_err(|e| NodeError::Internal(format!("reading {}: {e}", path.display())))?;
            return key_bytes(path, bytes);
        }
        Err(e) => {
            return Err(NodeError::Internal(format!(
                "creating {}: {e}",
                path.display()
            )));
        }
    };
    file.write_all(&key)
        .and_then(|()| file.sync_all())
        .map_err(|e| NodeError::Internal(format!("writing {}: {e}", path.display())))?;
    Ok(key)
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
