//! The data directory holds the voter salts, the signing keys and the vote log: only the
//! node's own user may enter it.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::NodeError;

/// Creates `dir` (and its missing parents) readable by the owner only, and narrows an
/// existing one that others could enter: a directory of mode 0700 keeps every file inside
/// it from other local users, whatever the file's own mode.
pub fn make_private(dir: &Path) -> Result<(), NodeError> {
    let failed = |what: &str, e: std::io::Error| {
        NodeError::Internal(format!("{what} the data directory {}: {e}", dir.display()))
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| failed("creating", e))?;
    let mode = std::fs::metadata(dir)
        .map_err(|e| failed("reading", e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{:o}", mode & 0o777),
            "the data directory was open to other users; narrowing it to 0700"
        );
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| failed("narrowing", e))?;
    }
    Ok(())
}
