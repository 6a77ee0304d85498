//! Background threads that never take the process's stop signals: those
//! belong to the thread the program chose to wait for them (a `sigwait`
//! thread). A new thread inherits its creator's signal mask, so the
//! signals are blocked around the spawn, not inside the new thread, which
//! leaves no window in which a SIGTERM could land on it and kill the
//! process.

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

/// The signals that stop a server.
pub fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

/// Spawns a named thread with the stop signals blocked.
pub fn spawn_quiet<F>(name: &str, f: F) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&stop_signals()), Some(&mut old))
        .map_err(std::io::Error::from)?;
    let spawned = std::thread::Builder::new().name(name.into()).spawn(f);
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).map_err(std::io::Error::from)?;
    spawned
}

/// Runs `f` with the stop signals blocked on this thread, so threads that
/// a library starts inside it (librados' and librbd's) inherit the mask
/// and never take a stop signal meant for the waiting thread.
pub fn quietly<T>(f: impl FnOnce() -> T) -> std::io::Result<T> {
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&stop_signals()), Some(&mut old))
        .map_err(std::io::Error::from)?;
    let out = f();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).map_err(std::io::Error::from)?;
    Ok(out)
}
