//! Choosing an engine by name, with a fallback when io_uring is unavailable.

use std::sync::Arc;

use crate::{Backing, DEFAULT_SPLIT_BYTES, Engine, Error, SplitEngine, SyncEngine, UringEngine};

/// Which I/O engine a queue worker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// io_uring where the kernel allows it and the backing supports
    /// non-blocking I/O. On a backing without it (tmpfs, see
    /// [`UringEngine::is_efficient_for`]) the [`SplitEngine`]: small requests
    /// synchronously, large ones on io_uring's workers. The synchronous
    /// engine where io_uring is unavailable.
    #[default]
    Auto,
    /// The synchronous engine.
    Sync,
    /// io_uring; opening fails where it is unavailable.
    Uring,
}

/// An engine name that is not one of `auto`, `sync`, `uring`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown I/O engine {0:?}: use auto, sync or uring")]
pub struct ParseEngineKindError(String);

impl std::str::FromStr for EngineKind {
    type Err = ParseEngineKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "sync" => Ok(Self::Sync),
            "uring" | "io_uring" => Ok(Self::Uring),
            other => Err(ParseEngineKindError(other.to_owned())),
        }
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Sync => "sync",
            Self::Uring => "uring",
        })
    }
}

/// Opens an engine of `kind` over `backing` with room for `depth` requests
/// in flight. `Auto` uses [`SplitEngine`] where [`UringEngine::is_efficient_for`]
/// says no, and [`SyncEngine`] where [`UringEngine::is_supported`] says no or
/// creating the ring fails.
pub fn open_engine(
    kind: EngineKind,
    backing: Arc<Backing>,
    depth: usize,
) -> Result<Box<dyn Engine>, Error> {
    match kind {
        EngineKind::Sync => Ok(Box::new(SyncEngine::new(backing, depth))),
        EngineKind::Uring => Ok(Box::new(UringEngine::new(backing, depth)?)),
        EngineKind::Auto if !UringEngine::is_supported() => {
            Ok(Box::new(SyncEngine::new(backing, depth)))
        }
        EngineKind::Auto if !UringEngine::is_efficient_for(&backing) => {
            tracing::info!(
                path = %backing.path().display(),
                split_bytes = DEFAULT_SPLIT_BYTES,
                "no non-blocking I/O on this backing (tmpfs?): small requests run synchronously, large ones on io_uring"
            );
            let split = SplitEngine::new(Arc::clone(&backing), depth, DEFAULT_SPLIT_BYTES);
            Ok(or_sync(split, backing, depth))
        }
        EngineKind::Auto => {
            let uring = UringEngine::new(Arc::clone(&backing), depth);
            Ok(or_sync(uring, backing, depth))
        }
    }
}

/// `Auto`'s fallback: the engine if it could be created, else the sync engine.
fn or_sync<E: Engine + 'static>(
    engine: Result<E, Error>,
    backing: Arc<Backing>,
    depth: usize,
) -> Box<dyn Engine> {
    match engine {
        Ok(e) => Box::new(e),
        Err(e) => {
            tracing::warn!(error = %e, "io_uring engine failed; using the sync engine");
            Box::new(SyncEngine::new(backing, depth))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OpenOptions;

    #[test]
    fn names_round_trip_and_bad_names_say_what_to_use() {
        for k in [EngineKind::Auto, EngineKind::Sync, EngineKind::Uring] {
            assert_eq!(k.to_string().parse::<EngineKind>(), Ok(k));
        }
        let err = "aio".parse::<EngineKind>().unwrap_err();
        assert!(err.to_string().contains("auto, sync or uring"), "{err}");
    }

    #[test]
    fn auto_splits_on_tmpfs_where_io_uring_would_punt_every_request() {
        let shm = std::path::Path::new("/dev/shm");
        if !shm.is_dir() {
            eprintln!("no /dev/shm: skipping");
            return;
        }
        let f = tempfile::NamedTempFile::new_in(shm).unwrap();
        f.as_file().set_len(4096).unwrap();
        let b = Arc::new(Backing::open(f.path(), OpenOptions::default()).unwrap());
        assert!(!UringEngine::is_efficient_for(&b));
        let want = if UringEngine::is_supported() {
            "sync+io_uring"
        } else {
            "sync"
        };
        assert_eq!(
            open_engine(EngineKind::Auto, Arc::clone(&b), 4)
                .unwrap()
                .name(),
            want
        );
        if UringEngine::is_supported() {
            // Asked for explicitly, io_uring is still used.
            assert_eq!(
                open_engine(EngineKind::Uring, b, 4).unwrap().name(),
                "io_uring"
            );
        }
    }

    #[test]
    fn open_engine_gives_the_requested_kind() {
        // The temp dir is on a disk filesystem (ext4 here), which supports non-blocking I/O.
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(4096).unwrap();
        let b = Arc::new(Backing::open(f.path(), OpenOptions::default()).unwrap());
        let sync = open_engine(EngineKind::Sync, Arc::clone(&b), 4).unwrap();
        assert_eq!(sync.name(), "sync");
        let auto = open_engine(EngineKind::Auto, Arc::clone(&b), 4).unwrap();
        let uring = open_engine(EngineKind::Uring, Arc::clone(&b), 4);
        if !UringEngine::is_supported() {
            assert_eq!(auto.name(), "sync");
            assert!(uring.is_err());
        } else {
            assert_eq!(uring.unwrap().name(), "io_uring");
            let want = if UringEngine::is_efficient_for(&b) {
                "io_uring"
            } else {
                "sync+io_uring"
            };
            assert_eq!(auto.name(), want);
        }
    }
}
