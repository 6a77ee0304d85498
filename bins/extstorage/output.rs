//! Printing results: human-readable by default, JSON with `--json`.

use std::io::Write;

use serde::Serialize;

/// Where and how results are printed.
#[derive(Debug)]
pub struct Output {
    /// Print JSON instead of text.
    pub json: bool,
}

impl Output {
    /// Prints a result: `human` as text, or `value` as JSON.
    pub fn print<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        if self.json {
            match serde_json::to_string_pretty(value) {
                Ok(s) => stdout_line(&s),
                Err(e) => eprintln!("extstorage: cannot render JSON: {e}"),
            }
        } else {
            let text = human();
            if !text.is_empty() {
                stdout_line(&text);
            }
        }
    }

    /// Prints a result as one line: `human` as text, or `value` as compact
    /// JSON (a readiness line that tools read line by line).
    pub fn print_line<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        if self.json {
            match serde_json::to_string(value) {
                Ok(s) => stdout_line(&s),
                Err(e) => eprintln!("extstorage: cannot render JSON: {e}"),
            }
        } else {
            stdout_line(&human());
        }
    }

    /// Prints an error on stderr, and as JSON on stdout with `--json`.
    pub fn error(&self, err: &anyhow::Error, code: u8) {
        eprintln!("extstorage: error: {err:#}");
        if self.json {
            let value = serde_json::json!({
                "ok": false,
                "error": format!("{err:#}"),
                "exit_code": code,
            });
            stdout_line(&value.to_string());
        }
    }
}

/// Writes a line to stdout; a closed stdout (`| head`) is not an error.
fn stdout_line(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}
