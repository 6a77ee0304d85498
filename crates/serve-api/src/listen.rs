//! Where a backend listens (a socket path, or a socket inherited from a
//! service manager), who may connect to it, and which user serves.

use std::ffi::OsString;
use std::path::PathBuf;

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

impl ListenOptions {
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
}
