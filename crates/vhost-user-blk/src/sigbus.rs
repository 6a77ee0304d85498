//! Surviving a frontend that shrinks a file it shared with us.
//!
//! Guest memory, the dirty log and the in-flight region are the
//! frontend's files mapped `MAP_SHARED`. Mappings are checked against the
//! file's size when they are made (vendor/vhost `check_mapping_fits`), and
//! the in-flight region must be sealed against shrinking; but QEMU's
//! `memory-backend-file` (tmpfs, hugetlbfs) files cannot be sealed, and a
//! memfd need not be: a frontend can `ftruncate` a file after we mapped it,
//! and the next access beyond the new end raises SIGBUS, which would kill
//! the daemon and every request in flight with it.
//!
//! The handler installed here turns such a fault into a lost connection
//! instead: it maps a private zero page over the page that faulted (so the
//! access completes, reading zeros or writing into memory nobody shares),
//! counts the fault and wakes every [`FaultWatch`], whose owner ends the
//! connection it serves (see `Server::serve_one`). Only faults with
//! `si_code == BUS_ADRERR` (an access past the end of a mapped file) are
//! handled; in this daemon every shared file mapping is the frontend's.
//! Any other SIGBUS (a hardware memory error, say) takes the default
//! action, as before.
//!
//! A fault cannot be told apart by connection: every watching connection
//! in the process ends (a daemon serves one at a time). Tested end to end
//! in tests/hostile_memory.rs (not here: a deliberate fault would end the
//! connections of the unit tests running beside it).

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};

use vmm_sys_util::eventfd::{EFD_CLOEXEC, EFD_NONBLOCK, EventFd};

/// Faults recovered since the process started.
static FAULTS: AtomicU64 = AtomicU64::new(0);
/// The page size, read before the handler is installed.
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);
/// How many connections can watch for faults at once (one per server).
const WATCHES: usize = 16;
/// The eventfds the handler writes to (-1 until installed). They live for
/// the rest of the process once created, so the handler never writes to a
/// number that was closed and reused.
static WAKE_FDS: [AtomicI32; WATCHES] = [const { AtomicI32::new(-1) }; WATCHES];
/// Which of [`WAKE_FDS`] a [`FaultWatch`] holds.
static CLAIMED: [AtomicBool; WATCHES] = [const { AtomicBool::new(false) }; WATCHES];
/// The installed handler's eventfds, or why it could not be installed.
static INSTALLED: OnceLock<Result<Vec<EventFd>, String>> = OnceLock::new();

/// How many faults past the end of a shared file were survived so far.
pub(crate) fn faults() -> u64 {
    FAULTS.load(Ordering::Acquire)
}

/// Installs the handler (once per process).
pub(crate) fn install() -> Result<(), crate::Error> {
    let installed = INSTALLED.get_or_init(|| {
        let wakes = (0..WATCHES)
            .map(|_| EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| usize::try_from(p).ok())
            .unwrap_or(4096);
        PAGE_SIZE.store(page, Ordering::Release);
        for (slot, wake) in WAKE_FDS.iter().zip(&wakes) {
            slot.store(wake.as_raw_fd(), Ordering::Release);
        }
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::SigAction(on_sigbus),
            nix::sys::signal::SaFlags::SA_SIGINFO | nix::sys::signal::SaFlags::SA_ONSTACK,
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: `on_sigbus` only makes async-signal-safe calls (mmap,
        // write, signal) and touches atomics.
        unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGBUS, &action) }
            .map_err(|e| e.to_string())?;
        Ok(wakes)
    });
    installed.as_ref().map(|_| ()).map_err(|reason| {
        crate::Error::Daemon(format!(
            "cannot install the SIGBUS handler that guards against shrunk guest memory: {reason}"
        ))
    })
}

/// One watcher's wake-up: readable after every recovered fault. Released
/// on drop.
#[derive(Debug)]
pub(crate) struct FaultWatch {
    index: usize,
}

impl FaultWatch {
    /// Claims a free wake-up (`None` when all are taken or the handler is
    /// not installed).
    pub(crate) fn claim() -> Option<FaultWatch> {
        install().ok()?;
        let index = CLAIMED.iter().position(|c| {
            c.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })?;
        let watch = FaultWatch { index };
        watch.clear();
        Some(watch)
    }

    /// The eventfd to poll.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: installed eventfds live in a static for the rest of the
        // process (claim checked the install).
        unsafe { BorrowedFd::borrow_raw(WAKE_FDS[self.index].load(Ordering::Acquire)) }
    }

    /// Empties the eventfd after a wake-up.
    pub(crate) fn clear(&self) {
        let mut buf = [0u8; 8];
        let _ = nix::unistd::read(self.fd().as_raw_fd(), &mut buf);
    }
}

impl Drop for FaultWatch {
    fn drop(&mut self) {
        CLAIMED[self.index].store(false, Ordering::Release);
    }
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr()) };
    if code == libc::BUS_ADRERR && !addr.is_null() {
        let page = PAGE_SIZE.load(Ordering::Acquire);
        let start = (addr as usize) & !(page - 1);
        // SAFETY: replaces exactly the one page that faulted, which lies in
        // a shared file mapping past the file's end: nothing there can be
        // read any more, and every user of the page accesses it through raw
        // pointers or volatile accesses that now see a zero page.
        let mapped = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            FAULTS.fetch_add(1, Ordering::AcqRel);
            let one = 1u64.to_ne_bytes();
            for slot in &WAKE_FDS {
                let fd = slot.load(Ordering::Acquire);
                if fd >= 0 {
                    // SAFETY: writes 8 bytes from a live buffer to an
                    // eventfd that lives for the rest of the process.
                    let _ = unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
                }
            }
            return;
        }
    }
    // Not a fault we can survive: the default action on the retried access.
    // SAFETY: resetting a signal's disposition is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
}
