//! The control socket: a line protocol on a unix socket.
//!
//! Request `resize\n`; answer `ok <size-in-bytes>\n` or `error <message>\n`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Device, Error};

/// Listens on `path` (replacing a stale socket) and answers requests on a
/// background thread for as long as the process runs.
pub fn spawn(dev: Arc<Device>, path: &Path) -> Result<(), Error> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| Error::Listen {
        path: path.to_path_buf(),
        source: e,
    })?;
    tracing::info!(control_socket = %path.display(), "control socket ready");
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = answer(&dev, &c) {
                            tracing::warn!(error = %e, "control connection failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "control accept failed"),
                }
            }
        })
        .map_err(|source| Error::Io {
            what: "starting the control thread",
            source,
        })?;
    Ok(())
}

fn answer(dev: &Device, conn: &UnixStream) -> std::io::Result<()> {
    // A client that connects and says nothing must not block the others for long.
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(conn.try_clone()?)
        .take(256)
        .read_line(&mut line)?;
    let reply = match line.trim() {
        "resize" => match dev.resize() {
            Ok(size) => format!("ok {size}\n"),
            Err(e) => format!("error {e}\n"),
        },
        other => format!("error unknown command {other:?}; try \"resize\"\n"),
    };
    let mut w = conn;
    w.write_all(reply.as_bytes())
}

use std::io::Read as _;

/// Asks the daemon behind `path` to re-read the backing size; returns the
/// new size in bytes.
pub fn request_resize(path: &Path) -> Result<u64, Error> {
    let err = |what: String| Error::Control {
        path: PathBuf::from(path),
        what,
    };
    let mut conn = UnixStream::connect(path).map_err(|e| err(format!("cannot connect: {e}")))?;
    conn.write_all(b"resize\n")
        .map_err(|e| err(format!("cannot send: {e}")))?;
    let mut reply = String::new();
    BufReader::new(conn)
        .read_line(&mut reply)
        .map_err(|e| err(format!("cannot read the reply: {e}")))?;
    let reply = reply.trim();
    if let Some(size) = reply.strip_prefix("ok ") {
        size.parse()
            .map_err(|_| err(format!("unexpected reply {reply:?}")))
    } else if let Some(msg) = reply.strip_prefix("error ") {
        Err(err(format!("the daemon refused: {msg}")))
    } else {
        Err(err(format!("unexpected reply {reply:?}")))
    }
}
