//! Serving a Ceph RBD image instead of a file: `--rbd POOL/[NAMESPACE/]IMAGE[@SNAP]`
//! and how to reach its cluster. Keys are never options: only the path of
//! a keyring.

use std::ffi::OsString;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Seconds connecting to the cluster may take by default.
pub const DEFAULT_RBD_TIMEOUT: u32 = 30;

/// The RBD options as typed on a command line. Flatten this into a clap
/// command next to a `--path` it conflicts with, then
/// [`resolve`](Self::resolve) it.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Ceph RBD (instead of --path)")]
pub struct RbdArgs {
    /// Serve this RBD image through librbd (the rbd engine):
    /// POOL/IMAGE, POOL/NAMESPACE/IMAGE, with @SNAP for a snapshot
    /// (needs --read-only). librbd is loaded only then (package librbd1).
    #[arg(long, value_name = "POOL/IMAGE[@SNAP]")]
    pub rbd: Option<String>,
    /// The cluster's ceph.conf. [default: Ceph's search path, /etc/ceph/ceph.conf]
    #[arg(long, value_name = "PATH", requires = "rbd")]
    pub rbd_conf: Option<PathBuf>,
    /// Client id, without "client.". [default: admin]
    #[arg(long, value_name = "ID", requires = "rbd")]
    pub rbd_id: Option<String>,
    /// The client's keyring file (never a key on the command line).
    /// [default: the conf's keyring setting]
    #[arg(long, value_name = "PATH", requires = "rbd")]
    pub rbd_keyring: Option<PathBuf>,
    /// Seconds connecting to the cluster and monitor requests may take
    /// before the start fails (1-3600).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_RBD_TIMEOUT, requires = "rbd")]
    pub rbd_timeout: u32,
}

/// A validated RBD source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RbdSource {
    /// RADOS pool.
    pub pool: String,
    /// RADOS namespace, if any.
    pub namespace: Option<String>,
    /// Image name.
    pub image: String,
    /// Snapshot name, if any (served read-only).
    pub snapshot: Option<String>,
    /// ceph.conf path.
    pub conf: Option<PathBuf>,
    /// Client id without `client.`.
    pub id: Option<String>,
    /// Keyring path.
    pub keyring: Option<PathBuf>,
    /// Connect and monitor timeout in seconds.
    pub timeout_secs: u32,
}

fn bad(option: &'static str, reason: String) -> Error {
    Error::InvalidOption { option, reason }
}

fn check_name(option: &'static str, what: &str, s: &str) -> Result<(), Error> {
    if s.is_empty() {
        return Err(bad(option, format!("the {what} name is empty")));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(bad(
            option,
            format!("the {what} name {s:?} contains control characters"),
        ));
    }
    Ok(())
}

fn check_path(option: &'static str, p: &std::path::Path) -> Result<(), Error> {
    if !p.is_absolute() {
        return Err(bad(
            option,
            format!("{} is not an absolute path", p.display()),
        ));
    }
    if p.to_string_lossy()
        .chars()
        .any(|c| c.is_control() || c == ',' || c == ';')
    {
        return Err(bad(
            option,
            format!(
                "{} contains a control character, ',' or ';' (Ceph splits paths there)",
                p.display()
            ),
        ));
    }
    Ok(())
}

impl RbdSource {
    /// Parses `POOL/[NAMESPACE/]IMAGE[@SNAP]` with the cluster options.
    pub fn parse(spec: &str) -> Result<RbdSource, Error> {
        const O: &str = "rbd";
        let usage = || {
            bad(
                O,
                format!("{spec:?} is not POOL/IMAGE, POOL/NAMESPACE/IMAGE or either with @SNAP"),
            )
        };
        let (path, snapshot) = match spec.split_once('@') {
            Some((p, s)) => (p, Some(s.to_owned())),
            None => (spec, None),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (pool, namespace, image) = match parts[..] {
            [p, i] => (p, None, i),
            [p, n, i] => (p, Some(n.to_owned()), i),
            _ => return Err(usage()),
        };
        check_name(O, "pool", pool)?;
        check_name(O, "image", image)?;
        if let Some(n) = &namespace {
            check_name(O, "namespace", n)?;
        }
        if let Some(s) = &snapshot {
            check_name(O, "snapshot", s)?;
        }
        Ok(RbdSource {
            pool: pool.to_owned(),
            namespace,
            image: image.to_owned(),
            snapshot,
            conf: None,
            id: None,
            keyring: None,
            timeout_secs: DEFAULT_RBD_TIMEOUT,
        })
    }

    /// Checks every field (as [`RbdArgs::resolve`] does).
    pub fn validate(&self) -> Result<(), Error> {
        let again = RbdSource::parse(&self.spec())?;
        if (
            again.pool.as_str(),
            again.namespace.as_deref(),
            again.image.as_str(),
            again.snapshot.as_deref(),
        ) != (
            self.pool.as_str(),
            self.namespace.as_deref(),
            self.image.as_str(),
            self.snapshot.as_deref(),
        ) {
            return Err(bad(
                "rbd",
                format!("names must not contain '/' or '@': {}", self.spec()),
            ));
        }
        if let Some(c) = &self.conf {
            check_path("rbd-conf", c)?;
        }
        if let Some(k) = &self.keyring {
            check_path("rbd-keyring", k)?;
        }
        if let Some(id) = &self.id {
            if let Some(rest) = id.strip_prefix("client.") {
                return Err(bad(
                    "rbd-id",
                    format!("give the id without 'client.': {rest}"),
                ));
            }
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            {
                return Err(bad(
                    "rbd-id",
                    format!("{id:?} is not a client id (letters, digits, '_', '.', '-')"),
                ));
            }
        }
        if !(1..=3600).contains(&self.timeout_secs) {
            return Err(bad(
                "rbd-timeout",
                format!("{} is not within 1-3600", self.timeout_secs),
            ));
        }
        Ok(())
    }

    /// `POOL/[NAMESPACE/]IMAGE[@SNAP]`, as `--rbd` takes it.
    pub fn spec(&self) -> String {
        let mut s = format!("{}/", self.pool);
        if let Some(n) = &self.namespace {
            s.push_str(n);
            s.push('/');
        }
        s.push_str(&self.image);
        if let Some(snap) = &self.snapshot {
            s.push('@');
            s.push_str(snap);
        }
        s
    }

    /// The arguments that [`RbdArgs`] parses back into exactly this source.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![format!("--rbd={}", self.spec()).into()];
        if let Some(c) = &self.conf {
            let mut a = OsString::from("--rbd-conf=");
            a.push(c);
            args.push(a);
        }
        if let Some(id) = &self.id {
            args.push(format!("--rbd-id={id}").into());
        }
        if let Some(k) = &self.keyring {
            let mut a = OsString::from("--rbd-keyring=");
            a.push(k);
            args.push(a);
        }
        if self.timeout_secs != DEFAULT_RBD_TIMEOUT {
            args.push(format!("--rbd-timeout={}", self.timeout_secs).into());
        }
        args
    }
}

impl RbdArgs {
    /// The validated source, or `None` without `--rbd`.
    pub fn resolve(&self) -> Result<Option<RbdSource>, Error> {
        let Some(spec) = &self.rbd else {
            return Ok(None);
        };
        let src = RbdSource {
            conf: self.rbd_conf.clone(),
            id: self.rbd_id.clone(),
            keyring: self.rbd_keyring.clone(),
            timeout_secs: self.rbd_timeout,
            ..RbdSource::parse(spec)?
        };
        src.validate()?;
        Ok(Some(src))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use proptest::prelude::*;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        rbd: RbdArgs,
    }

    fn parse(args: &[OsString]) -> Result<Option<RbdSource>, String> {
        let argv = std::iter::once(OsString::from("prog")).chain(args.iter().cloned());
        let cmd = Cmd::try_parse_from(argv).map_err(|e| e.to_string())?;
        cmd.rbd.resolve().map_err(|e| e.to_string())
    }

    #[test]
    fn specs_parse_into_their_parts() {
        let s = RbdSource::parse("rbd/vm1.disk0").unwrap();
        assert_eq!(
            (s.pool.as_str(), s.namespace, s.image.as_str(), s.snapshot),
            ("rbd", None, "vm1.disk0", None)
        );
        let s = RbdSource::parse("p/ns/img@snap1").unwrap();
        assert_eq!(s.namespace.as_deref(), Some("ns"));
        assert_eq!(s.snapshot.as_deref(), Some("snap1"));
        assert_eq!(s.spec(), "p/ns/img@snap1");
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        for (args, needle) in [
            (vec!["--rbd=img"], "POOL/IMAGE"),
            (vec!["--rbd=a/b/c/d"], "POOL/IMAGE"),
            (vec!["--rbd=p/"], "image name is empty"),
            (vec!["--rbd=p/i@"], "snapshot name is empty"),
            (vec!["--rbd=p/i", "--rbd-conf=ceph.conf"], "absolute"),
            (vec!["--rbd=p/i", "--rbd-conf=/a,b.conf"], "','"),
            (vec!["--rbd=p/i", "--rbd-keyring=k"], "absolute"),
            (
                vec!["--rbd=p/i", "--rbd-id=client.admin"],
                "without 'client.'",
            ),
            (vec!["--rbd=p/i", "--rbd-id=a b"], "not a client id"),
            (vec!["--rbd=p/i", "--rbd-timeout=0"], "1-3600"),
            (vec!["--rbd-conf=/etc/ceph/ceph.conf"], "--rbd"),
        ] {
            let args: Vec<OsString> = args.into_iter().map(OsString::from).collect();
            let err = parse(&args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
        assert_eq!(parse(&[]).unwrap(), None);
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_.:= -]{1,12}"
    }

    proptest! {
        /// What one program renders, another parses back to the same source.
        #[test]
        fn render_then_parse_is_identity(
            pool in name(), ns in proptest::option::of(name()), image in name(),
            snap in proptest::option::of(name()),
            conf in proptest::option::of("/[a-z]{1,8}/[a-z.]{1,8}"),
            id in proptest::option::of("[a-z0-9_.-]{1,8}"),
            keyring in proptest::option::of("/[a-z]{1,8}/[a-z.]{1,8}"),
            timeout in 1u32..=3600,
        ) {
            let src = RbdSource {
                pool, namespace: ns, image, snapshot: snap,
                conf: conf.map(PathBuf::from), id, keyring: keyring.map(PathBuf::from),
                timeout_secs: timeout,
            };
            prop_assume!(!src.id.as_deref().is_some_and(|i| i.starts_with("client.")));
            prop_assert_eq!(parse(&src.to_args()).unwrap(), Some(src));
        }
    }
}
