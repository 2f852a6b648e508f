//! `canopy backup` and `canopy restore`: a node's state copied consistently, sealed, and
//! brought back.
//!
//! What a backup holds, in the order it is taken:
//! 1. the metadata store: SQLite `VACUUM INTO`, or PostgreSQL's tables from one
//!    `REPEATABLE READ` snapshot (`canopy_serving::store_backup`);
//! 2. every file of the data directory, each up to its length when reached: the keys, the
//!    vote and sensor logs, the record's tiles, the anchor journal, the local lake;
//! 3. key files configured outside the data directory.
//!
//! Taking the store first is what makes the copy consistent: everything the store points
//! at (a checkpoint's tiles, an engine checkpoint's log offsets, the lake's marks) was
//! written before the row that points at it, so it is in the files copied after. The one
//! thing that runs ahead is the anchor journal (a batch's line is written after its row),
//! so a restore drops the journal's lines for batches the store never saw; the node makes
//! and anchors those batches again. A log segment being appended to is copied up to its
//! length at the time; its torn tail, if any, is what crash recovery already cuts.
//!
//! Every vote acknowledged before the backup began is in it; with a cluster's log in
//! Kafka (which a backup does not copy), every acknowledged vote is: the restored workers
//! replay the topic from the engine checkpoint the store holds.

use std::collections::HashSet;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use canopy_serving::store::{MetadataStore, PostgresStore, SqliteStore};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::NodeError;
use crate::backup_repo::{
    BackupSummary, CHUNK_BYTES, ChainKey, Protection, Repository, Unlock, backup_error, chunk_key,
};

/// Where the store's copy is made before it is sealed; never itself backed up.
const STAGING: &str = ".backup-staging";
/// The SQLite store's files, copied through `VACUUM INTO` instead.
const SQLITE_FILES: [&str; 4] = [
    "canopy.db",
    "canopy.db-wal",
    "canopy.db-shm",
    "canopy.db-journal",
];
const STORE_SQLITE: &str = "store/canopy.db";
const STORE_POSTGRES: &str = "store/postgres.dump";
const MANIFEST_FORMAT: u32 = 1;

/// What a node keeps, as its configuration names it.
#[derive(Debug, Clone)]
pub struct BackupSource {
    pub data_dir: PathBuf,
    /// PostgreSQL; SQLite in the data directory without it.
    pub database_url: Option<String>,
    /// Key files configured outside the data directory (JWT, audit, secrets keys).
    pub outside_files: Vec<PathBuf>,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    id: String,
    chain: String,
    kind: String,
    started_at_ms: u64,
    /// `sqlite` or `postgres`.
    store: String,
    /// The store's migrations when it was copied.
    migrations: Vec<String>,
    files: Vec<FileEntry>,
}

/// `store/…`, `data/<path below the data directory>` or `outside/<absolute path>`.
#[derive(Serialize, Deserialize)]
struct FileEntry {
    path: String,
    size: u64,
    mode: u32,
    chunks: Vec<String>,
}

struct ChainState {
    key: ChainKey,
    /// Chunk ids already sealed in this chain.
    sealed: HashSet<String>,
    backups: u32,
}

/// Takes backups into one repository, each chain a full backup and the incremental ones
/// after it.
pub struct Backupper {
    repo: Repository,
    protection: Protection,
    chain: Option<ChainState>,
    /// A new chain (a full backup) after this many backups in one.
    pub full_every: u32,
}

/// What happens while a backup or a restore runs, for a progress line.
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

impl Backupper {
    pub fn new(repo: Repository, protection: Protection) -> Self {
        Self {
            repo,
            protection,
            chain: None,
            full_every: 24,
        }
    }

    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// Continues the repository's latest chain, so the next backup is incremental: the
    /// chain's key is opened with `unlock` to learn which chunks it already holds.
    pub async fn continue_latest(&mut self, unlock: &Unlock) -> Result<(), NodeError> {
        let backups = self.repo.backups().await?;
        let Some(latest) = backups.last() else {
            return Err(backup_error(format!(
                "{} holds no backup to continue: take a full one first",
                self.repo
            )));
        };
        let key = ChainKey::open(&self.repo, &latest.chain, unlock).await?;
        let mut sealed = HashSet::new();
        let in_chain: Vec<&BackupSummary> =
            backups.iter().filter(|b| b.chain == latest.chain).collect();
        for summary in &in_chain {
            let manifest = read_manifest(&self.repo, &key, &summary.id).await?;
            sealed.extend(manifest.files.into_iter().flat_map(|f| f.chunks));
        }
        self.chain = Some(ChainState {
            key,
            sealed,
            backups: in_chain.len() as u32,
        });
        Ok(())
    }

    /// Takes one backup: full when `full` is asked, when there is no chain yet, or when
    /// the chain has `full_every` backups; incremental otherwise.
    pub async fn take(
        &mut self,
        source: &BackupSource,
        full: bool,
        progress: Progress<'_>,
    ) -> Result<BackupSummary, NodeError> {
        let started = Instant::now();
        let started_at_ms = canopy_schemas::clock::now_millis() as u64;
        if !source.data_dir.is_dir() {
            return Err(backup_error(format!(
                "{} is not a data directory",
                source.data_dir.display()
            )));
        }
        let chain_full = self
            .chain
            .as_ref()
            .is_none_or(|chain| chain.backups >= self.full_every.max(1));
        let kind = if full || chain_full {
            "full"
        } else {
            "incremental"
        };
        if kind == "full" {
            let key = ChainKey::create(&self.repo, &self.protection).await?;
            self.chain = Some(ChainState {
                key,
                sealed: HashSet::new(),
                backups: 0,
            });
        }
        let chain = self.chain.as_mut().expect("a chain was just made");
        let mut tag = [0u8; 4];
        rand::rng().fill_bytes(&mut tag);
        let id = format!("{started_at_ms:013}-{}", hex::encode(tag));

        let staging = source.data_dir.join(STAGING);
        let _ = std::fs::remove_dir_all(&staging);
        crate::data_dir::make_private(&staging)?;
        let taken = async {
            progress("copying the metadata store");
            let (store, store_file, migrations) = copy_store(source, &staging).await?;
            let mut files = Vec::new();
            let mut written = 0u64;
            files.push(
                seal_file(
                    &self.repo,
                    chain,
                    &store_file,
                    store_path(store),
                    &mut written,
                )
                .await?
                .ok_or_else(|| backup_error("the store's copy vanished"))?,
            );
            let mut included: HashSet<PathBuf> = HashSet::new();
            // A file removed while the walk ran (the lake compacting) was replaced by one
            // written before it was removed: a second walk finds that one.
            for _pass in 0..3 {
                let mut vanished = false;
                for path in data_files(&source.data_dir)? {
                    if !included.insert(path.clone()) {
                        continue;
                    }
                    let relative = path.strip_prefix(&source.data_dir).expect("walked below");
                    let name = format!("data/{}", relative.display());
                    match seal_file(&self.repo, chain, &path, name, &mut written).await? {
                        Some(entry) => files.push(entry),
                        None => vanished = true,
                    }
                    if files.len() % 64 == 0 {
                        progress(&format!(
                            "{} files, {} MiB written",
                            files.len(),
                            written >> 20
                        ));
                    }
                }
                if !vanished {
                    break;
                }
            }
            for path in &source.outside_files {
                if path.starts_with(&source.data_dir) || !path.is_file() {
                    continue;
                }
                let name = format!("outside{}", path.display());
                if let Some(entry) = seal_file(&self.repo, chain, path, name, &mut written).await? {
                    files.push(entry);
                }
            }
            let manifest = Manifest {
                format: MANIFEST_FORMAT,
                id: id.clone(),
                chain: chain.key.chain.clone(),
                kind: kind.to_string(),
                started_at_ms,
                store: store.to_string(),
                migrations,
                files,
            };
            let plain = serde_json::to_vec(&manifest).map_err(backup_error)?;
            let sealed = chain.key.seal(&plain)?;
            written += sealed.len() as u64;
            self.repo
                .put(&format!("backups/{id}.manifest"), sealed)
                .await?;
            let summary = BackupSummary {
                id: id.clone(),
                chain: chain.key.chain.clone(),
                kind: kind.to_string(),
                started_at_ms,
                finished_at_ms: canopy_schemas::clock::now_millis() as u64,
                files: manifest.files.len(),
                bytes: manifest.files.iter().map(|f| f.size).sum(),
                written_bytes: written,
                store: store.to_string(),
            };
            self.repo
                .put(
                    &format!("backups/{id}.json"),
                    serde_json::to_vec_pretty(&summary).map_err(backup_error)?,
                )
                .await?;
            Ok::<_, NodeError>(summary)
        }
        .await;
        let _ = std::fs::remove_dir_all(&staging);
        let summary = match taken {
            Ok(summary) => summary,
            Err(error) => {
                metrics::counter!("canopy_backup_failures_total").increment(1);
                return Err(error);
            }
        };
        chain.backups += 1;
        metrics::histogram!("canopy_backup_duration_seconds").record(started.elapsed());
        metrics::counter!("canopy_backup_written_bytes_total").increment(summary.written_bytes);
        metrics::gauge!("canopy_backup_last_success_timestamp_seconds")
            .set(summary.finished_at_ms as f64 / 1000.0);
        Ok(summary)
    }
}

fn store_path(store: &str) -> String {
    if store == "postgres" {
        STORE_POSTGRES.to_string()
    } else {
        STORE_SQLITE.to_string()
    }
}

/// A consistent copy of the store in `staging`: (kind, file, migrations).
async fn copy_store(
    source: &BackupSource,
    staging: &Path,
) -> Result<(&'static str, PathBuf, Vec<String>), NodeError> {
    match &source.database_url {
        Some(url) => {
            let store = PostgresStore::connect(url).await?;
            let path = staging.join("postgres.dump");
            let file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| backup_error(format!("{}: {e}", path.display())))?;
            let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
            let summary = store.dump_into(&mut out).await?;
            let file = out.into_inner();
            file.sync_all().await.map_err(backup_error)?;
            Ok(("postgres", path, summary.migrations))
        }
        None => {
            let database = source.data_dir.join("canopy.db");
            if !database.is_file() {
                return Err(backup_error(format!(
                    "{} has no metadata store (canopy.db): is it a node's data directory?",
                    source.data_dir.display()
                )));
            }
            let store = SqliteStore::open(&database).await?;
            let path = staging.join("canopy.db");
            let migrations = store.snapshot_into(&path).await?;
            store.pool().close().await;
            Ok(("sqlite", path, migrations))
        }
    }
}

/// The data directory's regular files, sorted, without the store's own files, the
/// staging folder and temporaries.
fn data_files(data_dir: &Path) -> Result<Vec<PathBuf>, NodeError> {
    let mut files = Vec::new();
    let mut folders = vec![data_dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(backup_error(format!("{}: {e}", folder.display()))),
        };
        for entry in entries {
            let entry = entry.map_err(backup_error)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let at_top = folder == data_dir;
            if at_top && (name == STAGING || SQLITE_FILES.contains(&name.as_str())) {
                continue;
            }
            if name.ends_with(".tmp") {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                folders.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Seals `path` (up to its length now) into the chain; None if it vanished.
async fn seal_file(
    repo: &Repository,
    chain: &mut ChainState,
    path: &Path,
    name: String,
    written: &mut u64,
) -> Result<Option<FileEntry>, NodeError> {
    let failed = |e: std::io::Error| backup_error(format!("{}: {e}", path.display()));
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    let metadata = file.metadata().await.map_err(failed)?;
    let length = metadata.len();
    let mut entry = FileEntry {
        path: name,
        size: 0,
        mode: metadata.permissions().mode() & 0o777,
        chunks: Vec::new(),
    };
    let mut buffer = vec![0u8; CHUNK_BYTES];
    while entry.size < length {
        let want = (length - entry.size).min(CHUNK_BYTES as u64) as usize;
        let mut filled = 0;
        while filled < want {
            let read = file.read(&mut buffer[filled..want]).await.map_err(failed)?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        if filled == 0 {
            break;
        }
        let plain = &buffer[..filled];
        let id = chain.key.chunk_id(plain);
        if !chain.sealed.contains(&id) {
            let sealed = tokio::task::block_in_place(|| chain.key.seal(plain))?;
            *written += sealed.len() as u64;
            repo.put(&chunk_key(&id), sealed).await?;
            chain.sealed.insert(id.clone());
        }
        entry.chunks.push(id);
        entry.size += filled as u64;
    }
    Ok(Some(entry))
}

async fn read_manifest(repo: &Repository, key: &ChainKey, id: &str) -> Result<Manifest, NodeError> {
    let sealed = repo
        .get(&format!("backups/{id}.manifest"))
        .await?
        .ok_or_else(|| backup_error(format!("the backup {id} has no manifest in {repo}")))?;
    let plain = key.open_sealed(&format!("the manifest of {id}"), &sealed)?;
    let manifest: Manifest = serde_json::from_slice(&plain)
        .map_err(|e| backup_error(format!("the manifest of {id} is not valid: {e}")))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(backup_error(format!(
            "the backup {id} is in format {}; this Canopy reads format {MANIFEST_FORMAT}",
            manifest.format
        )));
    }
    if manifest.id != id || manifest.chain != key.chain {
        return Err(backup_error(format!(
            "the manifest stored as {id} is another backup's"
        )));
    }
    Ok(manifest)
}

/// Where a restore puts a node back.
#[derive(Debug, Clone)]
pub struct RestoreTarget {
    /// Must be absent or empty.
    pub data_dir: PathBuf,
    /// PostgreSQL for a backup of a PostgreSQL store: migrated here, and empty.
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreSummary {
    pub backup: BackupSummary,
    pub files: usize,
    pub bytes: u64,
    /// Anchor journal lines for batches the store never saw, dropped.
    pub journal_lines_dropped: usize,
    pub seconds: f64,
}

/// Brings the backup `id` (the latest without one) back into `target`.
pub async fn restore(
    repo: &Repository,
    id: Option<&str>,
    unlock: &Unlock,
    target: &RestoreTarget,
    progress: Progress<'_>,
) -> Result<RestoreSummary, NodeError> {
    let started = Instant::now();
    let backups = repo.backups().await?;
    let summary = match id {
        Some(id) => backups
            .iter()
            .find(|b| b.id == id)
            .ok_or_else(|| backup_error(format!("{repo} holds no finished backup {id}")))?,
        None => backups
            .last()
            .ok_or_else(|| backup_error(format!("{repo} holds no finished backup")))?,
    }
    .clone();
    let key = ChainKey::open(repo, &summary.chain, unlock).await?;
    let manifest = read_manifest(repo, &key, &summary.id).await?;
    if manifest.store == "postgres" && target.database_url.is_none() {
        return Err(backup_error(
            "the backup's store is PostgreSQL: name the database to restore it into (--database-url)",
        ));
    }
    if manifest.store == "sqlite" && target.database_url.is_some() {
        return Err(backup_error(
            "the backup's store is SQLite (in the data directory): restore without --database-url",
        ));
    }
    let occupied = std::fs::read_dir(&target.data_dir)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if occupied {
        return Err(backup_error(format!(
            "{} is not empty: restore into an empty or new data directory",
            target.data_dir.display()
        )));
    }
    let building = target.data_dir.with_extension("restoring");
    let _ = std::fs::remove_dir_all(&building);
    crate::data_dir::make_private(&building)?;
    let restored = async {
        let mut bytes = 0u64;
        let mut store_file = None;
        for (done, entry) in manifest.files.iter().enumerate() {
            let destination = match destination(&building, &entry.path)? {
                Destination::Store(relative) => {
                    let path = building.join(STAGING).join(relative);
                    store_file = Some(path.clone());
                    path
                }
                Destination::Data(path) => path,
                Destination::Outside(path) => {
                    if path.exists() {
                        tracing::info!(path = %path.display(), "a key file outside the data directory is already in place; kept");
                        continue;
                    }
                    path
                }
            };
            write_restored(repo, &key, entry, &destination).await?;
            bytes += entry.size;
            if done % 64 == 63 {
                progress(&format!("{} of {} files restored", done + 1, manifest.files.len()));
            }
        }
        let store_file = store_file.ok_or_else(|| backup_error("the backup holds no store"))?;
        progress("loading the metadata store");
        match &target.database_url {
            Some(url) => {
                let store = PostgresStore::connect(url).await?;
                store.migrate().await?;
                let file = tokio::fs::File::open(&store_file).await.map_err(backup_error)?;
                let mut input = tokio::io::BufReader::with_capacity(1 << 20, file);
                store.load_dump(&mut input, &manifest.migrations).await?;
            }
            None => {
                std::fs::rename(&store_file, building.join("canopy.db")).map_err(backup_error)?;
            }
        }
        let _ = std::fs::remove_dir_all(building.join(STAGING));
        let dropped = trim_anchor_journal(&building, target).await?;
        Ok::<_, NodeError>((bytes, dropped))
    }
    .await;
    let (bytes, journal_lines_dropped) = match restored {
        Ok(done) => done,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&building);
            return Err(error);
        }
    };
    if target.data_dir.exists() {
        std::fs::remove_dir(&target.data_dir).map_err(backup_error)?;
    }
    std::fs::rename(&building, &target.data_dir).map_err(backup_error)?;
    if let Some(parent) = target
        .data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(backup_error)?;
    }
    Ok(RestoreSummary {
        files: manifest.files.len(),
        bytes,
        journal_lines_dropped,
        seconds: started.elapsed().as_secs_f64(),
        backup: summary,
    })
}

enum Destination {
    Store(String),
    Data(PathBuf),
    Outside(PathBuf),
}

/// Where a manifest's path goes; a path climbing out of its place is refused (a
/// manifest is sealed, but a restore trusts nothing it did not need to).
fn destination(building: &Path, path: &str) -> Result<Destination, NodeError> {
    let plain = |relative: &str| {
        let relative = Path::new(relative);
        relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
            .then(|| relative.to_path_buf())
            .ok_or_else(|| backup_error(format!("the manifest names an unsafe path: {path}")))
    };
    if let Some(name) = path.strip_prefix("store/") {
        plain(name)?;
        Ok(Destination::Store(name.to_string()))
    } else if let Some(relative) = path.strip_prefix("data/") {
        Ok(Destination::Data(building.join(plain(relative)?)))
    } else if let Some(absolute) = path.strip_prefix("outside/") {
        Ok(Destination::Outside(Path::new("/").join(plain(absolute)?)))
    } else {
        Err(backup_error(format!(
            "the manifest names an unknown path: {path}"
        )))
    }
}

async fn write_restored(
    repo: &Repository,
    key: &ChainKey,
    entry: &FileEntry,
    destination: &Path,
) -> Result<(), NodeError> {
    use std::io::Write;
    let failed = |e: std::io::Error| backup_error(format!("{}: {e}", destination.display()));
    if let Some(parent) = destination.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(destination)
        .map_err(failed)?;
    let mut size = 0u64;
    for id in &entry.chunks {
        let sealed = repo.get(&chunk_key(id)).await?.ok_or_else(|| {
            backup_error(format!(
                "the chunk {id} of {} is missing from {repo}",
                entry.path
            ))
        })?;
        let plain =
            tokio::task::block_in_place(|| key.open_sealed(&format!("the chunk {id}"), &sealed))?;
        if key.chunk_id(&plain) != *id {
            return Err(backup_error(format!(
                "the chunk {id} of {} holds other bytes than it was sealed with",
                entry.path
            )));
        }
        file.write_all(&plain).map_err(failed)?;
        size += plain.len() as u64;
    }
    if size != entry.size {
        return Err(backup_error(format!(
            "{} restored to {size} bytes, not {}",
            entry.path, entry.size
        )));
    }
    file.sync_all().map_err(failed)?;
    std::fs::set_permissions(
        destination,
        std::fs::Permissions::from_mode(entry.mode & 0o700),
    )
    .map_err(failed)
}

/// Drops the anchor journal's lines for batches the restored store does not hold.
async fn trim_anchor_journal(building: &Path, target: &RestoreTarget) -> Result<usize, NodeError> {
    let journal = building.join("anchors").join("journal.jsonl");
    let Ok(text) = std::fs::read_to_string(&journal) else {
        return Ok(0);
    };
    let last_batch: Option<i64> = match &target.database_url {
        Some(url) => {
            PostgresStore::connect(url)
                .await?
                .last_anchor_batch()
                .await?
        }
        None => {
            let store = SqliteStore::open(&building.join("canopy.db")).await?;
            let last = store.last_anchor_batch().await?;
            store.pool().close().await;
            last
        }
    };
    let mut kept = String::with_capacity(text.len());
    let mut dropped = 0;
    for line in text.lines() {
        let batch = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["batch_id"].as_i64());
        if batch.is_some_and(|b| last_batch.is_some_and(|last| b <= last)) {
            kept.push_str(line);
            kept.push('\n');
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        std::fs::write(&journal, kept).map_err(backup_error)?;
    }
    Ok(dropped)
}

/// Names and explains the backup metrics, for a process that serves them.
pub fn describe_metrics() {
    metrics::describe_histogram!(
        "canopy_backup_duration_seconds",
        metrics::Unit::Seconds,
        "How long each backup took, from the store's copy to its summary."
    );
    metrics::describe_counter!(
        "canopy_backup_written_bytes_total",
        metrics::Unit::Bytes,
        "Sealed bytes written to the backup repository."
    );
    metrics::describe_counter!(
        "canopy_backup_failures_total",
        "Backups that failed (each is logged with its error)."
    );
    metrics::describe_gauge!(
        "canopy_backup_last_success_timestamp_seconds",
        metrics::Unit::Seconds,
        "When the latest successful backup finished (Unix time)."
    );
    metrics::counter!("canopy_backup_failures_total").increment(0);
}

/// Takes a backup every `every` until `stop` turns true; a failed one is logged and
/// counted, and the next is tried on time.
pub async fn run_schedule(
    mut backupper: Backupper,
    source: BackupSource,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let quiet = |_: &str| {};
        match backupper.take(&source, false, &quiet).await {
            Ok(summary) => tracing::info!(
                id = %summary.id,
                kind = %summary.kind,
                files = summary.files,
                bytes = summary.bytes,
                written_bytes = summary.written_bytes,
                seconds = (summary.finished_at_ms - summary.started_at_ms) as f64 / 1000.0,
                "backup taken"
            ),
            Err(error) => tracing::error!(code = error.code(), %error, "a scheduled backup failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}
