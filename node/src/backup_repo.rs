//! Where backups live, and how they are sealed: a folder or an S3-compatible bucket
//! prefix of age-encrypted objects.
//!
//! ```text
//!  chains/<chain>/recipient        the chain's age X25519 recipient (public)
//!  chains/<chain>/key.age          the chain's identity and chunk key, sealed to the
//!                                  operator's recipients or passphrase
//!  chunks/<id[..2]>/<id>           ≤ 4 MiB of a file, sealed to the chain's recipient;
//!                                  id = HMAC-SHA256(chunk key, plaintext)
//!  backups/<id>.manifest           the backup's manifest, sealed to the chain's recipient
//!  backups/<id>.json               its plaintext summary, written last: a backup without
//!                                  one is unfinished and never restored
//! ```
//!
//! A chain is a full backup and the incremental ones after it: each chunk is sealed once
//! per chain, so an incremental backup writes only what changed. Sealing chunks to a key
//! of the chain's own means the scheduled writer needs no secret of the operator's, and a
//! passphrase costs one scrypt per chain, not one per chunk; chunk ids are keyed so the
//! bucket's names say nothing about the contents.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use age::secrecy::{ExposeSecret, SecretString};
use hmac::{Hmac, Mac};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::NodeError;

/// The size a file is cut into: large enough that a log segment is a few objects, small
/// enough that an appended segment re-seals little.
pub const CHUNK_BYTES: usize = 4 << 20;

pub(crate) fn backup_error(what: impl std::fmt::Display) -> NodeError {
    NodeError::Backup(what.to_string())
}

/// A folder, or `s3://bucket/prefix` configured from the `AWS_*` variables.
pub struct Repository {
    backend: Backend,
}

enum Backend {
    Folder(PathBuf),
    Bucket {
        url: String,
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
    },
}

impl std::fmt::Display for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Folder(path) => write!(f, "{}", path.display()),
            Backend::Bucket { url, .. } => write!(f, "{url}"),
        }
    }
}

impl Repository {
    pub fn open(location: &str) -> Result<Self, NodeError> {
        let Some((scheme, rest)) = location.split_once("://") else {
            return Ok(Self {
                backend: Backend::Folder(PathBuf::from(location)),
            });
        };
        if scheme != "s3" {
            return Err(backup_error(format!(
                "{location}: backups go to a folder or s3://bucket/prefix, not {scheme}://"
            )));
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(backup_error(format!("{location}: no bucket")));
        }
        let prefix = ObjectPath::parse(prefix.trim_matches('/'))
            .map_err(|e| backup_error(format!("{location}: {e}")))?;
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| backup_error(format!("{location}: {e}")))?;
        Ok(Self {
            backend: Backend::Bucket {
                url: format!("s3://{bucket}/{prefix}"),
                store: Arc::new(store),
                prefix,
            },
        })
    }

    fn object(prefix: &ObjectPath, key: &str) -> ObjectPath {
        let mut path = prefix.clone();
        for part in key.split('/') {
            path = path.join(part);
        }
        path
    }

    /// Writes `bytes` under `key` whole or not at all.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), NodeError> {
        match &self.backend {
            Backend::Folder(root) => {
                let path = root.join(key);
                tokio::task::spawn_blocking(move || write_file_durably(&path, &bytes))
                    .await
                    .map_err(backup_error)?
            }
            Backend::Bucket { store, prefix, url } => store
                .put(&Self::object(prefix, key), PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|e| backup_error(format!("{url}/{key}: {e}"))),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, NodeError> {
        match &self.backend {
            Backend::Folder(root) => {
                let path = root.join(key);
                match tokio::fs::read(&path).await {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(backup_error(format!("{}: {e}", path.display()))),
                }
            }
            Backend::Bucket { store, prefix, url } => {
                match store.get(&Self::object(prefix, key)).await {
                    Ok(found) => Ok(Some(
                        found
                            .bytes()
                            .await
                            .map_err(|e| backup_error(format!("{url}/{key}: {e}")))?
                            .to_vec(),
                    )),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(backup_error(format!("{url}/{key}: {e}"))),
                }
            }
        }
    }

    /// The keys directly under `folder` (e.g. `backups`), sorted.
    pub async fn list(&self, folder: &str) -> Result<Vec<String>, NodeError> {
        let mut names = match &self.backend {
            Backend::Folder(root) => {
                let dir = root.join(folder);
                match std::fs::read_dir(&dir) {
                    Ok(entries) => entries
                        .filter_map(|e| e.ok())
                        .filter_map(|e| e.file_name().into_string().ok())
                        .filter(|name| !name.ends_with(".tmp"))
                        .collect(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(backup_error(format!("{}: {e}", dir.display()))),
                }
            }
            Backend::Bucket { store, prefix, url } => {
                let listed = store
                    .list_with_delimiter(Some(&Self::object(prefix, folder)))
                    .await
                    .map_err(|e| backup_error(format!("{url}/{folder}: {e}")))?;
                listed
                    .objects
                    .into_iter()
                    .filter_map(|o| o.location.filename().map(str::to_string))
                    .collect()
            }
        };
        names.sort();
        Ok(names)
    }
}

fn write_file_durably(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    let failed = |e: std::io::Error| backup_error(format!("{}: {e}", path.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(failed)?;
    let temporary = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&temporary).map_err(failed)?;
        file.write_all(bytes).map_err(failed)?;
        file.sync_all().map_err(failed)?;
    }
    std::fs::rename(&temporary, path).map_err(failed)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(failed)
}

/// What seals a chain's key: the operator's age recipients (`age1…`, for scheduled
/// backups: the machine taking them holds no secret) or a passphrase (scrypt).
pub enum Protection {
    Recipients(Vec<age::x25519::Recipient>),
    Passphrase {
        passphrase: SecretString,
        /// log2 of scrypt's N; age's default targets a second of work.
        work_factor: Option<u8>,
    },
}

impl Protection {
    pub fn recipients(texts: &[String]) -> Result<Self, NodeError> {
        let recipients = texts
            .iter()
            .map(|text| {
                age::x25519::Recipient::from_str(text.trim()).map_err(|e| {
                    backup_error(format!("{text} is not an age recipient (age1…): {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if recipients.is_empty() {
            return Err(backup_error("no recipient"));
        }
        Ok(Self::Recipients(recipients))
    }

    fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, NodeError> {
        let encryptor = match self {
            Self::Recipients(recipients) => {
                age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(backup_error)?
            }
            Self::Passphrase {
                passphrase,
                work_factor,
            } => {
                let mut recipient = age::scrypt::Recipient::new(passphrase.clone());
                if let Some(log_n) = work_factor {
                    recipient.set_work_factor(*log_n);
                }
                age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                    .map_err(backup_error)?
            }
        };
        seal_with(encryptor, plaintext)
    }
}

/// What opens a chain's key at restore: the operator's identities (an age identity
/// file's `AGE-SECRET-KEY-1…` lines) or the passphrase.
pub enum Unlock {
    Identities(Vec<age::x25519::Identity>),
    Passphrase(SecretString),
}

impl Unlock {
    /// The identities in an age identity file (comments and blank lines skipped).
    pub fn identity_file(text: &str) -> Result<Self, NodeError> {
        let identities = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                age::x25519::Identity::from_str(line)
                    .map_err(|_| backup_error("the identity file holds a line that is not an age identity (AGE-SECRET-KEY-1…)"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if identities.is_empty() {
            return Err(backup_error("the identity file holds no identity"));
        }
        Ok(Self::Identities(identities))
    }

    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, NodeError> {
        let decryptor = age::Decryptor::new_buffered(sealed).map_err(backup_error)?;
        let wrong = |e: age::DecryptError| {
            NodeError::BackupKey(format!(
                "the backup's key does not open with this {}: {e}",
                match self {
                    Self::Identities(_) => "identity",
                    Self::Passphrase(_) => "passphrase",
                }
            ))
        };
        let mut reader = match self {
            Self::Identities(identities) => decryptor
                .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
                .map_err(wrong)?,
            Self::Passphrase(passphrase) => {
                let mut identity = age::scrypt::Identity::new(passphrase.clone());
                // A second or two of work at age's default factor; a planted file asking
                // for far more is refused rather than run.
                identity.set_max_work_factor(22);
                decryptor
                    .decrypt(std::iter::once(&identity as &dyn age::Identity))
                    .map_err(wrong)?
            }
        };
        let mut plaintext = Vec::new();
        reader.read_to_end(&mut plaintext).map_err(backup_error)?;
        Ok(plaintext)
    }
}

/// Writes a new age identity for sealing backups to `path` (which must not exist; mode
/// 0600) and returns its recipient (`age1…`).
pub fn write_new_identity(path: &Path) -> Result<String, NodeError> {
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |e: std::io::Error| backup_error(format!("{}: {e}", path.display()));
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    write!(
        file,
        "# a Canopy backup identity: it opens backups sealed to\n# public key: {recipient}\n{}\n",
        identity.to_string().expose_secret()
    )
    .map_err(failed)?;
    file.sync_all().map_err(failed)?;
    Ok(recipient)
}

fn seal_with(encryptor: age::Encryptor, plaintext: &[u8]) -> Result<Vec<u8>, NodeError> {
    let mut sealed = Vec::with_capacity(plaintext.len() + 256);
    let mut writer = encryptor.wrap_output(&mut sealed).map_err(backup_error)?;
    writer.write_all(plaintext).map_err(backup_error)?;
    writer.finish().map_err(backup_error)?;
    Ok(sealed)
}

/// A chain's own key: what seals its chunks and manifests, and what names its chunks.
pub struct ChainKey {
    pub chain: String,
    identity: age::x25519::Identity,
    chunk_key: [u8; 32],
}

impl ChainKey {
    /// A new chain: its key generated, sealed with `protection` and stored.
    pub async fn create(repo: &Repository, protection: &Protection) -> Result<Self, NodeError> {
        let mut chunk_key = [0u8; 32];
        rand::rng().fill_bytes(&mut chunk_key);
        let mut tag = [0u8; 6];
        rand::rng().fill_bytes(&mut tag);
        let chain = format!(
            "{}-{}",
            canopy_schemas::clock::now_millis(),
            hex::encode(tag)
        );
        let key = Self {
            chain,
            identity: age::x25519::Identity::generate(),
            chunk_key,
        };
        let secret = format!(
            "{}\n{}\n",
            key.identity.to_string().expose_secret(),
            hex::encode(key.chunk_key)
        );
        let sealed = tokio::task::block_in_place(|| protection.seal(secret.as_bytes()))?;
        repo.put(&format!("chains/{}/key.age", key.chain), sealed)
            .await?;
        repo.put(
            &format!("chains/{}/recipient", key.chain),
            key.identity.to_public().to_string().into_bytes(),
        )
        .await?;
        Ok(key)
    }

    /// An existing chain's key, opened with `unlock`.
    pub async fn open(repo: &Repository, chain: &str, unlock: &Unlock) -> Result<Self, NodeError> {
        let sealed = repo
            .get(&format!("chains/{chain}/key.age"))
            .await?
            .ok_or_else(|| backup_error(format!("the chain {chain} has no key in {repo}")))?;
        let secret = tokio::task::block_in_place(|| unlock.open(&sealed))?;
        let text = String::from_utf8(secret).map_err(backup_error)?;
        let mut lines = text.lines();
        let identity = lines
            .next()
            .and_then(|line| age::x25519::Identity::from_str(line).ok())
            .ok_or_else(|| backup_error(format!("the chain {chain}'s key is not valid")))?;
        let chunk_key = lines
            .next()
            .and_then(|line| hex::decode(line).ok())
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| backup_error(format!("the chain {chain}'s key is not valid")))?;
        Ok(Self {
            chain: chain.to_string(),
            identity,
            chunk_key,
        })
    }

    pub fn chunk_id(&self, plaintext: &[u8]) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.chunk_key).expect("any key length");
        mac.update(plaintext);
        hex::encode(mac.finalize().into_bytes())
    }

    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, NodeError> {
        let recipient = self.identity.to_public();
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .map_err(backup_error)?;
        seal_with(encryptor, plaintext)
    }

    /// Opens what this chain sealed; anything else (a swapped or altered object) is an
    /// error, never garbage.
    pub fn open_sealed(&self, what: &str, sealed: &[u8]) -> Result<Vec<u8>, NodeError> {
        let decryptor = age::Decryptor::new_buffered(sealed)
            .map_err(|e| backup_error(format!("{what} is damaged: {e}")))?;
        let mut reader = decryptor
            .decrypt(std::iter::once(&self.identity as &dyn age::Identity))
            .map_err(|e| backup_error(format!("{what} is damaged: {e}")))?;
        let mut plaintext = Vec::new();
        reader
            .read_to_end(&mut plaintext)
            .map_err(|e| backup_error(format!("{what} is damaged: {e}")))?;
        Ok(plaintext)
    }
}

pub fn chunk_key(id: &str) -> String {
    format!("chunks/{}/{id}", &id[..2.min(id.len())])
}

/// A finished backup as listed: the plaintext summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupSummary {
    pub id: String,
    pub chain: String,
    /// `full` or `incremental`.
    pub kind: String,
    /// When the backup began (Unix ms): every vote acknowledged before this is in it.
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub files: usize,
    /// The bytes the backup restores.
    pub bytes: u64,
    /// The bytes it wrote (sealed chunks new to the chain).
    pub written_bytes: u64,
    pub store: String,
}

impl Repository {
    /// The finished backups, oldest first.
    pub async fn backups(&self) -> Result<Vec<BackupSummary>, NodeError> {
        let mut summaries = Vec::new();
        for name in self.list("backups").await? {
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let Some(bytes) = self.get(&format!("backups/{id}.json")).await? else {
                continue;
            };
            let summary: BackupSummary = serde_json::from_slice(&bytes)
                .map_err(|e| backup_error(format!("the summary of {id} is not valid: {e}")))?;
            summaries.push(summary);
        }
        summaries.sort_by_key(|s| (s.started_at_ms, s.id.clone()));
        Ok(summaries)
    }
}
