//! The `extstorage` CLI against test-only providers (tests/providers/):
//! environment, logs, diagnosis and every failure path.

mod common_cli;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common_cli::{LoopDev, World, process_gone, read_env};

const VOL: &str = "0b1c2d3e-aaaa-bbbb-cccc-0123456789ab.ext.disk0";

fn recorder(w: &World) -> Vec<String> {
    w.install_test("recorder", "recorder");
    let out = w.out();
    vec![
        "--provider".into(),
        "recorder".into(),
        "--volume".into(),
        VOL.into(),
        "-p".into(),
        format!("out={}", out.display()),
        "-p".into(),
        "mixed_Case=some value".into(),
        "--cname".into(),
        "disk-zero".into(),
        "--uuid".into(),
        "0b1c2d3e-aaaa-bbbb-cccc-0123456789ab".into(),
    ]
}

fn with<'a>(cmd: &'a str, base: &'a [String], extra: &'a [&'a str]) -> Vec<&'a str> {
    let mut v = vec![cmd];
    v.extend(base.iter().map(String::as_str));
    v.extend_from_slice(extra);
    v
}

#[test]
fn every_action_gets_the_documented_environment() {
    let w = World::new();
    let base = recorder(&w);
    let provider_dir = w.providers().join("recorder");
    // A variable of ours must not leak into scripts.
    let run = |args: Vec<&str>| -> common_cli::Run {
        w.cmd()
            .env("EXTSTORAGE_TEST_LEAK", "leaked")
            .args(args)
            .output()
            .unwrap()
            .into()
    };
    run(with("create", &base, &["--size", "1G"])).ok();
    run(with("attach", &base, &[])).ok();
    run(with("grow", &base, &["--size", "1024", "--amount", "512M"])).ok();
    run(with(
        "setinfo",
        &base,
        &["--metadata", "originstname+inst1"],
    ))
    .ok();
    run(with("snapshot", &base, &["--size", "2G"])).ok();
    run(with("open", &base, &[])).ok();
    run(with("close", &base, &[])).ok();
    run(with("verify", &base, &[])).ok();
    run(with("detach", &base, &[])).ok();
    run(with("remove", &base, &[])).ok();

    let out = w.out();
    for action in [
        "create", "attach", "grow", "setinfo", "snapshot", "open", "close", "verify", "detach",
        "remove",
    ] {
        let env = read_env(&out.join(format!("{action}.env")));
        assert_eq!(env["VOL_NAME"], VOL, "{action}");
        assert_eq!(env["EXTP_OUT"], out.display().to_string(), "{action}");
        assert_eq!(env["EXTP_MIXED_CASE"], "some value", "{action}");
        assert_eq!(env["EXTP_PROVIDER"], "recorder", "{action}");
        assert_eq!(env["EXTP_ACCESS"], "kernelspace", "{action}");
        assert_eq!(env["LC_ALL"], "C", "{action}");
        assert_eq!(
            env["PATH"],
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        );
        assert!(
            !env.contains_key("EXTSTORAGE_TEST_LEAK"),
            "{action}: {env:?}"
        );
        assert!(!env.contains_key("HOME"), "{action}: {env:?}");
        if action == "snapshot" {
            assert!(!env.contains_key("VOL_CNAME") && !env.contains_key("VOL_UUID"));
        } else {
            assert_eq!(env["VOL_CNAME"], "disk-zero", "{action}");
            assert_eq!(env["VOL_UUID"], "0b1c2d3e-aaaa-bbbb-cccc-0123456789ab");
        }
        let cwd = fs::read_to_string(out.join(format!("{action}.cwd"))).unwrap();
        assert_eq!(cwd.trim(), provider_dir.display().to_string(), "{action}");
        let args = fs::read_to_string(out.join(format!("{action}.args"))).unwrap();
        assert_eq!(args.trim(), "", "{action} got arguments");
        // Everything the environment holds is documented or set by sh itself.
        for key in env.keys() {
            let documented = key.starts_with("VOL_")
                || key.starts_with("EXTP_")
                || ["PATH", "LC_ALL", "PWD", "SHLVL", "_", "OLDPWD"].contains(&key.as_str());
            assert!(documented, "{action}: undocumented variable {key}");
        }
    }
    let env = |a: &str| read_env(&out.join(format!("{a}.env")));
    assert_eq!(env("create")["VOL_SIZE"], "1024");
    assert!(!env("attach").contains_key("VOL_SIZE"));
    assert_eq!(env("grow")["VOL_SIZE"], "1024");
    assert_eq!(env("grow")["VOL_NEW_SIZE"], "1536");
    assert_eq!(env("setinfo")["VOL_METADATA"], "originstname+inst1");
    assert_eq!(env("snapshot")["VOL_SNAPSHOT_NAME"], format!("{VOL}.snap"));
    assert_eq!(env("snapshot")["VOL_SNAPSHOT_SIZE"], "2048");
    assert_eq!(env("open")["VOL_OPEN_EXCLUSIVE"], "True");

    // Shared open, named snapshot with its own size, userspace access, verify checks.
    run(with("open", &base, &["--shared"])).ok();
    assert_eq!(env("open")["VOL_OPEN_EXCLUSIVE"], "False");
    run(with(
        "snapshot",
        &base,
        &["--snapshot-name", "snap-1", "--snapshot-size", "3G"],
    ))
    .ok();
    assert_eq!(env("snapshot")["VOL_SNAPSHOT_NAME"], "snap-1");
    assert_eq!(env("snapshot")["VOL_SNAPSHOT_SIZE"], "3072");
    run(with(
        "verify",
        &base,
        &["--access", "userspace", "space", "ids"],
    ))
    .ok();
    assert_eq!(env("verify")["EXTP_ACCESS"], "userspace");
    let args = fs::read_to_string(out.join("verify.args")).unwrap();
    assert_eq!(args, "space\nids\n");
}

#[test]
fn logs_are_per_action_and_attach_keeps_stdout_out_of_the_log() {
    let w = World::new();
    let base = recorder(&w);
    assert!(!w.logs().exists(), "log dir must be created on demand");
    w.run(&with("create", &base, &["--size", "10"])).ok();
    let create_logs = w.log_files(&format!("create-recorder-{VOL}-"));
    assert_eq!(create_logs.len(), 1, "{create_logs:?}");
    let name = create_logs[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // <action>-<provider>-<volume>-<YYYY-MM-DD_HH_MM_SS>.log
    let stamp = name
        .strip_prefix(&format!("create-recorder-{VOL}-"))
        .and_then(|s| s.strip_suffix(".log"))
        .unwrap();
    assert_eq!(stamp.len(), 19, "{stamp}");
    for (i, c) in stamp.chars().enumerate() {
        match i {
            4 | 7 => assert_eq!(c, '-', "{stamp}"),
            10 | 13 | 16 => assert_eq!(c, '_', "{stamp}"),
            _ => assert!(c.is_ascii_digit(), "{stamp}"),
        }
    }
    let text = fs::read_to_string(&create_logs[0]).unwrap();
    assert!(text.contains("recorder create stdout"), "{text}");
    assert!(text.contains("recorder create stderr"), "{text}");

    let attach = w.run(&with("attach", &base, &["--json"])).ok();
    assert_eq!(attach.json()["uris"][0], format!("kvm:recorded:{VOL}"));
    let attach_logs = w.log_files(&format!("attach-recorder-{VOL}-"));
    let text: String = attach_logs
        .iter()
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    assert!(text.contains("recorder attach stderr"), "{text}");
    assert!(
        !text.contains("kvm:recorded"),
        "attach stdout leaked into the log: {text}"
    );
}

#[test]
fn failing_script_reports_status_and_last_20_lines() {
    let w = World::new();
    w.install_test("failing", "failing");
    let r = w
        .run(&[
            "create",
            "--provider",
            "failing",
            "--volume",
            "v1",
            "--size",
            "1",
        ])
        .code(1);
    assert!(
        r.stderr.contains("create script failed (exit status 3)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("\"v1\"") && r.stderr.contains("\"failing\""));
    assert!(r.stderr.contains("out line 30"), "{}", r.stderr);
    assert!(r.stderr.contains("out line 12"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("out line 10\n"),
        "more than 20 lines: {}",
        r.stderr
    );
    let tail_start = r.stderr.find("last lines of output:\n").unwrap();
    let tail_lines = r.stderr[tail_start..].lines().count() - 1;
    assert_eq!(tail_lines, 20, "{}", r.stderr);
    let log = fs::read_to_string(&w.log_files("create-failing-v1-")[0]).unwrap();
    assert!(log.contains("out line 1\n") && log.contains("fatal: from stderr"));

    // JSON mode carries the error and exit code on stdout.
    let r = w
        .run(&[
            "--json",
            "verify",
            "--provider",
            "failing",
            "--volume",
            "v1",
        ])
        .code(1);
    assert_eq!(r.json()["exit_code"], 1);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("verify script failed")
    );
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let w = World::new();
    w.install_test("hanging", "hanging");
    let out = format!("out={}", w.out().display());
    let r = w
        .run(&[
            "--timeout",
            "1",
            "attach",
            "--provider",
            "hanging",
            "--volume",
            "v1",
            "-p",
            &out,
        ])
        .code(3);
    assert!(r.stderr.contains("timed out after 1s"), "{}", r.stderr);
    assert!(
        r.stderr.contains("process group was killed"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("hanging now"), "{}", r.stderr);
    for file in ["script.pid", "child.pid"] {
        let pid: i32 = fs::read_to_string(w.out().join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The CLI has exited: by now every member of the group must be dead.
        assert!(process_gone(pid), "{file} {pid} still running");
    }
}

#[test]
fn huge_output_is_bounded_in_memory_and_log() {
    let w = World::new();
    w.install_test("chatty", "chatty");
    let mut child = w
        .cmd()
        .args(["verify", "--provider", "chatty", "--volume", "v1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our unreaped child; status and usage are valid
    // writable locations for the duration of the call.
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(got, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status}"
    );
    let _ = child.try_wait();
    // 2 GiB went through the CLI; its peak memory stays small (KiB units).
    assert!(
        usage.ru_maxrss < 128 * 1024,
        "max RSS {} KiB",
        usage.ru_maxrss
    );
    let logs = w.log_files("verify-chatty-v1-");
    let log_len = fs::metadata(&logs[0]).unwrap().len();
    assert!(log_len < 17 << 20, "log is {log_len} bytes");
    let log = fs::read(&logs[0]).unwrap();
    let end = String::from_utf8_lossy(&log[log.len() - 4096..]).into_owned();
    assert!(end.contains("log limit reached"), "{end}");
    assert!(end.contains("chatty last line"), "{end}");

    // As attach's result, the flood is an error, not an allocation.
    let r = w
        .run(&[
            "attach",
            "--provider",
            "chatty",
            "--volume",
            "v1",
            "-p",
            "bytes=100000000",
        ])
        .code(1);
    assert!(
        r.stderr.contains("larger than the result limit"),
        "{}",
        r.stderr
    );
}

#[test]
fn unknown_parameter_is_rejected_with_the_known_ones() {
    let w = World::new();
    let base = recorder(&w);
    let r = w
        .run(&with("create", &base, &["--size", "1", "-p", "pool=x"]))
        .code(2);
    assert!(
        r.stderr.contains("unknown parameter \"pool\""),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("[out, mixed_Case, sleep]"),
        "{}",
        r.stderr
    );
    assert!(!w.out().join("create.env").exists(), "script ran");
    let r = w.run(&with("attach", &base, &["-p", "out=again"])).code(2);
    assert!(r.stderr.contains("given twice"), "{}", r.stderr);
}

#[test]
fn unsafe_names_are_rejected_before_anything_runs() {
    let w = World::new();
    recorder(&w);
    let out = format!("out={}", w.out().display());
    for vol in ["../x", "a/b", "", ".", "..", "-rf", "a b", "x\ny"] {
        let vol_arg = format!("--volume={vol}");
        let r = w
            .run(&["attach", "--provider", "recorder", &vol_arg, "-p", &out])
            .code(2);
        assert!(
            r.stderr.contains("invalid volume name"),
            "{vol:?}: {}",
            r.stderr
        );
    }
    for prov in ["../recorder", "a/b", "", "re.corder", "recorder "] {
        let r = w
            .run(&["attach", "--provider", prov, "--volume", "v", "-p", &out])
            .code(2);
        assert!(
            r.stderr.contains("invalid provider name"),
            "{prov:?}: {}",
            r.stderr
        );
    }
    let r = w
        .run(&[
            "snapshot",
            "--provider",
            "recorder",
            "--volume",
            "v",
            "-p",
            &out,
            "--size",
            "1",
            "--snapshot-name",
            "../../etc/x",
        ])
        .code(2);
    assert!(r.stderr.contains("invalid snapshot name"), "{}", r.stderr);
    assert_eq!(fs::read_dir(w.out()).unwrap().count(), 0, "a script ran");
    assert!(!w.logs().exists(), "a script ran");
}

#[test]
fn diagnosis_lists_valid_and_invalid_providers_with_reasons() {
    let w = World::new();
    w.install("loopfile");
    let p = w.install_test("recorder", "missing_grow");
    fs::remove_file(p.join("grow")).unwrap();
    let p = w.install_test("recorder", "noexec");
    fs::set_permissions(p.join("setinfo"), fs::Permissions::from_mode(0o644)).unwrap();
    let p = w.install_test("recorder", "dirverify");
    fs::remove_file(p.join("verify")).unwrap();
    fs::create_dir(p.join("verify")).unwrap();
    let p = w.install_test("recorder", "noparams");
    fs::remove_file(p.join("parameters.list")).unwrap();
    let p = w.install_test("recorder", "badopt");
    fs::set_permissions(p.join("snapshot"), fs::Permissions::from_mode(0o600)).unwrap();
    w.install_test("recorder", "bad.name");

    let r = w.run(&["--json", "providers"]).ok();
    let list = r.json();
    let find = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {list}"))
            .clone()
    };
    assert_eq!(find("loopfile")["valid"], true);
    assert_eq!(find("loopfile")["parameters"][0]["name"], "dir");
    let reason = |name: &str| {
        let d = find(name);
        assert_eq!(d["valid"], false, "{d}");
        d["reason"].as_str().unwrap().to_owned()
    };
    assert!(reason("missing_grow").contains("File 'grow' under path"));
    assert!(reason("missing_grow").contains("is missing"));
    assert!(
        reason("noexec").contains("File 'setinfo'")
            && reason("noexec").contains("is not executable")
    );
    assert!(reason("dirverify").contains("is not a regular file"));
    assert!(reason("noparams").contains("'parameters.list'"));
    assert!(reason("badopt").contains("File 'snapshot'"));
    assert!(reason("bad.name").contains("invalid provider name"));

    // Human output, one provider, and using an invalid provider.
    let r = w.run(&["providers"]).ok();
    assert!(
        r.stdout.contains("noexec") && r.stdout.contains("INVALID"),
        "{}",
        r.stdout
    );
    w.run(&["providers", "--provider", "loopfile"]).ok();
    w.run(&["providers", "--provider", "noexec"]).code(1);
    w.run(&["providers", "--provider", "nosuch"]).code(2);
    let r = w
        .run(&[
            "setinfo",
            "--provider",
            "noexec",
            "--volume",
            "v",
            "--metadata",
            "x",
        ])
        .code(2);
    assert!(r.stderr.contains("is not executable"), "{}", r.stderr);
    let r = w
        .run(&["attach", "--provider", "nosuch", "--volume", "v"])
        .code(2);
    assert!(
        r.stderr.contains("not found in the search path"),
        "{}",
        r.stderr
    );
}

#[test]
fn search_path_is_ordered_and_taken_from_the_environment() {
    let w = World::new();
    let first = w.path("first");
    let second = w.path("second");
    common_cli::copy_provider(
        &common_cli::repo().join("tests/providers/recorder"),
        &second.join("rec"),
    );
    common_cli::copy_provider(
        &common_cli::repo().join("tests/providers/failing"),
        &first.join("rec"),
    );
    let out = format!("out={}", w.out().display());
    let run = |sp: String| -> common_cli::Run {
        Command::new(extstorage_testbins::path(extstorage_testbins::CLI))
            .env("EXTSTORAGE_SEARCH_PATH", sp)
            .arg("--log-dir")
            .arg(w.logs())
            .arg("--lock-dir")
            .arg(w.path("lock"))
            .args(["verify", "--provider", "rec", "--volume", "v", "-p", &out])
            .output()
            .unwrap()
            .into()
    };
    // Second only: the recorder. First then second: the failing one wins,
    // and it has no parameters, so `out` is unknown.
    run(second.display().to_string()).ok();
    let r = run(format!("{}:{}", first.display(), second.display())).code(2);
    assert!(
        r.stderr.contains("unknown parameter \"out\""),
        "{}",
        r.stderr
    );
    let r = run(format!(
        "{}:{}",
        w.path("nothing").display(),
        second.display()
    ));
    r.ok();
}

fn attachout(w: &World, mode: &str, extra: &[&str]) -> common_cli::Run {
    let mode = format!("mode={mode}");
    let mut args = vec![
        "attach",
        "--provider",
        "attachout",
        "--volume",
        "v1",
        "-p",
        &mode,
    ];
    args.extend_from_slice(extra);
    w.run(&args)
}

#[test]
fn attach_output_that_is_not_a_device_or_uri_fails() {
    let w = World::new();
    w.install_test("attachout", "attachout");
    for (mode, want) in [
        ("regular", "is not a block device"),
        ("chardev", "/dev/null is not a block device"),
        ("missing", "cannot stat /dev/extstorage-test-no-such-device"),
        (
            "nothing",
            "Neither a block device nor a userspace URI is available",
        ),
        (
            "blank",
            "Neither a block device nor a userspace URI is available",
        ),
    ] {
        let r = attachout(&w, mode, &[]).code(1);
        assert!(r.stderr.contains(want), "{mode}: {}", r.stderr);
    }
}

#[test]
fn attach_trims_output_and_accepts_minor_zero_style_devices() {
    let w = World::new();
    w.install_test("attachout", "attachout");
    let lo = LoopDev::new(w.path("backing.img"), 4 << 20);
    let dev = format!("dev={}", lo.dev);
    let r = attachout(&w, "device", &["-p", &dev, "--json"]).ok();
    let info = r.json();
    assert_eq!(info["dev_path"], lo.dev.as_str());
    assert_eq!(info["major"], 7, "loop devices have major 7");
    let minor: u64 = lo.dev.trim_start_matches("/dev/loop").parse().unwrap();
    assert_eq!(info["minor"], minor);
    assert_eq!(info["uris"].as_array().unwrap().len(), 0);
    let r = w
        .run(&[
            "size",
            "--provider",
            "attachout",
            "--volume",
            "v1",
            "-p",
            "mode=device",
            "-p",
            &dev,
        ])
        .ok();
    assert_eq!(r.stdout.trim(), (4u64 << 20).to_string());
}

#[test]
fn userspace_uris_match_the_hypervisor_case_insensitively() {
    let w = World::new();
    w.install_test("attachout", "attachout");
    let r = attachout(&w, "mixedcase", &["--json"]).ok();
    let info = r.json();
    assert_eq!(info["dev_path"], serde_json::Value::Null);
    assert_eq!(
        info["uris"],
        serde_json::json!([
            "Xen:xen-uri",
            "KvM:nbd+unix:///v?socket=/tmp/x.sock",
            "kvm:second"
        ])
    );
    let look = |hv: &str| {
        w.run(&[
            "uri-lookup",
            "--provider",
            "attachout",
            "--volume",
            "v1",
            "-p",
            "mode=mixedcase",
            "--hypervisor",
            hv,
        ])
    };
    assert_eq!(
        look("kvm").ok().stdout.trim(),
        "nbd+unix:///v?socket=/tmp/x.sock"
    );
    assert_eq!(
        look("KVM").ok().stdout.trim(),
        "nbd+unix:///v?socket=/tmp/x.sock"
    );
    assert_eq!(look("xen").ok().stdout.trim(), "xen-uri");
    let r = look("lxc").code(1);
    assert!(
        r.stderr.contains(
            "Userspace access is not supported by the 'attachout' ExtStorage provider for the 'lxc' hypervisor"
        ),
        "{}",
        r.stderr
    );
    let r = w
        .run(&[
            "size",
            "--provider",
            "attachout",
            "--volume",
            "v1",
            "-p",
            "mode=mixedcase",
        ])
        .code(1);
    assert!(r.stderr.contains("has no block device"), "{}", r.stderr);
}

#[test]
fn optional_scripts_absent_and_rename() {
    let w = World::new();
    w.install_test("attachout", "attachout");
    let v = [
        "--provider",
        "attachout",
        "--volume",
        "v1",
        "-p",
        "mode=mixedcase",
    ];
    let args = |cmd: &'static str, extra: &[&'static str]| {
        let mut a = vec![cmd];
        a.extend_from_slice(&v);
        a.extend_from_slice(extra);
        a
    };
    let r = w.run(&args("snapshot", &["--size", "1"])).code(1);
    assert!(
        r.stderr
            .contains("snapshot not supported by provider \"attachout\""),
        "{}",
        r.stderr
    );
    let r = w.run(&args("open", &["--json"])).ok();
    assert_eq!(r.json()["script_ran"], false);
    let r = w.run(&args("close", &["--json"])).ok();
    assert_eq!(r.json()["script_ran"], false);
    let r = w.run(&args("rename", &["--new-name", "v2"])).code(1);
    assert!(r.stderr.contains("rename not supported"), "{}", r.stderr);
    // Bad sizes and amounts are usage errors.
    let r = w.run(&args("grow", &["--amount", "1.2.3G"])).code(2);
    assert!(r.stderr.contains("1.2.3G"), "{}", r.stderr);
    w.run(&args("grow", &["--amount", "0"])).code(2);
    w.run(&args("create", &[])).code(2);
}

#[test]
fn setinfo_metadata_is_sanitised_and_cut_to_128() {
    let w = World::new();
    let base = recorder(&w);
    let long = format!("-ab c/d{}", "x".repeat(200));
    w.run(&with("setinfo", &base, &["--metadata", &long])).ok();
    let env = read_env(&w.out().join("setinfo.env"));
    let want = format!("_ab_c_d{}", "x".repeat(121));
    assert_eq!(env["VOL_METADATA"], want);
    assert_eq!(env["VOL_METADATA"].len(), 128);
    w.run(&with("setinfo", &base, &["--metadata", "+ok.name-1:é"]))
        .ok();
    assert_eq!(
        read_env(&w.out().join("setinfo.env"))["VOL_METADATA"],
        "+ok.name-1__"
    );
}

#[test]
fn concurrent_operations_on_one_volume_are_serialised() {
    let w = World::new();
    let base = recorder(&w);
    let mut first = w
        .cmd()
        .args(with("verify", &base, &["-p", "sleep=3"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first holds the lock and runs its script.
    let marker = w.out().join("verify.env");
    while !marker.exists() {
        if let Some(st) = first.try_wait().unwrap() {
            panic!("first run ended early: {st}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let r = w
        .run(
            &[
                &["--lock-timeout", "0.2"][..],
                &with("setinfo", &base, &["--metadata", "m"]),
            ]
            .concat(),
        )
        .code(4);
    assert!(
        r.stderr.contains(&format!("volume \"{VOL}\"")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("200ms"), "{}", r.stderr);
    assert!(
        !w.out().join("setinfo.env").exists(),
        "second ran while locked"
    );
    // With a long wait the second one runs after the first.
    let r = w
        .run(
            &[
                &["--lock-timeout", "60"][..],
                &with("setinfo", &base, &["--metadata", "m"]),
            ]
            .concat(),
        )
        .ok();
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let first: common_cli::Run = first.wait_with_output().unwrap().into();
    first.ok();
    // The first finished before the second started.
    let t1 = fs::metadata(w.out().join("verify.done"))
        .unwrap()
        .modified()
        .unwrap();
    let t2 = fs::metadata(w.out().join("setinfo.env"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(t1 <= t2);
    // Another volume is not blocked.
    let mut other = base.clone();
    other[3] = "other-volume".into();
    w.run(&with("verify", &other, &[])).ok();
}

#[test]
fn help_documents_exit_codes_and_examples() {
    let w = World::new();
    let r = w.run(&["--help"]).ok();
    for want in [
        "Exit codes:",
        "3  a script timed out",
        "4  the volume is locked",
        "Examples:",
        "uri-lookup",
        "export-command",
    ] {
        assert!(r.stdout.contains(want), "{want}: {}", r.stdout);
    }
    let r = w.run(&["--timeout", "nan", "providers"]).code(2);
    assert!(r.stderr.contains("--timeout"), "{}", r.stderr);
}

/// The environment variables one action recorded, or none when it did not run.
fn recorded(w: &World, action: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let path = w.out().join(format!("{action}.env"));
    path.exists().then(|| read_env(&path))
}

#[test]
fn sizes_follow_ganeti_parse_unit() {
    let w = World::new();
    let base = recorder(&w);
    for (size, mib) in [
        ("1.5G", "1536"),
        ("1", "4"),
        ("125", "128"),
        ("0.5", "4"),
        ("1.8G", "1844"),
        ("64 MiB", "64"),
        ("2gb", "2048"),
    ] {
        w.run(&with("create", &base, &["--size", size])).ok();
        assert_eq!(recorded(&w, "create").unwrap()["VOL_SIZE"], mib, "{size}");
    }
    // Bytes and K were once read as MiB (64B made a 64 MiB volume, 4096B a
    // 4 GiB one); input that crashes Ganeti's ParseUnit is a clear error.
    fs::remove_file(w.out().join("create.env")).unwrap();
    for (size, why) in [
        ("64B", "unknown unit \"B\""),
        ("4096B", "unknown unit \"B\""),
        ("2048K", "unknown unit \"K\""),
        ("1.2.3", "more than one '.'"),
        (".", "no digits"),
        ("-1", "does not start with a number"),
    ] {
        let arg = format!("--size={size}");
        let r = w.run(&with("create", &base, &[&arg])).code(2);
        assert!(r.stderr.contains(why), "{size}: {}", r.stderr);
        assert!(
            r.stderr.contains("multiple of 4 MiB"),
            "{size}: {}",
            r.stderr
        );
        assert!(recorded(&w, "create").is_none(), "{size}: create ran");
    }
    // Amounts too: --amount 1M adds 4 MiB, as gnt-instance grow-disk.
    w.run(&with("grow", &base, &["--size", "64", "--amount", "1M"]))
        .ok();
    let env = recorded(&w, "grow").unwrap();
    assert_eq!(
        (env["VOL_SIZE"].as_str(), env["VOL_NEW_SIZE"].as_str()),
        ("64", "68")
    );
    let r = w.run(&["create", "--help"]).ok();
    assert!(r.stdout.contains("ParseUnit"), "{}", r.stdout);
    assert!(r.stdout.contains("multiple of 4 MiB"), "{}", r.stdout);
}

#[test]
fn snapshot_size_zero_and_empty_name_mean_the_defaults() {
    let w = World::new();
    let base = recorder(&w);
    w.run(&with(
        "snapshot",
        &base,
        &[
            "--size",
            "2G",
            "--snapshot-size",
            "0",
            "--snapshot-name",
            "",
        ],
    ))
    .ok();
    let env = recorded(&w, "snapshot").unwrap();
    assert_eq!(env["VOL_SNAPSHOT_SIZE"], "2048");
    assert_eq!(env["VOL_SNAPSHOT_NAME"], format!("{VOL}.snap"));
    // Without --size the volume size is measured on the device; the
    // recorder has none, so the error says to pass --size.
    let r = w
        .run(&with("snapshot", &base, &["--snapshot-size", "0"]))
        .code(2);
    assert!(r.stderr.contains("pass --size"), "{}", r.stderr);
}

#[test]
fn access_and_provider_params_are_ganeti_disk_params() {
    let w = World::new();
    let base = recorder(&w);
    let list = w.providers().join("recorder/parameters.list");
    // As listed in parameters.list (and also when not listed: they are
    // Ganeti disk parameters, not provider parameters).
    for listed in [false, true] {
        if listed {
            let mut text = fs::read_to_string(&list).unwrap();
            text.push_str("access\thow the volume is accessed\nprovider\tthe provider\n");
            fs::write(&list, text).unwrap();
        }
        w.run(&with(
            "verify",
            &base,
            &["-p", "access=userspace", "-p", "provider=recorder"],
        ))
        .ok();
        let env = recorded(&w, "verify").unwrap();
        assert_eq!(env["EXTP_ACCESS"], "userspace", "listed: {listed}");
        assert_eq!(env["EXTP_PROVIDER"], "recorder", "listed: {listed}");
        fs::remove_file(w.out().join("verify.env")).unwrap();
        // The same access twice is fine; a different one is an error.
        w.run(&with(
            "verify",
            &base,
            &["-p", "access=kernelspace", "--access", "kernelspace"],
        ))
        .ok();
        assert_eq!(
            recorded(&w, "verify").unwrap()["EXTP_ACCESS"],
            "kernelspace"
        );
        fs::remove_file(w.out().join("verify.env")).unwrap();
        for (extra, why) in [
            (
                &["-p", "access=userspace", "--access", "kernelspace"][..],
                "-p access=userspace conflicts with the access mode kernelspace",
            ),
            (
                &["-p", "access=vhost"][..],
                "neither 'kernelspace' nor 'userspace'",
            ),
            (
                &["-p", "provider=loopfile"][..],
                "the volume's provider is \"recorder\"",
            ),
        ] {
            let r = w.run(&with("verify", &base, extra)).code(2);
            assert!(r.stderr.contains(why), "{extra:?}: {}", r.stderr);
            assert!(recorded(&w, "verify").is_none(), "{extra:?}: verify ran");
        }
    }
    // Names that are no environment name, or collide after upper-casing.
    let mut text = fs::read_to_string(&list).unwrap();
    text.push_str("OUT\tclashes with out\npool-name\tnot an environment name\nACCESS\tclashes\n");
    fs::write(&list, text).unwrap();
    for (extra, why) in [
        (
            &["-p", "OUT=x"][..],
            "it and \"out\" would both be passed as EXTP_OUT",
        ),
        (
            &["-p", "pool-name=x"][..],
            "not be a valid environment variable name",
        ),
        (
            &["-p", "ACCESS=userspace"][..],
            "would both be passed as EXTP_ACCESS",
        ),
    ] {
        let r = w.run(&with("verify", &base, extra)).code(2);
        assert!(r.stderr.contains(why), "{extra:?}: {}", r.stderr);
        assert!(recorded(&w, "verify").is_none(), "{extra:?}: verify ran");
    }
}

#[test]
fn a_dangling_symlink_is_an_absent_optional_script() {
    let w = World::new();
    let base = recorder(&w);
    let dir = w.providers().join("recorder");
    for script in ["snapshot", "open"] {
        fs::remove_file(dir.join(script)).unwrap();
        std::os::unix::fs::symlink(w.path("nowhere"), dir.join(script)).unwrap();
    }
    let r = w
        .run(&["--json", "providers", "--provider", "recorder"])
        .ok();
    assert_eq!(r.json()[0]["valid"], true, "{}", r.stdout);
    assert_eq!(r.json()[0]["optional"], serde_json::json!(["close"]));
    let r = w.run(&with("snapshot", &base, &["--size", "4"])).code(1);
    assert!(
        r.stderr
            .contains("snapshot not supported by provider \"recorder\""),
        "{}",
        r.stderr
    );
    let r = w.run(&with("open", &base, &["--json"])).ok();
    assert_eq!(r.json()["script_ran"], false);
    // A required script that dangles is still missing.
    fs::remove_file(dir.join("grow")).unwrap();
    std::os::unix::fs::symlink(w.path("nowhere"), dir.join("grow")).unwrap();
    let r = w
        .run(&["--json", "providers", "--provider", "recorder"])
        .code(1);
    let reason = r.json()[0]["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("File 'grow' under path") && reason.contains("is missing"),
        "{reason}"
    );
}

#[test]
fn a_result_that_cannot_be_written_is_an_error() {
    let w = World::new();
    let base = recorder(&w);
    for json in [false, true] {
        let mut args = with("attach", &base, &[]);
        if json {
            args.insert(0, "--json");
        }
        let full = fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let r: common_cli::Run = w.cmd().args(&args).stdout(full).output().unwrap().into();
        let r = r.code(1);
        assert!(
            r.stderr
                .contains("cannot write the result to stdout: No space left on device"),
            "json {json}: {}",
            r.stderr
        );
    }
    // A reader that went away (`| head`) is not an error.
    let mut child = w
        .cmd()
        .args(with("attach", &base, &[]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let r: common_cli::Run = child.wait_with_output().unwrap().into();
    let r = r.ok();
    assert!(!r.stderr.contains("error"), "{}", r.stderr);
}

/// Runs `line` with `sh -c` in `dir` and returns the arguments `set --`
/// made of it, one per element.
fn shell_words(dir: &std::path::Path, line: &str) -> Vec<String> {
    let script = format!("set -- {line}\nfor a; do printf '%s\\0' \"$a\"; done");
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_terminator('\0')
        .map(str::to_owned)
        .collect()
}

#[test]
fn commands_printed_for_a_shell_are_quoted() {
    let w = World::new();
    w.install_test("attachout", "attachout");
    let lo = LoopDev::new(w.path("backing.img"), 8 << 20);
    // A device path that runs code when pasted unquoted.
    let evil = w.path("dev $(touch INJECTED) 'q'");
    std::os::unix::fs::symlink(&lo.dev, &evil).unwrap();
    let dev = format!("dev={}", evil.display());
    let v = [
        "--provider",
        "attachout",
        "--volume",
        "v1",
        "-p",
        "mode=device",
        "-p",
        &dev,
    ];
    for cmd in ["export-command", "import-command"] {
        let mut args = vec![cmd];
        args.extend_from_slice(&v);
        let line = w.run(&args).ok().stdout.trim_end().to_owned();
        let mut jargs = vec!["--json", cmd];
        jargs.extend_from_slice(&v);
        let argv: Vec<String> = serde_json::from_value(w.run(&jargs).ok().json()).unwrap();
        assert_eq!(shell_words(&w.out(), &line), argv, "{cmd}: {line}");
        assert!(!w.out().join("INJECTED").exists(), "{cmd}: {line} ran code");
    }
    // Pasting the export command runs dd on the device, and only that.
    let mut args = vec!["export-command"];
    args.extend_from_slice(&v);
    let line = w.run(&args).ok().stdout.trim_end().to_owned();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{line} 2>/dev/null | wc -c"))
        .current_dir(w.out())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (8u64 << 20).to_string()
    );
    assert!(!w.out().join("INJECTED").exists(), "{line} ran code");
}

#[test]
fn usage_errors_under_json_print_the_json_object() {
    let w = World::new();
    let base = recorder(&w);
    let cases: Vec<Vec<&str>> = vec![
        vec!["--json", "attach", "--provider"],
        vec!["--json", "no-such-command"],
        vec!["--json"],
        with("create", &base, &["--json", "--size", "64B"]),
        with("grow", &base, &["--json", "--amount", "1", "--bogus"]),
    ];
    for args in cases {
        let r = w.run(&args).code(2);
        let j = r.json();
        assert_eq!(j["ok"], false, "{args:?}: {}", r.stdout);
        assert_eq!(j["exit_code"], 2, "{args:?}");
        let msg = j["error"].as_str().unwrap();
        assert!(
            !msg.is_empty() && !msg.starts_with("error:"),
            "{args:?}: {msg}"
        );
        assert!(r.stderr.contains("error"), "{args:?}: {}", r.stderr);
    }
    let r = w
        .run(&with("create", &base, &["--json", "--size", "64B"]))
        .code(2);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("unknown unit \"B\"")
    );
    // --help and --version stay text, exit 0.
    let r = w.run(&["--json", "--help"]).ok();
    assert!(r.stdout.contains("Exit codes:"), "{}", r.stdout);
    let r = w.run(&["--json", "--version"]).ok();
    assert!(r.stdout.starts_with("extstorage "), "{}", r.stdout);
    // Without --json a usage error stays clap's text.
    let r = w.run(&["attach", "--provider"]).code(2);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
}

#[test]
fn options_are_checked_before_any_script_runs() {
    let w = World::new();
    let base = recorder(&w);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (with("kvm-args", &base, &["--disk-id", "a,b"]), "a,b"),
        (
            with("kvm-args", &base, &["--queue-size", "3"]),
            "queue-size",
        ),
        (
            with("kvm-args", &base, &["--num-queues", "0"]),
            "num-queues",
        ),
        (
            with("kvm-args", &base, &["--cache", "writeback"]),
            "cache=none",
        ),
        (
            with(
                "kvm-args",
                &base,
                &["--access", "vhost-user", "--socket", "rel.sock"],
            ),
            "rel.sock",
        ),
        (
            with(
                "kvm-args",
                &base,
                &["--access", "vhost-user", "--aio", "native"],
            ),
            "aio",
        ),
        (
            with("kvm-args", &base, &["--secret-dir", "rel"]),
            "--secret-dir",
        ),
        (
            with(
                "kvm-args",
                &base,
                &[
                    "--access",
                    "vhost-user",
                    "--format",
                    "libvirt-xml",
                    "--target-dev",
                    "sda",
                ],
            ),
            "disk target",
        ),
        (
            with("kvm-args", &base, &["--hypervisor", ""]),
            "--hypervisor",
        ),
        (with("uri", &base, &["--node-name", "a,b"]), "a,b"),
        (with("uri", &base, &["--cache", "writeback"]), "cache=none"),
        (
            with("uri", &base, &["--hypervisor", "kvm:x"]),
            "--hypervisor",
        ),
        (
            with("uri-lookup", &base, &["--hypervisor", ""]),
            "--hypervisor",
        ),
    ];
    for (args, want) in cases {
        let r = w.run(&args).code(2);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
        assert_eq!(
            fs::read_dir(w.out()).unwrap().count(),
            0,
            "{args:?}: a script ran"
        );
    }
}
