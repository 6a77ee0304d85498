//! Printing results: human-readable by default, JSON with `--json`.

use std::io::{self, Write};

use serde::Serialize;

/// Where and how results are printed.
#[derive(Debug)]
pub struct Output {
    /// Print JSON instead of text.
    pub json: bool,
}

/// The result could not be written to stdout (a full disk, an I/O error):
/// the caller did not get it, so the command failed (exit 1).
#[derive(Debug)]
pub struct WriteError(io::Error);

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cannot write the result to stdout")
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl Output {
    /// Prints a result: `human` as text, or `value` as JSON. A failed write
    /// is an error, except a closed pipe (`| head`), which ends quietly.
    pub fn print<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let text = if self.json {
            serde_json::to_string_pretty(value)?
        } else {
            human()
        };
        if text.is_empty() {
            return Ok(());
        }
        stdout_line(&text).map_err(|e| WriteError(e).into())
    }

    /// Prints a result as one line: `human` as text, or `value` as compact
    /// JSON (a readiness line that tools read line by line). A failed write
    /// is logged, not an error: the service goes on.
    pub fn print_line<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        let text = if self.json {
            match serde_json::to_string(value) {
                Ok(s) => s,
                Err(e) => return note(&format!("cannot render JSON: {e}")),
            }
        } else {
            human()
        };
        if let Err(e) = stdout_line(&text) {
            tracing::warn!(error = %e, "cannot write the readiness line to stdout");
        }
    }

    /// Prints an error on stderr, and as JSON on stdout with `--json`.
    /// Nothing more can be reported if these writes fail.
    pub fn error(&self, err: &anyhow::Error, code: u8) {
        // Secrets (an rbd key, a URL password) never reach an error message,
        // whatever error carried them.
        let message = extstorage_core::redact(&format!("{err:#}")).into_owned();
        note(&format!("error: {message}"));
        if self.json {
            json_error(&message, code);
        }
    }
}

/// Prints the documented JSON error object on stdout:
/// `{"ok": false, "error": MESSAGE, "exit_code": CODE}`.
pub fn json_error(message: &str, code: u8) {
    let value = serde_json::json!({
        "ok": false,
        "error": message,
        "exit_code": code,
    });
    let _ = stdout_line(&value.to_string());
}

/// Writes `extstorage: <text>` to stderr; a failed write is ignored
/// (`eprintln!` would panic).
pub fn note(text: &str) {
    let _ = writeln!(io::stderr().lock(), "extstorage: {text}");
}

/// Writes a line to stdout and flushes it; a closed pipe (`| head`) is not
/// an error.
fn stdout_line(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
