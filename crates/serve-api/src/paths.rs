//! Where a served volume's files live under the run directory, so that
//! `serve`, `grow`, `status` and `kvm-args` find each other with no state
//! file: the claim lock, the control socket and the default vhost-user
//! socket are all named after the volume's key (the core's unambiguous
//! provider + volume join).

use std::path::{Path, PathBuf};

/// The default run directory.
pub const DEFAULT_RUN_DIR: &str = "/run/extstorage";
/// Longest unix socket path (`sun_path` holds 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The run directory layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl Default for RunDir {
    fn default() -> Self {
        RunDir::new(DEFAULT_RUN_DIR)
    }
}

/// FNV-1a, 64 bits: a stable short name for keys too long for a socket path.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl RunDir {
    /// A layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `serve` keeps its claim lock and control socket.
    pub fn serve_dir(&self) -> PathBuf {
        self.root.join("serve")
    }

    /// Where default vhost-user sockets go.
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("vhost-user")
    }

    /// `dir/<key>.<ext>`, or `dir/h-<hash>.<ext>` when that is too long for
    /// a unix socket, so every name works as a socket path.
    fn named(dir: &Path, key: &str, ext: &str) -> PathBuf {
        let plain = dir.join(format!("{key}.{ext}"));
        if plain.as_os_str().len() <= MAX_SOCKET_PATH {
            plain
        } else {
            dir.join(format!("h-{:016x}.{ext}", fnv1a(key)))
        }
    }

    /// The lock a running `serve` holds for its whole life: a volume is
    /// served at most once per node.
    pub fn claim(&self, key: &str) -> PathBuf {
        Self::named(&self.serve_dir(), key, "lock")
    }

    /// The control socket of a served volume.
    pub fn control_socket(&self, key: &str) -> PathBuf {
        Self::named(&self.serve_dir(), key, "ctl")
    }

    /// The vhost-user socket used when `--socket` is not given.
    pub fn vhost_user_socket(&self, key: &str) -> PathBuf {
        Self::named(&self.socket_dir(), key, "sock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_a_socket_path() {
        let run = RunDir::default();
        assert_eq!(
            run.control_socket("loopfile.vol1"),
            Path::new("/run/extstorage/serve/loopfile.vol1.ctl")
        );
        let long = format!("p.{}", "v".repeat(200));
        for p in [
            run.control_socket(&long),
            run.vhost_user_socket(&long),
            run.claim(&long),
        ] {
            assert!(p.as_os_str().len() <= MAX_SOCKET_PATH, "{}", p.display());
        }
        // Stable, and distinct for distinct keys.
        assert_eq!(run.control_socket(&long), run.control_socket(&long));
        assert_ne!(
            run.control_socket(&long),
            run.control_socket(&format!("{long}x"))
        );
    }
}
