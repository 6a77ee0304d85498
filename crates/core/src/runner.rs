//! Running one provider script: clean environment, no inherited fds,
//! timeout with process group kill, signal forwarding, a lock keeper,
//! bounded capture, per-action log files, secrets redacted.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::interrupt;
use crate::keeper::{Keeper, pgid_message};
use crate::provider::Provider;
use crate::redact::{MASK, looks_secret_name, redact};
use crate::sys::{cloexec_from, group_alive, open_no_follow};

/// The `PATH` scripts run with.
pub const SCRIPT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Ganeti's log directory, our default.
pub const DEFAULT_LOG_DIR: &str = "/var/log/ganeti/extstorage";
/// How many output lines an error carries (Ganeti: 20).
pub const TAIL_LINES: usize = 20;
/// Longest line kept in the tail; longer lines are cut.
const TAIL_LINE_MAX: usize = 1024;
/// Longest line redacted as a whole in a log file; a longer one is written
/// (and redacted) in pieces of this size.
const LOG_LINE_MAX: usize = 64 * 1024;

/// How scripts are run.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Directory for per-action log files; created on demand.
    pub log_dir: PathBuf,
    /// Time limit per script run.
    pub timeout: Duration,
    /// Time between SIGTERM and SIGKILL of a timed-out process group.
    pub kill_grace: Duration,
    /// After the script exits, how long to keep reading output that its
    /// background children still write to the inherited pipes.
    pub drain_grace: Duration,
    /// Most bytes of stdout kept as the result (attach).
    pub max_result_bytes: usize,
    /// Most bytes written to one log file; the rest is discarded.
    pub max_log_bytes: u64,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            log_dir: PathBuf::from(DEFAULT_LOG_DIR),
            timeout: Duration::from_secs(300),
            kill_grace: Duration::from_secs(2),
            drain_grace: Duration::from_secs(2),
            max_result_bytes: 1 << 20,
            max_log_bytes: 16 << 20,
        }
    }
}

/// One script invocation.
#[derive(Debug)]
pub struct ScriptRun<'a> {
    /// The provider.
    pub provider: &'a Provider,
    /// The action, i.e. the script name.
    pub action: &'a str,
    /// The volume name (for logs and errors).
    pub volume: &'a str,
    /// Environment variables on top of PATH and LC_ALL.
    pub env: Vec<(String, String)>,
    /// Arguments (empty except for verify checks).
    pub args: Vec<OsString>,
    /// Whether stdout is the result (attach): then only stderr goes to the
    /// log and stdout is returned.
    pub stdout_is_result: bool,
}

/// What a successful run produced.
#[derive(Debug)]
pub struct ScriptOutput {
    /// stdout when it is the result, else empty.
    pub stdout: Vec<u8>,
    /// Whether stdout exceeded the result limit and was cut.
    pub stdout_truncated: bool,
    /// The last lines of output.
    pub tail: Vec<String>,
    /// The log file written.
    pub log_path: PathBuf,
}

/// The last lines of a stream of output, bounded in memory.
#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<String>,
    partial: [Vec<u8>; 2],
}

impl Tail {
    fn feed(&mut self, stream: usize, data: &[u8]) {
        // Only the last TAIL_LINES complete lines of a chunk (and what
        // follows them) can survive, so skip everything before them.
        let mut start = 0;
        let mut newlines = 0;
        for (i, &b) in data.iter().enumerate().rev() {
            if b == b'\n' {
                newlines += 1;
                if newlines > TAIL_LINES {
                    start = i + 1;
                    self.partial[stream].clear();
                    break;
                }
            }
        }
        let mut rest = &data[start..];
        while !rest.is_empty() {
            let (piece, done, next) = match rest.iter().position(|&b| b == b'\n') {
                Some(n) => (&rest[..n], true, &rest[n + 1..]),
                None => (rest, false, &rest[rest.len()..]),
            };
            let room = TAIL_LINE_MAX.saturating_sub(self.partial[stream].len());
            self.partial[stream].extend_from_slice(&piece[..room.min(piece.len())]);
            if done {
                let line = std::mem::take(&mut self.partial[stream]);
                self.push(&line);
            }
            rest = next;
        }
    }

    fn push(&mut self, line: &[u8]) {
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        let text = String::from_utf8_lossy(line);
        self.lines.push_back(text.trim_end_matches('\r').to_owned());
    }

    /// The last lines, secrets redacted.
    fn finish(mut self) -> Vec<String> {
        for stream in 0..2 {
            let line = std::mem::take(&mut self.partial[stream]);
            if !line.is_empty() {
                self.push(&line);
            }
        }
        self.lines
            .into_iter()
            .map(|l| redact(&l).into_owned())
            .collect()
    }
}

/// A log file that stops growing at a limit; lines are redacted whole.
struct BoundedLog {
    file: BufWriter<File>,
    written: u64,
    limit: u64,
    truncated: bool,
    /// The current line, not yet written.
    line: Vec<u8>,
}

impl BoundedLog {
    fn new(file: File, limit: u64) -> BoundedLog {
        BoundedLog {
            file: BufWriter::with_capacity(64 * 1024, file),
            written: 0,
            limit,
            truncated: false,
            line: Vec::new(),
        }
    }

    /// Takes script output; complete lines are redacted and written.
    fn write(&mut self, data: &[u8]) {
        let mut rest = data;
        while !rest.is_empty() && !self.truncated {
            match rest.iter().position(|&b| b == b'\n') {
                Some(n) => {
                    self.line.extend_from_slice(&rest[..=n]);
                    rest = &rest[n + 1..];
                    self.flush_line();
                }
                None => {
                    let take = rest.len().min(LOG_LINE_MAX - self.line.len());
                    self.line.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if self.line.len() >= LOG_LINE_MAX {
                        self.flush_line();
                    }
                }
            }
        }
    }

    /// Writes the pending (partial) line.
    fn flush_line(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.line);
        let text = String::from_utf8_lossy(&line);
        match redact(&text) {
            Cow::Borrowed(_) if matches!(text, Cow::Borrowed(_)) => self.write_raw(&line),
            clean => self.write_raw(clean.as_bytes()),
        }
        self.line = line;
        self.line.clear();
    }

    /// Writes the pending line and everything buffered.
    fn finish(&mut self) {
        self.flush_line();
        if self.file.flush().is_err() {
            self.truncated = true;
        }
    }

    fn write_raw(&mut self, data: &[u8]) {
        if self.truncated {
            return;
        }
        let room = self.limit.saturating_sub(self.written);
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
        let res = self.file.write_all(&data[..take]);
        self.written += take as u64;
        if take < data.len() || res.is_err() {
            self.truncated = true;
            let _ = self
                .file
                .write_all(b"\n[extstorage: log limit reached, further output discarded]\n");
        }
    }
}

/// Formats a UTC timestamp as `YYYY-MM-DD_HH_MM_SS`.
pub fn log_timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}_{:02}_{:02}_{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The log file for one action.
pub fn log_path(log_dir: &Path, action: &str, provider: &str, volume: &str) -> PathBuf {
    log_dir.join(format!(
        "{action}-{provider}-{volume}-{}.log",
        log_timestamp(SystemTime::now())
    ))
}

fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(sig) = status.signal() {
        match Signal::try_from(sig) {
            Ok(s) => format!("killed by signal {}", s.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        }
    } else {
        status.to_string()
    }
}

/// Runs one script and waits for it, within the configured time limit.
///
/// The script runs in a process group of its own, with no fd of ours but
/// stdin (`/dev/null`) and the two output pipes. While the calling thread
/// holds a volume lock, a lock keeper (`crate::keeper`) keeps the lock
/// until the script's group is gone should this process die. A signal
/// recorded by [`crate::interrupt`] before the start means the script does
/// not run; one during the run is forwarded to the group, which is waited
/// for (within the time limit); both end in [`Error::Interrupted`].
pub fn run_script(cfg: &RunnerConfig, run: &ScriptRun<'_>) -> Result<ScriptOutput> {
    let provider = run.provider.name.as_str();
    let seen = interrupt::count();
    if let Some(signal) = interrupt::pending() {
        return Err(Error::Interrupted {
            signal: signal as i32,
            what: format!(
                "before the {} script of volume {:?} (provider {provider:?}) started; it did not \
                 run (any earlier script of this operation had finished)",
                run.action, run.volume
            ),
        });
    }
    crate::dirs::create_dir_mode(&cfg.log_dir, crate::dirs::LOG_DIR_MODE).map_err(|e| {
        Error::io(
            format!(
                "cannot create the log directory {}; create it or choose another with --log-dir",
                cfg.log_dir.display()
            ),
            e,
        )
    })?;
    let log_path = log_path(&cfg.log_dir, run.action, provider, run.volume);
    let file = open_no_follow(
        &log_path,
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(crate::dirs::LOG_FILE_MODE),
        "log file",
    )?;
    let mut log = BoundedLog::new(file, cfg.max_log_bytes);

    let script = run.provider.script(run.action);
    let mut cmd = Command::new(&script);
    cmd.args(&run.args)
        .current_dir(&run.provider.path)
        .env_clear()
        .env("PATH", SCRIPT_PATH)
        .env("LC_ALL", "C")
        .envs(run.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A new process group, so a timeout can kill the script and
        // everything it started.
        .process_group(0);
    let keeper = crate::lock::with_held_lock(|lock| {
        lock.map(|fd| Keeper::start(fd, cfg.kill_grace)).transpose()
    })?;
    let report = keeper.as_ref().and_then(Keeper::report_fd);
    // SAFETY: the closure runs in the child between fork and exec and makes
    // only async-signal-safe system calls (setpgid, getpgrp, write,
    // close_range or fcntl); it allocates nothing and cannot panic.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = report {
                // Our own group, made sure of before it is reported: the
                // keeper kills the reported group if we are orphaned.
                libc::setpgid(0, 0);
                let msg = pgid_message(libc::getpgrp());
                libc::write(fd, msg.as_ptr().cast(), msg.len());
            }
            // Nothing of ours but 0-2 reaches the script (and the daemons
            // it starts); marked close-on-exec rather than closed so std's
            // exec-error pipe keeps working.
            cloexec_from(3);
            Ok(())
        });
    }
    let shown_env: Vec<(&str, Cow<'_, str>)> = run
        .env
        .iter()
        .map(|(k, v)| {
            let v = if looks_secret_name(k) {
                Cow::Borrowed(MASK)
            } else {
                redact(v)
            };
            (k.as_str(), v)
        })
        .collect();
    let shown_args: Vec<String> = run
        .args
        .iter()
        .map(|a| redact(&a.to_string_lossy()).into_owned())
        .collect();
    tracing::debug!(
        action = run.action,
        provider,
        volume = run.volume,
        script = %script.display(),
        args = ?shown_args,
        env = ?shown_env,
        log = %log_path.display(),
        "running ExtStorage script"
    );
    let mut child = cmd.spawn().map_err(|e| {
        Error::io(
            format!("cannot run {} script {}", run.action, script.display()),
            e,
        )
    })?;
    let pgid = child.id();
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(Error::io(
            "script pipes missing",
            std::io::Error::other("no pipes"),
        ));
    };

    let mut tail = Tail::default();
    let mut result = Vec::new();
    let mut result_truncated = false;
    let outcome = pump(
        cfg,
        run,
        seen,
        &mut child,
        stdout,
        stderr,
        |stream, data| {
            tail.feed(stream, data);
            if stream == 0 && run.stdout_is_result {
                let room = cfg.max_result_bytes.saturating_sub(result.len());
                if data.len() > room {
                    result_truncated = true;
                }
                result.extend_from_slice(&data[..room.min(data.len())]);
            } else {
                log.write(data);
            }
        },
    );
    if matches!(outcome, Err(PumpError::Io(_))) {
        // We cannot supervise the script any more: stop it rather than
        // leave it running without its lock.
        kill_group(
            cfg,
            &mut child,
            Pid::from_raw(i32::try_from(pgid).unwrap_or(i32::MAX)),
        );
    }
    // The group is dealt with (exited, killed, or left to its daemons): the
    // keeper can go.
    if let Some(k) = keeper {
        k.release();
    }
    let tail = tail.finish();
    log.finish();
    if log.truncated {
        let mut end = String::from("[extstorage: last lines of output]\n");
        for line in &tail {
            end.push_str(line);
            end.push('\n');
        }
        let _ = log.file.write_all(end.as_bytes());
        let _ = log.file.flush();
    }
    let interrupted = |signal: Signal, outcome: String| Error::Interrupted {
        signal: signal as i32,
        what: format!(
            "while the {} script of volume {:?} (provider {provider:?}) was running: {} was \
             forwarded to its process group {pgid}, which {outcome}. Last lines of output:\n{}",
            run.action,
            run.volume,
            signal.as_str(),
            tail.join("\n")
        ),
    };
    let status = match outcome {
        Ok(Pumped {
            status,
            forwarded: Some(signal),
        }) => {
            return Err(interrupted(
                signal,
                format!("has exited (the script: {})", describe_status(status)),
            ));
        }
        Err(PumpError::TimedOut {
            forwarded: Some(signal),
        }) => {
            return Err(interrupted(
                signal,
                format!(
                    "did not exit within the {:?} time limit and was killed",
                    cfg.timeout
                ),
            ));
        }
        Ok(Pumped {
            status,
            forwarded: None,
        }) => status,
        Err(PumpError::TimedOut { forwarded: None }) => {
            tracing::debug!(action = run.action, provider, volume = run.volume, timeout = ?cfg.timeout, "script timed out, process group killed");
            return Err(Error::Timeout {
                action: run.action.to_owned(),
                provider: provider.to_owned(),
                volume: run.volume.to_owned(),
                timeout: cfg.timeout,
                tail: tail.join("\n"),
            });
        }
        Err(PumpError::Io(e)) => {
            return Err(Error::io(format!("waiting for {} script", run.action), e));
        }
    };
    if !status.success() {
        let status = describe_status(status);
        tracing::debug!(action = run.action, provider, volume = run.volume, status = %status, log = %log_path.display(), "script failed");
        return Err(Error::ScriptFailed {
            action: run.action.to_owned(),
            provider: provider.to_owned(),
            volume: run.volume.to_owned(),
            status,
            tail: tail.join("\n"),
        });
    }
    tracing::debug!(
        action = run.action,
        provider,
        volume = run.volume,
        "script succeeded"
    );
    Ok(ScriptOutput {
        stdout: result,
        stdout_truncated: result_truncated,
        tail,
        log_path,
    })
}

/// How a run that was waited for to the end ended.
struct Pumped {
    status: ExitStatus,
    /// The signal forwarded to the group while the script ran; the group has
    /// exited since.
    forwarded: Option<Signal>,
}

enum PumpError {
    /// The time limit passed; the group was killed.
    TimedOut {
        forwarded: Option<Signal>,
    },
    Io(std::io::Error),
}

/// Reads both pipes concurrently until the child exits and the pipes close,
/// enforcing the time limit. `sink(stream, data)` gets every chunk (stream 0
/// is stdout, 1 is stderr). A signal recorded by [`interrupt`] after
/// `seen` signals, while the script runs, is forwarded to its group, and then
/// the whole group (not only the script) is waited for.
fn pump(
    cfg: &RunnerConfig,
    run: &ScriptRun<'_>,
    mut seen: u32,
    child: &mut Child,
    mut stdout: ChildStdout,
    mut stderr: ChildStderr,
    mut sink: impl FnMut(usize, &[u8]),
) -> std::result::Result<Pumped, PumpError> {
    let start = Instant::now();
    // A limit too large to represent means no limit.
    let deadline = start.checked_add(cfg.timeout);
    let mut open = [true, true];
    let mut status: Option<ExitStatus> = None;
    let mut drain_until: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut idle = Duration::from_micros(200);
    let pgid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let mut forwarded: Option<Signal> = None;
    loop {
        // Forwarded while the script runs, and again (a second Ctrl-C) while
        // its group is waited for; not once the script has finished on its
        // own: then the run is complete and the next script will not start.
        if (status.is_none() || forwarded.is_some()) && interrupt::count() != seen {
            seen = interrupt::count();
            if let Some(signal) = interrupt::pending() {
                let _ = killpg(pgid, signal);
                forwarded = Some(signal);
                tracing::warn!(
                    signal = signal.as_str(),
                    action = run.action,
                    volume = run.volume,
                    pgid = pgid.as_raw(),
                    "interrupted: signal forwarded to the script's process group; waiting for the group to exit"
                );
            }
        }
        if status.is_none() {
            status = child.try_wait().map_err(PumpError::Io)?;
        }
        let now = Instant::now();
        // Interrupted: the whole group is waited for, within the time limit.
        let group_left = status.is_some() && forwarded.is_some() && group_alive(pgid.as_raw());
        if deadline.is_some_and(|d| now >= d) && (status.is_none() || group_left) {
            kill_group(cfg, child, pgid);
            return Err(PumpError::TimedOut { forwarded });
        }
        match status {
            None => {}
            Some(_) if group_left => {}
            Some(st) => {
                if !open[0] && !open[1] {
                    return Ok(Pumped {
                        status: st,
                        forwarded,
                    });
                }
                let until =
                    *drain_until.get_or_insert(now.checked_add(cfg.drain_grace).unwrap_or(now));
                if now >= until {
                    tracing::warn!(
                        pid = pgid.as_raw(),
                        "script exited but a background process keeps its output open; not waiting for it"
                    );
                    return Ok(Pumped {
                        status: st,
                        forwarded,
                    });
                }
            }
        }
        if !open[0] && !open[1] {
            // The pipes closed, so the script is exiting (or a child of it
            // closed them): poll for its status, quickly at first.
            std::thread::sleep(idle);
            idle = (idle * 2).min(Duration::from_millis(50));
            continue;
        }
        let ready = {
            let mut fds = Vec::with_capacity(2);
            let mut which = Vec::with_capacity(2);
            if open[0] {
                fds.push(PollFd::new(stdout.as_fd(), PollFlags::POLLIN));
                which.push(0);
            }
            if open[1] {
                fds.push(PollFd::new(stderr.as_fd(), PollFlags::POLLIN));
                which.push(1);
            }
            match poll(&mut fds, PollTimeout::from(50u16)) {
                Ok(0) => Vec::new(),
                Ok(_) => fds
                    .iter()
                    .zip(which)
                    .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
                    .map(|(_, w)| w)
                    .collect(),
                Err(nix::errno::Errno::EINTR) => Vec::new(),
                Err(e) => return Err(PumpError::Io(e.into())),
            }
        };
        for stream in ready {
            let res = if stream == 0 {
                stdout.read(&mut buf)
            } else {
                stderr.read(&mut buf)
            };
            match res {
                Ok(0) => open[stream] = false,
                Ok(n) => sink(stream, &buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(PumpError::Io(e)),
            }
        }
    }
}

/// SIGTERM the group, wait a grace period for the whole group, then
/// SIGKILL it (children that ignored SIGTERM included), reap the script and
/// wait (at most another grace period) until no member is alive.
fn kill_group(cfg: &RunnerConfig, child: &mut Child, pgid: Pid) {
    let _ = killpg(pgid, Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < cfg.kill_grace {
        let _ = child.try_wait();
        if !group_alive(pgid.as_raw()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait();
    let start = Instant::now();
    while group_alive(pgid.as_raw()) {
        if start.elapsed() >= cfg.kill_grace {
            tracing::warn!(
                pgid = pgid.as_raw(),
                "a member of the script's process group is still alive after SIGKILL (uninterruptible sleep?)"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    use std::os::unix::fs::PermissionsExt;

    /// A provider directory whose `action` script has `body`.
    fn provider_with(dir: &Path, action: &str, body: &str) -> Provider {
        let path = dir.join("prov");
        fs::create_dir_all(&path).unwrap();
        let script = path.join(action);
        fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        Provider {
            name: "prov".into(),
            path,
            parameters: Vec::new(),
            optional: Default::default(),
        }
    }

    fn run(dir: &Path, body: &str, timeout: Duration, result: bool) -> Result<ScriptOutput> {
        let provider = provider_with(dir, "verify", body);
        let cfg = RunnerConfig {
            log_dir: dir.join("log"),
            timeout,
            kill_grace: Duration::from_millis(200),
            ..RunnerConfig::default()
        };
        run_script(
            &cfg,
            &ScriptRun {
                provider: &provider,
                action: "verify",
                volume: "vol",
                env: vec![("VOL_NAME".into(), "vol".into())],
                args: Vec::new(),
                stdout_is_result: result,
            },
        )
    }

    #[test]
    fn success_captures_result_and_logs_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(
            dir.path(),
            "echo \"$VOL_NAME $LC_ALL $(pwd)\"; echo note >&2",
            Duration::from_secs(60),
            true,
        )
        .unwrap();
        let want = format!("vol C {}\n", dir.path().join("prov").display());
        assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
        assert_eq!(fs::read_to_string(&out.log_path).unwrap(), "note\n");
    }

    #[test]
    fn failure_by_exit_code_and_by_signal() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(
            dir.path(),
            "echo bad; exit 7",
            Duration::from_secs(60),
            false,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("verify script failed (exit status 7)"),
            "{text}"
        );
        assert!(text.ends_with("\nbad"), "{text}");
        let err = run(dir.path(), "kill -KILL $$", Duration::from_secs(60), false).unwrap_err();
        assert!(
            err.to_string().contains("killed by signal SIGKILL"),
            "{err}"
        );
        assert_eq!(err.kind(), crate::ErrorKind::Failed);
    }

    #[test]
    fn timeout_kills_script_that_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(
            dir.path(),
            "trap '' TERM; echo started; while :; do sleep 1; done",
            Duration::from_millis(300),
            false,
        )
        .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Timeout, "{err}");
        assert!(err.to_string().contains("started"), "{err}");
    }

    #[test]
    fn background_child_holding_the_pipes_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("bg.pid");
        let out = run(
            dir.path(),
            &format!(
                "sleep 300 & echo $! > {}; echo /dev/null",
                pid_file.display()
            ),
            Duration::from_secs(60),
            true,
        );
        let pid = fs::read_to_string(&pid_file).unwrap();
        let _ = nix::sys::signal::kill(Pid::from_raw(pid.trim().parse().unwrap()), Signal::SIGKILL);
        assert_eq!(out.unwrap().stdout, b"/dev/null\n");
    }

    #[test]
    fn log_lines_are_redacted_whole_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = BoundedLog::new(File::create(&path).unwrap(), 1 << 20);
        // A secret split across two reads is still one line.
        log.write(b"plain line\nrbd map --key AQBse");
        log.write(b"cret== pool/img\nkvm:iscsi://u%pw");
        log.write(b"@h/t/0");
        log.finish();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "plain line\nrbd map --key *** pool/img\nkvm:iscsi://u%***@h/t/0"
        );
        // Non-UTF-8 bytes do not stop the redaction.
        let mut log = BoundedLog::new(File::create(&path).unwrap(), 1 << 20);
        log.write(b"\xff password=hunter2\n");
        log.finish();
        let text = String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned();
        assert!(!text.contains("hunter2"), "{text}");
        // The limit still holds.
        let mut log = BoundedLog::new(File::create(&path).unwrap(), 100);
        for _ in 0..100 {
            log.write(b"0123456789\n");
        }
        log.finish();
        assert!(log.truncated);
        assert!(fs::metadata(&path).unwrap().len() < 200);
    }

    #[test]
    fn timestamps() {
        assert_eq!(log_timestamp(UNIX_EPOCH), "1970-01-01_00_00_00");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29 12:34:56
        assert_eq!(log_timestamp(t), "2024-02-29_12_34_56");
    }

    #[test]
    fn tail_keeps_last_lines_bounded() {
        let mut tail = Tail::default();
        for i in 0..100 {
            tail.feed(0, format!("line {i}\r\n").as_bytes());
        }
        tail.feed(1, &vec![b'x'; 10_000]);
        let lines = tail.finish();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 81");
        assert_eq!(lines[18], "line 99");
        assert_eq!(lines[19].len(), TAIL_LINE_MAX);
    }
}
