//! `extstorage-clidoc`: shell completions and man pages generated from a
//! binary's clap definition, so they can never disagree with what the
//! binary parses.
//!
//! Both binaries (`extstorage` and `extstorage-vhost-user-blk`) flatten the
//! same two subcommands from here:
//!
//! - `completions SHELL` (visible: a user without the install script can
//!   `source <(extstorage completions bash)`), which writes the completion
//!   script for bash, zsh, fish, elvish or PowerShell to stdout;
//! - `man DIR` (hidden: a packaging step, not something an operator types),
//!   which writes one page per command and subcommand into `DIR`:
//!   `extstorage.1`, `extstorage-serve.1`, ..., the names `man` looks up.
#![warn(missing_docs)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// The man page section: user commands.
pub const SECTION: &str = "1";

/// Errors while writing generated files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be written.
    #[error("cannot write {path}; check that the directory exists and is writable")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Standard output could not be written.
    #[error("cannot write the completion script to standard output")]
    Stdout(#[source] std::io::Error),
}

/// Arguments of `completions`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to write the completion script for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// Arguments of the hidden `man` command.
#[derive(Debug, Clone, clap::Args)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Writes the page of `cmd`, then those of its visible subcommands.
fn write_tree(
    cmd: &clap::Command,
    dir: &Path,
    manual: &str,
    version: &str,
    written: &mut Vec<PathBuf>,
) -> Result<(), Error> {
    let page = clap_mangen::Man::new(cmd.clone())
        .section(SECTION)
        .manual(manual)
        .source(format!("{manual} {version}"));
    let path = dir.join(page.get_filename());
    let mut roff = Vec::new();
    page.render(&mut roff)
        .and_then(|()| std::fs::write(&path, &roff))
        .map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_tree(sub, dir, manual, version, written)?;
    }
    Ok(())
}

/// Writes the completion script of `cmd` for `shell` to `out`. A reader
/// that stops early (`| head`) is not an error.
pub fn write_completions(
    mut cmd: clap::Command,
    shell: clap_complete::Shell,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let name = cmd.get_name().to_owned();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, name.clone(), &mut buf);
    if shell == clap_complete::Shell::Bash {
        buf = fix_bash_state_names(&buf, &name);
    }
    match out.write_all(&buf).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Stdout(e)),
        _ => Ok(()),
    }
}

/// Works around clap_complete's bash generator for a binary name with a
/// hyphen (clap-rs/clap#6421): the word loop spells the completion state
/// `extstorage__vhost__user__blk__subcmd__serve`, the case arms
/// `extstorage__subcmd__vhost__subcmd__user__subcmd__blk__subcmd__serve`, so
/// no option of a subcommand ever completes. The arms are respelled the way
/// the loop spells them (subcommand names are escaped the same way by
/// both, so only the binary-name prefix differs).
fn fix_bash_state_names(script: &[u8], bin: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(script);
    let broken = bin.replace('-', "__subcmd__");
    let loop_spelling = bin.replace('-', "__");
    if broken == loop_spelling {
        return script.to_vec();
    }
    text.replace(&broken, &loop_spelling).into_bytes()
}

/// Writes the man page of `cmd` and of every visible subcommand (nested
/// ones too) into `dir`, named `NAME-SUB.1`; returns the files written,
/// the top page first.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let version = cmd.get_version().unwrap_or_default().to_owned();
    let manual = cmd.get_name().to_owned();
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_tree(&cmd, dir, &manual, &version, &mut written)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    #[derive(Debug, Parser)]
    #[command(name = "demo", version = "1.2.3", about = "A demo")]
    struct Demo {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Debug, Subcommand)]
    enum Cmd {
        /// Serve something.
        Serve {
            /// How many.
            #[arg(long)]
            num: u8,
        },
        /// Print completions.
        Completions(CompletionsArgs),
        /// Write man pages.
        #[command(hide = true)]
        Man(ManArgs),
        /// Nested commands.
        #[command(subcommand)]
        Group(Inner),
    }

    #[derive(Debug, Subcommand)]
    enum Inner {
        /// The inner one.
        Inner,
    }

    #[test]
    fn a_page_per_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_man_pages(Demo::command(), dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "demo.1",
                "demo-serve.1",
                "demo-completions.1",
                "demo-group.1",
                "demo-group-inner.1"
            ]
        );
        let serve = std::fs::read_to_string(dir.path().join("demo-serve.1")).unwrap();
        assert!(serve.contains("Serve something"), "{serve}");
        assert!(serve.contains("demo 1.2.3"), "{serve}");
    }

    #[test]
    fn completions_name_the_subcommands() {
        let mut out = Vec::new();
        write_completions(Demo::command(), clap_complete::Shell::Bash, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("serve"), "{text}");
        assert!(text.contains("--num"), "{text}");
    }

    #[test]
    fn bash_states_agree_for_a_hyphenated_name() {
        let cmd = Demo::command().name("my-demo");
        let mut out = Vec::new();
        write_completions(cmd, clap_complete::Shell::Bash, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        // The loop's spelling is matched by an arm carrying --num.
        assert!(text.contains("cmd=\"my__demo__subcmd__serve\""), "{text}");
        let arm = text
            .split("\n        my__demo__subcmd__serve)\n")
            .nth(1)
            .unwrap_or_else(|| panic!("no arm in {text}"));
        assert!(arm.lines().next().unwrap().contains("--num"), "{arm}");
        assert!(!text.contains("my__subcmd__demo"), "{text}");
    }

    #[test]
    fn an_unwritable_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = write_man_pages(Demo::command(), &file.join("sub")).unwrap_err();
        assert!(err.to_string().contains("file/sub"), "{err}");
    }
}
