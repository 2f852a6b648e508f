//! The record store: every decision's Merkle log as C2SP tlog tiles, in a local folder or
//! an S3-compatible bucket prefix, and the readers that answer proofs from it.
//!
//! ```text
//!  <prefix>/decision/<uuid>/tile/<L>/<N>[.p/<W>]        hash tiles
//!  <prefix>/decision/<uuid>/tile/entries/<N>[.p/<W>]    entry bundles (80-byte leaf encodings)
//!  <prefix>/decision/<uuid>/checkpoint                  the latest signed checkpoint
//!
//!  CheckpointWriter (node/src/record.rs): tiles + bundles ─▶ checkpoints row (SQL) ─▶ checkpoint
//!  TileRecordReader: checkpoint (re-read ≤ every 200 ms) + tiles (bounded LRU; every tile is
//!                    immutable) ─▶ roots, inclusion and consistency proofs, leaf indexes
//! ```
//!
//! Every tile and bundle, partial ones included, is a function of the log's first leaves,
//! so none ever changes: it is written only if absent (a local hard link, an S3
//! `If-None-Match: *` put), and an existing one with other bytes is refused as corruption
//! rather than overwritten. Only `checkpoint` is replaced, and only by a larger one.
//!
//! The object store is asynchronous and the readers are called from blocking code (the
//! proofs are computed synchronously over tiles), so every request runs on a small runtime
//! of the store's own and a blocking caller waits for it there, as the lake does.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::future::Future;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use canopy_chain::tiles::{TILE_WIDTH, decode_bundle, leaf_tiles, tile_hashes};
use canopy_chain::{
    ChainError, Checkpoint, Hash, MerkleLog, NoteVerifier, TileRef, TileSource, TileWrite, TiledLog,
};
use canopy_dataflow::{LeafEntry, RecordReader, RecordTiles, VoterLeaf};
use canopy_schemas::{DecisionId, LoggedVote};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::SpawnedReqwestConnector;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// Where the record store is: a folder, or `s3://bucket/prefix`.
#[derive(Clone)]
pub struct RecordStore {
    backend: Arc<Backend>,
    io: Arc<IoRuntime>,
}

enum Backend {
    Local(PathBuf),
    Bucket {
        /// `s3://bucket/prefix`, as shown to people.
        url: String,
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
    },
}

impl std::fmt::Debug for RecordStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordStore({})", self.location())
    }
}

fn store_error(what: impl std::fmt::Display) -> ChainError {
    ChainError::TileStore(what.to_string())
}

impl RecordStore {
    /// `s3://bucket/prefix` (credentials, region and endpoint from the `AWS_*` variables,
    /// as for the lake), `file://…` or a folder.
    pub fn open(location: &str) -> Result<Self, ChainError> {
        Self::open_with(location, std::iter::empty::<(String, String)>())
    }

    /// As [`Self::open`], with object_store options for a bucket (`aws_endpoint`,
    /// `aws_allow_http`, …) over the environment's.
    pub fn open_with<K: AsRef<str>, V: Into<String>>(
        location: &str,
        options: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ChainError> {
        let io = Arc::new(IoRuntime::start().map_err(store_error)?);
        let backend = match location.split_once("://") {
            None => Backend::Local(PathBuf::from(location)),
            Some(("file", path)) => Backend::Local(PathBuf::from(path)),
            Some(("s3" | "s3a", _)) => bucket(location, options, &io)?,
            Some((scheme, _)) => {
                return Err(store_error(format!(
                    "{location}: the record store is a folder or s3://bucket/prefix, not {scheme}://"
                )));
            }
        };
        Ok(Self {
            backend: Arc::new(backend),
            io,
        })
    }

    /// The folder or bucket URL.
    pub fn location(&self) -> String {
        match self.backend.as_ref() {
            Backend::Local(root) => root.display().to_string(),
            Backend::Bucket { url, .. } => url.clone(),
        }
    }

    /// Writes a decision's tiles, all of them before returning: each only if absent, an
    /// existing one checked to hold the same bytes. In a folder, each file is synced as it
    /// is written and each of the write's folders once at the end (a cut's tiles share a
    /// few folders: one sync per tile had doubled the record's syncs). Every folder is
    /// synced, not only those that gained a name now: a tile linked by a write that then
    /// failed is found present by the retry, and its name must be durable before the
    /// checkpoint's row says it exists.
    pub async fn write_tiles(
        &self,
        decision: DecisionId,
        tiles: Vec<TileWrite>,
    ) -> Result<(), ChainError> {
        let backend = Arc::clone(&self.backend);
        self.io
            .run(async move {
                let keys: Vec<String> = tiles
                    .iter()
                    .map(|tile| tile_key(decision, &tile.tile))
                    .collect();
                let mut writes = tokio::task::JoinSet::new();
                for (key, tile) in keys.iter().cloned().zip(tiles) {
                    let backend = Arc::clone(&backend);
                    writes.spawn(async move { backend.create_once(&key, tile.bytes).await });
                }
                while let Some(written) = writes.join_next().await {
                    written.map_err(store_error)??;
                }
                if let Backend::Local(root) = backend.as_ref() {
                    let folders: BTreeSet<PathBuf> = keys
                        .iter()
                        .filter_map(|key| root.join(key).parent().map(Path::to_path_buf))
                        .collect();
                    for folder in folders {
                        sync_dir(&folder)?;
                    }
                }
                Ok(())
            })
            .await?
    }

    /// Replaces the decision's `checkpoint` object with `note` unless it holds a
    /// checkpoint at least as large already. Returns whether it wrote.
    pub async fn write_checkpoint(
        &self,
        decision: DecisionId,
        size: u64,
        note: String,
    ) -> Result<bool, ChainError> {
        let backend = Arc::clone(&self.backend);
        self.io
            .run(async move {
                let key = checkpoint_key(decision);
                if let Some(stored) = backend.get(&key).await?
                    && checkpoint_size(&stored).is_some_and(|stored| stored >= size)
                {
                    return Ok(false);
                }
                backend.replace(&key, note.into_bytes()).await?;
                Ok(true)
            })
            .await?
    }

    /// A decision's tile or bundle as stored; a missing partial tile is served from the
    /// full one when that exists (its first `width` hashes or entries are the same).
    pub async fn read_tile(
        &self,
        decision: DecisionId,
        tile: TileRef,
    ) -> Result<Option<Vec<u8>>, ChainError> {
        let backend = Arc::clone(&self.backend);
        self.io
            .run(async move { read_tile_from(&backend, decision, tile).await })
            .await?
    }

    /// The decision's `checkpoint` object.
    pub async fn read_checkpoint(
        &self,
        decision: DecisionId,
    ) -> Result<Option<String>, ChainError> {
        let backend = Arc::clone(&self.backend);
        self.io
            .run(async move {
                let bytes = backend.get(&checkpoint_key(decision)).await?;
                bytes
                    .map(|b| {
                        String::from_utf8(b).map_err(|_| store_error("the checkpoint is not UTF-8"))
                    })
                    .transpose()
            })
            .await?
    }

    /// [`Self::read_tile`] for a blocking caller.
    pub fn read_tile_blocking(
        &self,
        decision: DecisionId,
        tile: TileRef,
    ) -> Result<Option<Vec<u8>>, ChainError> {
        let backend = Arc::clone(&self.backend);
        self.io
            .block(async move { read_tile_from(&backend, decision, tile).await })?
    }

    /// [`Self::read_checkpoint`] for a blocking caller.
    pub fn read_checkpoint_blocking(
        &self,
        decision: DecisionId,
    ) -> Result<Option<String>, ChainError> {
        let store = self.clone();
        self.io
            .block(async move { store.read_checkpoint(decision).await })?
    }
}

fn bucket<K: AsRef<str>, V: Into<String>>(
    location: &str,
    options: impl IntoIterator<Item = (K, V)>,
    io: &IoRuntime,
) -> Result<Backend, ChainError> {
    let bad = |why: String| store_error(format!("{location}: {why}"));
    let rest = location
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("no bucket".into()));
    }
    let prefix = ObjectPath::parse(prefix.trim_matches('/')).map_err(|e| bad(e.to_string()))?;
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_http_connector(SpawnedReqwestConnector::new(io.handle()));
    for (key, value) in options {
        let key: AmazonS3ConfigKey = key
            .as_ref()
            .parse()
            .map_err(|e: object_store::Error| bad(e.to_string()))?;
        builder = builder.with_config(key, value);
    }
    let store = builder.build().map_err(|e| bad(e.to_string()))?;
    Ok(Backend::Bucket {
        url: format!("s3://{bucket}/{prefix}"),
        store: Arc::new(store),
        prefix,
    })
}

fn tile_key(decision: DecisionId, tile: &TileRef) -> String {
    format!("decision/{decision}/{}", tile.path())
}

fn checkpoint_key(decision: DecisionId) -> String {
    format!("decision/{decision}/checkpoint")
}

/// The size line of a checkpoint note, unverified (only to order writes).
fn checkpoint_size(note: &[u8]) -> Option<u64> {
    std::str::from_utf8(note).ok()?.lines().nth(1)?.parse().ok()
}

async fn read_tile_from(
    backend: &Backend,
    decision: DecisionId,
    tile: TileRef,
) -> Result<Option<Vec<u8>>, ChainError> {
    if let Some(bytes) = backend.get(&tile_key(decision, &tile)).await? {
        return Ok(Some(bytes));
    }
    if tile.is_full() {
        return Ok(None);
    }
    let Some(full) = backend.get(&tile_key(decision, &tile.full())).await? else {
        return Ok(None);
    };
    Ok(Some(match tile.kind {
        canopy_chain::TileKind::Hashes(_) => {
            full[..(usize::from(tile.width) * 32).min(full.len())].to_vec()
        }
        canopy_chain::TileKind::Entries => {
            let entries = canopy_chain::tiles::decode_bundle(&full)?;
            canopy_chain::tiles::encode_bundle(entries.into_iter().take(usize::from(tile.width)))?
        }
    }))
}

impl Backend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ChainError> {
        match self {
            Self::Local(root) => match fs::read(root.join(key)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(store_error(format!(
                    "{}: {error}",
                    root.join(key).display()
                ))),
            },
            Self::Bucket { store, prefix, url } => {
                let path = object_path(prefix, key);
                match store.get(&path).await {
                    Ok(got) => Ok(Some(
                        got.bytes()
                            .await
                            .map_err(|e| store_error(format!("{url}/{key}: {e}")))?
                            .to_vec(),
                    )),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(error) => Err(store_error(format!("{url}/{key}: {error}"))),
                }
            }
        }
    }

    /// Writes `key` only if absent; if present, it must hold `bytes`. In a folder, a new
    /// name is durable once the caller syncs its folder.
    async fn create_once(&self, key: &str, bytes: Vec<u8>) -> Result<(), ChainError> {
        let created = match self {
            Self::Local(root) => create_local(root, key, &bytes)?,
            Self::Bucket { store, prefix, url } => {
                let path = object_path(prefix, key);
                let options = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                match store
                    .put_opts(&path, PutPayload::from(bytes.clone()), options)
                    .await
                {
                    Ok(_) => true,
                    Err(object_store::Error::AlreadyExists { .. }) => false,
                    // A server without conditional puts: look first, then write.
                    Err(object_store::Error::NotImplemented { .. }) => {
                        if self.get(key).await?.is_none() {
                            self.replace(key, bytes.clone()).await?;
                            true
                        } else {
                            false
                        }
                    }
                    Err(error) => return Err(store_error(format!("{url}/{key}: {error}"))),
                }
            }
        };
        if !created {
            let stored = self.get(key).await?;
            if stored.as_deref() != Some(&bytes[..]) {
                return Err(ChainError::TileConflict(key.to_string()));
            }
        }
        Ok(())
    }

    /// Replaces `key` whole (a reader sees the old bytes or the new, never a mix).
    async fn replace(&self, key: &str, bytes: Vec<u8>) -> Result<(), ChainError> {
        match self {
            Self::Local(root) => {
                let path = root.join(key);
                let temp = write_temp(&path, &bytes)?;
                fs::rename(&temp, &path)
                    .map_err(|e| store_error(format!("{}: {e}", path.display())))?;
                sync_parent(&path)
            }
            Self::Bucket { store, prefix, url } => store
                .put(&object_path(prefix, key), PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|e| store_error(format!("{url}/{key}: {e}"))),
        }
    }
}

fn object_path(prefix: &ObjectPath, key: &str) -> ObjectPath {
    key.split('/')
        .filter(|part| !part.is_empty())
        .fold(prefix.clone(), |path, part| path.join(part))
}

/// A file with `bytes` next to `path`, fsync'd, under a name of its own.
fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf, ChainError> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| store_error("a key without a folder"))?;
    fs::create_dir_all(dir).map_err(|e| store_error(format!("{}: {e}", dir.display())))?;
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("tile"),
        uuid::Uuid::new_v4().simple()
    ));
    let mut file =
        fs::File::create(&temp).map_err(|e| store_error(format!("{}: {e}", temp.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| store_error(format!("{}: {e}", temp.display())))?;
    Ok(temp)
}

fn sync_parent(path: &Path) -> Result<(), ChainError> {
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<(), ChainError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| store_error(format!("{}: {e}", dir.display())))
}

/// Creates `root/key` with `bytes` unless it exists: a hard link from a complete temporary
/// file, which fails if the name is taken. Returns whether it created it; the new name is
/// durable once the caller has synced the folder.
fn create_local(root: &Path, key: &str, bytes: &[u8]) -> Result<bool, ChainError> {
    let path = root.join(key);
    if path.exists() {
        return Ok(false);
    }
    let temp = write_temp(&path, bytes)?;
    let linked = fs::hard_link(&temp, &path);
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(error) => Err(store_error(format!("{}: {error}", path.display()))),
    }
}

/// A runtime of the store's own for its requests; shut down without waiting when the
/// store goes (a runtime cannot be dropped inside another's task).
struct IoRuntime(Option<tokio::runtime::Runtime>);

impl IoRuntime {
    fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("canopy-record-io")
            .enable_all()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("the runtime lives until drop")
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.runtime().handle().clone()
    }

    /// Runs `work` on the store's runtime, for an async caller on any runtime.
    async fn run<F>(&self, work: F) -> Result<F::Output, ChainError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime()
            .spawn(work)
            .await
            .map_err(|e| store_error(format!("the record store's I/O runtime: {e}")))
    }

    /// Runs `work` on the store's runtime and waits for it, from a blocking thread.
    fn block<F>(&self, work: F) -> Result<F::Output, ChainError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        self.runtime().spawn(async move {
            let _ = done.send(work.await);
        });
        result
            .recv()
            .map_err(|_| store_error("the record store's I/O runtime stopped"))
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// How much a [`TileRecordReader`] keeps in memory.
#[derive(Clone, Copy, Debug)]
pub struct ReaderLimits {
    /// Tiles cached (8 KiB each when full).
    pub tiles: usize,
    /// Leaf hashes indexed for `index_of`, over every decision (about 50 bytes each).
    pub indexed_leaves: usize,
    /// How long a read `checkpoint` object is believed.
    pub checkpoint_ttl: Duration,
}

impl Default for ReaderLimits {
    fn default() -> Self {
        Self {
            tiles: 4096,
            indexed_leaves: 2_000_000,
            checkpoint_ttl: Duration::from_millis(200),
        }
    }
}

type TileCache = lru::LruCache<(DecisionId, TileRef), Arc<Vec<u8>>>;

/// When a decision's checkpoint object was last read, and what it held (none yet: absent).
type CheckpointSeen = (Instant, Option<(Checkpoint, String)>);

/// The vote record read from the record store, for a node without the trees in memory (a
/// `canopy serve` replica). Proofs are against the store's latest checkpoint, or any
/// checkpointed size (its tiles are written before its checkpoint is stored). Blocking.
pub struct TileRecordReader {
    store: RecordStore,
    verifier: NoteVerifier,
    limits: ReaderLimits,
    tiles: Mutex<TileCache>,
    checkpoints: Mutex<HashMap<DecisionId, CheckpointSeen>>,
    indexes: Mutex<DecisionIndexes<Hash>>,
    voters: Mutex<DecisionIndexes<u128>>,
}

impl std::fmt::Debug for TileRecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TileRecordReader")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// A map to leaf indexes per decision, grown from the tiles as checkpoints grow; the least
/// recently asked decision's map goes first when the total passes the limit. Keyed by leaf
/// hash (the first index of each) or by ballot pseudonym (the voter's latest leaf).
struct DecisionIndexes<K> {
    maps: HashMap<DecisionId, DecisionIndex<K>>,
    total: usize,
    clock: u64,
}

struct DecisionIndex<K> {
    of: HashMap<K, u64>,
    /// Leaves below this are in `of`.
    scanned: u64,
    last_used: u64,
}

impl<K> Default for DecisionIndexes<K> {
    fn default() -> Self {
        Self {
            maps: HashMap::new(),
            total: 0,
            clock: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq> DecisionIndexes<K> {
    /// The decision's index, marked as the most recently used: what it maps `key` to, and
    /// how far it has scanned.
    fn look_up(&mut self, decision: DecisionId, key: &K) -> (Option<u64>, u64) {
        self.clock += 1;
        let clock = self.clock;
        let index = self.maps.entry(decision).or_insert_with(|| DecisionIndex {
            of: HashMap::new(),
            scanned: 0,
            last_used: clock,
        });
        index.last_used = clock;
        (index.of.get(key).copied(), index.scanned)
    }

    /// Adds what a scan from `scanned` to `size` found, unless another reader added it
    /// meanwhile; a key already mapped keeps its index unless `later_wins`. Then evicts
    /// down to `limit` entries (never this decision's).
    fn add_scan(
        &mut self,
        decision: DecisionId,
        scanned: u64,
        size: u64,
        added: Vec<(K, u64)>,
        later_wins: bool,
        limit: usize,
    ) {
        if let Some(index) = self.maps.get_mut(&decision)
            && index.scanned == scanned
        {
            for (key, at) in added {
                if later_wins {
                    index.of.insert(key, at);
                } else {
                    index.of.entry(key).or_insert(at);
                }
            }
            index.scanned = size;
        }
        self.total = self.maps.values().map(|m| m.of.len()).sum();
        while self.total > limit {
            let Some(oldest) = self
                .maps
                .iter()
                .filter(|(id, _)| **id != decision)
                .min_by_key(|(_, m)| m.last_used)
                .map(|(id, _)| *id)
            else {
                return;
            };
            if let Some(map) = self.maps.remove(&oldest) {
                self.total -= map.of.len();
            }
        }
    }
}

impl TileRecordReader {
    pub fn new(store: RecordStore, verifier: NoteVerifier, limits: ReaderLimits) -> Self {
        let capacity = NonZeroUsize::new(limits.tiles.max(1)).expect("at least one");
        Self {
            store,
            verifier,
            limits,
            tiles: Mutex::new(lru::LruCache::new(capacity)),
            checkpoints: Mutex::new(HashMap::new()),
            indexes: Mutex::new(DecisionIndexes::default()),
            voters: Mutex::new(DecisionIndexes::default()),
        }
    }

    /// The latest checkpoint in the store, verified, at most `checkpoint_ttl` old.
    fn latest(&self, decision: DecisionId) -> Result<Option<(Checkpoint, String)>, ChainError> {
        if let Some((read_at, latest)) = lock(&self.checkpoints).get(&decision)
            && read_at.elapsed() < self.limits.checkpoint_ttl
        {
            return Ok(latest.clone());
        }
        let latest = match self.store.read_checkpoint_blocking(decision)? {
            Some(note) => {
                let checkpoint = Checkpoint::verify(&note, &self.verifier)?;
                if !checkpoint
                    .origin
                    .ends_with(&format!("/decision/{decision}"))
                {
                    return Err(ChainError::BadCheckpoint(format!(
                        "the stored checkpoint is of the log {:?}",
                        checkpoint.origin
                    )));
                }
                Some((checkpoint, note))
            }
            None => None,
        };
        let mut checkpoints = lock(&self.checkpoints);
        // A slower reader must not put back an older checkpoint than one already seen.
        let keep = match (checkpoints.get(&decision), &latest) {
            (Some((_, Some((seen, _)))), Some((read, _))) => read.size >= seen.size,
            (Some((_, Some(_))), None) => false,
            _ => true,
        };
        if keep {
            checkpoints.insert(decision, (Instant::now(), latest.clone()));
        }
        Ok(checkpoints.get(&decision).and_then(|(_, c)| c.clone()))
    }

    fn latest_size(&self, decision: DecisionId) -> Result<u64, ChainError> {
        Ok(self.latest(decision)?.map_or(0, |(c, _)| c.size))
    }

    fn cached_tile(
        &self,
        decision: DecisionId,
        tile: TileRef,
    ) -> Result<Option<Arc<Vec<u8>>>, ChainError> {
        if let Some(bytes) = lock(&self.tiles).get(&(decision, tile)) {
            return Ok(Some(Arc::clone(bytes)));
        }
        let Some(bytes) = self.store.read_tile_blocking(decision, tile)? else {
            return Ok(None);
        };
        let bytes = Arc::new(bytes);
        lock(&self.tiles).put((decision, tile), Arc::clone(&bytes));
        Ok(Some(bytes))
    }

    /// The log read through its tiles as of `size` leaves: as of the latest checkpoint
    /// when `size` is within it, else as of `size` itself (a checkpoint stored in SQL a
    /// moment before the `checkpoint` object caught up: its tiles are written).
    fn tiled(
        &self,
        decision: DecisionId,
        size: u64,
    ) -> Result<TiledLog<DecisionTiles<'_>>, ChainError> {
        let latest = self.latest_size(decision)?;
        Ok(TiledLog::new(
            DecisionTiles {
                reader: self,
                decision,
            },
            latest.max(size),
        ))
    }

    /// Scans the level-0 tiles the index has not seen, up to the latest checkpoint.
    fn find_leaf(&self, decision: DecisionId, leaf: &Hash) -> Result<Option<u64>, ChainError> {
        let size = self.latest_size(decision)?;
        let scanned = match lock(&self.indexes).look_up(decision, leaf) {
            (Some(found), _) => return Ok(Some(found)),
            (None, scanned) => scanned,
        };
        if scanned >= size {
            return Ok(None);
        }
        // Too large to keep: scan without keeping (through the tile cache).
        let keep = size as usize <= self.limits.indexed_leaves;
        let mut found = None;
        let mut added: Vec<(Hash, u64)> = Vec::new();
        let from = if keep { scanned } else { 0 };
        for tile in leaf_tiles(from, size) {
            let bytes = self
                .cached_tile(decision, tile)?
                .ok_or_else(|| ChainError::TileMissing(tile.path()))?;
            let first = tile.index * u64::from(canopy_chain::tiles::TILE_WIDTH);
            for (n, hash) in tile_hashes(&tile, &bytes)?.into_iter().enumerate() {
                let index = first + n as u64;
                if index < from {
                    continue;
                }
                if hash == *leaf && found.is_none() {
                    found = Some(index);
                }
                if keep {
                    added.push((hash, index));
                }
            }
        }
        if keep {
            lock(&self.indexes).add_scan(
                decision,
                scanned,
                size,
                added,
                false,
                self.limits.indexed_leaves,
            );
        }
        Ok(found)
    }
}

impl TileRecordReader {
    /// The voter's latest leaf up to the latest checkpoint: the voter index caught up from
    /// the entry bundles it has not seen, then the leaf's entry read from its bundle.
    fn find_voter(
        &self,
        decision: DecisionId,
        voter: u128,
    ) -> Result<Option<VoterLeaf>, ChainError> {
        let size = self.latest_size(decision)?;
        let (mut found, scanned) = lock(&self.voters).look_up(decision, &voter);
        if scanned < size {
            // Too large to keep: scan without keeping (through the tile cache).
            let keep = size as usize <= self.limits.indexed_leaves;
            let from = if keep { scanned } else { 0 };
            let mut added: Vec<(u128, u64)> = Vec::new();
            for tile in leaf_tiles(from, size) {
                let bundle = TileRef::entries(tile.index, tile.width);
                let bytes = self
                    .cached_tile(decision, bundle)?
                    .ok_or_else(|| ChainError::TileMissing(bundle.path()))?;
                let first = tile.index * u64::from(TILE_WIDTH);
                for (n, entry) in decode_bundle(&bytes)?.into_iter().enumerate() {
                    let index = first + n as u64;
                    if index < from {
                        continue;
                    }
                    let Ok(logged) = LoggedVote::from_leaf_data(entry) else {
                        continue;
                    };
                    let pseudonym = logged.vote.voter_id.0;
                    // In index order: a later leaf of the voter replaces an earlier one.
                    if pseudonym == voter {
                        found = Some(index);
                    }
                    if keep {
                        added.push((pseudonym, index));
                    }
                }
            }
            if keep {
                lock(&self.voters).add_scan(
                    decision,
                    scanned,
                    size,
                    added,
                    true,
                    self.limits.indexed_leaves,
                );
            }
        }
        let Some(index) = found else {
            return Ok(None);
        };
        let tile = index / u64::from(TILE_WIDTH);
        let width = (size - tile * u64::from(TILE_WIDTH)).min(u64::from(TILE_WIDTH)) as u16;
        let bundle = TileRef::entries(tile, width);
        let bytes = self
            .cached_tile(decision, bundle)?
            .ok_or_else(|| ChainError::TileMissing(bundle.path()))?;
        let entry = decode_bundle(&bytes)?
            .get((index % u64::from(TILE_WIDTH)) as usize)
            .and_then(|entry| canopy_schemas::LeafBytes::new(entry))
            .map(LeafEntry);
        Ok(Some(VoterLeaf {
            index,
            offset: None,
            entry,
        }))
    }
}

/// One decision's hash tiles through the reader's cache.
struct DecisionTiles<'a> {
    reader: &'a TileRecordReader,
    decision: DecisionId,
}

impl TileSource for DecisionTiles<'_> {
    fn tile(&self, level: u8, index: u64, width: u16) -> Result<Option<Vec<u8>>, ChainError> {
        Ok(self
            .reader
            .cached_tile(self.decision, TileRef::hashes(level, index, width))?
            .map(|bytes| bytes.as_ref().clone()))
    }
}

impl RecordReader for TileRecordReader {
    fn index_of(&self, decision: DecisionId, leaf: &Hash) -> Option<u64> {
        match self.find_leaf(decision, leaf) {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%decision, %error, "finding a leaf in the record store failed");
                None
            }
        }
    }

    fn root_at(&self, decision: DecisionId, size: u64) -> Result<Hash, ChainError> {
        if size == 0 {
            return MerkleLog::new().root_at(0);
        }
        self.tiled(decision, size)?.root_at(size)
    }

    fn inclusion_proof(
        &self,
        decision: DecisionId,
        index: u64,
        size: u64,
    ) -> Result<Vec<Hash>, ChainError> {
        self.tiled(decision, size)?.inclusion_proof(index, size)
    }

    fn consistency_proof(
        &self,
        decision: DecisionId,
        old: u64,
        new: u64,
    ) -> Result<Vec<Hash>, ChainError> {
        self.tiled(decision, new)?.consistency_proof(old, new)
    }

    /// Replicas do not know where in the log a vote was first delivered (the tiles hold
    /// leaves, not log offsets): a retried cast is answered from the replica's recent casts
    /// or taken as new, and the record dedups it as before.
    fn first_delivery(&self, _decision: DecisionId, _voter: u128, _vote_id: u128) -> Option<u64> {
        None
    }

    /// From the entry bundles up to the latest checkpoint: a vote not checkpointed yet is
    /// not found here (the node running the engine finds it at once).
    fn latest_of(&self, decision: DecisionId, voter: u128) -> Option<VoterLeaf> {
        match self.find_voter(decision, voter) {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%decision, %error, "finding a voter's leaf in the record store failed");
                None
            }
        }
    }
}

impl RecordTiles for TileRecordReader {
    fn tile(&self, decision: DecisionId, tile: TileRef) -> Result<Option<Vec<u8>>, ChainError> {
        Ok(self
            .cached_tile(decision, tile)?
            .map(|bytes| bytes.as_ref().clone()))
    }

    fn checkpoint(&self, decision: DecisionId) -> Result<Option<String>, ChainError> {
        Ok(self.latest(decision)?.map(|(_, note)| note))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_chain::tiles::growth_tiles;
    use canopy_chain::{NoteSigner, TileSource};

    fn log_of(leaves: u64) -> MerkleLog {
        let mut log = MerkleLog::new();
        for n in 0..leaves {
            log.append(&n.to_be_bytes());
        }
        log
    }

    /// A replica finds each voter's latest leaf from the entry bundles, up to the latest
    /// checkpoint only, as a recount of the entries says; the entry is the leaf's own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_finds_each_voters_latest_leaf_in_the_bundles() {
        use canopy_chain::tiles::growth_bundles;
        use canopy_schemas::{Component, Vote, VoteId, VoterId, VoterSalt, Weight};
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path().to_str().unwrap()).unwrap();
        let decision = DecisionId(42);
        let salt = VoterSalt([7; 32]);
        let entries: Vec<canopy_schemas::LeafBytes> = (0..700u64)
            .map(|n| {
                let vote = Vote {
                    vote_id: VoteId(u128::from(n)),
                    decision_id: decision,
                    voter_id: VoterId(u128::from(n * n % 37)),
                    ballot: canopy_schemas::Ballot::SingleChoice((n % 3) as u8),
                    component: Component::Democratic,
                    weight: Weight::ONE,
                    cast_at: n as i64,
                };
                LoggedVote::new(vote, &salt).leaf_data()
            })
            .collect();
        let mut log = MerkleLog::new();
        for entry in &entries {
            log.append(entry);
        }
        let signer = NoteSigner::from_seed("canopy.test", &[5; 32]).unwrap();
        for (old, new) in [(0, 300), (300, 600)] {
            let mut tiles = growth_tiles(&log, old, new).unwrap();
            tiles.extend(growth_bundles(old, new, 0, &entries).unwrap());
            store.write_tiles(decision, tiles).await.unwrap();
            let note = Checkpoint {
                origin: format!("canopy.test/decision/{decision}"),
                size: new,
                root: log.root_at(new).unwrap(),
            }
            .sign(&signer);
            store.write_checkpoint(decision, new, note).await.unwrap();
        }
        let reader = TileRecordReader::new(store, signer.verifier(), ReaderLimits::default());
        tokio::task::spawn_blocking(move || {
            for voter in 0..40u128 {
                let pseudonym =
                    canopy_schemas::VoterCommitment::new(&salt, VoterId(voter), decision)
                        .pseudonym()
                        .0;
                // Leaves past the checkpoint (600..700) are not the reader's yet.
                let expected = entries[..600].iter().enumerate().rev().find(|(_, entry)| {
                    LoggedVote::from_leaf_data(&entry[..])
                        .unwrap()
                        .vote
                        .voter_id
                        .0
                        == pseudonym
                });
                let found = reader.latest_of(decision, pseudonym);
                assert_eq!(
                    found.map(|f| (f.index, f.entry.map(|e| e.0))),
                    expected.map(|(index, entry)| (index as u64, Some(*entry))),
                    "voter {voter}"
                );
                assert_eq!(found.and_then(|f| f.offset), None);
            }
        })
        .await
        .unwrap();
    }

    /// Tiles are written once: the same bytes again are fine, other bytes are refused and
    /// the stored ones kept; the checkpoint never goes back; a reader proves from them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_folder_store_keeps_tiles_immutable_and_checkpoints_growing() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path().to_str().unwrap()).unwrap();
        let decision = DecisionId(42);
        let log = log_of(600);
        let signer = NoteSigner::from_seed("canopy.test", &[5; 32]).unwrap();
        let note = |size: u64| {
            Checkpoint {
                origin: format!("canopy.test/decision/{decision}"),
                size,
                root: log.root_at(size).unwrap(),
            }
            .sign(&signer)
        };
        for (old, new) in [(0, 300), (300, 600)] {
            store
                .write_tiles(decision, growth_tiles(&log, old, new).unwrap())
                .await
                .unwrap();
            assert!(
                store
                    .write_checkpoint(decision, new, note(new))
                    .await
                    .unwrap()
            );
        }
        // Written again (a re-cut after a crash): the same bytes, accepted.
        store
            .write_tiles(decision, growth_tiles(&log, 0, 600).unwrap())
            .await
            .unwrap();
        let full = TileRef::hashes(0, 0, 256);
        let before = store.read_tile(decision, full).await.unwrap().unwrap();
        let forged = TileWrite {
            tile: full,
            bytes: vec![0; 256 * 32],
        };
        let refused = store.write_tiles(decision, vec![forged]).await;
        assert!(
            matches!(refused, Err(ChainError::TileConflict(_))),
            "{refused:?}"
        );
        assert_eq!(
            store.read_tile(decision, full).await.unwrap().unwrap(),
            before
        );
        // An older checkpoint does not replace a newer one.
        assert!(
            !store
                .write_checkpoint(decision, 300, note(300))
                .await
                .unwrap()
        );
        let stored = store.read_checkpoint(decision).await.unwrap().unwrap();
        assert_eq!(stored, note(600));
        // A partial tile of an earlier size is still there, and is the full one's prefix.
        let partial = store
            .read_tile(decision, TileRef::hashes(0, 1, 44))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(partial.len(), 44 * 32);

        let reader = TileRecordReader::new(store, signer.verifier(), ReaderLimits::default());
        tokio::task::spawn_blocking(move || {
            for index in [0, 299, 599] {
                let leaf = log.leaf(index).unwrap();
                assert_eq!(reader.index_of(decision, &leaf), Some(index));
                for size in [300, 600] {
                    if index < size {
                        assert_eq!(
                            reader.inclusion_proof(decision, index, size).unwrap(),
                            log.inclusion_proof(index, size).unwrap()
                        );
                    }
                }
            }
            assert_eq!(
                reader.consistency_proof(decision, 300, 600).unwrap(),
                log.consistency_proof(300, 600).unwrap()
            );
            assert_eq!(reader.index_of(decision, &[9; 32]), None);
            assert!(matches!(
                reader.inclusion_proof(decision, 0, 601),
                Err(ChainError::BadTile(_) | ChainError::TileMissing(_))
            ));
            let tiles = DecisionTiles {
                reader: &reader,
                decision,
            };
            assert!(tiles.tile(0, 2, 88).unwrap().is_some());
        })
        .await
        .unwrap();
    }
}
