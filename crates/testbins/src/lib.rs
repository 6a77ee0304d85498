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
//! test module shares with the others: [`splitmix64`], and [`skip_or_fail`]
//! for tests that need io_uring, loop devices or cachestat.
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

/// A facility of the machine some tests need, which a container or an
/// old kernel may lack: Docker's default seccomp profile blocks io_uring,
/// an unprivileged container has no loop devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Facility {
    /// io_uring, and its event loop (poll_add, multishot poll).
    Uring,
    /// Loop devices (`losetup`).
    LoopDevices,
    /// The cachestat system call (Linux 6.5).
    Cachestat,
}

impl Facility {
    /// The variable that, set to 1, makes a test that cannot have this
    /// facility fail instead of skipping (scripts/test.sh sets it).
    pub fn require_var(self) -> &'static str {
        match self {
            Self::Uring => "EXTSTORAGE_REQUIRE_URING",
            Self::LoopDevices => "EXTSTORAGE_REQUIRE_LOOP_DEVICES",
            Self::Cachestat => "EXTSTORAGE_REQUIRE_CACHESTAT",
        }
    }
}

/// Whether a test without `facility` may skip, given the value of
/// [`Facility::require_var`]: unset, empty or `0` skip; `1` fails with a
/// message saying what is missing; any other value fails too, saying what
/// the variable takes.
pub fn may_skip(facility: Facility, require: Option<&str>, reason: &str) -> Result<(), String> {
    let var = facility.require_var();
    match require {
        None | Some("" | "0") => Ok(()),
        Some("1") => Err(format!(
            "{var}=1 but this test cannot run: {reason} (run it where this works, \
             e.g. a container without the default seccomp profile, or unset {var} to skip)"
        )),
        Some(v) => Err(format!("{var}={v:?}: expected 0 or 1")),
    }
}

/// Called where a test cannot run without `facility`: prints that it is
/// skipped, or panics (fails the test) when [`Facility::require_var`] says
/// it must run; the caller returns after it.
///
/// # Panics
/// When the variable is `1` (or not `0` or `1`).
pub fn skip_or_fail(facility: Facility, reason: &str) {
    let require = std::env::var(facility.require_var()).ok();
    if let Err(e) = may_skip(facility, require.as_deref(), reason) {
        panic!("{e}");
    }
    eprintln!(
        "{reason}: skipping (set {}=1 to fail instead)",
        facility.require_var()
    );
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
    use super::{Facility, may_skip, splitmix64};

    /// The switch that turns the capability skips into failures.
    #[test]
    fn a_missing_facility_skips_unless_required() {
        for f in [Facility::Uring, Facility::LoopDevices, Facility::Cachestat] {
            for v in [None, Some(""), Some("0")] {
                assert_eq!(may_skip(f, v, "gone"), Ok(()), "{f:?} {v:?}");
            }
            let e = may_skip(f, Some("1"), "io_uring blocked").unwrap_err();
            assert!(
                e.contains(f.require_var()) && e.contains("io_uring blocked"),
                "{e}"
            );
            let e = may_skip(f, Some("yes"), "gone").unwrap_err();
            assert!(e.contains("expected 0 or 1"), "{e}");
        }
        assert_eq!(Facility::Uring.require_var(), "EXTSTORAGE_REQUIRE_URING");
    }

    /// And the helper the tests call panics (fails the test) when
    /// required. The variable is set in a child process (the test binary
    /// itself, running only this test), not in this one's environment.
    #[test]
    fn skip_or_fail_fails_the_test_when_required() {
        if std::env::var_os("TESTBINS_CHILD").is_some() {
            super::skip_or_fail(Facility::Cachestat, "no cachestat here");
            return;
        }
        let run = |value: &str| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "tests::skip_or_fail_fails_the_test_when_required",
                    "--nocapture",
                ])
                .env("TESTBINS_CHILD", "1")
                .env(Facility::Cachestat.require_var(), value)
                .output()
                .unwrap()
        };
        let required = run("1");
        let err = String::from_utf8_lossy(&required.stderr);
        assert!(!required.status.success(), "{err}");
        assert!(err.contains("EXTSTORAGE_REQUIRE_CACHESTAT=1"), "{err}");
        let skipped = run("0");
        let err = String::from_utf8_lossy(&skipped.stderr);
        assert!(skipped.status.success(), "{err}");
        assert!(err.contains("no cachestat here: skipping"), "{err}");
    }

    /// The reference generator's first outputs from state 0 (the state
    /// advances by the golden gamma before each output), which the C guest
    /// computes too.
    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(0x9e37_79b9_7f4a_7c15), 0x6e78_9e6a_a1b9_65f4);
    }
}
