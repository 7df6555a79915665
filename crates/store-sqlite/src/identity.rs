//! Notices when the database file is removed or replaced under a running store.
//!
//! SQLite keeps writing to an open file after it is unlinked, so a deleted database would go on
//! acknowledging commits that no restart can find. The writer checks before every batch that the
//! path still names the file it opened, and refuses to commit otherwise.

use std::path::{Path, PathBuf};

/// The database file as opened: its path and (on Unix) its device and inode.
#[derive(Clone, Debug)]
pub(crate) struct FileIdentity {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        Some((0, 0))
    }
}

impl FileIdentity {
    pub(crate) fn of(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            id: identity(path),
        }
    }

    /// Whether the path still names the file that was opened.
    pub(crate) fn still_there(&self) -> bool {
        self.id.is_some() && identity(&self.path) == self.id
    }
}
