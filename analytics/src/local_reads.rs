//! The local file system as a query reads the lake from it: a file's byte ranges are read
//! on the query's own thread.
//!
//! object_store's `LocalFileSystem` hands every read to tokio's blocking pool, so each
//! file a scan opens costs a hand-off to another thread and a wake-up back, twice over
//! when both run on two cores; a lake holds many small files (a day's per log partition),
//! and the hand-offs were most of the time a query waited for each file's first batch.
//! The SQL runtime's threads do nothing but run queries (`sql.rs`), so a read blocking one
//! of them for the time a page-cache read takes holds up no one else. Everything else
//! (listing, heads, whole-object gets) is `LocalFileSystem`'s.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

#[derive(Debug, Default)]
pub(crate) struct LocalReads(LocalFileSystem);

impl std::fmt::Display for LocalReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalReads({})", self.0)
    }
}

/// object_store's own errors for a file that could not be opened or read, so that a file
/// deleted under a query is still `NotFound` to whoever classifies the failure.
fn read_error(path: &std::path::Path, source: std::io::Error) -> object_store::Error {
    let path = path.display().to_string();
    match source.kind() {
        std::io::ErrorKind::NotFound => object_store::Error::NotFound {
            path,
            source: Box::new(source),
        },
        _ => object_store::Error::Generic {
            store: "LocalReads",
            source: format!("reading {path}: {source}").into(),
        },
    }
}

fn read_range(file: &File, path: &std::path::Path, range: &Range<u64>) -> Result<Bytes> {
    let length = usize::try_from(range.end.saturating_sub(range.start)).map_err(|_| {
        object_store::Error::Generic {
            store: "LocalReads",
            source: format!("{}: range {range:?} too large", path.display()).into(),
        }
    })?;
    let mut bytes = vec![0; length];
    file.read_exact_at(&mut bytes, range.start)
        .map_err(|source| read_error(path, source))?;
    Ok(Bytes::from(bytes))
}

#[async_trait]
impl ObjectStore for LocalReads {
    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let path = self.0.path_to_filesystem(location)?;
        let file = File::open(&path).map_err(|source| read_error(&path, source))?;
        // A footer that claims a column chunk past the end of its file is refused before
        // a buffer of the claimed size is allocated.
        let size = file
            .metadata()
            .map_err(|source| read_error(&path, source))?
            .len();
        if let Some(range) = ranges.iter().find(|r| r.start > r.end || r.end > size) {
            return Err(object_store::Error::Generic {
                store: "LocalReads",
                source: format!(
                    "{}: range {range:?} outside its {size} bytes",
                    path.display()
                )
                .into(),
            });
        }
        ranges
            .iter()
            .map(|range| read_range(&file, &path, range))
            .collect()
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.0.get_opts(location, options).await
    }

    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.0.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.0.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.0.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.0.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.0.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ranges of a file as asked, and a range past its end refused at once (were its
    /// claimed size allocated first, a terabyte would abort the test).
    #[tokio::test]
    async fn reads_the_ranges_asked_and_refuses_one_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("part.parquet"), b"0123456789").unwrap();
        let store = LocalReads::default();
        let location = Path::from_absolute_path(dir.path().join("part.parquet")).unwrap();
        let read = store.get_ranges(&location, &[0..3, 7..10]).await.unwrap();
        assert_eq!(
            read,
            [Bytes::from_static(b"012"), Bytes::from_static(b"789")]
        );
        let error = store
            .get_ranges(&location, &[0..3, 5..(1 << 40)])
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("outside its 10 bytes"),
            "{error}"
        );
        let gone = Path::from_absolute_path(dir.path().join("gone.parquet")).unwrap();
        let error = store.get_ranges(&gone, &[0..1, 2..3]).await.unwrap_err();
        assert!(
            matches!(error, object_store::Error::NotFound { .. }),
            "{error}"
        );
    }
}
