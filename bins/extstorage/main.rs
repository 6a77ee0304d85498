//! `extstorage`: run Ganeti ExtStorage provider scripts from the command line.
//!
//! The binary parses arguments, calls `extstorage-core` and prints; each
//! subcommand family lives in its own module (`providers`, `volume`).

mod kvm_args;
mod output;
mod providers;
#[cfg(feature = "serve")]
mod serve;
mod shell;
mod status;
mod uri;
mod volume;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use extstorage_core::{Config, ErrorKind, ExtStorage, RunnerConfig, SearchPath, interrupt};

use crate::output::Output;

/// Exit codes, documented in `--help` and docs/extstorage.md.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The operation failed: a script failed, bad attach output, not supported.
    pub const FAILED: u8 = 1;
    /// Usage or validation error: bad arguments, names, parameters, provider files.
    pub const USAGE: u8 = 2;
    /// A script timed out; its process group was killed.
    pub const TIMEOUT: u8 = 3;
    /// The volume lock was busy for longer than --lock-timeout.
    pub const LOCK_BUSY: u8 = 4;
    /// Interrupted by signal N: 128 + N (130 SIGINT, 143 SIGTERM, 129 SIGHUP).
    pub const SIGNAL_BASE: u8 = 128;
}

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  operation failed (script failed, bad attach output, not supported)
  2  usage or validation error (arguments, names, unknown parameter, invalid provider)
  3  a script timed out (its whole process group was killed)
  4  the volume is locked by another operation (after --lock-timeout)
  128+N  interrupted by signal N: 130 SIGINT, 143 SIGTERM, 129 SIGHUP (a running script's
     process group was sent the signal and has exited; no further script started)

Examples:
  extstorage --search-path ./providers providers
  extstorage --search-path ./providers create --provider loopfile --volume vol1 --size 64M -p dir=/srv/vols
  extstorage --search-path ./providers attach --provider loopfile --volume vol1 -p dir=/srv/vols
  extstorage --search-path ./providers grow --provider loopfile --volume vol1 -p dir=/srv/vols --size 64 --amount 32M
  extstorage --json --search-path ./providers uri-lookup --provider qemunbd --volume vol1 -p dir=/srv/vols --hypervisor kvm
  extstorage --search-path ./providers uri --format drive --provider qemunbd --volume vol1 -p dir=/srv/vols
  extstorage --search-path ./providers kvm-args --access vhost-user --provider loopfile --volume vol1 -p dir=/srv/vols
  extstorage --search-path ./providers remove --provider loopfile --volume vol1 -p dir=/srv/vols

Scripts run with no arguments, in the provider directory, with only PATH, LC_ALL=C and
the ExtStorage variables (VOL_NAME, VOL_SIZE, EXTP_<NAME>, ...) in their environment.
See docs/extstorage.md.";

/// Run Ganeti ExtStorage provider scripts: create, attach, grow, snapshot and
/// remove volumes, with timeouts, locking and logs.
#[derive(Debug, Parser)]
#[command(name = "extstorage", version, after_help = AFTER_HELP)]
struct Cli {
    /// Directory holding provider directories; repeat for an ordered search
    /// path (the environment variable is colon-separated).
    /// [default: /srv/ganeti/extstorage]
    #[arg(
        long = "search-path",
        value_name = "DIR",
        env = "EXTSTORAGE_SEARCH_PATH",
        value_delimiter = ':',
        global = true,
        help_heading = "Global options"
    )]
    search_path: Vec<PathBuf>,
    /// Directory for per-action script logs (created on demand).
    #[arg(long, value_name = "DIR", env = "EXTSTORAGE_LOG_DIR", default_value = extstorage_core::runner::DEFAULT_LOG_DIR, global = true, help_heading = "Global options")]
    log_dir: PathBuf,
    /// Directory for per-volume lock files (created on demand).
    #[arg(long, value_name = "DIR", env = "EXTSTORAGE_LOCK_DIR", default_value = extstorage_core::lock::DEFAULT_LOCK_DIR, global = true, help_heading = "Global options")]
    lock_dir: PathBuf,
    /// Time limit for each script run, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        env = "EXTSTORAGE_TIMEOUT",
        default_value_t = 300.0,
        global = true,
        help_heading = "Global options"
    )]
    timeout: f64,
    /// How long to wait for a volume locked by another operation, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        env = "EXTSTORAGE_LOCK_TIMEOUT",
        default_value_t = 60.0,
        global = true,
        help_heading = "Global options"
    )]
    lock_timeout: f64,
    /// Directory for a served volume's claim, control socket and default
    /// vhost-user socket (created on demand).
    #[arg(long, value_name = "DIR", env = "EXTSTORAGE_RUN_DIR", default_value = extstorage_serve_api::paths::DEFAULT_RUN_DIR, global = true, help_heading = "Global options")]
    run_dir: PathBuf,
    /// Print results (and errors) as JSON on stdout.
    #[arg(long, global = true, help_heading = "Global options")]
    json: bool,
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Global options")]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every provider in the search path, valid or not, with the reason.
    Providers(providers::ProvidersArgs),
    #[command(flatten)]
    Volume(volume::VolumeCommand),
    /// Attach and render the volume's userspace URI as QEMU -drive/-blockdev arguments.
    Uri(uri::UriArgs),
    /// Attach and print the full QEMU argv for the volume in an access mode.
    KvmArgs(kvm_args::KvmArgsArgs),
    /// Serve the volume to QEMU over vhost-user-blk until SIGTERM/SIGINT:
    /// attach, open, serve; on stop drain, close and detach.
    #[cfg(feature = "serve")]
    #[command(after_help = serve::AFTER_HELP)]
    Serve(serve::ServeArgs),
    /// Show a served volume's per-queue counters (requests, bytes, errors,
    /// in flight, latency).
    Status(status::StatusArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or
    /// powershell (e.g. `source <(extstorage completions bash)`).
    Completions(extstorage_clidoc::CompletionsArgs),
    /// Write a man page per command into a directory (for packaging).
    #[command(hide = true)]
    Man(extstorage_clidoc::ManArgs),
}

fn seconds(what: &str, secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{what} {secs} is not a valid number of seconds (use e.g. 30 or 0.5)"))
}

/// The stderr writer of log lines: each formatted event is collected and
/// written at once with its secrets redacted (extstorage_core::redact), a
/// catch-all behind the redaction the core already does.
struct RedactedStderr;

/// One log event on its way to stderr.
struct RedactedLine(Vec<u8>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactedStderr {
    type Writer = RedactedLine;

    fn make_writer(&'a self) -> RedactedLine {
        RedactedLine(Vec::new())
    }
}

impl Write for RedactedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactedLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.0);
        let clean = extstorage_core::redact(&text);
        let _ = std::io::stderr().lock().write_all(clean.as_bytes());
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactedStderr)
        // Plain text: colour codes would split `name=value` apart and hide
        // secrets from the redaction.
        .with_ansi(false)
        .init();
}

/// Parses the command line. A usage error prints clap's text on stderr and,
/// with `--json` anywhere before `--`, the documented JSON error object on
/// stdout; `--help` and `--version` print as clap does.
fn parse_cli() -> Result<Cli, ExitCode> {
    use clap::error::ErrorKind as Clap;
    let err = match Cli::try_parse() {
        Ok(cli) => return Ok(cli),
        Err(e) => e,
    };
    let json = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    if !json || matches!(err.kind(), Clap::DisplayHelp | Clap::DisplayVersion) {
        err.exit();
    }
    let _ = err.print();
    let message = if err.kind() == Clap::DisplayHelpOnMissingArgumentOrSubcommand {
        "a subcommand or argument is missing; see extstorage --help".to_owned()
    } else {
        // clap's message: the text before its usage section, without the
        // "error: " prefix.
        let text = err.render().to_string();
        let message: Vec<&str> = text
            .lines()
            .map(str::trim)
            .take_while(|l| !l.is_empty())
            .collect();
        let message = message.join(" ");
        message
            .strip_prefix("error: ")
            .unwrap_or(&message)
            .to_owned()
    };
    output::json_error(&message, exit::USAGE);
    Err(ExitCode::from(exit::USAGE))
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    init_tracing(cli.verbose);
    let out = Output { json: cli.json };
    // SIGINT/SIGTERM/SIGHUP are forwarded to a running script's process
    // group, which is waited for; then we exit with 128 + the signal.
    if let Err(e) = interrupt::install_handlers() {
        tracing::warn!(error = %e, "signals will not be forwarded to scripts");
    }
    match run(cli, &out) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let code = match error_kind(&err) {
                Some(ErrorKind::Failed) => exit::FAILED,
                Some(ErrorKind::Invalid) => exit::USAGE,
                Some(ErrorKind::Timeout) => exit::TIMEOUT,
                Some(ErrorKind::LockBusy) => exit::LOCK_BUSY,
                Some(ErrorKind::Interrupted) => interrupted_code(&err).unwrap_or(exit::SIGNAL_BASE),
                None if err.is::<output::WriteError>() => exit::FAILED,
                None => exit::USAGE,
            };
            out.error(&err, code);
            ExitCode::from(code)
        }
    }
}

/// The global options that locate providers, logs, locks and the run
/// directory, as given to this run: a command line printed for the user
/// (e.g. the `serve` command `kvm-args` suggests) repeats them.
static GLOBAL_ARGS: std::sync::OnceLock<Vec<std::ffi::OsString>> = std::sync::OnceLock::new();

/// The global options of this run that differ from the defaults, with
/// absolute paths (a printed command may run from another directory).
fn globals_of(
    es: &ExtStorage,
    run_dir: &extstorage_serve_api::RunDir,
    timeout: f64,
) -> Vec<std::ffi::OsString> {
    let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out: Vec<std::ffi::OsString> = Vec::new();
    let mut push = |opt: &str, value: &std::path::Path| {
        let mut arg = std::ffi::OsString::from(format!("{opt}="));
        arg.push(abs(value));
        out.push(arg);
    };
    let cfg = es.config();
    let default_search = [PathBuf::from(
        extstorage_core::provider::DEFAULT_SEARCH_PATH,
    )];
    if cfg.search_path.dirs() != default_search {
        for d in cfg.search_path.dirs() {
            push("--search-path", d);
        }
    }
    for (opt, value, default) in [
        (
            "--log-dir",
            &cfg.runner.log_dir,
            extstorage_core::runner::DEFAULT_LOG_DIR,
        ),
        (
            "--lock-dir",
            &cfg.lock_dir,
            extstorage_core::lock::DEFAULT_LOCK_DIR,
        ),
        (
            "--run-dir",
            &run_dir.root().to_path_buf(),
            extstorage_serve_api::paths::DEFAULT_RUN_DIR,
        ),
    ] {
        if value.as_path() != std::path::Path::new(default) {
            push(opt, value);
        }
    }
    if timeout != 300.0 {
        out.push(format!("--timeout={timeout}").into());
    }
    out
}

/// See [`GLOBAL_ARGS`].
pub fn global_args() -> Vec<std::ffi::OsString> {
    GLOBAL_ARGS.get().cloned().unwrap_or_default()
}

/// The name of a volume's files in the run directory (claim, control
/// socket, default vhost-user socket): the core's one join.
pub fn volume_key(provider: &str, volume: &str) -> String {
    extstorage_core::names::volume_key(provider, volume)
}

/// Exit code 128 + N of an operation interrupted by signal N.
fn interrupted_code(err: &anyhow::Error) -> Option<u8> {
    if let Some(e) = err.downcast_ref::<extstorage_core::Error>() {
        return e.interrupted_by().map(interrupt::exit_code);
    }
    #[cfg(feature = "serve")]
    if let Some(extstorage_serve::Error::Volume(e)) = err.downcast_ref::<extstorage_serve::Error>()
    {
        return e.interrupted_by().map(interrupt::exit_code);
    }
    None
}

/// The class of an error, for the exit code: the core's, or the serve
/// crate's (which maps a volume served elsewhere to "busy").
fn error_kind(err: &anyhow::Error) -> Option<ErrorKind> {
    if let Some(e) = err.downcast_ref::<extstorage_core::Error>() {
        return Some(e.kind());
    }
    #[cfg(feature = "serve")]
    if let Some(e) = err.downcast_ref::<extstorage_serve::Error>() {
        return Some(e.kind());
    }
    if err.downcast_ref::<extstorage_clidoc::Error>().is_some() {
        return Some(ErrorKind::Failed);
    }
    if let Some(e) = err.downcast_ref::<extstorage_serve_api::Error>() {
        return Some(match e {
            extstorage_serve_api::Error::InvalidOption { .. } => ErrorKind::Invalid,
            _ => ErrorKind::Failed,
        });
    }
    None
}

fn run(cli: Cli, out: &Output) -> anyhow::Result<u8> {
    let mut dirs = cli.search_path;
    dirs.retain(|d| !d.as_os_str().is_empty());
    if dirs.is_empty() {
        dirs.push(PathBuf::from(
            extstorage_core::provider::DEFAULT_SEARCH_PATH,
        ));
    }
    let config = Config {
        search_path: SearchPath::new(dirs),
        runner: RunnerConfig {
            log_dir: cli.log_dir,
            timeout: seconds("--timeout", cli.timeout).map_err(anyhow::Error::msg)?,
            ..RunnerConfig::default()
        },
        lock_dir: cli.lock_dir,
        lock_wait: seconds("--lock-timeout", cli.lock_timeout).map_err(anyhow::Error::msg)?,
    };
    let es = ExtStorage::new(config);
    let run_dir = extstorage_serve_api::RunDir::new(cli.run_dir);
    let _ = GLOBAL_ARGS.set(globals_of(&es, &run_dir, cli.timeout));
    match cli.command {
        Command::Providers(args) => providers::run(&es, &args, out),
        Command::Volume(cmd) => volume::run(&es, cmd, &run_dir, out),
        Command::Uri(args) => uri::run(&es, args, out),
        Command::KvmArgs(args) => kvm_args::run(&es, &args, &run_dir, out),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::run(&es, args, run_dir, out),
        Command::Status(args) => status::run(&args, &run_dir, out),
        Command::Completions(args) => {
            let cmd = <Cli as clap::CommandFactory>::command();
            extstorage_clidoc::write_completions(cmd, args.shell, &mut std::io::stdout())?;
            Ok(exit::OK)
        }
        Command::Man(args) => {
            let cmd = <Cli as clap::CommandFactory>::command();
            for page in extstorage_clidoc::write_man_pages(cmd, &args.dir)? {
                println!("{}", page.display());
            }
            Ok(exit::OK)
        }
    }
}
