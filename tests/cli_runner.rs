//! The `extstorage` CLI's script runner under hostile conditions: signals
//! to the CLI, SIGKILL of the CLI, inherited fds, planted symlinks,
//! colliding file names and secrets in provider output. Real processes and
//! the `slow` test provider (tests/providers/slow).

mod common_cli;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common_cli::{LoopDev, Run, World, process_gone};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// The slow provider's volume options: `out` is the world's out directory.
fn slow(w: &World, provider: &str, volume: &str, mode: &str) -> Vec<String> {
    if !w.providers().join(provider).exists() {
        w.install_test("slow", provider);
    }
    vec![
        "--provider".into(),
        provider.into(),
        "--volume".into(),
        volume.into(),
        "-p".into(),
        format!("out={}", w.out().display()),
        "-p".into(),
        format!("mode={mode}"),
    ]
}

fn args<'a>(global: &[&'a str], cmd: &'a str, vol: &'a [String]) -> Vec<&'a str> {
    let mut v = global.to_vec();
    v.push(cmd);
    v.extend(vol.iter().map(String::as_str));
    v
}

/// Starts the CLI with piped output.
fn spawn(w: &World, args: &[&str]) -> Child {
    w.cmd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `path` exists; panics if `child` exits first.
fn wait_for(path: &Path, child: &mut Child) {
    let start = Instant::now();
    while !path.exists() {
        if let Some(st) = child.try_wait().unwrap() {
            let out: Run = child_output(child, st);
            panic!("the CLI ended before {} appeared: {out:#?}", path.display());
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn child_output(child: &mut Child, st: std::process::ExitStatus) -> Run {
    let mut stdout = String::new();
    let mut stderr = String::new();
    use std::io::Read;
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut stdout).unwrap();
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr).unwrap();
    }
    Run {
        code: st.code().unwrap_or(-1),
        stdout,
        stderr,
    }
}

fn pid_in(path: &Path) -> i32 {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(i32::try_from(child.id()).unwrap()), sig).unwrap();
}

/// Kills a process group when dropped (a failed test must not leave a
/// hanging script behind).
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

#[test]
fn signals_are_forwarded_to_the_script_group_and_waited_for() {
    for (sig, code, json) in [
        (Signal::SIGINT, 130, false),
        (Signal::SIGTERM, 143, true),
        (Signal::SIGHUP, 129, false),
    ] {
        let w = World::new();
        let vol = slow(&w, "slow", "v1", "trap");
        let global: &[&str] = if json { &["--json"] } else { &[] };
        let mut cli = spawn(&w, &args(global, "verify", &vol));
        wait_for(&w.out().join("verify.pid"), &mut cli);
        let script = pid_in(&w.out().join("verify.pid"));
        let _guard = GroupGuard(script);
        signal(&cli, sig);
        let r: Run = cli.wait_with_output().unwrap().into();
        let r = r.code(code);
        let name = sig.as_str();
        // The script got the signal (from its group) and handled it.
        assert_eq!(
            fs::read_to_string(w.out().join("verify.signal"))
                .unwrap()
                .trim(),
            name.trim_start_matches("SIG"),
            "{r:#?}"
        );
        for want in [
            format!("interrupted by {name} while the verify script of volume \"v1\""),
            format!("{name} was forwarded to its process group {script}, which has exited"),
            "verify waits for a signal".to_owned(),
        ] {
            assert!(r.stderr.contains(&want), "{want}: {r:#?}");
        }
        if json {
            assert_eq!(r.json()["exit_code"], code, "{r:#?}");
        }
        // The CLI exited after the group: nothing of it is left.
        assert!(process_gone(script), "script {script} still running");
        // The lock is free again.
        let check = slow(&w, "slow", "v1", "");
        w.run(&args(&["--lock-timeout", "0"], "verify", &check))
            .ok();
    }
}

#[test]
fn a_signal_stops_a_lock_wait() {
    let w = World::new();
    let holder_args = slow(&w, "slow", "v1", "trap");
    let mut holder = spawn(&w, &args(&[], "verify", &holder_args));
    wait_for(&w.out().join("verify.pid"), &mut holder);
    let _guard = GroupGuard(pid_in(&w.out().join("verify.pid")));

    let waiter_args = slow(&w, "slow", "v1", "");
    let mut waiter = spawn(
        &w,
        &args(&["-v", "--lock-timeout", "600"], "setinfo", &waiter_args)
            .into_iter()
            .chain(["--metadata", "m"])
            .collect::<Vec<_>>(),
    );
    // Wait until it says it is waiting for the lock.
    let mut stderr = BufReader::new(waiter.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the waiter ended without waiting: {seen}"
        );
        seen.push_str(&line);
        if line.contains("volume busy, waiting for its lock") {
            break;
        }
    }
    signal(&waiter, Signal::SIGTERM);
    let status = waiter.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    seen.push_str(&rest);
    assert_eq!(status.code(), Some(143), "{seen}");
    assert!(
        seen.contains("interrupted by SIGTERM while waiting")
            && seen.contains("for the lock")
            && seen.contains("no script ran"),
        "{seen}"
    );
    assert!(!w.out().join("setinfo.ran").exists(), "setinfo ran");
    // The holder was not disturbed.
    assert!(holder.try_wait().unwrap().is_none());
    signal(&holder, Signal::SIGTERM);
    let r: Run = holder.wait_with_output().unwrap().into();
    r.code(143);
}

#[test]
fn a_signal_during_remove_runs_no_further_script() {
    let w = World::new();
    let vol = slow(&w, "slow", "v1", "trap");
    // remove = attach + detach + remove; the signal arrives during attach,
    // whose script handles it and exits 0.
    let mut cli = spawn(&w, &args(&[], "remove", &vol));
    wait_for(&w.out().join("attach.pid"), &mut cli);
    let _guard = GroupGuard(pid_in(&w.out().join("attach.pid")));
    signal(&cli, Signal::SIGINT);
    let r: Run = cli.wait_with_output().unwrap().into();
    let r = r.code(130);
    assert!(
        r.stderr
            .contains("interrupted by SIGINT while the attach script"),
        "{r:#?}"
    );
    assert!(r.stderr.contains("the script: exit status 0"), "{r:#?}");
    for action in ["detach", "remove"] {
        assert!(
            !w.out().join(format!("{action}.ran")).exists(),
            "{action} ran after the signal"
        );
    }
}

#[test]
fn sigkill_of_the_cli_keeps_the_volume_locked_until_the_script_group_is_gone() {
    let w = World::new();
    let hang = slow(&w, "slow", "v1", "hang");
    let mut first = spawn(&w, &args(&[], "verify", &hang));
    wait_for(&w.out().join("hang.script.pid"), &mut first);
    let script = pid_in(&w.out().join("hang.script.pid"));
    let child = pid_in(&w.out().join("hang.child.pid"));
    let _guard = GroupGuard(script);
    signal(&first, Signal::SIGKILL);
    first.wait().unwrap();

    // The next operation on the volume waits for the lock: when its script
    // runs, nothing of the first script's group is alive any more.
    let check = slow(&w, "slow", "v1", "check");
    w.run(&args(&["--lock-timeout", "120"], "verify", &check))
        .ok();
    let alive = fs::read_to_string(w.out().join("verify.check")).unwrap();
    assert_eq!(
        alive.trim(),
        "none",
        "the first script's group was still running"
    );
    // And the orphaned group did not run on: it was killed.
    assert!(process_gone(script) && process_gone(child));
}

#[test]
fn daemons_left_by_a_script_do_not_hold_the_lock() {
    let w = World::new();
    let vol = slow(&w, "slow", "v1", "daemon");
    w.run(&args(&[], "attach", &vol)).ok();
    let daemon = pid_in(&w.out().join("daemon.pid"));
    let _guard = GroupGuard(daemon);
    // The lock is free at once, though the daemon runs on in the group.
    let plain = slow(&w, "slow", "v1", "");
    w.run(&args(&["--lock-timeout", "0"], "verify", &plain))
        .ok();
    assert!(!process_gone(daemon), "the daemon was killed");
    kill(Pid::from_raw(daemon), Signal::SIGKILL).unwrap();
}

#[test]
fn scripts_inherit_no_fds_from_the_caller() {
    let w = World::new();
    let marker = w.path("inherited-marker");
    let file = fs::File::create(&marker).unwrap();
    let raw = file.as_raw_fd();
    let with_fd7 = |cmd: &mut std::process::Command| {
        // SAFETY: dup2 is async-signal-safe; it makes fd 7 a copy of the
        // marker without close-on-exec, as a careless caller would.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, 7) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    };
    // The setup works: a plain child sees the marker at fd 7.
    let mut control = std::process::Command::new("ls");
    control.args(["-l", "/proc/self/fd/"]);
    with_fd7(&mut control);
    let out = String::from_utf8(control.output().unwrap().stdout).unwrap();
    assert!(out.contains(&marker.display().to_string()), "{out}");

    let vol = slow(&w, "slow", "v1", "fds");
    let mut cmd = w.cmd();
    cmd.args(args(&[], "verify", &vol));
    with_fd7(&mut cmd);
    let r: Run = cmd.output().unwrap().into();
    r.ok();
    let fds = fs::read_to_string(w.out().join("verify.fds")).unwrap();
    assert!(
        !fds.contains(&marker.display().to_string()),
        "the script inherited the caller's fd: {fds}"
    );
    // Only stdin, stdout, stderr and the directory ls reads.
    let numbers: Vec<&str> = fds
        .lines()
        .filter(|l| l.contains(" -> "))
        .filter_map(|l| l.split(" -> ").next()?.split_whitespace().last())
        .collect();
    assert_eq!(numbers, ["0", "1", "2", "3"], "{fds}");
}

/// The UTC log timestamps of the seconds from `from` to `to` (as the
/// runner names log files), computed by `date`.
fn timestamps(from: u64, to: u64) -> Vec<String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for s in $(seq {from} {to}); do date -u -d @$s +%Y-%m-%d_%H_%M_%S; done"
        ))
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn symlinked_lock_and_log_files_are_refused() {
    let w = World::new();
    let target = w.path("precious");
    fs::write(&target, "precious data\n").unwrap();
    let vol = slow(&w, "slow", "v1", "");

    // A lock file planted as a symlink.
    fs::create_dir_all(w.path("lock")).unwrap();
    let lock = w.path("lock").join("slow.v1.lock");
    std::os::unix::fs::symlink(&target, &lock).unwrap();
    let r = w.run(&args(&[], "verify", &vol)).code(1);
    assert!(
        r.stderr.contains(&format!(
            "refusing to use lock file {}: it is a symbolic link",
            lock.display()
        )),
        "{r:#?}"
    );
    assert!(!w.out().join("verify.ran").exists(), "the script ran");
    fs::remove_file(&lock).unwrap();

    // Log files planted as symlinks for every second the run could start in.
    fs::create_dir_all(w.logs()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut planted: Vec<PathBuf> = Vec::new();
    for ts in timestamps(now - 2, now + 300) {
        let link = w.logs().join(format!("verify-slow-v1-{ts}.log"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        planted.push(link);
    }
    let r = w.run(&args(&[], "verify", &vol)).code(1);
    assert!(
        r.stderr.contains("refusing to use log file")
            && r.stderr.contains("verify-slow-v1-")
            && r.stderr.contains("it is a symbolic link"),
        "{r:#?}"
    );
    assert!(!w.out().join("verify.ran").exists(), "the script ran");
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious data\n");
    assert!(planted.iter().all(|l| l.is_symlink()));
}

#[test]
fn names_joined_with_a_dash_no_longer_collide() {
    let w = World::new();
    // Provider "t<pid>-b" with volume "c" and provider "t<pid>" with volume
    // "b-c" both read "t<pid>-b-c" when joined with '-'.
    let p1 = format!("t{}-b", std::process::id());
    let p2 = format!("t{}", std::process::id());
    let (v1, v2) = ("c", "b-c");

    // Locks: one volume held does not block the other.
    let held = slow(&w, &p1, v1, "trap");
    let mut holder = spawn(&w, &args(&[], "verify", &held));
    wait_for(&w.out().join("verify.pid"), &mut holder);
    let _guard = GroupGuard(pid_in(&w.out().join("verify.pid")));
    let other = slow(&w, &p2, v2, "");
    w.run(
        &args(&["--lock-timeout", "0"], "setinfo", &other)
            .into_iter()
            .chain(["--metadata", "m"])
            .collect::<Vec<_>>(),
    )
    .ok();
    signal(&holder, Signal::SIGTERM);
    holder.wait().unwrap();
    let mut locks: Vec<String> = fs::read_dir(w.path("lock"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    locks.sort();
    assert_eq!(
        locks,
        [format!("{p1}.{v1}.lock"), format!("{p2}.{v2}.lock")]
    );

    // Default vhost-user sockets and secret directories differ too (the
    // same names, as attachfile providers in a world of their own).
    let w = World::new();
    let lo = LoopDev::new(w.path("lo.img"), 1 << 20);
    let key = "QVFEOXRlc3RrZXlTRUNSRVQ9PT0=";
    let mut sockets = Vec::new();
    let mut secret_dirs = Vec::new();
    for (p, v) in [(&p1, v1), (&p2, v2)] {
        w.install_test("attachfile", p);
        let out = w.out().join(format!("{p}-{v}.attach"));
        let out_arg = format!("out={}", out.display());
        let vol = ["--provider", p, "--volume", v, "-p", out_arg.as_str()];
        fs::write(&out, format!("{}\n", lo.dev)).unwrap();
        let r = w
            .run(&[&["--json", "kvm-args", "--access", "vhost-user"][..], &vol].concat())
            .ok();
        sockets.push(r.json()["socket"].as_str().unwrap().to_owned());
        fs::write(&out, format!("\nkvm:rbd:pool/img:id=admin:key={key}\n")).unwrap();
        let r = w.run(&[&["--json", "uri"][..], &vol].concat()).ok();
        let file = PathBuf::from(r.json()["secrets"][0]["path"].as_str().unwrap());
        let dir = file.parent().unwrap().to_owned();
        assert_eq!(fs::read_to_string(&file).unwrap(), key);
        fs::remove_dir_all(&dir).unwrap();
        secret_dirs.push(dir);
    }
    let socket_dir = w.run_dir().join("vhost-user");
    assert_eq!(
        sockets,
        [
            socket_dir
                .join(format!("{p1}.{v1}.sock"))
                .display()
                .to_string(),
            socket_dir
                .join(format!("{p2}.{v2}.sock"))
                .display()
                .to_string()
        ]
    );
    assert_eq!(
        secret_dirs,
        [
            PathBuf::from(format!("/run/extstorage/secrets/{p1}.{v1}")),
            PathBuf::from(format!("/run/extstorage/secrets/{p2}.{v2}"))
        ]
    );
}

/// The key of the example (not valid cephx base64: the uri crate
/// refuses it).
const KEY: &str = "AQBsecretsecret==";
/// A key the uri crate accepts.
const GOOD_KEY: &str = "QVFEOXRlc3RrZXlTRUNSRVQ9PT0=";

#[test]
fn secrets_stay_out_of_logs_errors_and_log_files() {
    let w = World::new();
    w.install_test("attachfile", "attachfile");
    let secrets = w.path("secrets");
    let sd = ["--secret-dir", secrets.to_str().unwrap()];
    let mut runs: Vec<Run> = Vec::new();
    for (vol, key, mon) in [("v1", KEY, "10.0.0.1"), ("v2", GOOD_KEY, "10.0.0.1\\:6789")] {
        let out = w.out().join(format!("{vol}.attach"));
        fs::write(
            &out,
            format!(
                "\nkvm:rbd:pool/img:id=admin:key={key}:mon_host={mon}\n\
                 kvm:iscsi://alice%{key}@10.0.0.1/iqn.2001-04.com.example:t1/0\n"
            ),
        )
        .unwrap();
        let out_arg = format!("out={}", out.display());
        let base = [
            "-vv",
            "--provider",
            "attachfile",
            "--volume",
            vol,
            "-p",
            out_arg.as_str(),
        ];
        // The example key is refused by uri and kvm-args (exit 1): the
        // error must not quote it either.
        let code = if key == KEY { 1 } else { 0 };
        runs.extend([
            w.run(&[&["uri"][..], &base, &sd].concat()).code(code),
            w.run(&[&["--json", "uri"][..], &base, &sd].concat())
                .code(code),
            w.run(&[&["kvm-args"][..], &base, &sd].concat()).code(code),
            w.run(&[&["sync-status"][..], &base].concat()).ok(),
            w.run(&[&["detach"][..], &base].concat()).ok(),
        ]);
        // attach's result is the provider's output, URIs as given: on
        // stdout only, never in the log lines.
        let r = w.run(&[&["attach"][..], &base].concat()).ok();
        assert!(!r.stderr.contains(key), "{r:#?}");
    }
    for r in &runs {
        // -vv logged the attach result and the script's environment.
        assert!(r.stderr.contains("attached"), "{r:#?}");
        assert!(r.stderr.contains("key=***"), "{r:#?}");
        assert!(r.stderr.contains("alice%***@"), "{r:#?}");
        for key in [KEY, GOOD_KEY] {
            assert!(
                !r.stdout.contains(key) && !r.stderr.contains(key),
                "secret printed: {r:#?}"
            );
        }
    }

    // A failing script that prints the key (stdout, stderr, command line)
    // and gets it as an ext param: not in the error, the debug log of its
    // environment, or its log file.
    let slow_args = slow(&w, "slow", "v1", "leak");
    let key_arg = format!("key={KEY}");
    let leak = [&slow_args[..], &["-p".to_owned(), key_arg]].concat();
    for cmd in ["verify", "attach"] {
        let r = w.run(&args(&["-vv"], cmd, &leak)).code(1);
        assert!(r.stderr.contains(&format!("{cmd} script failed")), "{r:#?}");
        assert!(r.stderr.contains("EXTP_KEY"), "{r:#?}");
        assert!(r.stderr.contains("--key ***"), "{r:#?}");
        assert!(
            !r.stdout.contains(KEY) && !r.stderr.contains(KEY),
            "secret printed: {r:#?}"
        );
        for log in w.log_files(&format!("{cmd}-slow-v1-")) {
            let text = fs::read_to_string(&log).unwrap();
            assert!(text.contains("rbd map --id admin --key ***"), "{text}");
            assert!(!text.contains(KEY), "{}: {text}", log.display());
        }
    }
}

#[test]
fn rejected_attach_output_does_not_quote_the_secret() {
    let w = World::new();
    w.install_test("attachfile", "attachfile");
    let out = w.out().join("bad.attach");
    let out_arg = format!("out={}", out.display());
    let base = [
        "--provider",
        "attachfile",
        "--volume",
        "v1",
        "-p",
        out_arg.as_str(),
    ];
    // A URI on the device line is not a device; an rbd URI with an unknown
    // option is not a valid URI.
    for (output, cmd, want) in [
        (
            format!("kvm:rbd:pool/img:id=admin:key={KEY}:mon_host=10.0.0.1\n"),
            "attach",
            "cannot stat kvm:rbd:pool/img:id=admin:key=***:mon_host=10.0.0.1",
        ),
        (
            format!("\nkvm:rbd:pool/img:key={KEY}:novalue\n"),
            "uri",
            "option 'novalue' has no value",
        ),
    ] {
        fs::write(&out, output).unwrap();
        for json in [false, true] {
            let global: &[&str] = if json { &["--json", "-vv"] } else { &["-vv"] };
            let r = w.run(&[global, &[cmd], &base[..]].concat()).code(1);
            assert!(r.stderr.contains(want), "{r:#?}");
            assert!(
                !r.stdout.contains(KEY) && !r.stderr.contains(KEY),
                "secret printed: {r:#?}"
            );
        }
    }
}

#[test]
fn help_documents_the_signal_exit_codes() {
    let w = World::new();
    let r = w.run(&["--help"]).ok();
    for want in ["128+N", "130 SIGINT, 143 SIGTERM, 129 SIGHUP"] {
        assert!(r.stdout.contains(want), "{want}: {}", r.stdout);
    }
}
