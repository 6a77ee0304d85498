//! Interruption by SIGINT, SIGTERM or SIGHUP.
//!
//! One process-wide record of the last such signal. A binary calls
//! [`install_handlers`] once at start; a program that takes signals in a
//! thread of its own (a `sigwait` loop) calls [`request`] instead. The runner
//! checks the record while it waits for a script (it forwards the signal to
//! the script's process group and keeps waiting for the group), before it
//! starts a script, and while it waits for a volume lock; each of those then
//! returns [`crate::Error::Interrupted`].

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use crate::error::{Error, Result};

/// The signals [`install_handlers`] catches.
pub const SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// The last signal received or requested (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// How many signals were received or requested, so a waiter can tell a new
/// one from the one it already handled.
static COUNT: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only lock-free atomic stores: async-signal-safe.
    SIGNAL.store(signal, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);
}

/// Catches SIGINT, SIGTERM and SIGHUP for the whole process: the handler
/// only records the signal. It is installed without `SA_RESTART`, so a
/// `poll` that waits for a script returns `EINTR` and sees it at once.
pub fn install_handlers() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in SIGNALS {
        // SAFETY: the handler only performs atomic stores, which are
        // async-signal-safe, and touches no other state.
        unsafe { sigaction(signal, &action) }.map_err(|e| {
            Error::io(
                format!("cannot install a handler for {}", signal.as_str()),
                e.into(),
            )
        })?;
    }
    Ok(())
}

/// Records `signal` as if it had been received: for programs that take
/// signals in a thread of their own (e.g. `sigwait`) instead of
/// [`install_handlers`]. Running scripts get it forwarded to their process
/// group; nothing new starts.
pub fn request(signal: Signal) {
    on_signal(signal as libc::c_int);
}

/// The signal that interrupted this process, if any.
pub fn pending() -> Option<Signal> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        n => Signal::try_from(n).ok(),
    }
}

/// How many signals were received or requested so far.
pub(crate) fn count() -> u32 {
    COUNT.load(Ordering::SeqCst)
}

/// Forgets a pending signal, for a program that handled it and goes on.
pub fn clear() {
    SIGNAL.store(0, Ordering::SeqCst);
}

/// The conventional exit code of a process that stops because of
/// `signal`: 128 + its number (130 for SIGINT, 143 for SIGTERM, 129 for
/// SIGHUP).
pub fn exit_code(signal: Signal) -> u8 {
    u8::try_from(128 + signal as i32).unwrap_or(u8::MAX)
}
