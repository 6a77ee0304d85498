//! A throwaway Ceph cluster for tests (`scripts/ceph-cluster.sh`): one
//! mon, one memstore OSD, pool `rbd`, stopped by a reaper process when the
//! test process ends in any way.
#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

/// A throwaway Ceph cluster (one mon, one memstore OSD, pool `rbd`).
pub struct Cluster {
    pub dir: PathBuf,
    pub conf: PathBuf,
    /// The reaper's stdin and the reaper: closing the pipe stops the
    /// cluster and removes its directory.
    reaper: Mutex<Option<(ChildStdin, Child)>>,
}

fn cluster_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/ceph-cluster.sh")
}

impl Cluster {
    /// Starts a cluster in a fresh directory, or says why it could not.
    pub fn start(tag: &str) -> Result<Cluster, String> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("esrbd-{tag}-"))
            .tempdir_in("/tmp")
            .map_err(|e| format!("temp dir: {e}"))?
            .keep();
        // The reaper first, so that even a half-started cluster goes. It
        // ignores the terminal's signals (own process group, SIG_IGN) and
        // acts when its stdin reaches EOF: when this process closes the
        // pipe or ends.
        let mut reaper = Command::new("bash")
            .arg("-c")
            .arg(r#"trap '' INT TERM HUP; cat >/dev/null; "$0" stop "$1" >/dev/null 2>&1; rm -rf -- "$1""#)
            .arg(cluster_script())
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start the reaper: {e}"))?;
        let stdin = reaper.stdin.take().expect("piped stdin");
        let cluster = Cluster {
            conf: dir.join("ceph.conf"),
            dir,
            reaper: Mutex::new(Some((stdin, reaper))),
        };
        // A port the kernel just handed out: unlike the script's scan from
        // 3300, two clusters starting at once do not pick the same one.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let out = Command::new(cluster_script())
            .arg("start")
            .arg(&cluster.dir)
            .env("CEPH_MON_PORT", port.to_string())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run scripts/ceph-cluster.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "scripts/ceph-cluster.sh start failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(cluster)
    }

    pub fn conf(&self) -> &str {
        self.conf.to_str().expect("UTF-8 temp path")
    }

    /// `rbd` on this cluster (no admin socket: the cluster's conf gives
    /// every client.admin the same one).
    pub fn rbd(&self) -> Command {
        let mut c = Command::new("rbd");
        c.arg("--conf").arg(&self.conf).arg("--admin-socket=");
        c
    }

    pub fn ceph(&self) -> Command {
        let mut c = Command::new("ceph");
        c.arg("--conf").arg(&self.conf).arg("--admin-socket=");
        c
    }

    /// The pid of daemon `name` (`mon.a`, `osd.0`).
    pub fn pid(&self, name: &str) -> i32 {
        let p = self.dir.join(format!("run/{name}.pid"));
        fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .parse()
            .expect("pid")
    }

    /// Stops the cluster now and waits for it.
    pub fn stop(&self) {
        let taken = self.reaper.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((stdin, mut reaper)) = taken {
            drop(stdin);
            let _ = reaper.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}
