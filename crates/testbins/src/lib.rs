//! `extstorage-testbins`: where the workspace's binaries are, for the
//! integration tests and benches of the root package.
//!
//! Each binary lives in its own package (`bins/*`), so cargo gives the root
//! package's tests no `CARGO_BIN_EXE_*` for them. [`path`] finds a binary in
//! the target directory of the running test or bench and, the first time it
//! is asked in a process, runs `cargo build` for the binaries so a test never
//! runs a stale one (a no-op when `cargo test --workspace` built them
//! already), with the test-only hooks on (feature `test-hooks` of
//! `extstorage-vhost-user-blk`).
//!
//! It also holds the few helpers more than one test or bench needs and no
//! test module shares with the others: [`splitmix64`].
#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The `extstorage` CLI.
pub const CLI: &str = "extstorage";
/// The vhost-user-blk daemon.
pub const DAEMON: &str = "extstorage-vhost-user-blk";

/// The packages that own [`CLI`] and [`DAEMON`].
const PACKAGES: [&str; 2] = ["extstorage", "extstorage-vhost-user-blk-daemon"];

/// The features the tests need in the binaries: the fault-injection hooks
/// (`EXTSTORAGE_TEST_ONLY_*`), which `cargo test` turns on through the root
/// package's dev-dependency. Built with them here too, the binaries in the
/// target directory are the same whichever built them last; a plain
/// `cargo build` builds them without.
const FEATURES: &str = "extstorage-vhost-user-blk/test-hooks";

/// The profile directory (`target/debug`, `target/release`) of the running
/// test or bench executable, which cargo puts in `<profile>/deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the running executable");
    let deps = exe.parent().expect("the executable has a directory");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// Builds the binaries once per process with the cargo that runs us, in the
/// profile of the running executable.
fn build(profile_dir: &Path) -> Result<(), String> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        // Not run by cargo (e.g. a test binary started by hand): use what
        // is there.
        return Ok(());
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(&manifest);
    for p in PACKAGES {
        cmd.args(["--package", p]);
    }
    cmd.args(["--features", FEATURES]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo build: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build of the binaries failed ({status})"))
    }
}

/// The path of the workspace binary `name` ([`CLI`] or [`DAEMON`]), built
/// and up to date.
///
/// # Panics
/// When the binaries cannot be built or `name` is not there: a test cannot
/// go on without them, and the message says what to run.
pub fn path(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = profile_dir();
    if let Err(e) = BUILT.get_or_init(|| build(&dir)) {
        panic!("{e}; run `cargo build --workspace --bins` and look at its errors");
    }
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing; run `cargo build --workspace --bins`",
        bin.display()
    );
    bin
}

/// One step of SplitMix64: a well-mixed 64-bit word from `x`. The tests
/// derive data patterns from it: the guest's disk pattern (word at byte
/// offset `o` is `splitmix64(seed ^ o/8)`, as tests/guest/e2e-guest.c
/// writes it) and the soak's block contents.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::splitmix64;

    /// The reference generator's first outputs from state 0 (the state
    /// advances by the golden gamma before each output), which the C guest
    /// computes too.
    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(0x9e37_79b9_7f4a_7c15), 0x6e78_9e6a_a1b9_65f4);
    }
}
