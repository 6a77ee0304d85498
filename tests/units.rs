//! The systemd units in dist/systemd: they parse (`systemd-analyze verify`
//! with the built binary and the generated man pages), their recorded
//! security exposure matches docs/operations.md, and the environment-file
//! format expands, by systemd's rules, to an `extstorage serve` command
//! line that really serves a loopfile volume, from its own socket or from
//! a socket passed the way the socket unit passes it
//! (`systemd-socket-activate`, LISTEN_FDS).

mod common_cli;
mod vhost_support;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common_cli::{World, loop_devices_of, repo};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vhost_support::{Client, read, write};

const SERVICE: &str = "extstorage-serve@.service";
const SOCKET: &str = "extstorage-serve@.socket";
const INSTANCE: &str = "loopfile.vol1";

fn dist(name: &str) -> PathBuf {
    repo().join("dist/systemd").join(name)
}

/// The directory of the built binaries, for `@BINDIR@`.
fn bindir() -> PathBuf {
    extstorage_testbins::path(extstorage_testbins::CLI)
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The unit files with `@BINDIR@` replaced, in `dir`.
fn install_units(dir: &Path) {
    for unit in [SERVICE, SOCKET] {
        let text = std::fs::read_to_string(dist(unit)).unwrap();
        let text = text.replace("@BINDIR@", bindir().to_str().unwrap());
        std::fs::write(dir.join(unit), text).unwrap();
    }
}

/// `systemd-analyze verify` of `units` (paths), man pages looked up in
/// `manpath`; its exit code and everything it printed (it reports a bad
/// setting as "ignoring" and still exits 0, so the output is the verdict).
fn verify(units: &[PathBuf], manpath: &Path) -> (i32, String) {
    let out = Command::new("/usr/bin/systemd-analyze")
        .args(["verify", "--man=yes"])
        .args(units)
        .env("MANPATH", manpath)
        .output()
        .expect("systemd-analyze (systemd) is installed by scripts/install-deps.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A directory holding the units and a MANPATH with the generated pages.
fn verify_setup() -> (tempfile::TempDir, Vec<PathBuf>, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let units = tmp.path().join("units");
    let man1 = tmp.path().join("man/man1");
    std::fs::create_dir_all(&units).unwrap();
    install_units(&units);
    for bin in [extstorage_testbins::CLI, extstorage_testbins::DAEMON] {
        let st = Command::new(extstorage_testbins::path(bin))
            .arg("man")
            .arg(&man1)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    }
    let instances = vec![
        units.join(format!("extstorage-serve@{INSTANCE}.service")),
        units.join(format!("extstorage-serve@{INSTANCE}.socket")),
    ];
    let manpath = tmp.path().join("man");
    (tmp, instances, manpath)
}

#[test]
fn the_units_verify() {
    let (_tmp, instances, manpath) = verify_setup();
    let (code, text) = verify(&instances, &manpath);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.trim().is_empty(),
        "systemd-analyze verify said:\n{text}"
    );
}

#[test]
fn verify_reports_a_broken_setting() {
    // The check above can fail: a bad value is reported.
    let (tmp, instances, manpath) = verify_setup();
    let path = tmp.path().join("units").join(SERVICE);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("Type=notify", "Type=notifyy")).unwrap();
    let (_, said) = verify(&instances, &manpath);
    assert!(said.contains("notifyy"), "{said}");
}

/// `systemd-analyze security --offline=true` of the service: the overall
/// exposure line.
fn exposure_line() -> String {
    let tmp = tempfile::tempdir().unwrap();
    install_units(tmp.path());
    let unit = tmp.path().join(SERVICE);
    let out = Command::new("/usr/bin/systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}{out:?}"))
        .trim()
        .trim_start_matches(['→', ' '])
        .to_owned()
}

#[test]
fn the_recorded_security_exposure_is_current() {
    let line = exposure_line();
    // "Overall exposure level for extstorage-serve@.service: 3.1 OK 🙂"
    let score: String = line
        .split(": ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let docs = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let recorded = format!("Overall exposure level: {score}");
    assert!(
        docs.contains(&recorded),
        "docs/operations.md must record \"{recorded}\" (systemd-analyze says: {line}); \
         update its Security section when the sandbox changes"
    );
}

/// Parses an environment file by the documented rule (a subset of
/// systemd's EnvironmentFile= syntax: `NAME=value` lines, `#`/`;`
/// comments, values trimmed, no quotes or backslashes, which systemd would
/// interpret).
fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not NAME=value: {line}", n + 1));
        let name = name.trim();
        assert!(
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "line {}: bad name {name:?}",
            n + 1
        );
        let value = value.trim();
        assert!(
            !value.contains(['"', '\'', '\\']),
            "line {}: quotes and backslashes are outside the documented format: {line}",
            n + 1
        );
        vars.insert(name.to_owned(), value.to_owned());
    }
    vars
}

/// Expands an ExecStart= command line by systemd's rules: words split at
/// whitespace; a word that is exactly `$NAME` becomes the value split at
/// whitespace (zero or more words); `${NAME}` is replaced in place, inside
/// one word. Unset variables are empty.
fn expand_exec(line: &str, vars: &BTreeMap<String, String>) -> Vec<String> {
    let get = |name: &str| vars.get(name).cloned().unwrap_or_default();
    let mut argv = Vec::new();
    for word in line.split_whitespace() {
        if let Some(name) = word.strip_prefix('$')
            && !name.starts_with('{')
        {
            argv.extend(get(name).split_whitespace().map(str::to_owned));
            continue;
        }
        let mut out = String::new();
        let mut rest = word;
        while let Some(at) = rest.find("${") {
            out.push_str(&rest[..at]);
            let end = rest[at..].find('}').expect("unterminated ${") + at;
            out.push_str(&get(&rest[at + 2..end]));
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        argv.push(out);
    }
    argv
}

/// The value of the first `KEY=` line of a unit file.
fn unit_setting(unit: &str, key: &str) -> String {
    let text = std::fs::read_to_string(dist(unit)).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{unit} has no {key}="))
        .to_owned()
}

/// The shipped example environment file, with its paths moved into the
/// test's world (same format, same variables).
fn example_env(w: &World) -> BTreeMap<String, String> {
    let mut vars = parse_env_file(&std::fs::read_to_string(dist("serve.env.example")).unwrap());
    assert_eq!(vars["PROVIDER"], "loopfile");
    assert_eq!(vars["VOLUME"], "vol1");
    let params = vars["PARAMS"].replace(
        "dir=/srv/extstorage/volumes",
        &format!("dir={}", w.vols().display()),
    );
    assert!(params.contains(&w.vols().display().to_string()), "{params}");
    vars.insert("PARAMS".into(), params);
    let search = w.providers().display().to_string();
    vars.insert("EXTSTORAGE_SEARCH_PATH".into(), search);
    vars.insert(
        "EXTSTORAGE_RUN_DIR".into(),
        w.run_dir().display().to_string(),
    );
    vars.insert(
        "EXTSTORAGE_LOCK_DIR".into(),
        w.path("lock").display().to_string(),
    );
    vars.insert("EXTSTORAGE_LOG_DIR".into(), w.logs().display().to_string());
    vars
}

/// The argv the service would run for `vars`.
fn service_argv(vars: &BTreeMap<String, String>) -> Vec<String> {
    let exec = unit_setting(SERVICE, "ExecStart").replace("@BINDIR@", bindir().to_str().unwrap());
    expand_exec(&exec, vars)
}

/// Starts `argv` (optionally under `wrapper`) with the environment-file
/// variables as its environment, as systemd would.
fn spawn(wrapper: &[String], argv: &[String], vars: &BTreeMap<String, String>) -> Child {
    let mut all: Vec<String> = wrapper.to_vec();
    all.extend(argv.iter().cloned());
    let mut cmd = Command::new(&all[0]);
    cmd.args(&all[1..])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .envs(vars)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd.spawn().unwrap()
}

/// The first stdout line of `child` (the ready line), within two minutes.
fn ready_line(child: &mut Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let _ = tx.send(lines.next().and_then(Result::ok));
        for _ in lines {}
    });
    rx.recv_timeout(Duration::from_secs(120))
        .ok()
        .flatten()
        .expect("a ready line")
}

/// SIGTERM, then the exit code.
fn stop(child: &mut Child) -> Option<i32> {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn create(w: &World) {
    w.install("loopfile");
    let vols = format!("dir={}", w.vols().display());
    w.run(&[
        "create",
        "--provider",
        "loopfile",
        "--volume",
        "vol1",
        "-p",
        &vols,
        "--size",
        "16M",
    ])
    .ok();
}

#[test]
fn the_env_file_format_expands_to_a_serve_that_works() {
    let w = World::new();
    create(&w);
    let vars = example_env(&w);
    let argv = service_argv(&vars);
    assert_eq!(
        argv[1..7],
        ["serve", "--provider", "loopfile", "--volume", "vol1", "-p"],
        "{argv:?}"
    );
    let mut child = spawn(&[], &argv, &vars);
    let ready = ready_line(&mut child);
    // No --socket: the volume's default socket, which is exactly the path
    // the socket unit listens on (its /run/extstorage is --run-dir here).
    let listen = unit_setting(SOCKET, "ListenStream").replace("%I", INSTANCE);
    let expected = listen.replacen("/run/extstorage", w.run_dir().to_str().unwrap(), 1);
    assert!(
        ready.contains(&format!(" on {expected} (2 queues)")),
        "{ready} / {expected}"
    );
    let mut c = Client::connect(Path::new(&expected), 2, false).unwrap();
    let m = c.mem(1);
    assert_eq!(write(&mut c.queues[1], m, 4096, &[0x5a; 512]), 0);
    drop(c);
    assert_eq!(stop(&mut child), Some(0));
    let img = w.vols().join("vol1.img");
    assert!(loop_devices_of(&img).is_empty(), "detached on stop");
    let data = std::fs::read(&img).unwrap();
    assert_eq!(&data[4096..4608], &[0x5a; 512]);
}

#[test]
fn socket_activation_serves_on_the_passed_socket() {
    let w = World::new();
    create(&w);
    let vars = example_env(&w);
    let argv = service_argv(&vars);
    let listen = unit_setting(SOCKET, "ListenStream").replace("%I", INSTANCE);
    let sock = PathBuf::from(listen.replacen("/run/extstorage", w.run_dir().to_str().unwrap(), 1));
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    // systemd-socket-activate passes only the variables it is given.
    let mut wrapper: Vec<String> = vec![
        "systemd-socket-activate".into(),
        "--listen".into(),
        sock.display().to_string(),
    ];
    for (k, v) in vars
        .iter()
        .chain([(&"RUST_LOG".to_owned(), &"info".to_owned())])
    {
        wrapper.push(format!("--setenv={k}={v}"));
    }
    wrapper.push(format!("--setenv=PATH={}", std::env::var("PATH").unwrap()));
    let mut child = spawn(&wrapper, &argv, &vars);
    // The socket exists before the server runs; connecting starts it.
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = Client::connect(&sock, 2, false).unwrap();
    let ready = ready_line(&mut child);
    assert!(ready.contains("the inherited socket"), "{ready}");
    let m = c.mem(0);
    assert_eq!(write(&mut c.queues[0], m, 0, &[0xc3; 512]), 0);
    assert_eq!(read(&mut c.queues[0], m, 0, 512), (0, vec![0xc3; 512]));
    drop(c);
    assert_eq!(stop(&mut child), Some(0));
    assert!(loop_devices_of(&w.vols().join("vol1.img")).is_empty());
}

#[test]
fn the_expansion_rule_matches_systemd() {
    // What systemd.service(5) says for ExecStart=: "${FOO}" stays one
    // argument, "$FOO" alone is split at whitespace, unset is empty.
    let vars: BTreeMap<String, String> = [
        ("A".to_owned(), "x y".to_owned()),
        ("B".to_owned(), "-p dir=/v  --n 2".to_owned()),
    ]
    .into();
    assert_eq!(
        expand_exec("/bin/e ${A} $B $UNSET pre${A}post", &vars),
        ["/bin/e", "x y", "-p", "dir=/v", "--n", "2", "prex ypost"]
    );
    let parsed = parse_env_file("# c\n; c\n\n  A = 1 2  \nB=\n");
    assert_eq!(parsed["A"], "1 2");
    assert_eq!(parsed["B"], "");
}
