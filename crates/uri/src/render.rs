//! Rendering a [`Source`] with [`DiskOptions`] to QEMU's three forms: the
//! legacy filename, a `-drive` option string, and `-blockdev` JSON nodes.

use std::ffi::OsString;
use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::error::{Result, UriError};
use crate::model::{
    CurlScheme, GlusterServer, HostKeyCheck, IscsiTransport, NbdServer, Secret, Server, Source,
};
use crate::options::DiskOptions;
use crate::parse::pct_encode;

/// QemuOpts escaping: a value ends at a single comma, `,,` is a literal one.
pub fn escape_opt_value(value: &str) -> String {
    value.replace(',', ",,")
}

/// Splits a QemuOpts string (`key=value,key=value`) into pairs, undoing
/// `,,`. A part without `=` is an error (short booleans are deprecated).
pub fn split_opts(text: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    let mut parts = Vec::new();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    for p in parts {
        let (k, v) = p.split_once('=').ok_or_else(|| UriError::InvalidValue {
            field: "option",
            value: p.clone(),
            reason: "expected key=value (write booleans as key=on/off)".into(),
        })?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Backslash-escapes the characters rbd filenames treat specially.
fn rbd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '/' | '@' | ':' | '=' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn port_or(s: &Server, default: u16) -> String {
    s.port.unwrap_or(default).to_string()
}

impl Source {
    /// The legacy filename (`-drive file=` value, before comma doubling),
    /// without any secret: keys and passwords go through
    /// [`SecretObject`]s. Parsing the result with [`Source::parse_legacy`]
    /// gives back this source minus its secrets.
    pub fn to_legacy(&self) -> Result<String> {
        self.validate()?;
        Ok(match self {
            Source::File { path } if path.starts_with("/dev/") => format!("file:{path}"),
            Source::File { path } => path.clone(),
            Source::HostDevice { path } if path.starts_with("/dev/") => path.clone(),
            Source::HostDevice { path } => format!("host_device:{path}"),
            Source::Rbd(r) => {
                let mut s = format!("rbd:{}/", rbd_escape(&r.pool));
                if let Some(ns) = &r.namespace {
                    s.push_str(&rbd_escape(ns));
                    s.push('/');
                }
                s.push_str(&rbd_escape(&r.image));
                if let Some(snap) = &r.snapshot {
                    s.push('@');
                    s.push_str(&rbd_escape(snap));
                }
                let mut kv = |k: &str, v: &str| {
                    s.push(':');
                    s.push_str(&rbd_escape(k));
                    s.push('=');
                    s.push_str(&rbd_escape(v));
                };
                if let Some(c) = &r.conf {
                    kv("conf", c);
                }
                if let Some(u) = &r.user {
                    kv("id", u);
                }
                if !r.mon_hosts.is_empty() {
                    let list: Vec<String> = r.mon_hosts.iter().map(Server::host_port).collect();
                    kv("mon_host", &list.join(";"));
                }
                if !r.auth_client_required.is_empty() {
                    kv("auth_client_required", &r.auth_client_required.join(";"));
                }
                for (k, v) in &r.options {
                    kv(k, v);
                }
                s
            }
            Source::Gluster(g) => {
                let tail = format!(
                    "/{}/{}",
                    pct_encode(&g.volume, false),
                    pct_encode(&g.path, true)
                );
                match &g.server {
                    GlusterServer::Tcp(s) => format!("gluster://{}{tail}", s.host_port()),
                    GlusterServer::Unix(p) => {
                        format!("gluster+unix://{tail}?socket={}", pct_encode(p, true))
                    }
                }
            }
            Source::Iscsi(i) => {
                let scheme = match i.transport {
                    IscsiTransport::Tcp => "iscsi",
                    IscsiTransport::Iser => "iser",
                };
                let user = i.user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
                format!(
                    "{scheme}://{user}{}/{}/{}",
                    i.portal.host_port(),
                    i.target,
                    i.lun
                )
            }
            Source::Nbd(n) => {
                let export = n
                    .export
                    .as_ref()
                    .map(|e| pct_encode(e, true))
                    .unwrap_or_default();
                match &n.server {
                    NbdServer::Tcp(s) => format!("nbd://{}/{export}", s.host_port()),
                    NbdServer::Unix(p) => {
                        format!("nbd+unix:///{export}?socket={}", pct_encode(p, true))
                    }
                }
            }
            Source::Nfs(n) => {
                let host = n.host.as_ref().map(|h| h.bracketed()).unwrap_or_default();
                let mut q = Vec::new();
                let mut add = |k: &str, v: Option<u64>| {
                    if let Some(v) = v {
                        q.push(format!("{k}={v}"));
                    }
                };
                add("uid", n.uid.map(u64::from));
                add("gid", n.gid.map(u64::from));
                add("tcp-syncnt", n.tcp_syncnt.map(u64::from));
                add("readahead", n.readahead);
                add("pagecache", n.pagecache);
                add("debug", n.debug.map(u64::from));
                let query = if q.is_empty() {
                    String::new()
                } else {
                    format!("?{}", q.join("&"))
                };
                format!("nfs://{host}{}{query}", pct_encode(&n.path, true))
            }
            Source::Ssh(s) => {
                let user = s
                    .user
                    .as_ref()
                    .map(|u| format!("{}@", pct_encode(u, false)))
                    .unwrap_or_default();
                let hkc = match &s.host_key_check {
                    None => String::new(),
                    Some(HostKeyCheck::No) => "?host_key_check=no".into(),
                    Some(HostKeyCheck::KnownHosts) => "?host_key_check=yes".into(),
                    Some(HostKeyCheck::Md5(h)) => {
                        format!("?host_key_check=md5%3A{}", pct_encode(h, false))
                    }
                    Some(HostKeyCheck::Sha1(h)) => {
                        format!("?host_key_check=sha1%3A{}", pct_encode(h, false))
                    }
                    Some(HostKeyCheck::Sha256(h)) => {
                        format!("?host_key_check=sha256%3A{}", pct_encode(h, false))
                    }
                };
                format!(
                    "ssh://{user}{}{}{hkc}",
                    s.server.host_port(),
                    pct_encode(&s.path, true)
                )
            }
            Source::Curl(c) => {
                let user = c
                    .user
                    .as_ref()
                    .map(|u| format!("{}@", pct_encode(u, false)))
                    .unwrap_or_default();
                format!(
                    "{}://{user}{}{}",
                    c.scheme.as_str(),
                    c.server.host_port(),
                    c.path
                )
            }
        })
    }
}

/// How a secret file is encoded (`-object secret,format=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFormat {
    /// The file holds the secret bytes.
    Raw,
    /// The file holds base64 text (Ceph keys).
    Base64,
}

/// A QEMU `secret` object and the file it reads. The caller writes
/// `data` to `path` (mode 0600) before starting QEMU, e.g. with
/// [`crate::secret_files::write_secret_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretObject {
    /// Object id, referenced by `key-secret`/`password-secret`.
    pub id: String,
    /// Where the secret file goes.
    pub path: PathBuf,
    /// Encoding of the file.
    pub format: SecretFormat,
    /// The secret to write.
    pub data: Secret,
}

impl SecretObject {
    fn format_str(&self) -> &'static str {
        match self.format {
            SecretFormat::Raw => "raw",
            SecretFormat::Base64 => "base64",
        }
    }

    fn path_str(&self) -> Result<&str> {
        self.path
            .to_str()
            .ok_or_else(|| UriError::NonUtf8Path(self.path.to_string_lossy().into_owned()))
    }

    /// The `-object` value: `secret,id=ID,file=PATH,format=F`.
    pub fn object_arg(&self) -> Result<String> {
        Ok(format!(
            "secret,id={},file={},format={}",
            self.id,
            escape_opt_value(self.path_str()?),
            self.format_str()
        ))
    }

    /// The QMP `object-add` command that creates this object at run time.
    pub fn qmp_object_add(&self) -> Result<Value> {
        Ok(json!({
            "execute": "object-add",
            "arguments": {
                "qom-type": "secret",
                "id": self.id,
                "file": self.path_str()?,
                "format": self.format_str(),
            }
        }))
    }
}

/// Checks a QEMU id or node name: a letter, then letters, digits, `-`, `.`
/// and `_`, at most `max` characters.
/// Checks a virtio device's queue count (at least one) and queue size (a
/// power of two from 2 to 1024, QEMU's limits), when given.
pub(crate) fn check_queues(num_queues: Option<u16>, queue_size: Option<u16>) -> Result<()> {
    if num_queues == Some(0) {
        return Err(UriError::InvalidValue {
            field: "num-queues",
            value: "0".into(),
            reason: "at least one queue".into(),
        });
    }
    if let Some(q) = queue_size
        && (!q.is_power_of_two() || !(2..=1024).contains(&q))
    {
        return Err(UriError::InvalidValue {
            field: "queue-size",
            value: q.to_string(),
            reason: "a power of two from 2 to 1024".into(),
        });
    }
    Ok(())
}

pub(crate) fn check_id(field: &'static str, id: &str, max: usize) -> Result<()> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && id.len() <= max;
    if !ok {
        return Err(UriError::InvalidValue {
            field,
            value: id.to_string(),
            reason: format!(
                "start with a letter, then letters, digits, '-', '.' or '_', at most {max} \
                 characters"
            ),
        });
    }
    Ok(())
}

fn secret_for(source: &Source, opts: &DiskOptions, id: &str) -> Option<SecretObject> {
    let (data, format) = match source {
        Source::Rbd(r) => (r.key.clone()?, SecretFormat::Base64),
        Source::Iscsi(i) => (i.password.clone()?, SecretFormat::Raw),
        Source::Curl(c) => (c.password.clone()?, SecretFormat::Raw),
        _ => return None,
    };
    let sid = format!("{id}-secret");
    Some(SecretObject {
        path: opts.secret_dir.clone()?.join(&sid),
        id: sid,
        format,
        data,
    })
}

/// Protocol options that have no place in the legacy filename, as
/// `(key, value)` pairs for the protocol node (`file.` prefix on -drive).
fn extra_opts(source: &Source, secret: Option<&SecretObject>) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    match source {
        Source::Rbd(_) => {
            if let Some(s) = secret {
                v.push(("key-secret", s.id.clone()));
            }
        }
        Source::Iscsi(i) => {
            if let Some(s) = secret {
                v.push(("password-secret", s.id.clone()));
            }
            if let Some(n) = &i.initiator_name {
                v.push(("initiator-name", n.clone()));
            }
        }
        Source::Curl(c) => {
            if let Some(s) = secret {
                if let Some(u) = &c.user {
                    v.push(("username", u.clone()));
                }
                v.push(("password-secret", s.id.clone()));
            }
            if let Some(b) = c.sslverify {
                v.push(("sslverify", if b { "on" } else { "off" }.into()));
            }
            if let Some(r) = c.readahead {
                v.push(("readahead", r.to_string()));
            }
            if let Some(t) = c.timeout {
                v.push(("timeout", t.to_string()));
            }
        }
        _ => {}
    }
    v
}

/// A rendered `-drive` and the secret objects it references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveArgs {
    /// The `-drive` value, QemuOpts-escaped.
    pub drive: String,
    /// Secret objects to create (and files to write) first.
    pub secrets: Vec<SecretObject>,
}

impl DriveArgs {
    /// The full argv fragment: `-object secret,...` for each secret, then `-drive ...`.
    pub fn argv(&self) -> Result<Vec<OsString>> {
        let mut v = Vec::new();
        for s in &self.secrets {
            v.push(OsString::from("-object"));
            v.push(OsString::from(s.object_arg()?));
        }
        v.push(OsString::from("-drive"));
        v.push(OsString::from(&self.drive));
        Ok(v)
    }
}

/// Renders a legacy `-drive` option string (`file=...,format=raw,if=none,id=ID,...`).
/// Attach it to a guest device with `-device virtio-blk-pci,drive=ID`.
pub fn render_drive(source: &Source, opts: &DiskOptions, id: &str) -> Result<DriveArgs> {
    check_id("drive id", id, 31)?;
    opts.validate(source)?;
    let secret = secret_for(source, opts, id);
    let mut parts = vec![
        format!("file={}", escape_opt_value(&source.to_legacy()?)),
        "format=raw".to_string(),
        "if=none".to_string(),
        format!("id={id}"),
        format!("cache={}", opts.cache),
    ];
    if let Some(a) = opts.aio {
        parts.push(format!("aio={a}"));
    }
    parts.push(format!("discard={}", opts.discard));
    if let Some(d) = opts.detect_zeroes {
        parts.push(format!("detect-zeroes={d}"));
    }
    if opts.read_only {
        parts.push("read-only=on".into());
    }
    for (k, v) in extra_opts(source, secret.as_ref()) {
        parts.push(format!("file.{k}={}", escape_opt_value(&v)));
    }
    Ok(DriveArgs {
        drive: parts.join(","),
        secrets: secret.into_iter().collect(),
    })
}

/// Rendered `-blockdev` nodes and the secret objects they reference.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockdevArgs {
    /// One JSON document per `-blockdev`, protocol node first, raw node last.
    pub json_nodes: Vec<String>,
    /// The top (raw) node's name, for `-device ...,drive=NAME`.
    pub node_name: String,
    /// The protocol node's name (`NAME-file`).
    pub protocol_node_name: String,
    /// Secret objects to create (and files to write) first.
    pub secrets: Vec<SecretObject>,
    /// `write-cache=` for the guest device, from the cache mode.
    pub device_write_cache: bool,
}

impl BlockdevArgs {
    /// The full argv fragment: `-object secret,...` then `-blockdev {...}` per node.
    pub fn argv(&self) -> Result<Vec<OsString>> {
        let mut v = Vec::new();
        for s in &self.secrets {
            v.push(OsString::from("-object"));
            v.push(OsString::from(s.object_arg()?));
        }
        for n in &self.json_nodes {
            v.push(OsString::from("-blockdev"));
            v.push(OsString::from(n));
        }
        Ok(v)
    }

    /// The QMP commands that hot-add these nodes: `object-add` for each
    /// secret, then `blockdev-add` for each node.
    pub fn qmp_commands(&self) -> Result<Vec<Value>> {
        let mut v = Vec::new();
        for s in &self.secrets {
            v.push(s.qmp_object_add()?);
        }
        for n in &self.json_nodes {
            let args: Value = serde_json::from_str(n).map_err(|e| UriError::NotRepresentable {
                form: "QMP",
                reason: e.to_string(),
            })?;
            v.push(json!({"execute": "blockdev-add", "arguments": args}));
        }
        Ok(v)
    }
}

fn inet(s: &Server, default_port: u16) -> Value {
    json!({"type": "inet", "host": s.host.bare(), "port": port_or(s, default_port)})
}

fn protocol_node(
    source: &Source,
    opts: &DiskOptions,
    secret: Option<&SecretObject>,
) -> Result<Map<String, Value>> {
    let not = |reason: String| UriError::NotRepresentable {
        form: "-blockdev",
        reason,
    };
    let mut m = Map::new();
    m.insert("driver".into(), json!(source.driver()));
    match source {
        Source::File { path } | Source::HostDevice { path } => {
            m.insert("filename".into(), json!(path));
            if let Some(a) = opts.aio {
                m.insert("aio".into(), json!(a.as_str()));
            }
        }
        Source::Rbd(r) => {
            if !r.options.is_empty() {
                let keys: Vec<&str> = r.options.iter().map(|(k, _)| k.as_str()).collect();
                return Err(not(format!(
                    "rbd options {} have no -blockdev equivalent; put them in the ceph.conf \
                     given by conf=, or use the -drive form",
                    keys.join(", ")
                )));
            }
            m.insert("pool".into(), json!(r.pool));
            m.insert("image".into(), json!(r.image));
            if let Some(ns) = &r.namespace {
                m.insert("namespace".into(), json!(ns));
            }
            if let Some(s) = &r.snapshot {
                m.insert("snapshot".into(), json!(s));
            }
            if let Some(c) = &r.conf {
                m.insert("conf".into(), json!(c));
            }
            if let Some(u) = &r.user {
                m.insert("user".into(), json!(u));
            }
            if !r.mon_hosts.is_empty() {
                let mut list = Vec::new();
                for s in &r.mon_hosts {
                    let port = s.port.ok_or_else(|| {
                        not(format!(
                            "monitor {} has no port; give one (3300 for msgr2, 6789 for msgr1)",
                            s.host
                        ))
                    })?;
                    list.push(json!({"host": s.host.bare(), "port": port.to_string()}));
                }
                m.insert("server".into(), Value::Array(list));
            }
            if !r.auth_client_required.is_empty() {
                m.insert("auth-client-required".into(), json!(r.auth_client_required));
            }
        }
        Source::Gluster(g) => {
            m.insert("volume".into(), json!(g.volume));
            m.insert("path".into(), json!(g.path));
            let server = match &g.server {
                GlusterServer::Tcp(s) => inet(s, 24007),
                GlusterServer::Unix(p) => json!({"type": "unix", "path": p}),
            };
            m.insert("server".into(), json!([server]));
        }
        Source::Iscsi(i) => {
            let transport = match i.transport {
                IscsiTransport::Tcp => "tcp",
                IscsiTransport::Iser => "iser",
            };
            m.insert("transport".into(), json!(transport));
            m.insert("portal".into(), json!(i.portal.host_port()));
            m.insert("target".into(), json!(i.target));
            m.insert("lun".into(), json!(i.lun));
            if let Some(u) = &i.user {
                m.insert("user".into(), json!(u));
            }
        }
        Source::Nbd(n) => {
            let server = match &n.server {
                NbdServer::Tcp(s) => inet(s, 10809),
                NbdServer::Unix(p) => json!({"type": "unix", "path": p}),
            };
            m.insert("server".into(), server);
            if let Some(e) = &n.export {
                m.insert("export".into(), json!(e));
            }
        }
        Source::Nfs(n) => {
            let host = n.host.as_ref().map(|h| h.bare()).unwrap_or_default();
            m.insert("server".into(), json!({"type": "inet", "host": host}));
            m.insert("path".into(), json!(n.path));
            let mut num = |k: &str, v: Option<u64>| {
                if let Some(v) = v {
                    m.insert(k.into(), json!(v));
                }
            };
            num("user", n.uid.map(u64::from));
            num("group", n.gid.map(u64::from));
            num("tcp-syn-count", n.tcp_syncnt.map(u64::from));
            num("readahead-size", n.readahead);
            num("page-cache-size", n.pagecache);
            num("debug", n.debug.map(u64::from));
        }
        Source::Ssh(s) => {
            m.insert(
                "server".into(),
                json!({"host": s.server.host.bare(), "port": port_or(&s.server, 22)}),
            );
            m.insert("path".into(), json!(s.path));
            if let Some(u) = &s.user {
                m.insert("user".into(), json!(u));
            }
            if let Some(h) = &s.host_key_check {
                let v = match h {
                    HostKeyCheck::No => json!({"mode": "none"}),
                    HostKeyCheck::KnownHosts => json!({"mode": "known_hosts"}),
                    HostKeyCheck::Md5(x) => json!({"mode": "hash", "type": "md5", "hash": x}),
                    HostKeyCheck::Sha1(x) => json!({"mode": "hash", "type": "sha1", "hash": x}),
                    HostKeyCheck::Sha256(x) => {
                        json!({"mode": "hash", "type": "sha256", "hash": x})
                    }
                };
                m.insert("host-key-check".into(), v);
            }
        }
        Source::Curl(c) => {
            let url = format!("{}://{}{}", c.scheme.as_str(), c.server.host_port(), c.path);
            m.insert("url".into(), json!(url));
            if c.user.is_some() && secret.is_none() {
                m.insert("username".into(), json!(c.user));
            }
            if let Some(b) = c.sslverify {
                debug_assert!(matches!(c.scheme, CurlScheme::Https | CurlScheme::Ftps));
                m.insert("sslverify".into(), json!(b));
            }
            if let Some(r) = c.readahead {
                m.insert("readahead".into(), json!(r));
            }
            if let Some(t) = c.timeout {
                m.insert("timeout".into(), json!(t));
            }
        }
    }
    for (k, v) in extra_opts(source, secret) {
        if k == "sslverify" || k == "readahead" || k == "timeout" {
            continue; // typed above
        }
        m.insert(k.into(), json!(v));
    }
    Ok(m)
}

fn common(m: &mut Map<String, Value>, opts: &DiskOptions, node: &str) {
    m.insert("node-name".into(), json!(node));
    m.insert("read-only".into(), json!(opts.read_only));
    m.insert("discard".into(), json!(opts.discard.as_str()));
    m.insert(
        "cache".into(),
        json!({"direct": opts.cache.direct(), "no-flush": opts.cache.no_flush()}),
    );
}

/// Renders `-blockdev` JSON: a protocol node `NODE-file` and a `raw` format
/// node `NODE` on top of it. JSON needs no comma escaping, which makes this
/// the form to prefer.
pub fn render_blockdev(
    source: &Source,
    opts: &DiskOptions,
    node_name: &str,
) -> Result<BlockdevArgs> {
    check_id("node name", node_name, 26)?;
    opts.validate(source)?;
    source.validate()?;
    let secret = secret_for(source, opts, node_name);
    let proto_name = format!("{node_name}-file");
    let mut proto = protocol_node(source, opts, secret.as_ref())?;
    common(&mut proto, opts, &proto_name);
    let mut raw = Map::new();
    raw.insert("driver".into(), json!("raw"));
    raw.insert("file".into(), json!(proto_name));
    common(&mut raw, opts, node_name);
    if let Some(d) = opts.detect_zeroes {
        raw.insert("detect-zeroes".into(), json!(d.as_str()));
    }
    Ok(BlockdevArgs {
        json_nodes: vec![
            Value::Object(proto).to_string(),
            Value::Object(raw).to_string(),
        ],
        node_name: node_name.to_string(),
        protocol_node_name: proto_name,
        secrets: secret.into_iter().collect(),
        device_write_cache: opts.cache.write_cache(),
    })
}

/// A `json:{...}` pseudo-filename and the secret objects it references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonFilename {
    /// `json:{"driver":"raw","file":{...}}`, for tools that take one
    /// filename (`qemu-img`, `qemu-io`, `qemu-nbd`). Inside a QemuOpts
    /// string (`-drive file=`) its commas must be doubled.
    pub filename: String,
    /// Secret objects to pass first (`--object secret,...`).
    pub secrets: Vec<SecretObject>,
}

/// Renders the source as a single `json:` filename: the raw node with the
/// protocol node inline. `id` names the secret objects (`ID-secret`).
/// `read-only` is only written when set, so tools that open read-only
/// (e.g. `qemu-img info`) keep doing so.
pub fn render_json_filename(source: &Source, opts: &DiskOptions, id: &str) -> Result<JsonFilename> {
    check_id("id", id, 31)?;
    opts.validate(source)?;
    source.validate()?;
    let secret = secret_for(source, opts, id);
    let mut proto = protocol_node(source, opts, secret.as_ref())?;
    let mut raw = Map::new();
    raw.insert("driver".into(), json!("raw"));
    for m in [&mut proto, &mut raw] {
        if opts.read_only {
            m.insert("read-only".into(), json!(true));
        }
        m.insert("discard".into(), json!(opts.discard.as_str()));
        m.insert(
            "cache".into(),
            json!({"direct": opts.cache.direct(), "no-flush": opts.cache.no_flush()}),
        );
    }
    if let Some(d) = opts.detect_zeroes {
        raw.insert("detect-zeroes".into(), json!(d.as_str()));
    }
    raw.insert("file".into(), Value::Object(proto));
    Ok(JsonFilename {
        filename: format!("json:{}", Value::Object(raw)),
        secrets: secret.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{Aio, CacheMode, Discard};

    #[test]
    fn json_filename() {
        let src = Source::parse_legacy("nbd+unix:///e?socket=/run/a%2Cb.sock").unwrap();
        let j = render_json_filename(&src, &DiskOptions::default(), "j0").unwrap();
        let v: Value = serde_json::from_str(j.filename.strip_prefix("json:").unwrap()).unwrap();
        assert_eq!(v["driver"], "raw");
        assert_eq!(v["file"]["driver"], "nbd");
        assert_eq!(v["file"]["server"]["path"], "/run/a,b.sock");
        assert!(v.get("read-only").is_none());
    }

    fn node(args: &BlockdevArgs, i: usize) -> Value {
        serde_json::from_str(&args.json_nodes[i]).unwrap()
    }

    #[test]
    fn qemuopts_escaping() {
        assert_eq!(escape_opt_value("a,b,,c"), "a,,b,,,,c");
        let pairs = split_opts("file=/x,,y,format=raw").unwrap();
        assert_eq!(pairs[0], ("file".into(), "/x,y".into()));
        assert!(split_opts("file=/x,snapshot").is_err());
    }

    #[test]
    fn drive_for_hostile_file() {
        let src = Source::from_file("/srv/a,b: c=d@e\\f.img").unwrap();
        let opts = DiskOptions {
            cache: CacheMode::None,
            aio: Some(Aio::Native),
            discard: Discard::Unmap,
            read_only: true,
            ..DiskOptions::default()
        };
        let d = render_drive(&src, &opts, "disk0").unwrap();
        assert_eq!(
            d.drive,
            "file=/srv/a,,b: c=d@e\\f.img,format=raw,if=none,id=disk0,cache=none,aio=native,\
             discard=unmap,read-only=on"
        );
        let pairs = split_opts(&d.drive).unwrap();
        assert_eq!(Source::parse_legacy(&pairs[0].1).unwrap(), src);
    }

    #[test]
    fn rbd_everything() {
        let src = Source::parse_legacy(
            r"rbd:po\:ol/ns/im\@age@snap:conf=/etc/ceph/a\:b.conf:id=admin:mon_host=[2001\:db8\:\:1]\:3300\;10.0.0.1\:6789:key=AQAAAA==",
        )
        .unwrap();
        let opts = DiskOptions {
            read_only: true,
            secret_dir: Some("/run/secrets".into()),
            ..DiskOptions::default()
        };
        let d = render_drive(&src, &opts, "d0").unwrap();
        assert!(!d.drive.contains("AQAAAA"), "{}", d.drive);
        assert!(d.drive.contains("file.key-secret=d0-secret"), "{}", d.drive);
        assert!(
            d.drive.contains(r"conf=\/etc\/ceph\/a\:b.conf"),
            "{}",
            d.drive
        );
        let file = &split_opts(&d.drive).unwrap()[0].1;
        let mut back = Source::parse_legacy(file).unwrap();
        if let Source::Rbd(r) = &mut back {
            r.key = Some(Secret::new("AQAAAA=="));
        }
        assert_eq!(back, src);
        assert_eq!(d.secrets[0].format, SecretFormat::Base64);
        assert_eq!(
            d.secrets[0].object_arg().unwrap(),
            "secret,id=d0-secret,file=/run/secrets/d0-secret,format=base64"
        );

        let b = render_blockdev(&src, &opts, "d0").unwrap();
        assert!(b.json_nodes.iter().all(|n| !n.contains("AQAAAA")));
        let p = node(&b, 0);
        assert_eq!(p["driver"], "rbd");
        assert_eq!(p["pool"], "po:ol");
        assert_eq!(p["namespace"], "ns");
        assert_eq!(p["image"], "im@age");
        assert_eq!(p["snapshot"], "snap");
        assert_eq!(p["key-secret"], "d0-secret");
        assert_eq!(
            p["server"][0],
            json!({"host": "2001:db8::1", "port": "3300"})
        );
        let r = node(&b, 1);
        assert_eq!(r["driver"], "raw");
        assert_eq!(r["file"], "d0-file");
        assert_eq!(r["read-only"], true);
    }

    #[test]
    fn rbd_raw_options_only_in_drive() {
        let src = Source::parse_legacy("rbd:p/i:rbd_cache=false").unwrap();
        let e = render_blockdev(&src, &DiskOptions::default(), "d0").unwrap_err();
        assert!(e.to_string().contains("rbd_cache"), "{e}");
        render_drive(&src, &DiskOptions::default(), "d0").unwrap();
    }

    #[test]
    fn network_blockdevs() {
        let o = DiskOptions::default();
        let b = render_blockdev(&Source::parse_legacy("nbd://[::1]/e").unwrap(), &o, "n").unwrap();
        assert_eq!(
            node(&b, 0)["server"],
            json!({"type":"inet","host":"::1","port":"10809"})
        );
        let b = render_blockdev(
            &Source::parse_legacy("gluster+unix:///v/p/q?socket=/run/g.sock").unwrap(),
            &o,
            "g",
        )
        .unwrap();
        assert_eq!(
            node(&b, 0)["server"][0],
            json!({"type":"unix","path":"/run/g.sock"})
        );
        assert_eq!(node(&b, 0)["path"], "p/q");
        let b = render_blockdev(
            &Source::parse_legacy("iscsi://[fe80::1]:3261/iqn.x:y/2").unwrap(),
            &o,
            "i",
        )
        .unwrap();
        assert_eq!(node(&b, 0)["portal"], "[fe80::1]:3261");
        assert_eq!(node(&b, 0)["lun"], 2);
        let b = render_blockdev(
            &Source::parse_legacy("ssh://u@h/p?host_key_check=no").unwrap(),
            &o,
            "s",
        )
        .unwrap();
        assert_eq!(node(&b, 0)["host-key-check"], json!({"mode":"none"}));
        assert_eq!(node(&b, 0)["server"]["port"], "22");
    }

    #[test]
    fn passwords_become_secrets() {
        let src = Source::parse_legacy("https://me:hunter2@h/x.img").unwrap();
        let opts = DiskOptions {
            read_only: true,
            secret_dir: Some("/run/s".into()),
            ..DiskOptions::default()
        };
        let d = render_drive(&src, &opts, "h").unwrap();
        let b = render_blockdev(&src, &opts, "h").unwrap();
        for arg in d.argv().unwrap().iter().chain(b.argv().unwrap().iter()) {
            assert!(!arg.to_string_lossy().contains("hunter2"), "{arg:?}");
        }
        assert_eq!(node(&b, 0)["password-secret"], "h-secret");
        assert_eq!(node(&b, 0)["username"], "me");
        assert_eq!(b.secrets[0].data.expose(), "hunter2");
        let src = Source::parse_legacy("iscsi://u%pw@h/iqn.a:b/0").unwrap();
        let d = render_drive(&src, &opts, "i").unwrap();
        assert!(
            d.drive.starts_with("file=iscsi://u@h/iqn.a:b/0,"),
            "{}",
            d.drive
        );
        assert!(
            d.drive.ends_with(",file.password-secret=i-secret"),
            "{}",
            d.drive
        );
    }

    #[test]
    fn ids_are_checked() {
        let src = Source::from_file("/a").unwrap();
        for bad in [
            "",
            "0abc",
            "a,b",
            "a b",
            "abcdefghijklmnopqrstuvwxyz01234567",
        ] {
            assert!(
                render_drive(&src, &DiskOptions::default(), bad).is_err(),
                "{bad}"
            );
            assert!(
                render_blockdev(&src, &DiskOptions::default(), bad).is_err(),
                "{bad}"
            );
        }
    }
}
