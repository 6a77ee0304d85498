//! The vhost-user protocol against the real server, in process: a hostile
//! frontend sends arbitrary message sequences, file descriptors (memfds of
//! fuzzed sizes, truncated later; eventfds it kicks) and guest-memory
//! contents (rings, descriptor chains, request headers) to an
//! [`extstorage_vhost_user_blk::Server`] serving a real file over a real
//! unix socket.
//!
//! The property: whatever it sends, the daemon neither crashes (a panic,
//! SIGBUS, an ASan report) nor wedges: once the hostile frontend hangs up,
//! the next frontend is served (GET_FEATURES answered within
//! [`LIVENESS_TIMEOUT`]).
//!
//! An input is a list of operations ([`Op`]); structured ones (a memory
//! table, a whole vring set-up) let the fuzzer reach the I/O path from the
//! seeds, raw messages let it send anything.

use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use extstorage_vhost_user_blk::{Config, Device, Engine, Server};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

use crate::bytes::{Input, Output};

/// How long the next frontend may wait for its first answer.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(8);
/// Operations per input, at most.
const MAX_OPS: usize = 48;
/// Guest memory files are at most this large.
const MAX_FILE: u64 = 1 << 20;
/// Files (memfds and eventfds) per input, at most.
const MAX_FDS: usize = 16;
/// The frontend's address of guest physical address 0 (any value will do;
/// vrings name their rings by it).
const UVA_BASE: u64 = 0x7f00_0000_0000;
/// Queues the served device has.
const QUEUES: u16 = 2;

/// vhost-user requests (frontend to backend) the structured operations use.
mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const SET_BACKEND_REQ_FD: u32 = 21;
    pub const GET_CONFIG: u32 = 24;
}

/// One thing the hostile frontend does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Any message: request code, header flags, the size the header
    /// claims (`None`: the payload's), payload, an fd to attach.
    Raw {
        request: u32,
        flags: u32,
        claimed_size: Option<u32>,
        payload: Vec<u8>,
        fd: Option<u8>,
    },
    /// A new memfd of this size.
    Memfd { size: u32 },
    /// A new eventfd.
    Eventfd,
    /// Resizes file `fd` (grows or shrinks it under the daemon's mapping).
    Truncate { fd: u8, size: u32 },
    /// Writes guest memory: `bytes` at `offset` of file `fd`.
    Write { fd: u8, offset: u32, bytes: Vec<u8> },
    /// Signals eventfd `fd` (a kick).
    Signal { fd: u8 },
    /// SET_MEM_TABLE with one region per (fd, guest address, size, offset).
    MemTable { regions: Vec<(u8, u32, u32, u32)> },
    /// SET_LOG_BASE: a log of `size` bytes at `offset` of file `fd`.
    LogBase { fd: u8, size: u32, offset: u32 },
    /// A whole vring set-up (NUM, ADDR, BASE, KICK, CALL, ENABLE) with new
    /// eventfds for kick and call; ring addresses are guest addresses.
    Vring {
        queue: u8,
        size: u16,
        desc: u32,
        avail: u32,
        used: u32,
    },
    /// The negotiation a frontend starts with: owner, features, protocol
    /// features (the values given), asking a reply to every message.
    Handshake { features: u64, protocol: u64 },
    /// Waits (at most [`SETTLE`]) until the used index at `offset` + 2 of
    /// file `fd` is not zero: lets requests complete before what follows.
    WaitUsed { fd: u8, offset: u32 },
}

/// The longest a [`Op::WaitUsed`] waits.
const SETTLE: Duration = Duration::from_millis(50);

impl Op {
    fn decode(input: &mut Input<'_>) -> Op {
        match input.u8() % 11 {
            0 => {
                let request = u32::from(input.u8());
                let flags = input.u32();
                let lie = input.u8();
                let claimed_size = (lie & 1 == 1).then(|| input.u32());
                let len = usize::from(input.u16() % 513);
                let payload = input.bytes(len).to_vec();
                let fd = input.u8();
                Op::Raw {
                    request,
                    flags,
                    claimed_size,
                    payload,
                    fd: fd.checked_sub(1),
                }
            }
            1 => Op::Memfd { size: input.u32() },
            2 => Op::Eventfd,
            3 => Op::Truncate {
                fd: input.u8(),
                size: input.u32(),
            },
            4 => {
                let fd = input.u8();
                let offset = input.u32();
                let len = usize::from(input.u8());
                Op::Write {
                    fd,
                    offset,
                    bytes: input.bytes(len).to_vec(),
                }
            }
            5 => Op::Signal { fd: input.u8() },
            6 => {
                let n = usize::from(input.u8() % 3) + 1;
                let regions = (0..n)
                    .map(|_| (input.u8(), input.u32(), input.u32(), input.u32()))
                    .collect();
                Op::MemTable { regions }
            }
            7 => Op::LogBase {
                fd: input.u8(),
                size: input.u32(),
                offset: input.u32(),
            },
            8 => Op::Vring {
                queue: input.u8(),
                size: input.u16(),
                desc: input.u32(),
                avail: input.u32(),
                used: input.u32(),
            },
            9 => Op::Handshake {
                features: input.u64(),
                protocol: input.u64(),
            },
            _ => Op::WaitUsed {
                fd: input.u8(),
                offset: input.u32(),
            },
        }
    }

    fn encode(&self, out: &mut Output) {
        match self {
            Op::Raw {
                request,
                flags,
                claimed_size,
                payload,
                fd,
            } => {
                out.u8(0);
                out.u8(u8::try_from(*request).unwrap_or(u8::MAX));
                out.u32(*flags);
                match claimed_size {
                    Some(s) => {
                        out.u8(1);
                        out.u32(*s);
                    }
                    None => out.u8(0),
                }
                out.u16(u16::try_from(payload.len()).unwrap_or(0));
                out.bytes(payload);
                out.u8(fd.map_or(0, |f| f.saturating_add(1)));
            }
            Op::Memfd { size } => {
                out.u8(1);
                out.u32(*size);
            }
            Op::Eventfd => out.u8(2),
            Op::Truncate { fd, size } => {
                out.u8(3);
                out.u8(*fd);
                out.u32(*size);
            }
            Op::Write { fd, offset, bytes } => {
                out.u8(4);
                out.u8(*fd);
                out.u32(*offset);
                out.u8(u8::try_from(bytes.len()).unwrap_or(0));
                out.bytes(bytes);
            }
            Op::Signal { fd } => {
                out.u8(5);
                out.u8(*fd);
            }
            Op::MemTable { regions } => {
                out.u8(6);
                out.u8(u8::try_from(regions.len().saturating_sub(1)).unwrap_or(0));
                for &(fd, gpa, size, offset) in regions {
                    out.u8(fd);
                    out.u32(gpa);
                    out.u32(size);
                    out.u32(offset);
                }
            }
            Op::LogBase { fd, size, offset } => {
                out.u8(7);
                out.u8(*fd);
                out.u32(*size);
                out.u32(*offset);
            }
            Op::Vring {
                queue,
                size,
                desc,
                avail,
                used,
            } => {
                out.u8(8);
                out.u8(*queue);
                out.u16(*size);
                out.u32(*desc);
                out.u32(*avail);
                out.u32(*used);
            }
            Op::Handshake { features, protocol } => {
                out.u8(9);
                out.u64(*features);
                out.u64(*protocol);
            }
            Op::WaitUsed { fd, offset } => {
                out.u8(10);
                out.u8(*fd);
                out.u32(*offset);
            }
        }
    }
}

/// Decodes an input into at most [`MAX_OPS`] operations.
pub fn decode(data: &[u8]) -> Vec<Op> {
    let mut input = Input::new(data);
    let mut ops = Vec::new();
    while !input.is_empty() && ops.len() < MAX_OPS {
        ops.push(Op::decode(&mut input));
    }
    ops
}

/// Encodes operations as an input (for the seeds).
pub fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Output::default();
    for op in ops {
        op.encode(&mut out);
    }
    out.0
}

/// The server every input talks to, started once per process.
struct Served {
    socket: PathBuf,
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the seed test"))]
    image: PathBuf,
}

fn served() -> &'static Served {
    static SERVED: OnceLock<Served> = OnceLock::new();
    SERVED.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("es-fuzz-vhost-user-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the fuzz directory");
        let image = dir.join("disk.img");
        File::create(&image)
            .and_then(|f| f.set_len(4 << 20))
            .expect("create the disk image");
        let mut cfg = Config::new(&image);
        cfg.device.num_queues = QUEUES;
        cfg.device.queue_size = 64;
        cfg.device.engine = Engine::Sync;
        let dev = Device::open(cfg).expect("open the device");
        let socket = dir.join("vhost.sock");
        let server = Server::bind(dev, &socket, &Default::default()).expect("listen");
        std::thread::spawn(move || {
            if let Err(e) = server.run() {
                panic!("the server stopped: {e}");
            }
        });
        Served { socket, image }
    })
}

/// The hostile frontend's side of one connection.
struct Frontend {
    conn: UnixStream,
    fds: Vec<File>,
    /// Whether each of `fds` is an eventfd.
    eventfd: Vec<bool>,
}

impl Frontend {
    fn fd(&self, index: u8) -> Option<&File> {
        if self.fds.is_empty() {
            return None;
        }
        self.fds.get(usize::from(index) % self.fds.len())
    }

    fn add(&mut self, file: File, eventfd: bool) -> Option<RawFd> {
        if self.fds.len() >= MAX_FDS {
            return None;
        }
        let raw = file.as_raw_fd();
        self.fds.push(file);
        self.eventfd.push(eventfd);
        Some(raw)
    }

    fn new_eventfd(&mut self) -> Option<RawFd> {
        let fd = nix::sys::eventfd::EventFd::from_flags(
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        )
        .ok()?;
        self.add(File::from(OwnedFd::from(fd)), true)
    }

    /// Sends one message; a daemon that hung up ends the input.
    fn send(&mut self, request: u32, flags: u32, size: u32, payload: &[u8], fds: &[RawFd]) -> bool {
        let mut header = Vec::with_capacity(12 + payload.len());
        header.extend_from_slice(&request.to_le_bytes());
        header.extend_from_slice(&flags.to_le_bytes());
        header.extend_from_slice(&size.to_le_bytes());
        header.extend_from_slice(payload);
        let iov = [IoSlice::new(&header)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
        let sent = sendmsg::<()>(
            self.conn.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
        self.drain();
        sent.is_ok()
    }

    /// A well-formed message asking for a reply.
    fn message(&mut self, request: u32, payload: &[u8], fds: &[RawFd]) -> bool {
        let size = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        self.send(request, 0x1 | 0x8, size, payload, fds)
    }

    /// Reads (and drops) whatever the daemon answered so far, so its
    /// replies never fill the socket; fds it sent are closed.
    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) =
            nix::sys::socket::recv(self.conn.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)
        {
            if n == 0 {
                break;
            }
        }
    }

    /// Runs one operation; false when the daemon hung up.
    fn run(&mut self, op: &Op) -> bool {
        match op {
            Op::Raw {
                request,
                flags,
                claimed_size,
                payload,
                fd,
            } => {
                let fds: Vec<RawFd> = fd
                    .and_then(|f| self.fd(f))
                    .map(|f| vec![f.as_raw_fd()])
                    .unwrap_or_default();
                let size =
                    claimed_size.unwrap_or_else(|| u32::try_from(payload.len()).unwrap_or(0));
                self.send(*request, *flags, size, payload, &fds)
            }
            Op::Memfd { size } => {
                if let Ok(fd) = nix::sys::memfd::memfd_create(
                    c"fuzz-guest",
                    nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC
                        | nix::sys::memfd::MemFdCreateFlag::MFD_ALLOW_SEALING,
                ) {
                    let file = File::from(fd);
                    if file.set_len(u64::from(*size) % (MAX_FILE + 1)).is_ok() {
                        self.add(file, false);
                    }
                }
                true
            }
            Op::Eventfd => {
                self.new_eventfd();
                true
            }
            Op::Truncate { fd, size } => {
                if let Some(f) = self.fd(*fd) {
                    let _ = f.set_len(u64::from(*size) % (MAX_FILE + 1));
                }
                true
            }
            Op::Write { fd, offset, bytes } => {
                if let Some(f) = self.fd(*fd) {
                    // Within the file as it is: writing never grows it.
                    let len = f.metadata().map_or(0, |m| m.len());
                    let offset = u64::from(*offset) % len.max(1);
                    let room = usize::try_from(len - offset.min(len)).unwrap_or(0);
                    let _ = f.write_all_at(&bytes[..bytes.len().min(room)], offset);
                }
                true
            }
            Op::Signal { fd } => {
                let index = usize::from(*fd) % self.fds.len().max(1);
                if self.eventfd.get(index) == Some(&true) {
                    let _ = (&self.fds[index]).write_all(&1u64.to_ne_bytes());
                }
                true
            }
            Op::MemTable { regions } => {
                let mut payload = Vec::new();
                let mut fds = Vec::new();
                payload.extend_from_slice(&u32::try_from(regions.len()).unwrap_or(0).to_le_bytes());
                payload.extend_from_slice(&0u32.to_le_bytes());
                for &(fd, gpa, size, offset) in regions {
                    let Some(f) = self.fd(fd) else {
                        continue;
                    };
                    fds.push(f.as_raw_fd());
                    let gpa = u64::from(gpa);
                    for v in [gpa, u64::from(size), UVA_BASE + gpa, u64::from(offset)] {
                        payload.extend_from_slice(&v.to_le_bytes());
                    }
                }
                let count = u32::try_from(fds.len()).unwrap_or(0);
                payload[..4].copy_from_slice(&count.to_le_bytes());
                self.message(req::SET_MEM_TABLE, &payload, &fds)
            }
            Op::LogBase { fd, size, offset } => {
                let Some(f) = self.fd(*fd) else {
                    return true;
                };
                let raw = f.as_raw_fd();
                let mut payload = Vec::new();
                payload.extend_from_slice(&u64::from(*size).to_le_bytes());
                payload.extend_from_slice(&u64::from(*offset).to_le_bytes());
                self.message(req::SET_LOG_BASE, &payload, &[raw])
            }
            Op::Vring {
                queue,
                size,
                desc,
                avail,
                used,
            } => self.vring(u32::from(*queue), *size, [*desc, *avail, *used]),
            Op::Handshake { features, protocol } => {
                self.message(req::SET_OWNER, &[], &[])
                    && self.message(req::GET_FEATURES, &[], &[])
                    && self.message(req::SET_FEATURES, &features.to_le_bytes(), &[])
                    && self.message(req::GET_PROTOCOL_FEATURES, &[], &[])
                    && self.message(req::SET_PROTOCOL_FEATURES, &protocol.to_le_bytes(), &[])
                    && self.message(req::GET_CONFIG, &config_request(), &[])
            }
            Op::WaitUsed { fd, offset } => {
                if let Some(f) = self.fd(*fd) {
                    let start = std::time::Instant::now();
                    let mut idx = [0u8; 2];
                    while start.elapsed() < SETTLE
                        && f.read_exact_at(&mut idx, u64::from(*offset) + 2).is_ok()
                        && idx == [0, 0]
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                true
            }
        }
    }

    fn vring(&mut self, queue: u32, size: u16, rings: [u32; 3]) -> bool {
        let state = |v: u32| {
            let mut p = queue.to_le_bytes().to_vec();
            p.extend_from_slice(&v.to_le_bytes());
            p
        };
        let mut addr = queue.to_le_bytes().to_vec();
        addr.extend_from_slice(&0u32.to_le_bytes());
        for gpa in [rings[0], rings[2], rings[1]] {
            addr.extend_from_slice(&(UVA_BASE + u64::from(gpa)).to_le_bytes());
        }
        addr.extend_from_slice(&0u64.to_le_bytes());
        let (Some(kick), Some(call)) = (self.new_eventfd(), self.new_eventfd()) else {
            return true;
        };
        let fd_state = u64::from(queue).to_le_bytes();
        self.message(req::SET_VRING_NUM, &state(u32::from(size)), &[])
            && self.message(req::SET_VRING_ADDR, &addr, &[])
            && self.message(req::SET_VRING_BASE, &state(0), &[])
            && self.message(req::SET_VRING_CALL, &fd_state, &[call])
            && self.message(req::SET_VRING_KICK, &fd_state, &[kick])
            && self.message(req::SET_VRING_ENABLE, &state(1), &[])
    }
}

/// GET_CONFIG's payload: offset 0, size 60, flags 0, 60 bytes.
fn config_request() -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&60u32.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&[0u8; 60]);
    p
}

/// Runs the input as one frontend connection, hangs up, then checks that
/// the daemon serves the next frontend.
pub fn check(data: &[u8]) {
    let served = served();
    let ops = decode(data);
    if let Ok(conn) = UnixStream::connect(&served.socket) {
        let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
        let mut fe = Frontend {
            conn,
            fds: Vec::new(),
            eventfd: Vec::new(),
        };
        for op in &ops {
            if !fe.run(op) {
                break;
            }
        }
        // Give the queue workers a moment with what was kicked.
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_serves(served);
}

/// A fresh frontend's GET_FEATURES is answered in time.
fn assert_serves(served: &Served) {
    let mut conn = UnixStream::connect(&served.socket)
        .unwrap_or_else(|e| panic!("the daemon no longer accepts frontends: {e}"));
    conn.set_read_timeout(Some(LIVENESS_TIMEOUT)).unwrap();
    conn.write_all(&[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
        .expect("send GET_FEATURES");
    let mut reply = [0u8; 20];
    conn.read_exact(&mut reply).unwrap_or_else(|e| {
        panic!("the daemon did not answer the next frontend within {LIVENESS_TIMEOUT:?}: {e}")
    });
    assert_eq!(reply[0], 1, "a reply to GET_FEATURES");
    assert_eq!(reply[4] & 0x4, 0x4, "the reply flag");
}

/// Queue 0 with 16 entries, descriptors at 0, the avail ring at 0x1000 and
/// the used ring at `used`.
fn queue0(used: u32) -> Op {
    Op::Vring {
        queue: 0,
        size: 16,
        desc: 0,
        avail: 0x1000,
        used,
    }
}

/// What the session seed writes to the disk's sector 1.
const SESSION_BYTE: u8 = 0xa5;

/// A ring layout inside a 1 MiB memfd: descriptors, avail and used rings,
/// then a request (header, data, status): a write to sector 1.
fn ring_session(extra: &[Op]) -> Vec<Op> {
    let mut desc = Vec::new();
    for (addr, len, flags, next) in [
        (0x3000u64, 16u32, 1u16, 1u16),
        (0x4000, 512, 1, 2),
        (0x5000, 1, 2, 0),
    ] {
        desc.extend_from_slice(&addr.to_le_bytes());
        desc.extend_from_slice(&len.to_le_bytes());
        desc.extend_from_slice(&flags.to_le_bytes());
        desc.extend_from_slice(&next.to_le_bytes());
    }
    // A write (type 1) of sector 1.
    let mut header = 1u32.to_le_bytes().to_vec();
    header.extend_from_slice(&[0; 4]);
    header.extend_from_slice(&1u64.to_le_bytes());
    let mut ops = vec![
        Op::Handshake {
            features: (1 << 32) | (1 << 30),
            protocol: 0x1 | 0x2 | 0x8 | 0x200 | 0x8000,
        },
        Op::Memfd { size: 1 << 20 },
        Op::Write {
            fd: 0,
            offset: 0,
            bytes: desc,
        },
        Op::Write {
            fd: 0,
            offset: 0x3000,
            bytes: header,
        },
        Op::Write {
            fd: 0,
            offset: 0x4000,
            bytes: vec![SESSION_BYTE; 255],
        },
        Op::Write {
            fd: 0,
            offset: 0x1000,
            bytes: vec![0, 0, 1, 0, 0, 0],
        },
        Op::MemTable {
            regions: vec![(0, 0, 1 << 20, 0)],
        },
        queue0(0x2000),
        // fd 1 is the kick eventfd the vring set-up made (2 is the call).
        Op::Signal { fd: 1 },
        Op::WaitUsed {
            fd: 0,
            offset: 0x2000,
        },
    ];
    ops.extend_from_slice(extra);
    ops
}

/// The seed inputs: a well-behaved session, and the hostile cases issue 18
/// found by hand.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let session = ring_session(&[]);
    let shrunk = ring_session(&[
        Op::Truncate { fd: 0, size: 0 },
        Op::Write {
            fd: 0,
            offset: 0x1000,
            bytes: vec![0, 0, 2, 0, 0, 0],
        },
        Op::Signal { fd: 1 },
    ]);
    let log = ring_session(&[
        Op::Memfd { size: 4096 },
        Op::LogBase {
            fd: 3,
            size: 4096,
            offset: 0,
        },
        // SET_FEATURES with VHOST_F_LOG_ALL.
        Op::Raw {
            request: req::SET_FEATURES,
            flags: 0x9,
            claimed_size: None,
            payload: ((1u64 << 32) | (1 << 30) | (1 << 26))
                .to_le_bytes()
                .to_vec(),
            fd: None,
        },
        Op::Truncate { fd: 3, size: 0 },
        Op::Write {
            fd: 0,
            offset: 0x1000,
            bytes: vec![0, 0, 2, 0, 0, 0],
        },
        Op::Signal { fd: 1 },
    ]);
    let too_small = vec![
        Op::Handshake {
            features: (1 << 32) | (1 << 30),
            protocol: 0x1 | 0x8 | 0x8000,
        },
        Op::Memfd { size: 64 << 10 },
        Op::MemTable {
            regions: vec![(0, 0, 1 << 20, 0)],
        },
        queue0(0x80000),
        Op::Signal { fd: 1 },
    ];
    let offset_past = vec![
        Op::Handshake {
            features: 1 << 32,
            protocol: 0x8,
        },
        Op::Memfd { size: 1 << 20 },
        Op::MemTable {
            regions: vec![(0, 0, 1 << 20, 1 << 20)],
        },
    ];
    let backend_channel = vec![
        Op::Handshake {
            features: (1 << 32) | (1 << 30),
            protocol: 0x1 | 0x8 | 0x20,
        },
        Op::Eventfd,
        Op::Raw {
            request: req::SET_BACKEND_REQ_FD,
            flags: 0x9,
            claimed_size: None,
            payload: vec![],
            fd: Some(0),
        },
    ];
    // Found by the fuzzer: with EVENT_IDX, an avail index more than a
    // queue's worth ahead made the worker spin for ever (nothing popped,
    // re-enabling notifications said there was more), wedging the
    // connection's end and shutdown.
    let bogus_index = vec![
        Op::Handshake {
            features: (1 << 32) | (1 << 30) | (1 << 29),
            protocol: 0x1 | 0x2 | 0x8 | 0x200 | 0x8000,
        },
        Op::Memfd { size: 1 << 20 },
        Op::Write {
            fd: 0,
            offset: 0x1000,
            bytes: vec![0, 0, 0, 1, 0, 0],
        },
        Op::MemTable {
            regions: vec![(0, 0, 1 << 20, 0)],
        },
        queue0(0x2000),
        Op::Signal { fd: 1 },
    ];
    let lying_size = vec![Op::Raw {
        request: req::SET_MEM_TABLE,
        flags: 0x1,
        claimed_size: Some(u32::MAX),
        payload: vec![1, 0, 0, 0],
        fd: None,
    }];
    vec![
        ("session", encode(&session)),
        ("memory-shrunk", encode(&shrunk)),
        ("log-shrunk", encode(&log)),
        ("region-larger-than-file", encode(&too_small)),
        ("offset-past-file", encode(&offset_past)),
        ("backend-channel-eventfd", encode(&backend_channel)),
        ("lying-size", encode(&lying_size)),
        ("spin-bogus-avail-index", encode(&bogus_index)),
        ("empty", Vec::new()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_decode_to_what_they_encode() {
        for (name, data) in seeds() {
            assert_eq!(encode(&decode(&data)), data, "{name}");
        }
    }

    /// Every seed through the real server: each must leave it serving;
    /// the session's write reached the disk (the inputs do reach the I/O
    /// path).
    #[test]
    fn seeds_leave_the_daemon_serving() {
        for (_, data) in seeds() {
            check(&data);
        }
        let mut sector = [0u8; 512];
        File::open(&served().image)
            .unwrap()
            .read_exact_at(&mut sector, 512)
            .unwrap();
        assert_eq!(sector[..255], [SESSION_BYTE; 255]);
    }
}
