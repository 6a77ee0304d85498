//! The control-socket protocol of a served volume.
//!
//! One request per connection, one line each way:
//!
//! - request: a command word and a newline: `resize`, `status` or `config`;
//! - reply: `ok ` and a JSON object, or `error ` and a message, and a
//!   newline.
//!
//! `resize` makes the backend re-read the size of its backing (a grown
//! file or block device) and tell the guest; `status` returns counters per
//! queue; `config` returns what is served and how, so QEMU arguments can
//! be made to match it. Lines are bounded ([`MAX_REQUEST_LINE`],
//! [`MAX_REPLY_LINE`]); [`Request::parse`] and [`Reply::parse`] are pure,
//! so the protocol can be tested and fuzzed without sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{DeviceOptions, Error};

/// Longest request line accepted, newline included.
pub const MAX_REQUEST_LINE: usize = 64;
/// Longest reply line accepted, newline included.
pub const MAX_REPLY_LINE: usize = 1 << 20;
/// How long either side waits for the other.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A control request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Re-read the backing size and notify the frontend of a change.
    Resize,
    /// Per-queue counters.
    Status,
    /// What is served and how.
    Config,
}

impl Request {
    /// Every request, for help texts and tests.
    pub const ALL: [Request; 3] = [Request::Resize, Request::Status, Request::Config];

    /// The command word.
    pub fn as_str(self) -> &'static str {
        match self {
            Request::Resize => "resize",
            Request::Status => "status",
            Request::Config => "config",
        }
    }

    /// Parses one request line (with or without its newline).
    pub fn parse(line: &[u8]) -> Result<Request, Error> {
        if line.len() > MAX_REQUEST_LINE {
            return Err(Error::Protocol(format!(
                "request longer than {MAX_REQUEST_LINE} bytes"
            )));
        }
        let text = std::str::from_utf8(line)
            .map_err(|_| Error::Protocol("request is not UTF-8".into()))?;
        let word = text.strip_suffix('\n').unwrap_or(text).trim();
        Request::ALL
            .into_iter()
            .find(|r| r.as_str() == word)
            .ok_or_else(|| {
                Error::Protocol(format!(
                    "unknown request {word:?}; expected resize, status or config"
                ))
            })
    }

    /// The request line, newline included.
    pub fn render(self) -> String {
        format!("{}\n", self.as_str())
    }
}

/// A reply: success with a JSON object, or an error message.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `ok {...}`.
    Ok(serde_json::Value),
    /// `error message`.
    Error(String),
}

impl Reply {
    /// A success carrying `value` (serialised to JSON).
    pub fn ok<T: Serialize>(value: &T) -> Reply {
        match serde_json::to_value(value) {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Error(format!("cannot encode the reply: {e}")),
        }
    }

    /// The reply line, newline included. Newlines in an error message
    /// become spaces, so the reply stays one line.
    pub fn render(&self) -> String {
        match self {
            Reply::Ok(v) => format!("ok {v}\n"),
            Reply::Error(m) => format!("error {}\n", m.replace(['\n', '\r'], " ")),
        }
    }

    /// Parses one reply line (with or without its newline).
    pub fn parse(line: &[u8]) -> Result<Reply, Error> {
        if line.len() > MAX_REPLY_LINE {
            return Err(Error::Protocol(format!(
                "reply longer than {MAX_REPLY_LINE} bytes"
            )));
        }
        let text =
            std::str::from_utf8(line).map_err(|_| Error::Protocol("reply is not UTF-8".into()))?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        if let Some(json) = text.strip_prefix("ok ") {
            let v: serde_json::Value = serde_json::from_str(json)
                .map_err(|e| Error::Protocol(format!("reply is not JSON ({e})")))?;
            if !v.is_object() {
                return Err(Error::Protocol("reply is not a JSON object".into()));
            }
            Ok(Reply::Ok(v))
        } else if let Some(msg) = text.strip_prefix("error ") {
            Ok(Reply::Error(msg.to_owned()))
        } else {
            let shown: String = text.chars().take(60).collect();
            Err(Error::Protocol(format!("unexpected reply {shown:?}")))
        }
    }
}

/// The `resize` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeReply {
    /// The backing size now, in bytes.
    pub size_bytes: u64,
    /// Whether the size changed (and the frontend was notified).
    pub changed: bool,
}

/// Counts of requests by virtio-blk type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Reads (VIRTIO_BLK_T_IN).
    pub read: u64,
    /// Writes (VIRTIO_BLK_T_OUT).
    pub write: u64,
    /// Flushes.
    pub flush: u64,
    /// Discards.
    pub discard: u64,
    /// Write-zeroes.
    pub write_zeroes: u64,
    /// GET_ID.
    pub get_id: u64,
    /// Unsupported types and malformed chains.
    pub other: u64,
}

impl RequestCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.read
            .saturating_add(self.write)
            .saturating_add(self.flush)
            .saturating_add(self.discard)
            .saturating_add(self.write_zeroes)
            .saturating_add(self.get_id)
            .saturating_add(self.other)
    }
}

/// One latency bucket: requests that completed in less than `lt_us`
/// microseconds and at least the previous bucket's bound (`None`: slower
/// than every bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyBucket {
    /// Upper bound (exclusive) in microseconds; `None` for the last bucket.
    pub lt_us: Option<u64>,
    /// Requests in the bucket.
    pub count: u64,
}

/// The counters of one queue since the backend started (across frontend
/// connections).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// Queue index.
    pub index: u16,
    /// Requests completed, by type.
    pub requests: RequestCounts,
    /// Bytes read by the guest.
    pub bytes_read: u64,
    /// Bytes written by the guest.
    pub bytes_written: u64,
    /// Requests completed with an I/O error status.
    pub errors: u64,
    /// Requests answered "unsupported".
    pub unsupported: u64,
    /// Requests submitted and not yet completed, now.
    pub in_flight: u64,
    /// Completion latency of the requests handed to the I/O engine, from
    /// the request being taken off the ring to its completion; buckets
    /// with no requests are left out.
    pub latency: Vec<LatencyBucket>,
    /// Set while the queue is stopped because the guest's driver broke the
    /// ring protocol: what it did. The queue serves again once the
    /// frontend starts the ring again (device reset, new connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// The `status` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The served file or block device.
    pub path: PathBuf,
    /// Its size in bytes as the guest sees it.
    pub size_bytes: u64,
    /// Whether it is served read-only.
    pub read_only: bool,
    /// Whether a frontend is connected now.
    pub connected: bool,
    /// Frontend connections so far.
    pub connections: u64,
    /// Seconds since the backend started.
    pub uptime_secs: u64,
    /// Per-queue counters.
    pub queues: Vec<QueueStatus>,
}

/// The `config` reply: what is served and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedConfig {
    /// The serving process.
    pub pid: u32,
    /// The provider, when served by `extstorage serve`.
    pub provider: Option<String>,
    /// The volume, when served by `extstorage serve`.
    pub volume: Option<String>,
    /// The served file or block device.
    pub path: PathBuf,
    /// The vhost-user socket (`None` when inherited without a known path).
    pub socket: Option<PathBuf>,
    /// The device options in force.
    pub device: DeviceOptions,
}

/// Sends `request` to the backend behind `path` and decodes its reply.
pub fn call<T: DeserializeOwned>(path: &Path, request: Request) -> Result<T, Error> {
    let mut conn = UnixStream::connect(path).map_err(|source| Error::NotServing {
        path: path.to_path_buf(),
        source,
    })?;
    let fail = |what: String| Error::Control {
        path: path.to_path_buf(),
        what,
    };
    conn.set_read_timeout(Some(TIMEOUT))
        .and_then(|()| conn.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| fail(format!("cannot set timeouts: {e}")))?;
    // A backend that answers before reading (busy) may have closed the
    // connection already: its answer is still there to read.
    let sent = conn.write_all(request.render().as_bytes());
    let mut line = Vec::new();
    let read = BufReader::new(conn)
        .take(MAX_REPLY_LINE as u64 + 1)
        .read_until(b'\n', &mut line);
    if let (Err(e), true) = (&sent, line.is_empty()) {
        return Err(fail(format!("cannot send {}: {e}", request.as_str())));
    }
    read.map_err(|e| fail(format!("no reply to {}: {e}", request.as_str())))?;
    if line.is_empty() {
        return Err(fail(format!(
            "the backend closed the connection without answering {}",
            request.as_str()
        )));
    }
    match Reply::parse(&line)? {
        Reply::Ok(v) => serde_json::from_value(v)
            .map_err(|e| Error::Protocol(format!("unexpected {} reply: {e}", request.as_str()))),
        Reply::Error(message) => Err(Error::Refused {
            path: path.to_path_buf(),
            request: request.as_str(),
            message,
        }),
    }
}

/// Reads one request from a connection (bounded, with a timeout so a silent
/// client cannot hold the server).
pub fn read_request(conn: &UnixStream) -> Result<Request, Error> {
    conn.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| Error::Protocol(format!("cannot set a timeout: {e}")))?;
    let mut line = Vec::new();
    BufReader::new(conn)
        .take(MAX_REQUEST_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(|e| Error::Protocol(format!("cannot read the request: {e}")))?;
    Request::parse(&line)
}

/// Writes a reply to a connection.
pub fn write_reply(mut conn: &UnixStream, reply: &Reply) -> std::io::Result<()> {
    conn.set_write_timeout(Some(TIMEOUT))?;
    conn.write_all(reply.render().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests() {
        for r in Request::ALL {
            assert_eq!(Request::parse(r.render().as_bytes()).unwrap(), r);
            assert_eq!(Request::parse(r.as_str().as_bytes()).unwrap(), r);
        }
        assert_eq!(Request::parse(b" status \n").unwrap(), Request::Status);
        for bad in [
            &b""[..],
            b"\n",
            b"stat",
            b"resize now",
            b"\xff\n",
            &[b'x'; 100],
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replies() {
        let ok = Reply::ok(&ResizeReply {
            size_bytes: 5,
            changed: true,
        });
        assert_eq!(Reply::parse(ok.render().as_bytes()).unwrap(), ok);
        let err = Reply::Error("two\nlines".into());
        assert_eq!(
            Reply::parse(err.render().as_bytes()).unwrap(),
            Reply::Error("two lines".into())
        );
        for bad in [&b"ok 5"[..], b"ok [1]", b"okay", b"", b"ok {"] {
            assert!(Reply::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn call_round_trip_over_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            for reply in [
                Reply::ok(&ResizeReply {
                    size_bytes: 4096,
                    changed: false,
                }),
                Reply::Error("no".into()),
            ] {
                let (conn, _) = listener.accept().unwrap();
                assert_eq!(read_request(&conn).unwrap(), Request::Resize);
                write_reply(&conn, &reply).unwrap();
            }
        });
        let r: ResizeReply = call(&path, Request::Resize).unwrap();
        assert_eq!(r.size_bytes, 4096);
        let e = call::<ResizeReply>(&path, Request::Resize).unwrap_err();
        assert!(e.to_string().contains("refused resize: no"), "{e}");
        server.join().unwrap();
        drop(dir);
        let e = call::<ResizeReply>(&path, Request::Status).unwrap_err();
        assert!(matches!(e, Error::NotServing { .. }), "{e}");
    }

    proptest! {
        #[test]
        fn parsers_never_panic(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Request::parse(&line);
            let _ = Reply::parse(&line);
        }

        #[test]
        fn error_replies_round_trip(msg in "[^\n\r]{0,100}") {
            let r = Reply::Error(msg);
            prop_assert_eq!(Reply::parse(r.render().as_bytes()).unwrap(), r);
        }
    }
}
