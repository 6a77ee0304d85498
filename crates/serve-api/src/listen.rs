//! Where a backend listens (a socket path, or a socket inherited from a
//! service manager), who may connect to it, and which user serves.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// The default permission bits of a vhost-user socket: the owner only.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// The listening options as typed on a command line.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Socket and privileges")]
pub struct ListenArgs {
    /// The vhost-user unix socket to listen on (at most 107 bytes; a stale
    /// socket file is replaced).
    #[arg(long, value_name = "PATH", conflicts_with = "listen_fd")]
    pub socket: Option<PathBuf>,
    /// Serve on an inherited listening unix socket instead (socket
    /// activation). Under systemd socket activation (LISTEN_FDS) the
    /// passed socket is used without this option.
    #[arg(long, value_name = "FD")]
    pub listen_fd: Option<i32>,
    /// Owner of the socket (a user name or uid), e.g. the user QEMU runs as.
    #[arg(long, value_name = "USER")]
    pub socket_owner: Option<String>,
    /// Group of the socket (a group name or gid).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Permission bits of the socket, in octal (QEMU needs read and write).
    #[arg(long, value_name = "MODE", default_value = "0600", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// Serve as this user (a name or uid) once the device and sockets are
    /// open: the I/O path then runs without root.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
}

/// Who may connect to a socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketAccess {
    /// Owner (user name or uid); `None` keeps the creating user.
    pub owner: Option<String>,
    /// Group (group name or gid); `None` keeps the creating group.
    pub group: Option<String>,
    /// Permission bits.
    pub mode: u32,
}

impl Default for SocketAccess {
    fn default() -> Self {
        SocketAccess {
            owner: None,
            group: None,
            mode: DEFAULT_SOCKET_MODE,
        }
    }
}

/// Validated listening options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenOptions {
    /// The socket path, when not inherited.
    pub socket: Option<PathBuf>,
    /// An inherited listening socket.
    pub listen_fd: Option<i32>,
    /// Ownership and mode of a socket we create.
    pub access: SocketAccess,
    /// The user to serve as after setup.
    pub user: Option<String>,
}

/// Parses octal permission bits such as `0660` or `660`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "{text:?} is not an octal permission mode such as 0600 or 0660"
        )),
    }
}

impl ListenArgs {
    /// Validates the combination.
    pub fn resolve(&self) -> Result<ListenOptions, Error> {
        if let Some(fd) = self.listen_fd
            && fd < 0
        {
            return Err(Error::InvalidOption {
                option: "listen-fd",
                reason: format!("{fd} is not a file descriptor"),
            });
        }
        for (option, value) in [
            ("socket-owner", &self.socket_owner),
            ("socket-group", &self.socket_group),
            ("user", &self.user),
        ] {
            if value
                .as_deref()
                .is_some_and(|v| v.is_empty() || v.contains(['\0', ':', '/']))
            {
                return Err(Error::InvalidOption {
                    option,
                    reason: format!("{value:?} is not a user or group name or number"),
                });
            }
        }
        if self.socket_mode & 0o600 != 0o600 {
            return Err(Error::InvalidOption {
                option: "socket-mode",
                reason: format!(
                    "{:04o} does not let the owner read and write the socket",
                    self.socket_mode
                ),
            });
        }
        Ok(ListenOptions {
            socket: self.socket.clone(),
            listen_fd: self.listen_fd,
            access: SocketAccess {
                owner: self.socket_owner.clone(),
                group: self.socket_group.clone(),
                mode: self.socket_mode,
            },
            user: self.user.clone(),
        })
    }
}

/// Checks a unix socket path given as `--option`: at most
/// [`MAX_SOCKET_PATH`](crate::paths::MAX_SOCKET_PATH) bytes, the most a
/// socket address holds.
pub fn check_socket_path(option: &'static str, path: &Path) -> Result<(), Error> {
    let len = path.as_os_str().len();
    if len > crate::paths::MAX_SOCKET_PATH {
        return Err(Error::InvalidOption {
            option,
            reason: format!(
                "{} is {len} bytes, longer than a unix socket path can be ({} bytes); choose a \
                 shorter path (e.g. under /run)",
                path.display(),
                crate::paths::MAX_SOCKET_PATH
            ),
        });
    }
    Ok(())
}

/// Looks up a user by name or uid on this host, as the backend will.
fn host_user(option: &'static str, name: &str) -> Result<(), Error> {
    use nix::unistd::{Uid, User};
    let found = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(name),
    };
    let reason = match found {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => format!(
            "no user {name:?} on this host; give an existing user name or uid (see getent passwd)"
        ),
        Err(e) => format!("cannot look up user {name:?}: {e}; check the host's user database"),
    };
    Err(Error::InvalidOption { option, reason })
}

/// Looks up a group by name on this host (a number is taken as it is, as
/// the backend does).
fn host_group(option: &'static str, name: &str) -> Result<(), Error> {
    if name.parse::<u32>().is_ok() {
        return Ok(());
    }
    let reason = match nix::unistd::Group::from_name(name) {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => format!(
            "no group {name:?} on this host; give an existing group name or gid (see getent group)"
        ),
        Err(e) => format!("cannot look up group {name:?}: {e}; check the host's group database"),
    };
    Err(Error::InvalidOption { option, reason })
}

impl ListenOptions {
    /// Checks what only this host can tell, before anything runs: the
    /// socket owner, group and `--user` exist here, and the socket path fits
    /// in a unix socket address.
    pub fn check_on_host(&self) -> Result<(), Error> {
        if let Some(socket) = &self.socket {
            check_socket_path("socket", socket)?;
        }
        if let Some(owner) = &self.access.owner {
            host_user("socket-owner", owner)?;
        }
        if let Some(group) = &self.access.group {
            host_group("socket-group", group)?;
        }
        if let Some(user) = &self.user {
            host_user("user", user)?;
        }
        Ok(())
    }

    /// The arguments that [`ListenArgs`] parses back into these options
    /// (defaults left out).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        if let Some(s) = &self.socket {
            args.push("--socket".into());
            args.push(s.clone().into_os_string());
        }
        if let Some(fd) = self.listen_fd {
            args.push(format!("--listen-fd={fd}").into());
        }
        if let Some(o) = &self.access.owner {
            args.push(format!("--socket-owner={o}").into());
        }
        if let Some(g) = &self.access.group {
            args.push(format!("--socket-group={g}").into());
        }
        if self.access.mode != DEFAULT_SOCKET_MODE {
            args.push(format!("--socket-mode={:04o}", self.access.mode).into());
        }
        if let Some(u) = &self.user {
            args.push(format!("--user={u}").into());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[OsString]) -> Result<ListenOptions, String> {
        crate::testutil::parse(args).map(|(_, listen)| listen)
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o640"), Ok(0o640));
        for bad in ["", "8", "01777", "rw", "-1"] {
            assert!(parse_mode(bad).is_err(), "{bad:?}");
        }
        assert!(
            parse(&["--socket-mode=0400".into()])
                .unwrap_err()
                .contains("read and write")
        );
    }

    #[test]
    fn round_trip() {
        let opts = ListenOptions {
            socket: Some("/run/a b/-x.sock".into()),
            listen_fd: None,
            access: SocketAccess {
                owner: Some("libvirt-qemu".into()),
                group: Some("kvm".into()),
                mode: 0o660,
            },
            user: Some("nobody".into()),
        };
        assert_eq!(parse(&opts.to_args()).unwrap(), opts);
        let fd = ListenOptions {
            listen_fd: Some(3),
            ..ListenOptions::default()
        };
        assert_eq!(parse(&fd.to_args()).unwrap(), fd);
        assert!(
            parse(&["--socket=/x".into(), "--listen-fd=3".into()])
                .unwrap_err()
                .contains("cannot be used with")
        );
        assert!(parse(&["--user=a:b".into()]).unwrap_err().contains("user"));
    }

    #[test]
    fn host_checks_name_what_is_missing() {
        let ok = ListenOptions {
            socket: Some("/run/x.sock".into()),
            access: SocketAccess {
                owner: Some("0".into()),
                group: Some("root".into()),
                mode: 0o600,
            },
            user: Some("root".into()),
            ..ListenOptions::default()
        };
        ok.check_on_host().unwrap();
        let bad = |f: &dyn Fn(&mut ListenOptions)| {
            let mut o = ok.clone();
            f(&mut o);
            o.check_on_host().unwrap_err().to_string()
        };
        let e = bad(&|o| o.user = Some("no-such-user-x".into()));
        assert!(
            e.contains("--user") && e.contains("no user \"no-such-user-x\""),
            "{e}"
        );
        let e = bad(&|o| o.access.owner = Some("no-such-user-x".into()));
        assert!(e.contains("--socket-owner"), "{e}");
        let e = bad(&|o| o.access.group = Some("no-such-group-x".into()));
        assert!(
            e.contains("--socket-group") && e.contains("getent group"),
            "{e}"
        );
        let e = bad(&|o| o.socket = Some(format!("/{}", "s".repeat(107)).into()));
        assert!(e.contains("--socket") && e.contains("108 bytes"), "{e}");
        let fits = ListenOptions {
            socket: Some(format!("/{}", "s".repeat(106)).into()),
            ..ListenOptions::default()
        };
        fits.check_on_host().unwrap();
    }
}
