//! The rbd engine: a Ceph RBD image through librbd's asynchronous calls.
//!
//! One [`RbdImage`] (one cluster connection, one open image) is shared by
//! every queue, as QEMU does: several handles on one image in one process
//! would take turns at its exclusive lock on every write. Each queue's
//! [`RbdEngine`] gets its own completion stream: every request carries a
//! heap-allocated record that librbd hands back to a callback (on librbd's
//! own thread), which queues the result and writes the engine's eventfd.
//! librbd's per-image event socket (`rbd_set_image_notification`) is not
//! used because an image has only one, which every queue would share.
//!
//! librbd is loaded with `dlopen` on the first [`RbdImage::open`] (see
//! the private `ffi` module), never before.

mod ffi;

use std::collections::VecDeque;
use std::ffi::{CString, c_int, c_void};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

pub use ffi::{LIBRADOS, LIBRBD, LoadError};

use crate::{Completion, Engine, EnginePaths, Error, IoBuf, Op, Request, SubmitError};

/// Most iovecs librbd takes in one vectored call (`IOV_MAX`).
const IOV_MAX: usize = 1024;

/// What a read's or write's buffers allow: `Ok(bytes)` to hand it to
/// librbd, or `Err(result)` to complete it at once: zero bytes succeed
/// with nothing to do (as in the other engines; librbd is not called);
/// more than [`RbdEngine::MAX_SEGMENTS`] buffers or 4 GiB fail with EINVAL.
fn data_plan(bufs: &[IoBuf]) -> Result<u32, Result<u32, i32>> {
    let total: usize = bufs.iter().map(|b| b.len).sum();
    match u32::try_from(total) {
        Ok(0) => Err(Ok(0)),
        Ok(n) if bufs.len() <= IOV_MAX => Ok(n),
        _ => Err(Err(libc::EINVAL)),
    }
}

/// Which image to open and how to reach its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdSpec {
    /// RADOS pool.
    pub pool: String,
    /// RADOS namespace within the pool, if any.
    pub namespace: Option<String>,
    /// Image name.
    pub image: String,
    /// Snapshot to open (read-only), if any.
    pub snapshot: Option<String>,
    /// The ceph.conf to read (Ceph's default search path when `None`).
    pub conf: Option<PathBuf>,
    /// Client id without `client.` (`admin` when `None`).
    pub id: Option<String>,
    /// The client's keyring (else what the conf says).
    pub keyring: Option<PathBuf>,
    /// Seconds connecting and monitor requests may take.
    pub timeout_secs: u32,
    /// Open read-only (always so for a snapshot).
    pub read_only: bool,
}

impl std::fmt::Display for RbdSpec {
    /// `pool/[namespace/]image[@snapshot]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/", self.pool)?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        f.write_str(&self.image)?;
        if let Some(s) = &self.snapshot {
            write!(f, "@{s}")?;
        }
        Ok(())
    }
}

/// What an errno from librbd most likely means, and what to do.
fn hint(op: &'static str, errno: i32) -> &'static str {
    match (op, errno) {
        (_, libc::ETIMEDOUT) => {
            "the Ceph cluster did not answer in time: check that its monitors and OSDs are up ('ceph -s') and reachable, and the conf's 'mon host'"
        }
        ("connect", libc::ENOENT) => {
            "no monitor address or keyring found: check the conf path and its 'mon host' and 'keyring' settings"
        }
        (_, libc::EACCES | libc::EPERM) => {
            "the cluster refused the client: check the client id, its keyring and its caps ('ceph auth get client.ID')"
        }
        ("open the pool", libc::ENOENT) => {
            "the pool does not exist: list pools with 'ceph osd pool ls'"
        }
        ("open the image", libc::ENOENT) => {
            "the image (or snapshot, or namespace) does not exist: list them with 'rbd ls POOL' and 'rbd snap ls POOL/IMAGE'"
        }
        ("read the conf", _) => "check the --rbd-conf path exists and is readable",
        _ => "see the Ceph client log for details",
    }
}

fn rbd_err(spec: &RbdSpec, op: &'static str, ret: c_int) -> Error {
    let errno = ret.saturating_neg();
    Error::Rbd {
        image: spec.to_string(),
        op,
        hint: hint(op, errno),
        source: std::io::Error::from_raw_os_error(errno),
    }
}

fn cstring(spec: &RbdSpec, what: &'static str, s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::Rbd {
        image: spec.to_string(),
        op: what,
        hint: "names and paths must not contain NUL bytes",
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })
}

/// The update-watch callback's state: set by [`RbdImage::watch_updates`].
type UpdateFn = Box<dyn Fn() + Send + Sync>;

/// An open RBD image and its cluster connection, shared by every queue's
/// engine. Closed (and disconnected) when the last holder drops it.
pub struct RbdImage {
    api: &'static ffi::Api,
    spec: RbdSpec,
    cluster: ffi::Rados,
    ioctx: ffi::IoCtx,
    image: ffi::Image,
    size: AtomicU64,
    /// The update watch: librbd's handle and the boxed callback it calls.
    watch: Mutex<Option<(u64, *mut UpdateFn)>>,
}

impl std::fmt::Debug for RbdImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbdImage")
            .field("spec", &self.spec)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

// SAFETY: librados and librbd handles may be used from any thread; librbd
// serialises what needs it internally (QEMU and fio's rbd engine submit to
// one image from several threads). The watch pointer is only touched under
// its mutex.
unsafe impl Send for RbdImage {}
// SAFETY: as above; every method takes `&self` and librbd's calls are
// thread-safe.
unsafe impl Sync for RbdImage {}

impl RbdImage {
    /// Loads librbd (once per process), connects to the cluster and opens
    /// the image (read-only for a snapshot or when asked). Fails within
    /// about `timeout_secs` when the cluster does not answer.
    pub fn open(spec: &RbdSpec) -> Result<RbdImage, Error> {
        let api = ffi::api()?;
        let name = format!("client.{}", spec.id.as_deref().unwrap_or("admin"));
        let name = cstring(spec, "connect", &name)?;
        let mut cluster: ffi::Rados = std::ptr::null_mut();
        // SAFETY: `cluster` is a valid out-pointer; a NULL cluster name
        // means "ceph"; `name` is a valid C string.
        let ret = unsafe { (api.rados_create2)(&mut cluster, c"ceph".as_ptr(), name.as_ptr(), 0) };
        if ret < 0 {
            return Err(rbd_err(spec, "create the cluster handle", ret));
        }
        // From here on the partial image closes what was opened on error.
        let mut img = RbdImage {
            api,
            spec: spec.clone(),
            cluster,
            ioctx: std::ptr::null_mut(),
            image: std::ptr::null_mut(),
            size: AtomicU64::new(0),
            watch: Mutex::new(None),
        };
        let conf = match &spec.conf {
            Some(p) => Some(cstring(spec, "read the conf", &p.to_string_lossy())?),
            None => None,
        };
        // SAFETY: `cluster` is a created, unconnected handle; the path is a
        // valid C string or NULL (Ceph's default search path).
        let ret = unsafe {
            (api.rados_conf_read_file)(
                cluster,
                conf.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            )
        };
        if ret < 0 {
            return Err(rbd_err(spec, "read the conf", ret));
        }
        let timeout = spec.timeout_secs.to_string();
        let mut settings = vec![
            ("client_mount_timeout", timeout.clone()),
            ("rados_mon_op_timeout", timeout),
        ];
        if let Some(k) = &spec.keyring {
            settings.push(("keyring", k.to_string_lossy().into_owned()));
        }
        for (key, value) in settings {
            let k = cstring(spec, "set an option", key)?;
            let v = cstring(spec, "set an option", &value)?;
            // SAFETY: unconnected handle, valid C strings.
            let ret = unsafe { (api.rados_conf_set)(cluster, k.as_ptr(), v.as_ptr()) };
            if ret < 0 {
                return Err(rbd_err(spec, "set an option", ret));
            }
        }
        // SAFETY: configured, unconnected handle. Blocks at most about
        // client_mount_timeout.
        let ret = unsafe { (api.rados_connect)(cluster) };
        if ret < 0 {
            return Err(rbd_err(spec, "connect", ret));
        }
        let pool = cstring(spec, "open the pool", &spec.pool)?;
        // SAFETY: connected handle, valid C string and out-pointer.
        let ret = unsafe { (api.rados_ioctx_create)(cluster, pool.as_ptr(), &mut img.ioctx) };
        if ret < 0 {
            img.ioctx = std::ptr::null_mut();
            return Err(rbd_err(spec, "open the pool", ret));
        }
        if let Some(ns) = &spec.namespace {
            let ns = cstring(spec, "open the pool", ns)?;
            // SAFETY: a valid ioctx and C string (copied by librados).
            unsafe { (api.rados_ioctx_set_namespace)(img.ioctx, ns.as_ptr()) };
        }
        let image = cstring(spec, "open the image", &spec.image)?;
        let snap = match &spec.snapshot {
            Some(s) => Some(cstring(spec, "open the image", s)?),
            None => None,
        };
        let snap_ptr = snap.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        let read_only = spec.read_only || spec.snapshot.is_some();
        let open = if read_only {
            api.rbd_open_read_only
        } else {
            api.rbd_open
        };
        // SAFETY: valid ioctx, C strings (or NULL for no snapshot) and out-pointer.
        let ret = unsafe { open(img.ioctx, image.as_ptr(), &mut img.image, snap_ptr) };
        if ret < 0 {
            img.image = std::ptr::null_mut();
            return Err(rbd_err(spec, "open the image", ret));
        }
        img.refresh_size()?;
        Ok(img)
    }

    /// What it serves.
    pub fn spec(&self) -> &RbdSpec {
        &self.spec
    }

    /// Whether it was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.spec.read_only || self.spec.snapshot.is_some()
    }

    /// The size in bytes as last read.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Asks librbd for the size (it re-reads the image header when another
    /// client changed it) and remembers it.
    pub fn refresh_size(&self) -> Result<u64, Error> {
        let mut size = 0u64;
        // SAFETY: an open image and a valid out-pointer.
        let ret = unsafe { (self.api.rbd_get_size)(self.image, &mut size) };
        if ret < 0 {
            return Err(rbd_err(&self.spec, "read the size", ret));
        }
        self.size.store(size, Ordering::Release);
        Ok(size)
    }

    /// Calls `on_update` (on librbd's thread) whenever the image's header
    /// changes, e.g. after `rbd resize` by any client. Keep it short and do
    /// not call into librbd from it: signal another thread. Replaces an
    /// earlier watch.
    pub fn watch_updates(&self, on_update: impl Fn() + Send + Sync + 'static) -> Result<(), Error> {
        self.unwatch();
        let boxed: *mut UpdateFn = Box::into_raw(Box::new(Box::new(on_update)));
        let mut handle = 0u64;
        // SAFETY: an open image; `boxed` stays allocated until
        // `rbd_update_unwatch` returned (in `unwatch`), which waits for
        // running callbacks.
        let ret = unsafe {
            (self.api.rbd_update_watch)(self.image, &mut handle, update_trampoline, boxed.cast())
        };
        if ret < 0 {
            // SAFETY: librbd did not keep the pointer; reclaim it.
            drop(unsafe { Box::from_raw(boxed) });
            return Err(rbd_err(&self.spec, "watch the image", ret));
        }
        *self.watch.lock().unwrap_or_else(|e| e.into_inner()) = Some((handle, boxed));
        Ok(())
    }

    fn unwatch(&self) {
        let taken = self.watch.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((handle, boxed)) = taken {
            // SAFETY: `handle` came from rbd_update_watch on this image;
            // after unwatch returns no callback runs or will run.
            let ret = unsafe { (self.api.rbd_update_unwatch)(self.image, handle) };
            if ret < 0 {
                tracing::warn!(image = %self.spec, errno = -ret, "cannot remove the update watch");
                // The callback may still run: leak its state rather than free it.
                return;
            }
            // SAFETY: allocated by `watch_updates`, no longer referenced by librbd.
            drop(unsafe { Box::from_raw(boxed) });
        }
    }
}

extern "C" fn update_trampoline(arg: *mut c_void) {
    // SAFETY: `arg` is the `*mut UpdateFn` registered in `watch_updates`,
    // alive until the watch is removed (which waits for this call).
    let f = unsafe { &*arg.cast::<UpdateFn>() };
    f();
}

impl Drop for RbdImage {
    fn drop(&mut self) {
        self.unwatch();
        if !self.image.is_null() {
            // SAFETY: an open image; every engine holding it is gone (they
            // hold an Arc), so nothing is in flight.
            let ret = unsafe { (self.api.rbd_close)(self.image) };
            if ret < 0 {
                tracing::warn!(image = %self.spec, errno = -ret, "rbd_close failed");
            }
        }
        if !self.ioctx.is_null() {
            // SAFETY: created by rados_ioctx_create; the image using it is closed.
            unsafe { (self.api.rados_ioctx_destroy)(self.ioctx) };
        }
        // SAFETY: created by rados_create2; nothing uses it any more.
        unsafe { (self.api.rados_shutdown)(self.cluster) };
    }
}

/// Completions of one engine, filled by librbd's callback thread.
#[derive(Debug)]
struct Stream {
    done: Mutex<VecDeque<Done>>,
    eventfd: EventFd,
}

/// A finished librbd operation, before the engine turns it into a [`Completion`].
#[derive(Debug)]
struct Done {
    user_data: u64,
    stage: Stage,
    /// librbd's return value (negative errno on failure).
    ret: isize,
}

/// Which step of a request finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The request itself; it completes with `bytes` on success.
    Only { bytes: u32 },
    /// A write-through write: a flush follows before it completes.
    WriteThenFlush { bytes: u32 },
}

/// What librbd carries from submission to the callback.
struct InFlight {
    stream: Arc<Stream>,
    user_data: u64,
    stage: Stage,
    /// The request's iovecs: librbd reads the array until completion.
    iov: Vec<libc::iovec>,
}

extern "C" fn completion_trampoline(c: ffi::RbdCompletion, arg: *mut c_void) {
    // SAFETY: `arg` is the `Box<InFlight>` leaked by `RbdEngine::start`
    // for this completion; librbd calls back exactly once.
    let req = unsafe { Box::from_raw(arg.cast::<InFlight>()) };
    let Ok(api) = ffi::api() else {
        return; // Unreachable: the library was loaded to submit.
    };
    // SAFETY: `c` is the finished completion this callback is for.
    let ret = unsafe { (api.rbd_aio_get_return_value)(c) };
    // SAFETY: the result was read; nothing refers to `c` any more.
    unsafe { (api.rbd_aio_release)(c) };
    let InFlight {
        stream,
        user_data,
        stage,
        iov,
    } = *req;
    drop(iov);
    let was_empty = {
        let mut done = stream.done.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = done.is_empty();
        done.push_back(Done {
            user_data,
            stage,
            ret,
        });
        was_empty
    };
    // One eventfd write per batch: a completion added to a non-empty
    // stream is found by the worker, which drains the stream until it is
    // empty after every wake-up, before it sleeps again.
    if was_empty && let Err(e) = stream.eventfd.write(1) {
        tracing::error!(error = %e, "cannot signal an rbd completion");
    }
}

/// One queue's engine over a shared [`RbdImage`].
#[derive(Debug)]
pub struct RbdEngine {
    image: Arc<RbdImage>,
    stream: Arc<Stream>,
    capacity: usize,
    /// Submitted and not yet returned by `pop_completion`.
    in_flight: usize,
    /// Completions decided without librbd (e.g. refused submissions).
    ready: VecDeque<Completion>,
}

impl RbdEngine {
    /// Most buffers one read or write may have: librbd takes at most
    /// `IOV_MAX` iovecs in one call. The device advertises it as the
    /// config space's `seg_max` when it is below `queue_size - 2`.
    pub const MAX_SEGMENTS: usize = IOV_MAX;

    /// An engine for one queue with room for `depth` requests in flight.
    pub fn new(image: Arc<RbdImage>, depth: usize) -> Result<Self, Error> {
        let eventfd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|source| {
            Error::Engine {
                engine: "rbd",
                source,
            }
        })?;
        Ok(Self {
            image,
            stream: Arc::new(Stream {
                done: Mutex::new(VecDeque::with_capacity(depth)),
                eventfd,
            }),
            capacity: depth.max(1),
            in_flight: 0,
            ready: VecDeque::new(),
        })
    }

    /// Hands one librbd operation to the image; errors are the errno.
    fn start(
        &self,
        op: Op,
        offset: u64,
        len: u64,
        iov: Vec<libc::iovec>,
        user_data: u64,
        stage: Stage,
    ) -> Result<(), i32> {
        let api = self.image.api;
        let req = Box::new(InFlight {
            stream: Arc::clone(&self.stream),
            user_data,
            stage,
            iov,
        });
        let iov_ptr = req.iov.as_ptr();
        let iov_cnt = c_int::try_from(req.iov.len()).map_err(|_| libc::EINVAL)?;
        let arg: *mut InFlight = Box::into_raw(req);
        let mut c: ffi::RbdCompletion = std::ptr::null_mut();
        // SAFETY: a valid out-pointer; `arg` stays allocated until the
        // callback reclaims it.
        let ret =
            unsafe { (api.rbd_aio_create_completion)(arg.cast(), completion_trampoline, &mut c) };
        if ret < 0 {
            // SAFETY: no completion holds `arg`: reclaim it.
            drop(unsafe { Box::from_raw(arg) });
            return Err(-ret);
        }
        let img = self.image.image;
        // SAFETY: an open image and a fresh completion. For reads and
        // writes the iovec array lives in `arg` until the callback, and
        // the memory it points to is kept valid by the submitter until the
        // completion is popped (`Engine::submit`'s contract).
        let ret = unsafe {
            match op {
                Op::Read => (api.rbd_aio_readv)(img, iov_ptr, iov_cnt, offset, c),
                Op::Write | Op::WriteThrough => {
                    (api.rbd_aio_writev)(img, iov_ptr, iov_cnt, offset, c)
                }
                Op::Flush => (api.rbd_aio_flush)(img, c),
                Op::Discard => (api.rbd_aio_discard)(img, offset, len, c),
                Op::WriteZeroes { .. } => match usize::try_from(len) {
                    Ok(n) => (api.rbd_aio_write_zeroes)(img, offset, n, c, 0, 0),
                    Err(_) => -libc::EINVAL,
                },
            }
        };
        if ret < 0 {
            // SAFETY: the operation was refused, so the callback will not
            // run: release the completion and reclaim `arg`.
            unsafe { (api.rbd_aio_release)(c) };
            // SAFETY: as above.
            drop(unsafe { Box::from_raw(arg) });
            return Err(-ret);
        }
        Ok(())
    }
}

impl Engine for RbdEngine {
    fn name(&self) -> &'static str {
        "rbd"
    }

    unsafe fn submit(&mut self, req: &Request<'_>, user_data: u64) -> Result<(), SubmitError> {
        if self.in_flight >= self.capacity {
            return Err(SubmitError::Full);
        }
        self.in_flight += 1;
        if req.op.is_write() && self.image.is_read_only()
            || matches!(req.op, Op::Discard | Op::WriteZeroes { .. }) && self.image.is_read_only()
        {
            self.ready.push_back(Completion {
                user_data,
                result: Err(libc::EROFS),
            });
            return Ok(());
        }
        let mut iov = Vec::new();
        let mut bytes = 0u32;
        if req.op.moves_data() {
            match data_plan(req.bufs) {
                Ok(n) => bytes = n,
                Err(result) => {
                    self.ready.push_back(Completion { user_data, result });
                    return Ok(());
                }
            }
            iov.extend(req.bufs.iter().map(IoBuf::as_iovec));
        }
        let stage = if req.op == Op::WriteThrough {
            Stage::WriteThenFlush { bytes }
        } else {
            Stage::Only { bytes }
        };
        if let Err(errno) = self.start(req.op, req.offset, req.len, iov, user_data, stage) {
            self.ready.push_back(Completion {
                user_data,
                result: Err(errno),
            });
        }
        Ok(())
    }

    fn commit(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn pop_completion(&mut self) -> Option<Completion> {
        loop {
            if let Some(c) = self.ready.pop_front() {
                self.in_flight -= 1;
                return Some(c);
            }
            let done = self
                .stream
                .done
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()?;
            let errno = i32::try_from(done.ret.saturating_neg()).unwrap_or(libc::EIO);
            let result = match done.stage {
                _ if done.ret < 0 => Err(errno),
                Stage::Only { bytes } => Ok(bytes),
                Stage::WriteThenFlush { bytes } => {
                    // Written: now make it durable, then complete.
                    let flush = Stage::Only { bytes };
                    match self.start(Op::Flush, 0, 0, Vec::new(), done.user_data, flush) {
                        Ok(()) => continue,
                        Err(e) => Err(e),
                    }
                }
            };
            self.in_flight -= 1;
            return Some(Completion {
                user_data: done.user_data,
                result,
            });
        }
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.stream.eventfd.as_raw_fd())
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn paths(&self) -> EnginePaths {
        EnginePaths {
            ring: "none",
            event_loop: false,
            discard: "rbd_aio_discard",
            write_zeroes: "rbd_aio_write_zeroes",
            write_through: "rbd_aio_flush",
        }
    }
}

impl Drop for RbdEngine {
    /// Waits for librbd to finish what is in flight: the callbacks write
    /// into memory the submitter handed over.
    fn drop(&mut self) {
        let start = Instant::now();
        let mut warned = Duration::ZERO;
        while self.in_flight > 0 {
            while self.pop_completion().is_some() {}
            if self.in_flight == 0 {
                break;
            }
            let mut pfd = libc::pollfd {
                fd: self.stream.eventfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: a valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
            let _ = self.stream.eventfd.read();
            if start.elapsed() >= warned + Duration::from_secs(30) {
                warned = start.elapsed();
                tracing::warn!(image = %self.image.spec, in_flight = self.in_flight, "still waiting for librbd to finish requests");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bufs(n: usize, len: usize) -> Vec<IoBuf> {
        (0..n)
            .map(|_| IoBuf {
                addr: std::ptr::NonNull::<u8>::dangling().as_ptr(),
                len,
            })
            .collect()
    }

    /// Zero bytes complete at once with success, as in the sync and
    /// io_uring engines, whether there are no buffers or only empty ones.
    #[test]
    fn zero_length_succeeds_without_librbd() {
        assert_eq!(data_plan(&[]), Err(Ok(0)));
        assert_eq!(data_plan(&bufs(3, 0)), Err(Ok(0)));
    }

    /// Up to MAX_SEGMENTS buffers go to librbd; one more fails with EINVAL
    /// (the device advertises the limit in seg_max); so does 4 GiB.
    #[test]
    fn segment_and_size_limits() {
        assert_eq!(
            data_plan(&bufs(RbdEngine::MAX_SEGMENTS, 512)),
            Ok(u32::try_from(RbdEngine::MAX_SEGMENTS * 512).unwrap())
        );
        assert_eq!(
            data_plan(&bufs(RbdEngine::MAX_SEGMENTS + 1, 512)),
            Err(Err(libc::EINVAL))
        );
        assert_eq!(data_plan(&bufs(2, 1 << 31)), Err(Err(libc::EINVAL)));
    }
}
