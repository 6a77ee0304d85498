//! Pins what we do on behalf of vhost-user-backend to the crate's current
//! behaviour, so an upgrade that changes it fails here first.
//!
//! vhost-user-backend turns each exit-event consumer into a raw fd for its
//! worker epoll and never closes it; `BlkBackend::close_exit_events` closes
//! them once the daemon is gone. If a new version closed them itself, ours
//! would close whatever fd took the number next: an unrelated file.

use std::os::fd::RawFd;

use vhost_user_backend::VhostUserDaemon;

use super::*;

/// The kernel's id of the eventfd behind `fd` (`eventfd-id` in fdinfo), or
/// `None` if `fd` is closed or not an eventfd.
fn eventfd_id(fd: RawFd) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("eventfd-id:"))
        .map(|v| v.trim().to_owned())
}

#[test]
fn vhost_user_backend_leaves_the_exit_event_fds_to_us() {
    let r = Rig::new(false);
    let backend = r.backend.clone();
    let daemon = VhostUserDaemon::new("pin".into(), backend.clone(), r.gm.clone()).unwrap();
    let fds: Vec<RawFd> = backend
        .inner
        .exit_fds
        .lock()
        .unwrap()
        .iter()
        .map(|&(_, fd)| fd)
        .collect();
    assert!(!fds.is_empty(), "the daemon asked for no exit events");
    let ids: Vec<String> = fds
        .iter()
        .map(|&fd| eventfd_id(fd).expect("fdinfo shows an eventfd-id (Linux 6.0+)"))
        .collect();

    drop(daemon);
    for (&fd, id) in fds.iter().zip(&ids) {
        assert_eq!(
            eventfd_id(fd).as_ref(),
            Some(id),
            "vhost-user-backend closed exit-event fd {fd} itself: drop close_exit_events"
        );
    }

    backend.close_exit_events();
    for (&fd, id) in fds.iter().zip(&ids) {
        assert_ne!(eventfd_id(fd).as_ref(), Some(id), "fd {fd} is still open");
    }
}
