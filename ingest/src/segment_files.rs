//! A segment log's files on disk, for those who look at the files rather than read through
//! the log: operators, and the tests that damage a segment on purpose.

use std::path::{Path, PathBuf};

use crate::IngestError;

/// The segment files of the log in `dir`, oldest first: the files named
/// `<sequence of the first frame>.seg`, as the log reads them when it opens.
pub fn segment_files(dir: &Path) -> Result<Vec<PathBuf>, IngestError> {
    let mut by_first_frame = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(IngestError::io(dir))? {
        let path = entry.map_err(IngestError::io(dir))?.path();
        let first_frame = path
            .file_name()
            .and_then(|name| name.to_str()?.strip_suffix(".seg")?.parse::<u64>().ok());
        if let Some(first_frame) = first_frame {
            by_first_frame.push((first_frame, path));
        }
    }
    by_first_frame.sort_unstable();
    Ok(by_first_frame.into_iter().map(|(_, path)| path).collect())
}
