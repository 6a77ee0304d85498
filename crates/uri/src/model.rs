//! The typed model of a QEMU storage source.
//!
//! A [`Source`] is a protocol plus what that protocol really takes: hosts
//! with ports (IPv6 included), names, users, config files and secrets. The
//! secret values themselves live in [`Secret`], which never prints.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use crate::error::{Result, UriError};

/// A password or key. `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value, for writing it into a secret file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A host name or IP address, stored without IPv6 brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name (letters, digits, `-`, `_`, `.`).
    Name(String),
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
}

impl Host {
    /// Parses a host: a name, an IPv4 address, or an IPv6 address with or
    /// without brackets.
    pub fn parse(text: &str) -> Result<Host> {
        let bad = |reason: &str| UriError::InvalidValue {
            field: "host",
            value: text.to_string(),
            reason: reason.to_string(),
        };
        if let Some(inner) = text.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| bad("an IPv6 address in brackets needs the closing ']'"))?;
            return inner
                .parse::<Ipv6Addr>()
                .map(|a| Host::Ip(IpAddr::V6(a)))
                .map_err(|_| bad("the text in brackets is not an IPv6 address"));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        Self::check_name(text).map_err(|r| bad(&r))?;
        Ok(Host::Name(text.to_string()))
    }

    fn check_name(name: &str) -> Result<(), String> {
        if name.is_empty() {
            return Err("a host name is required".into());
        }
        if name.len() > 253 {
            return Err("a host name has at most 253 characters".into());
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err("a host name has no empty labels ('..' or a leading dot)".into());
            }
            if !label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err("a host name has only letters, digits, '-', '_' and '.' \
                     (IPv6 addresses go in brackets)"
                    .into());
            }
        }
        Ok(())
    }

    /// The host as QEMU's structured options want it: IPv6 without brackets.
    pub fn bare(&self) -> String {
        match self {
            Host::Name(n) => n.clone(),
            Host::Ip(ip) => ip.to_string(),
        }
    }

    /// The host as URIs and `host:port` strings want it: IPv6 in brackets.
    pub fn bracketed(&self) -> String {
        match self {
            Host::Ip(IpAddr::V6(a)) => format!("[{a}]"),
            other => other.bare(),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        match self {
            Host::Ip(_) => Ok(()),
            Host::Name(n) => Self::check_name(n).map_err(|reason| UriError::InvalidValue {
                field: "host",
                value: n.clone(),
                reason,
            }),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.bracketed())
    }
}

/// A host with an optional port (the protocol's default applies when absent).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Server {
    /// Host name or address.
    pub host: Host,
    /// TCP port, `None` for the protocol default.
    pub port: Option<u16>,
}

impl Server {
    /// A server on the protocol's default port.
    pub fn new(host: Host) -> Self {
        Server { host, port: None }
    }

    /// A server on an explicit port.
    pub fn with_port(host: Host, port: u16) -> Self {
        Server {
            host,
            port: Some(port),
        }
    }

    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`. A bare IPv6
    /// address (no brackets, several colons) is taken as a host without port.
    pub fn parse(text: &str) -> Result<Server> {
        let port_err = |p: &str| UriError::InvalidValue {
            field: "port",
            value: p.to_string(),
            reason: "a port is a number from 1 to 65535".into(),
        };
        let parse_port = |p: &str| -> Result<u16> {
            match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
                _ => Err(port_err(p)),
            }
        };
        if text.starts_with('[') {
            let close = text.find(']').ok_or_else(|| UriError::InvalidValue {
                field: "host",
                value: text.to_string(),
                reason: "an IPv6 address in brackets needs the closing ']'".into(),
            })?;
            let host = Host::parse(&text[..=close])?;
            let rest = &text[close + 1..];
            if rest.is_empty() {
                return Ok(Server::new(host));
            }
            let port = rest
                .strip_prefix(':')
                .ok_or_else(|| UriError::InvalidValue {
                    field: "host",
                    value: text.to_string(),
                    reason: "only ':port' may follow a bracketed IPv6 address".into(),
                })?;
            return Ok(Server::with_port(host, parse_port(port)?));
        }
        if text.matches(':').count() > 1 {
            return Ok(Server::new(Host::parse(text)?));
        }
        match text.split_once(':') {
            Some((h, p)) => Ok(Server::with_port(Host::parse(h)?, parse_port(p)?)),
            None => Ok(Server::new(Host::parse(text)?)),
        }
    }

    /// `host[:port]` with IPv6 in brackets.
    pub fn host_port(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host.bracketed()),
            None => self.host.bracketed(),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        self.host.validate()?;
        if self.port == Some(0) {
            return Err(UriError::InvalidValue {
                field: "port",
                value: "0".into(),
                reason: "a port is a number from 1 to 65535".into(),
            });
        }
        Ok(())
    }
}

/// A Ceph RBD image (`rbd:pool/[namespace/]image[@snap][:key=value...]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rbd {
    /// Pool name.
    pub pool: String,
    /// RADOS namespace inside the pool (QEMU 5.0+).
    pub namespace: Option<String>,
    /// Image name.
    pub image: String,
    /// Snapshot to open (read-only).
    pub snapshot: Option<String>,
    /// Path of a ceph.conf.
    pub conf: Option<String>,
    /// Ceph user (client id, without `client.`).
    pub user: Option<String>,
    /// Monitors; empty means "from the config file".
    pub mon_hosts: Vec<Server>,
    /// Allowed authentication modes (`cephx`, `none`), in order.
    pub auth_client_required: Vec<String>,
    /// The cephx key (base64 text). Passed through `key-secret`, never in argv.
    pub key: Option<Secret>,
    /// Other Ceph configuration pairs from a legacy filename. These have no
    /// `-blockdev` equivalent: put them in the ceph.conf instead.
    pub options: Vec<(String, String)>,
}

/// Where a Gluster server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlusterServer {
    /// TCP (default port 24007). `gluster+rdma` is read as TCP, as QEMU does.
    Tcp(Server),
    /// A unix socket path.
    Unix(String),
}

/// A file on a GlusterFS volume (deprecated in QEMU 9.2, still built).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gluster {
    /// The volfile server.
    pub server: GlusterServer,
    /// Volume name.
    pub volume: String,
    /// Image path inside the volume (no leading `/`).
    pub path: String,
}

/// iSCSI transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IscsiTransport {
    /// iSCSI over TCP (`iscsi://`).
    Tcp,
    /// iSER, iSCSI over RDMA (`iser://`).
    Iser,
}

/// An iSCSI LUN (`iscsi://[user[%password]@]host[:port]/target/lun`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iscsi {
    /// Transport.
    pub transport: IscsiTransport,
    /// Portal (default port 3260).
    pub portal: Server,
    /// Target IQN.
    pub target: String,
    /// Logical unit number.
    pub lun: u32,
    /// CHAP user.
    pub user: Option<String>,
    /// CHAP password, passed through `password-secret`.
    pub password: Option<Secret>,
    /// Initiator IQN (not expressible in the URI; rendered as an option).
    pub initiator_name: Option<String>,
}

/// Where an NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdServer {
    /// TCP (default port 10809).
    Tcp(Server),
    /// A unix socket path.
    Unix(String),
}

/// An NBD export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nbd {
    /// The server.
    pub server: NbdServer,
    /// Export name; `None` for the server's default export.
    pub export: Option<String>,
}

/// A file on an NFS share (libnfs, `nfs://host/path?uid=..`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Nfs {
    /// The NFS server (libnfs takes no port here).
    pub host: Option<Host>,
    /// Absolute path of the image on the server.
    pub path: String,
    /// `uid=`: user id to present.
    pub uid: Option<u32>,
    /// `gid=`: group id to present.
    pub gid: Option<u32>,
    /// `tcp-syncnt=`: SYN retries.
    pub tcp_syncnt: Option<u32>,
    /// `readahead=`: readahead size in bytes.
    pub readahead: Option<u64>,
    /// `pagecache=`: page cache size in pages.
    pub pagecache: Option<u64>,
    /// `debug=`: libnfs debug level.
    pub debug: Option<u32>,
}

/// How the ssh driver checks the server's host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyCheck {
    /// `no`: do not check (unsafe).
    No,
    /// `yes`: check against known_hosts.
    KnownHosts,
    /// `md5:HEX`.
    Md5(String),
    /// `sha1:HEX`.
    Sha1(String),
    /// `sha256:HEX`.
    Sha256(String),
}

/// A file reached over SFTP (`ssh://[user@]host[:port]/path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssh {
    /// Server (default port 22).
    pub server: Server,
    /// Remote user.
    pub user: Option<String>,
    /// Absolute path on the server.
    pub path: String,
    /// Host key check; `None` is QEMU's default (known_hosts).
    pub host_key_check: Option<HostKeyCheck>,
}

/// The scheme of a curl source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CurlScheme {
    /// `http://`
    Http,
    /// `https://`
    Https,
    /// `ftp://`
    Ftp,
    /// `ftps://`
    Ftps,
}

impl CurlScheme {
    /// The scheme name, which is also QEMU's driver name.
    pub fn as_str(self) -> &'static str {
        match self {
            CurlScheme::Http => "http",
            CurlScheme::Https => "https",
            CurlScheme::Ftp => "ftp",
            CurlScheme::Ftps => "ftps",
        }
    }
}

/// A read-only image over HTTP(S)/FTP(S) through libcurl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Curl {
    /// Scheme.
    pub scheme: CurlScheme,
    /// Server.
    pub server: Server,
    /// User name (sent by libcurl, not part of the rendered URL).
    pub user: Option<String>,
    /// Password, passed through `password-secret`.
    pub password: Option<Secret>,
    /// Path and query exactly as sent to the server, starting with `/`.
    pub path: String,
    /// `sslverify` (https/ftps only).
    pub sslverify: Option<bool>,
    /// `readahead` in bytes.
    pub readahead: Option<u64>,
    /// `timeout` in seconds.
    pub timeout: Option<u64>,
}

/// A QEMU storage source: what a disk's protocol node opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A regular file (driver `file`), absolute path.
    File {
        /// Absolute path.
        path: String,
    },
    /// A block device (driver `host_device`), absolute path.
    HostDevice {
        /// Absolute path.
        path: String,
    },
    /// Ceph RBD.
    Rbd(Rbd),
    /// GlusterFS.
    Gluster(Gluster),
    /// iSCSI.
    Iscsi(Iscsi),
    /// NBD over TCP or a unix socket.
    Nbd(Nbd),
    /// NFS.
    Nfs(Nfs),
    /// SSH/SFTP.
    Ssh(Ssh),
    /// HTTP(S)/FTP(S).
    Curl(Curl),
}

pub(crate) fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| UriError::NonUtf8Path(path.to_string_lossy().into_owned()))
}

pub(crate) fn check_abs(path: &str) -> Result<()> {
    if !path.starts_with('/') {
        return Err(UriError::RelativePath(path.to_string()));
    }
    check_text("path", path)
}

/// No NUL anywhere: QEMU strings are C strings.
pub(crate) fn check_text(field: &'static str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(UriError::InvalidValue {
            field,
            value: value.replace('\0', "\\0"),
            reason: "NUL characters cannot be passed to QEMU".into(),
        });
    }
    Ok(())
}

pub(crate) fn check_nonempty(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(UriError::InvalidValue {
            field,
            value: String::new(),
            reason: "it must not be empty".into(),
        });
    }
    check_text(field, value)
}

impl Source {
    /// A regular file at an absolute path.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Source> {
        let path = path_str(path.as_ref())?;
        check_abs(&path)?;
        Ok(Source::File { path })
    }

    /// A block device at an absolute path (driver `host_device`; QEMU's
    /// `file` driver refuses block devices since 6.0).
    pub fn from_block_device(path: impl AsRef<Path>) -> Result<Source> {
        let path = path_str(path.as_ref())?;
        check_abs(&path)?;
        Ok(Source::HostDevice { path })
    }

    /// QEMU's driver name for the protocol node.
    pub fn driver(&self) -> &'static str {
        match self {
            Source::File { .. } => "file",
            Source::HostDevice { .. } => "host_device",
            Source::Rbd(_) => "rbd",
            Source::Gluster(_) => "gluster",
            Source::Iscsi(_) => "iscsi",
            Source::Nbd(_) => "nbd",
            Source::Nfs(_) => "nfs",
            Source::Ssh(_) => "ssh",
            Source::Curl(c) => c.scheme.as_str(),
        }
    }

    /// True for sources that carry a password or key.
    pub fn has_secret(&self) -> bool {
        match self {
            Source::Rbd(r) => r.key.is_some(),
            Source::Iscsi(i) => i.password.is_some(),
            Source::Curl(c) => c.password.is_some(),
            _ => false,
        }
    }

    /// True for local files and block devices (the only nodes with `aio`).
    pub fn is_local(&self) -> bool {
        matches!(self, Source::File { .. } | Source::HostDevice { .. })
    }

    /// Checks every field against what QEMU accepts.
    pub fn validate(&self) -> Result<()> {
        match self {
            Source::File { path } | Source::HostDevice { path } => check_abs(path),
            Source::Rbd(r) => {
                check_nonempty("rbd pool", &r.pool)?;
                check_nonempty("rbd image", &r.image)?;
                if let Some(ns) = &r.namespace {
                    check_nonempty("rbd namespace", ns)?;
                }
                if let Some(s) = &r.snapshot {
                    check_nonempty("rbd snapshot", s)?;
                }
                if let Some(c) = &r.conf {
                    check_nonempty("rbd conf", c)?;
                    if c.contains([',', ';', ' ', '\t']) {
                        return Err(UriError::InvalidValue {
                            field: "rbd conf",
                            value: c.clone(),
                            reason: "Ceph reads a list of config files split at ',', ';' and \
                                     spaces; move the file to a path without them"
                                .into(),
                        });
                    }
                }
                if let Some(u) = &r.user {
                    check_nonempty("rbd user", u)?;
                }
                for s in &r.mon_hosts {
                    s.validate()?;
                }
                for a in &r.auth_client_required {
                    if a != "cephx" && a != "none" {
                        return Err(UriError::InvalidValue {
                            field: "rbd auth mode",
                            value: a.clone(),
                            reason: "QEMU accepts 'cephx' and 'none'".into(),
                        });
                    }
                }
                if let Some(k) = &r.key {
                    check_ceph_key(k)?;
                }
                for (k, v) in &r.options {
                    check_nonempty("rbd option name", k)?;
                    check_text("rbd option value", v)?;
                    if matches!(
                        k.as_str(),
                        "conf" | "id" | "key" | "auth_supported" | "auth_client_required"
                    ) || (k == "mon_host" && !r.mon_hosts.is_empty())
                    {
                        return Err(UriError::InvalidValue {
                            field: "rbd option name",
                            value: k.clone(),
                            reason: "this option has its own field in Rbd (conf, user, key, \
                                     mon_hosts, auth_client_required); set that instead"
                                .into(),
                        });
                    }
                }
                Ok(())
            }
            Source::Gluster(g) => {
                match &g.server {
                    GlusterServer::Tcp(s) => s.validate()?,
                    GlusterServer::Unix(p) => check_abs(p)?,
                }
                if g.volume.is_empty()
                    || !g
                        .volume
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(UriError::InvalidValue {
                        field: "gluster volume",
                        value: g.volume.clone(),
                        reason: "libgfapi accepts volume names of letters, digits, '-' and '_' \
                                 only"
                            .into(),
                    });
                }
                check_nonempty("gluster image path", &g.path)?;
                if g.path.starts_with('/') {
                    return Err(UriError::InvalidValue {
                        field: "gluster image path",
                        value: g.path.clone(),
                        reason: "the path is relative to the volume: drop the leading '/'".into(),
                    });
                }
                Ok(())
            }
            Source::Iscsi(i) => {
                i.portal.validate()?;
                check_iscsi_word("iscsi target", &i.target)?;
                if let Some(u) = &i.user {
                    check_iscsi_word("iscsi user", u)?;
                }
                if i.password.is_some() && i.user.is_none() {
                    return Err(UriError::InvalidValue {
                        field: "iscsi user",
                        value: String::new(),
                        reason: "a CHAP password needs a user".into(),
                    });
                }
                if let Some(n) = &i.initiator_name {
                    check_iscsi_word("iscsi initiator name", n)?;
                }
                Ok(())
            }
            Source::Nbd(n) => {
                match &n.server {
                    NbdServer::Tcp(s) => s.validate()?,
                    NbdServer::Unix(p) => check_abs(p)?,
                }
                if let Some(e) = &n.export {
                    check_nonempty("nbd export", e)?;
                    if e.len() > 4096 {
                        return Err(UriError::InvalidValue {
                            field: "nbd export",
                            value: e.chars().take(40).collect(),
                            reason: "NBD export names have at most 4096 bytes".into(),
                        });
                    }
                }
                Ok(())
            }
            Source::Nfs(n) => {
                match &n.host {
                    Some(h) => h.validate()?,
                    None => {
                        return Err(UriError::InvalidValue {
                            field: "nfs host",
                            value: String::new(),
                            reason: "an NFS source needs a server host".into(),
                        });
                    }
                }
                check_abs(&n.path)
            }
            Source::Ssh(s) => {
                s.server.validate()?;
                if let Some(u) = &s.user {
                    check_nonempty("ssh user", u)?;
                }
                if let Some(HostKeyCheck::Md5(h) | HostKeyCheck::Sha1(h) | HostKeyCheck::Sha256(h)) =
                    &s.host_key_check
                    && (h.is_empty() || !h.chars().all(|c| c.is_ascii_hexdigit() || c == ':'))
                {
                    return Err(UriError::InvalidValue {
                        field: "ssh host key hash",
                        value: h.clone(),
                        reason: "give the fingerprint in hex".into(),
                    });
                }
                check_abs(&s.path)
            }
            Source::Curl(c) => {
                c.server.validate()?;
                if let Some(u) = &c.user {
                    check_nonempty("curl user", u)?;
                }
                if c.password.is_some() && c.user.is_none() {
                    return Err(UriError::InvalidValue {
                        field: "curl user",
                        value: String::new(),
                        reason: "a password needs a user".into(),
                    });
                }
                if !c.path.starts_with('/')
                    || c.path
                        .chars()
                        .any(|ch| ch.is_ascii_control() || ch == ' ' || ch == '#')
                {
                    return Err(UriError::InvalidValue {
                        field: "url path",
                        value: c.path.clone(),
                        reason: "it starts with '/' and has no spaces, control characters or \
                                 '#' (percent-encode them)"
                            .into(),
                    });
                }
                if c.sslverify.is_some() && matches!(c.scheme, CurlScheme::Http | CurlScheme::Ftp) {
                    return Err(UriError::InvalidValue {
                        field: "sslverify",
                        value: c.scheme.as_str().into(),
                        reason: "sslverify applies to https and ftps only".into(),
                    });
                }
                Ok(())
            }
        }
    }
}

fn check_ceph_key(key: &Secret) -> Result<()> {
    let k = key.expose();
    let ok = !k.is_empty()
        && k.len().is_multiple_of(4)
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
    if !ok {
        return Err(UriError::InvalidValue {
            field: "rbd key",
            value: "***".into(),
            reason: "a cephx key is base64 text (as printed by 'ceph auth get-key')".into(),
        });
    }
    Ok(())
}

/// iSCSI names, users: printable, no URI delimiters (libiscsi splits on them).
fn check_iscsi_word(field: &'static str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if !ok {
        return Err(UriError::InvalidValue {
            field,
            value: value.to_string(),
            reason: "use letters, digits, '.', '-', ':' and '_' only (libiscsi splits URIs on \
                     the other characters)"
                .into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            Host::parse("[2001:db8::1]").unwrap().bracketed(),
            "[2001:db8::1]"
        );
        assert_eq!(Host::parse("2001:db8::1").unwrap().bare(), "2001:db8::1");
        assert_eq!(
            Host::parse("mon-1.example.org").unwrap(),
            Host::Name("mon-1.example.org".into())
        );
        assert!(Host::parse("a b").is_err());
        assert!(Host::parse("a..b").is_err());
        assert!(Host::parse("[::1").is_err());
        assert!(Host::parse("").is_err());
    }

    #[test]
    fn servers() {
        let s = Server::parse("[::1]:6789").unwrap();
        assert_eq!(s.port, Some(6789));
        assert_eq!(s.host_port(), "[::1]:6789");
        assert_eq!(Server::parse("::1").unwrap().port, None);
        assert_eq!(Server::parse("10.0.0.1:3300").unwrap().port, Some(3300));
        assert!(Server::parse("h:0").is_err());
        assert!(Server::parse("h:99999").is_err());
        assert!(Server::parse("h:+5").is_err());
        assert!(Server::parse("[::1]x").is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let r = Source::Rbd(Rbd {
            pool: "p".into(),
            image: "i".into(),
            key: Some(Secret::new("AQAAAA==")),
            ..Rbd::default()
        });
        assert!(!format!("{r:?}").contains("AQAAAA"));
    }

    #[test]
    fn block_device_paths() {
        assert!(matches!(
            Source::from_block_device("/dev/loop0"),
            Ok(Source::HostDevice { .. })
        ));
        assert_eq!(
            Source::from_block_device("loop0"),
            Err(UriError::RelativePath("loop0".into()))
        );
    }
}
