//! Where the lake's files live: a local folder, or a prefix of an S3-compatible bucket.
//!
//! Both give the same four things the lake needs: list a table's files with their sizes and
//! times, write a file so that no reader sees part of it, read one, delete one. A local
//! file appears by rename after fsync; an object by one PUT, which S3 makes visible whole or
//! not at all.
//!
//! The object store is asynchronous and the lake's writers are not (they run on blocking
//! threads). Its requests run on a small runtime of its own, so that a blocking caller can
//! wait for them from any thread, and DataFusion's reads from the caller's runtime go
//! through the same connections.

use std::fs::{self, File};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use datafusion::execution::object_store::ObjectStoreUrl;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::SpawnedReqwestConnector;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

use crate::AnalyticsError;

/// Where a lake is: `LakeLocation::parse("s3://bucket/prefix")` or a local folder.
///
/// An S3 location takes its credentials, region and endpoint from the usual `AWS_*`
/// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
/// `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...), or from options given to
/// [`LakeLocation::s3`].
#[derive(Clone, Debug)]
pub enum LakeLocation {
    Local(PathBuf),
    ObjectStore(Arc<ObjectLake>),
}

impl From<PathBuf> for LakeLocation {
    fn from(path: PathBuf) -> Self {
        Self::Local(path)
    }
}

impl From<&Path> for LakeLocation {
    fn from(path: &Path) -> Self {
        Self::Local(path.to_path_buf())
    }
}

impl From<&PathBuf> for LakeLocation {
    fn from(path: &PathBuf) -> Self {
        Self::Local(path.clone())
    }
}

impl std::fmt::Display for LakeLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(path) => write!(f, "{}", path.display()),
            Self::ObjectStore(lake) => write!(f, "{}", lake.url),
        }
    }
}

impl LakeLocation {
    /// `s3://bucket/prefix` (or `s3a://`) is a bucket configured from the environment;
    /// anything without a scheme is a local folder.
    pub fn parse(text: &str) -> Result<Self, AnalyticsError> {
        match text.split_once("://") {
            None => Ok(Self::Local(PathBuf::from(text))),
            Some(("file", path)) => Ok(Self::Local(PathBuf::from(path))),
            Some(("s3" | "s3a", _)) => Self::s3(text, std::iter::empty::<(String, String)>()),
            Some((scheme, _)) => Err(AnalyticsError::Location(format!(
                "{text}: the lake is a local folder or s3://bucket/prefix, not {scheme}://"
            ))),
        }
    }

    /// A bucket prefix, configured from the `AWS_*` environment and then `options`
    /// (`aws_endpoint`, `aws_allow_http`, `aws_access_key_id`, ...: object_store's keys).
    pub fn s3<K: AsRef<str>, V: Into<String>>(
        url: &str,
        options: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, AnalyticsError> {
        let location_error = |reason: String| AnalyticsError::Location(format!("{url}: {reason}"));
        let parsed = Url::parse(url).map_err(|e| location_error(e.to_string()))?;
        let bucket = parsed
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| location_error("no bucket".into()))?
            .to_string();
        let prefix =
            ObjectPath::from_url_path(parsed.path()).map_err(|e| location_error(e.to_string()))?;
        let runtime = IoRuntime::start().map_err(|e| location_error(e.to_string()))?;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_http_connector(SpawnedReqwestConnector::new(runtime.handle()));
        for (key, value) in options {
            let key: AmazonS3ConfigKey = key
                .as_ref()
                .parse()
                .map_err(|e: object_store::Error| location_error(e.to_string()))?;
            builder = builder.with_config(key, value);
        }
        let store = builder.build().map_err(|e| location_error(e.to_string()))?;
        let bucket_url =
            Url::parse(&format!("s3://{bucket}/")).map_err(|e| location_error(e.to_string()))?;
        Ok(Self::ObjectStore(Arc::new(ObjectLake {
            url: format!("s3://{bucket}/{prefix}"),
            bucket_url,
            store: Arc::new(store),
            prefix,
            runtime,
        })))
    }

    /// The keys of a table's Parquet files (`votes/date=…/part-….parquet`), superseded
    /// ones included.
    pub fn table_files(&self, table: &str) -> Result<Vec<String>, AnalyticsError> {
        Ok(self
            .list(table)?
            .into_iter()
            .map(|listed| listed.key)
            .filter(|key| key.ends_with(".parquet"))
            .collect())
    }

    /// The files under `table/`, as (key below the lake's root, bytes, modified).
    pub(crate) fn list(&self, table: &str) -> Result<Vec<Listed>, AnalyticsError> {
        match self {
            Self::Local(root) => list_local(root, table, &|_| true),
            Self::ObjectStore(lake) => {
                let lake2 = Arc::clone(lake);
                let table = table.to_string();
                lake.runtime
                    .block(async move { lake2.list(&table).await })
                    .and_then(|r| r)
            }
        }
    }

    /// As [`Self::list`], for async callers (DataFusion planning a scan), and only the
    /// folders `keep_folder` keeps (by name: `date=…`, `_layout`, …): on a local disk the
    /// others are not read.
    pub(crate) async fn list_async(
        &self,
        table: &str,
        keep_folder: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<Listed>, AnalyticsError> {
        match self {
            Self::Local(root) => list_local(root, table, keep_folder),
            Self::ObjectStore(lake) => {
                let mut listed = lake.list(table).await?;
                listed.retain(|file| file.key.split('/').nth(1).is_some_and(keep_folder));
                Ok(listed)
            }
        }
    }

    /// Writes the file `key` whole: `encode` writes its bytes, then it appears atomically.
    pub(crate) fn write<E>(&self, key: &str, encode: E) -> Result<(), AnalyticsError>
    where
        E: FnOnce(Body) -> Result<Body, AnalyticsError>,
    {
        match self {
            Self::Local(root) => {
                let path = root.join(key);
                let dir = path.parent().unwrap_or(root).to_path_buf();
                fs::create_dir_all(&dir).map_err(AnalyticsError::io(&dir))?;
                // Named by the process too: two processes never share a temporary.
                let temp = path.with_extension(format!("parquet.{}.tmp", std::process::id()));
                let file = File::create(&temp).map_err(AnalyticsError::io(&temp))?;
                let Body::File(file) = encode(Body::File(file))? else {
                    unreachable!("encode hands back the body it was given");
                };
                file.sync_all().map_err(AnalyticsError::io(&temp))?;
                fs::rename(&temp, &path).map_err(AnalyticsError::io(&path))?;
                File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .map_err(AnalyticsError::io(&dir))
            }
            Self::ObjectStore(lake) => {
                let Body::Memory(bytes) = encode(Body::Memory(Vec::new()))? else {
                    unreachable!("encode hands back the body it was given");
                };
                let (lake2, key) = (Arc::clone(lake), key.to_string());
                lake.runtime.block(async move {
                    let path = lake2.path(&key);
                    lake2
                        .store
                        .put(&path, PutPayload::from(bytes))
                        .await
                        .map_err(|e| lake2.error(&key, e))?;
                    Ok(())
                })?
            }
        }
    }

    pub(crate) fn delete(&self, key: &str) -> Result<(), AnalyticsError> {
        match self {
            Self::Local(root) => {
                let path = root.join(key);
                fs::remove_file(&path).map_err(AnalyticsError::io(&path))
            }
            Self::ObjectStore(lake) => {
                let (lake2, key) = (Arc::clone(lake), key.to_string());
                lake.runtime.block(async move {
                    lake2
                        .store
                        .delete(&lake2.path(&key))
                        .await
                        .map_err(|e| lake2.error(&key, e))
                })?
            }
        }
    }

    /// A whole file.
    pub(crate) fn read(&self, key: &str) -> Result<Contents, AnalyticsError> {
        match self {
            Self::Local(root) => {
                let path = root.join(key);
                Ok(Contents::File(
                    File::open(&path).map_err(AnalyticsError::io(&path))?,
                ))
            }
            Self::ObjectStore(lake) => {
                let (lake2, key) = (Arc::clone(lake), key.to_string());
                let bytes = lake.runtime.block(async move {
                    let got = lake2
                        .store
                        .get(&lake2.path(&key))
                        .await
                        .map_err(|e| lake2.error(&key, e))?;
                    got.bytes().await.map_err(|e| lake2.error(&key, e))
                })??;
                Ok(Contents::Memory(bytes))
            }
        }
    }

    /// A file's last `wanted` bytes (all of it if shorter): where Parquet keeps its footer.
    pub(crate) fn read_tail(
        &self,
        key: &str,
        size: u64,
        wanted: u64,
    ) -> Result<Bytes, AnalyticsError> {
        let start = size.saturating_sub(wanted);
        match self {
            Self::Local(root) => {
                use std::io::{Read, Seek, SeekFrom};
                let path = root.join(key);
                let mut file = File::open(&path).map_err(AnalyticsError::io(&path))?;
                file.seek(SeekFrom::Start(start))
                    .map_err(AnalyticsError::io(&path))?;
                let mut out = Vec::with_capacity((size - start) as usize);
                file.read_to_end(&mut out)
                    .map_err(AnalyticsError::io(&path))?;
                Ok(Bytes::from(out))
            }
            Self::ObjectStore(lake) => {
                let (lake2, key) = (Arc::clone(lake), key.to_string());
                lake.runtime.block(async move {
                    lake2
                        .store
                        .get_range(&lake2.path(&key), start..size)
                        .await
                        .map_err(|e| lake2.error(&key, e))
                })?
            }
        }
    }

    /// Removes what a crash left half-written (only local folders have such leftovers: an
    /// object that was not put whole does not exist); with `older_than`, only leftovers
    /// not touched for that long.
    pub(crate) fn clean(
        &self,
        table: &str,
        older_than: Option<std::time::Duration>,
    ) -> Result<(), AnalyticsError> {
        let Self::Local(root) = self else {
            return Ok(());
        };
        let dir = root.join(table);
        fs::create_dir_all(&dir).map_err(AnalyticsError::io(&dir))?;
        for folder in subdirs(&dir)? {
            for entry in fs::read_dir(&folder).map_err(AnalyticsError::io(&folder))? {
                let path = entry.map_err(AnalyticsError::io(&folder))?.path();
                if path.extension().is_none_or(|e| e != "tmp") {
                    continue;
                }
                let untouched = |age: std::time::Duration| {
                    fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|at| at.elapsed().ok())
                        .is_some_and(|elapsed| elapsed >= age)
                };
                if older_than.is_none_or(untouched) {
                    match fs::remove_file(&path) {
                        // Another process renamed or removed it meanwhile.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        other => other.map_err(AnalyticsError::io(&path))?,
                    }
                }
            }
        }
        Ok(())
    }

    /// Where a query reads the lake's files: the store as DataFusion knows it (the local
    /// file system, registered in every session, or the bucket) and the root's path in it.
    pub(crate) fn query_root(&self) -> Result<QueryRoot, AnalyticsError> {
        match self {
            Self::Local(root) => {
                let canonical = fs::canonicalize(root).map_err(AnalyticsError::io(root))?;
                let prefix = ObjectPath::from_absolute_path(&canonical)
                    .map_err(|e| AnalyticsError::Location(format!("{}: {e}", root.display())))?;
                Ok(QueryRoot {
                    url: ObjectStoreUrl::local_filesystem(),
                    prefix,
                })
            }
            Self::ObjectStore(lake) => Ok(QueryRoot {
                url: ObjectStoreUrl::parse(lake.bucket_url.as_str())
                    .map_err(|e| AnalyticsError::Location(format!("{}: {e}", lake.bucket_url)))?,
                prefix: lake.prefix.clone(),
            }),
        }
    }

    /// The bucket and its store, for a query session to register.
    pub(crate) fn object_store(&self) -> Option<(&Url, Arc<dyn ObjectStore>)> {
        match self {
            Self::Local(_) => None,
            Self::ObjectStore(lake) => Some((&lake.bucket_url, Arc::clone(&lake.store))),
        }
    }
}

/// The lake's root as a query session reads it ([`LakeLocation::query_root`]).
pub(crate) struct QueryRoot {
    pub url: ObjectStoreUrl,
    prefix: ObjectPath,
}

impl QueryRoot {
    /// The path of the file `key` (below the lake's root) in the query's store.
    pub fn path(&self, key: &str) -> ObjectPath {
        key_under(&self.prefix, key)
    }
}

fn key_under(prefix: &ObjectPath, key: &str) -> ObjectPath {
    key.split('/')
        .filter(|part| !part.is_empty())
        .fold(prefix.clone(), |path, part| path.join(part))
}

/// A bucket prefix holding a lake.
pub struct ObjectLake {
    /// `s3://bucket/prefix`, as shown to people.
    url: String,
    /// `s3://bucket/`, as DataFusion knows the store.
    bucket_url: Url,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    runtime: IoRuntime,
}

impl std::fmt::Debug for ObjectLake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectLake")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl ObjectLake {
    fn path(&self, key: &str) -> ObjectPath {
        key_under(&self.prefix, key)
    }

    fn error(&self, key: &str, error: object_store::Error) -> AnalyticsError {
        AnalyticsError::Store {
            location: format!("{}/{key}", self.url.trim_end_matches('/')),
            reason: error.to_string(),
        }
    }

    async fn list(&self, table: &str) -> Result<Vec<Listed>, AnalyticsError> {
        let prefix = self.path(table);
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.error(table, e))?;
        let root: Vec<_> = self.prefix.parts().collect();
        Ok(objects
            .into_iter()
            .map(|meta| {
                let parts: Vec<_> = meta.location.parts().skip(root.len()).collect();
                Listed {
                    key: parts
                        .iter()
                        .map(|p| p.as_ref())
                        .collect::<Vec<_>>()
                        .join("/"),
                    bytes: meta.size,
                    modified: SystemTime::from(meta.last_modified),
                }
            })
            .collect())
    }
}

/// A file as listed: its key below the lake's root (`votes/date=…/part-….parquet`).
#[derive(Clone, Debug)]
pub(crate) struct Listed {
    pub key: String,
    pub bytes: u64,
    pub modified: SystemTime,
}

/// Where a file's bytes go while it is written.
pub(crate) enum Body {
    File(File),
    Memory(Vec<u8>),
}

impl std::io::Write for Body {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::File(file) => file.write(buf),
            Self::Memory(bytes) => bytes.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::File(file) => file.flush(),
            Self::Memory(_) => Ok(()),
        }
    }
}

/// A file's bytes, to read Parquet from.
pub(crate) enum Contents {
    File(File),
    Memory(Bytes),
}

/// A runtime of the lake's own for object-store requests; shut down without waiting when
/// the lake goes (a runtime cannot be dropped inside another's task).
struct IoRuntime(Option<tokio::runtime::Runtime>);

impl IoRuntime {
    fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("canopy-lake-io")
            .enable_all()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.runtime().handle().clone()
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("the runtime lives until drop")
    }

    /// Runs `work` on the lake's runtime and waits for it, from any thread.
    fn block<F>(&self, work: F) -> Result<F::Output, AnalyticsError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        self.runtime().spawn(async move {
            let _ = done.send(work.await);
        });
        result.recv().map_err(|_| AnalyticsError::Store {
            location: "the lake's I/O runtime".into(),
            reason: "stopped before the request finished".into(),
        })
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

fn list_local(
    root: &Path,
    table: &str,
    keep_folder: &dyn Fn(&str) -> bool,
) -> Result<Vec<Listed>, AnalyticsError> {
    let dir = root.join(table);
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for folder in subdirs(&dir)? {
        let folder_name = folder
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !keep_folder(&folder_name) {
            continue;
        }
        for entry in fs::read_dir(&folder).map_err(AnalyticsError::io(&folder))? {
            let entry = entry.map_err(AnalyticsError::io(&folder))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let meta = entry.metadata().map_err(AnalyticsError::io(entry.path()))?;
            if !meta.is_file() {
                continue;
            }
            out.push(Listed {
                key: format!("{table}/{folder_name}/{name}"),
                bytes: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
    }
    Ok(out)
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, AnalyticsError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(AnalyticsError::io(dir))? {
        let path = entry.map_err(AnalyticsError::io(dir))?.path();
        if path.is_dir() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}
