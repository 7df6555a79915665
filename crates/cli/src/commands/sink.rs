//! Where a value an executor receives goes (a redeemed material, a decrypted plaintext): its raw
//! bytes on stdout, or a new owner-only file.

use std::io::Write;
use std::path::Path;

use crate::failure::Failure;

/// Where a value goes: a new owner-only file, or stdout.
pub(crate) enum Sink<'a> {
    File(std::fs::File, &'a Path),
    Stdout,
}

impl<'a> Sink<'a> {
    /// A new owner-only file at `path`, made before the value is asked for: a ref is spent, or
    /// a key used, only for a file that can be written.
    pub(crate) fn file(path: &'a Path) -> Result<Self, String> {
        Ok(Sink::File(super::create_owner_only(path)?, path))
    }

    /// Writes all of `bytes`, or fails; a file that was not written whole is removed.
    pub(crate) fn write(self, bytes: &[u8]) -> Result<(), Failure> {
        match self {
            Sink::File(mut file, path) => file
                .write_all(bytes)
                .and_then(|()| file.sync_all())
                .map_err(|e| {
                    let _ = std::fs::remove_file(path);
                    Failure::from(format!("{}: {e}", path.display()))
                }),
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)
                    .and_then(|()| out.flush())
                    .map_err(|e| Failure::from(format!("writing the value: {e}")))
            }
        }
    }

    /// Gives up: a file made for the value is removed.
    pub(crate) fn discard(self) {
        if let Sink::File(file, path) = self {
            drop(file);
            let _ = std::fs::remove_file(path);
        }
    }
}
