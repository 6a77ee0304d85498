//! The control-socket protocol of a served volume
//! (crates/serve-api/src/control.rs): one request line, one reply line.
//!
//! The same bytes go through
//! - [`Request::parse`], against a model of the grammar (a known command
//!   word, optional surrounding whitespace and newline, at most
//!   [`MAX_REQUEST_LINE`] bytes of UTF-8), and the render/parse round trip;
//! - [`read_request`] over a real socket pair, which must read at most one
//!   bounded line and agree with [`Request::parse`] on it;
//! - [`Reply::parse`], against the grammar (`ok ` and a JSON object, or
//!   `error ` and a message), and the render/parse round trip, also
//!   through the typed replies a client decodes (resize, status, config).

use std::io::Write;
use std::os::unix::net::UnixStream;

use extstorage_serve_api::control::{
    MAX_REPLY_LINE, MAX_REQUEST_LINE, Reply, Request, ResizeReply, ServedConfig, StatusReport,
    read_request,
};
use extstorage_serve_api::{DeviceOptions, Error};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What the bytes ended as, for the seed tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// As a request.
    pub request: Option<Request>,
    /// As a reply: `Some(true)` for `ok`, `Some(false)` for `error`.
    pub reply: Option<bool>,
}

/// The request grammar, written from the module documentation.
fn request_model(line: &[u8]) -> Option<Request> {
    if line.len() > MAX_REQUEST_LINE {
        return None;
    }
    let text = std::str::from_utf8(line).ok()?;
    let word = text.strip_suffix('\n').unwrap_or(text).trim();
    match word {
        "resize" => Some(Request::Resize),
        "status" => Some(Request::Status),
        "config" => Some(Request::Config),
        _ => None,
    }
}

fn protocol_error(e: &Error) {
    let Error::Protocol(m) = e else {
        panic!("a parse error that is not a protocol error: {e:?}");
    };
    assert!(!m.is_empty());
}

/// Equal JSON, except that floats may differ in the last bits: serde_json
/// (without its `float_roundtrip` feature) parses decimal floats to the
/// nearest double only approximately, so `0.18446744077709554` reads back as
/// `0.1844674407770955`. The protocol's own values are integers, which must
/// come back exactly.
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || (x - y).abs() <= x.abs().max(y.abs()) * 1e-15,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k, x), (l, y))| k == l && same_json(x, y))
        }
        _ => a == b,
    }
}

/// Decodes `v` as a `T`, and if that works, checks that `T` survives a
/// reply round trip.
fn typed<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &serde_json::Value) {
    let Ok(t) = serde_json::from_value::<T>(v.clone()) else {
        return;
    };
    let line = Reply::ok(&t).render();
    match Reply::parse(line.as_bytes()) {
        Ok(Reply::Ok(again)) => {
            let back: T = serde_json::from_value(again).expect("decodes again");
            assert_eq!(back, t, "typed round trip via {line:?}");
        }
        other => panic!("{t:?} rendered as {line:?} parses as {other:?}"),
    }
}

/// Runs one input through every property. Panics on a violation.
pub fn check(data: &[u8]) -> Outcome {
    // Requests.
    let request = Request::parse(data);
    match &request {
        Ok(r) => {
            assert_eq!(Request::parse(r.render().as_bytes()).ok(), Some(*r));
            assert_eq!(r.render().matches('\n').count(), 1);
        }
        Err(e) => protocol_error(e),
    }
    assert_eq!(
        request.as_ref().ok().copied(),
        request_model(data),
        "{data:?}"
    );

    // A server reads at most one bounded line from the socket.
    let (mut client, server) = UnixStream::pair().expect("socketpair");
    client
        .write_all(data)
        .expect("the input fits the socket buffer");
    drop(client);
    let line_end = data
        .iter()
        .position(|&b| b == b'\n')
        .map_or(data.len(), |i| i + 1);
    let line = &data[..line_end.min(MAX_REQUEST_LINE + 1)];
    match (read_request(&server), Request::parse(line)) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => {
            protocol_error(&a);
            assert_eq!(a.to_string(), b.to_string());
        }
        (a, b) => panic!("read_request gave {a:?} but the line {line:?} parses as {b:?}"),
    }

    // Replies.
    let reply = match Reply::parse(data) {
        Err(e) => {
            protocol_error(&e);
            let text = std::str::from_utf8(data).ok();
            let body = text.map(|t| t.strip_suffix('\n').unwrap_or(t));
            if data.len() <= MAX_REPLY_LINE
                && let Some(b) = body
            {
                assert!(!b.starts_with("error "), "{b:?} refused: {e}");
                if let Some(json) = b.strip_prefix("ok ") {
                    assert!(
                        !serde_json::from_str::<serde_json::Value>(json)
                            .is_ok_and(|v| v.is_object()),
                        "{b:?} refused: {e}"
                    );
                }
            }
            None
        }
        Ok(reply) => {
            let line = reply.render();
            assert!(
                line.ends_with('\n') && line.matches('\n').count() == 1,
                "{line:?}"
            );
            assert!(!line[..line.len() - 1].contains('\r'), "{line:?}");
            let again = Reply::parse(line.as_bytes())
                .unwrap_or_else(|e| panic!("{reply:?} renders as {line:?}: {e}"));
            match (&reply, &again) {
                (Reply::Ok(v), Reply::Ok(w)) => {
                    assert!(v.is_object());
                    assert!(same_json(v, w), "{v:?} came back as {w:?} via {line:?}");
                    typed::<ResizeReply>(v);
                    typed::<StatusReport>(v);
                    typed::<ServedConfig>(v);
                    typed::<DeviceOptions>(v);
                }
                (Reply::Error(m), Reply::Error(n)) => {
                    assert_eq!(&m.replace(['\n', '\r'], " "), n);
                }
                _ => panic!("{reply:?} came back as {again:?}"),
            }
            Some(matches!(reply, Reply::Ok(_)))
        }
    };
    Outcome {
        request: request.ok(),
        reply,
    }
}

/// Seed inputs: every request, replies of every type, and broken lines.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let status = StatusReport {
        path: "/dev/loop3".into(),
        size_bytes: 64 << 20,
        read_only: false,
        connected: true,
        connections: 2,
        uptime_secs: 3600,
        queues: vec![Default::default()],
    };
    let config = ServedConfig {
        pid: 4242,
        provider: Some("loopfile".into()),
        volume: Some("vol1".into()),
        path: "/dev/loop3".into(),
        socket: Some("/run/extstorage/vol1.sock".into()),
        device: DeviceOptions::default(),
    };
    let resize = ResizeReply {
        size_bytes: 1 << 30,
        changed: true,
    };
    let t = |name, s: &str| (name, s.as_bytes().to_vec());
    vec![
        t("resize", "resize\n"),
        t("status", "status\n"),
        t("config-spaces", "  config \t\n"),
        t("no-newline", "status"),
        t("two-lines", "status\nresize\n"),
        t("unknown", "reboot\n"),
        ("long", [b"resize".repeat(20), b"\n".to_vec()].concat()),
        ("not-utf8", b"st\xffatus\n".to_vec()),
        t("empty", ""),
        ("reply-resize", Reply::ok(&resize).render().into_bytes()),
        ("reply-status", Reply::ok(&status).render().into_bytes()),
        ("reply-config", Reply::ok(&config).render().into_bytes()),
        t("reply-error", "error the backing file is gone\n"),
        t("reply-error-cr", "error a\rb\n"),
        t("reply-not-object", "ok [1,2]\n"),
        t("reply-bad-json", "ok {\"a\":\n"),
        t(
            "reply-numbers",
            "ok {\"a\":1e2,\"b\":-0.0,\"c\":18446744073709551615,\"d\":\"\\u0000\",\"e\":0.18446744077709551615}\n",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_end_as_named() {
        let want = |request, reply| Outcome { request, reply };
        for (name, data) in seeds() {
            let got = check(&data);
            let expected = match name {
                "resize" => want(Some(Request::Resize), None),
                "status" | "no-newline" => want(Some(Request::Status), None),
                "config-spaces" => want(Some(Request::Config), None),
                n if n.starts_with("reply-error") => want(None, Some(false)),
                "reply-resize" | "reply-status" | "reply-config" | "reply-numbers" => {
                    want(None, Some(true))
                }
                _ => want(None, None),
            };
            assert_eq!(got, expected, "{name}");
        }
    }
}
