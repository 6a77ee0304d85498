//! scripts/install.sh into a temporary DESTDIR: binaries, a man page per
//! command, bash/zsh/fish completions, the units pointing at the installed
//! binary, the reference providers with their modes, the docs.

mod common_cli;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common_cli::repo;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn install_sh_stages_everything_under_destdir() {
    let dest = tempfile::tempdir().unwrap();
    let binaries = extstorage_testbins::path(extstorage_testbins::CLI)
        .parent()
        .unwrap()
        .to_path_buf();
    // The tests' binaries carry the test hooks: refused unless allowed.
    let install = |extra: &[&str]| {
        Command::new(repo().join("scripts/install.sh"))
            .args(["--prefix", "/opt/es", "--destdir"])
            .arg(dest.path())
            .arg("--binaries")
            .arg(&binaries)
            .args(extra)
            .current_dir(dest.path())
            .output()
            .unwrap()
    };
    let refused = install(&[]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("test-only hooks"),
        "{refused:?}"
    );
    let out = install(&["--allow-test-hooks"]);
    assert!(out.status.success(), "{out:?}");
    let root = dest.path().join("opt/es");

    for bin in ["extstorage", "extstorage-vhost-user-blk"] {
        let path = root.join("bin").join(bin);
        assert_eq!(mode(&path), 0o755, "{}", path.display());
        let v = Command::new(&path).arg("--version").output().unwrap();
        assert!(v.status.success(), "{v:?}");
        for completion in [
            format!("share/bash-completion/completions/{bin}"),
            format!("share/zsh/site-functions/_{bin}"),
            format!("share/fish/vendor_completions.d/{bin}.fish"),
        ] {
            let text = std::fs::read_to_string(root.join(&completion)).unwrap();
            assert!(text.contains("serve"), "{completion}");
        }
    }
    // A page per command: what the binaries themselves write.
    let reference = tempfile::tempdir().unwrap();
    for bin in ["extstorage", "extstorage-vhost-user-blk"] {
        Command::new(extstorage_testbins::path(bin))
            .arg("man")
            .arg(reference.path())
            .output()
            .unwrap();
    }
    let mut want: Vec<String> = std::fs::read_dir(reference.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut got: Vec<String> = std::fs::read_dir(root.join("share/man/man1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    want.sort();
    got.sort();
    assert!(want.len() > 20, "{want:?}");
    assert_eq!(got, want);

    // The units name the installed binary, not @BINDIR@.
    let service =
        std::fs::read_to_string(root.join("lib/systemd/system/extstorage-serve@.service")).unwrap();
    assert!(
        service.contains("ExecStart=/opt/es/bin/extstorage serve --provider ${PROVIDER}"),
        "{service}"
    );
    assert!(!service.contains("@BINDIR@"));
    assert!(
        root.join("lib/systemd/system/extstorage-serve@.socket")
            .is_file()
    );

    // Providers keep their modes; the environment-file directory exists.
    let providers = root.join("share/extstorage/providers");
    assert_eq!(mode(&providers.join("loopfile/attach")), 0o755);
    assert_eq!(mode(&providers.join("loopfile/parameters.list")), 0o644);
    assert!(providers.join("qemunbd/attach").is_file());
    assert_eq!(mode(&providers.join("rbd/open")), 0o755);
    assert_eq!(mode(&providers.join("rbd/parameters.list")), 0o644);
    let listed = Command::new(root.join("bin/extstorage"))
        .arg("--search-path")
        .arg(&providers)
        .args(["--json", "providers"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    assert!(
        text.contains("loopfile") && text.contains("qemunbd") && text.contains("\"rbd\""),
        "{text}"
    );
    assert!(dest.path().join("etc/extstorage/serve").is_dir());
    assert!(root.join("share/doc/extstorage/operations.md").is_file());
    assert!(
        root.join("share/doc/extstorage/serve.env.example")
            .is_file()
    );
    // Nothing was written into the working directory.
    let mut stray: Vec<_> = std::fs::read_dir(dest.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    stray.sort();
    assert_eq!(stray, ["etc", "opt"]);
}

#[test]
fn install_sh_refuses_bad_arguments() {
    for (args, needle) in [
        (vec!["--bogus"], "unknown argument"),
        (vec!["--prefix", "relative"], "absolute"),
        (vec!["--binaries", "/nonexistent"], "is missing"),
    ] {
        let out = Command::new(repo().join("scripts/install.sh"))
            .args(&args)
            .args(["--destdir", "/nonexistent-destdir"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// Every path under `dir` (not following symlinks) with its mode.
fn walk(dir: &Path, out: &mut Vec<(std::path::PathBuf, u32)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            continue;
        }
        out.push((path.clone(), meta.permissions().mode() & 0o7777));
        if meta.is_dir() {
            walk(&path, out);
        }
    }
}

#[test]
fn install_sh_under_umask_000_leaves_nothing_group_or_world_writable() {
    let dest = tempfile::tempdir().unwrap();
    let binaries = extstorage_testbins::path(extstorage_testbins::CLI)
        .parent()
        .unwrap()
        .to_path_buf();
    // A real shell with umask 000 runs the script, as a careless caller would.
    let out = Command::new("sh")
        .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(repo().join("scripts/install.sh"))
        .args(["--prefix", "/opt/es", "--destdir"])
        .arg(dest.path())
        .arg("--binaries")
        .arg(&binaries)
        .arg("--allow-test-hooks")
        .current_dir(dest.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut all = Vec::new();
    walk(dest.path(), &mut all);
    assert!(all.len() > 40, "{all:?}");
    let loose: Vec<_> = all.iter().filter(|(_, m)| m & 0o022 != 0).collect();
    assert!(loose.is_empty(), "group- or world-writable: {loose:#?}");
    // Directories are 0755, as operations.md says.
    for (path, m) in &all {
        if path.is_dir() {
            assert_eq!(*m, 0o755, "{}", path.display());
        }
    }
}
