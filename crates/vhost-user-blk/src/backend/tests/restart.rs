//! A backend that stops with requests in flight, completed out of order,
//! and the next backend that serves the same ring: with the in-flight
//! region (INFLIGHT_SHMFD) it resubmits exactly what was taken and not
//! returned, oldest first, before anything new; without it, restarting
//! from the used index (what QEMU does then) repeats a returned request
//! and loses a held one.
//!
//! The first backend is abandoned, never drained, like a daemon killed
//! with SIGKILL; the second gets a fresh vring set up as QEMU sets it up
//! after reconnecting (next available index = the used index).

use std::io::Read;
use std::os::unix::fs::FileExt;

use vm_memory::Address;

use super::event_loop::{Looped, pattern};
use super::*;
use crate::testonly::{Hold, HoldEngine};

const DATA: u64 = 0x10_0000;
const STRIDE: u64 = 0x1_0000;
const LEN: u32 = 4096;

/// Holds every second write of queue 0 back for far longer than the test.
fn hold_every_second_write(l: &Looped) {
    let dev = Arc::clone(&l.r.backend.inner.dev);
    let mut w = l.r.backend.worker(0).unwrap();
    let hold = Hold {
        every: 2,
        hold: Duration::from_secs(3600),
    };
    w.engine = Box::new(HoldEngine::new(dev.new_engine(0), hold, 0).unwrap());
}

/// Queues a write of `pattern(slot, 1)` to sector `8 * slot`.
fn write(l: &Looped, slot: u16) -> (u16, GuestAddress) {
    let data = DATA + u64::from(slot) * STRIDE;
    l.r.gm
        .memory()
        .write_slice(&pattern(slot, 1), GuestAddress(data))
        .unwrap();
    l.request(slot, true, 8 * u64::from(slot), data, LEN)
}

/// The used ring's heads from position `from` to the used index.
fn used_heads(l: &Looped, from: u16) -> Vec<u16> {
    let mem = l.r.gm.memory();
    (from..l.used_idx())
        .map(|i| {
            let e = l.r.used_addr.unchecked_add(4 + 8 * u64::from(i % QSIZE));
            u16::try_from(mem.read_obj::<u32>(e).unwrap()).unwrap()
        })
        .collect()
}

fn file_at(l: &Looped, slot: u16) -> Vec<u8> {
    let mut buf = vec![0u8; LEN as usize];
    std::fs::File::open(&l.r.file)
        .unwrap()
        .read_exact_at(&mut buf, 4096 * u64::from(slot))
        .unwrap();
    buf
}

fn zero_file_at(l: &Looped, slot: u16) {
    l.r.write_file(4096 * u64::from(slot), &[0u8; LEN as usize]);
}

/// The first backend's life: four writes, the second and fourth held, so
/// the first and third are returned (used index 2) and the others are in
/// flight when it "dies". Their data is then wiped from the file so that
/// only a resubmission can bring it back. Returns the heads.
fn first_life(l: &Looped) -> Vec<u16> {
    hold_every_second_write(l);
    let heads: Vec<u16> = (0..4).map(|slot| write(l, slot).0).collect();
    l.publish(&heads);
    l.r.backend
        .handle_event(0, EventSet::IN, std::slice::from_ref(&l.r.vring), 0)
        .unwrap();
    assert_eq!(used_heads(l, 0), [heads[0], heads[2]], "out of order");
    assert_eq!(l.r.backend.worker(0).unwrap().engine.in_flight(), 2);
    zero_file_at(l, 1);
    zero_file_at(l, 3);
    heads
}

/// A new backend over the same device and guest memory, with a vring set
/// up as QEMU sets it up after a reconnect: the next available index is
/// the used index.
fn second_backend(l: &Looped) -> (BlkBackend, Vring) {
    let backend = BlkBackend::new(Arc::clone(&l.r.backend.inner.dev), l.r.gm.clone()).unwrap();
    let vring = Vring::new(l.r.gm.clone(), QSIZE).unwrap();
    let old = l.r.vring.get_ref();
    let q = old.get_queue();
    vring
        .set_queue_info(q.desc_table(), q.avail_ring(), q.used_ring())
        .unwrap();
    drop(old);
    vring.set_queue_size(QSIZE);
    vring.set_queue_next_avail(l.used_idx());
    vring.set_queue_next_used(l.used_idx());
    vring.set_kick(Some(l.kick.try_clone().unwrap()));
    vring.set_call(Some(l.call.try_clone().unwrap()));
    (backend, vring)
}

fn serve(backend: &BlkBackend, vring: &Vring) {
    backend
        .handle_event(0, EventSet::IN, std::slice::from_ref(vring), 0)
        .unwrap();
}

#[test]
fn restart_resubmits_what_was_in_flight_oldest_first_before_new_work() {
    let l = Looped::with(crate::Engine::Sync, false, 0);
    // As QEMU does at the first start: GET_INFLIGHT_FD, SET_INFLIGHT_FD.
    let (region, file) =
        l.r.backend
            .get_inflight_fd(&VhostUserInflight::new(0, 0, 1, QSIZE))
            .unwrap();
    l.r.backend
        .set_inflight_fd(&region, file.try_clone().unwrap())
        .unwrap();
    l.r.backend.start_vring(0, &l.r.vring).unwrap();
    let heads = first_life(&l);

    // The frontend hands the same region to the next backend.
    let (backend, vring) = second_backend(&l);
    let mut kick = l.kick.try_clone().unwrap();
    let mut v = [0u8; 8];
    let _ = kick.read(&mut v);
    backend.set_inflight_fd(&region, file).unwrap();
    backend.start_vring(0, &vring).unwrap();
    assert_eq!(
        vring.queue_next_avail(),
        4,
        "next available = used index + in flight"
    );
    assert!(
        kick.read(&mut v).is_ok(),
        "the backend kicks itself to resubmit"
    );
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    // New work the guest queued meanwhile comes after the resubmissions.
    let (fifth, _) = write(&l, 4);
    l.publish(&[fifth]);
    serve(&backend, &vring);

    assert_eq!(used_heads(&l, 2), [heads[1], heads[3], fifth]);
    for slot in 0..5 {
        assert_eq!(
            l.status(GuestAddress(st(u64::from(slot)))),
            0,
            "slot {slot}"
        );
        assert_eq!(file_at(&l, slot), pattern(slot, 1), "slot {slot} on disk");
    }
    // Everything returned: nothing left marked.
    let w = backend.worker(0).unwrap();
    assert_eq!(w.inflight.as_ref().unwrap().marked(), 0);
}

/// The contrast: the same restart with no region (a frontend or backend
/// without INFLIGHT_SHMFD). Restarting from the used index pops the third
/// write again although it was returned, and never the second: the guest
/// gets a completion twice and waits for the lost one forever.
#[test]
fn without_a_region_a_restart_repeats_a_returned_request_and_loses_a_held_one() {
    let l = Looped::with(crate::Engine::Sync, false, 0);
    let heads = first_life(&l);
    let (backend, vring) = second_backend(&l);
    backend.start_vring(0, &vring).unwrap();
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    serve(&backend, &vring);
    assert_eq!(used_heads(&l, 2), [heads[2], heads[3]]);
    assert_eq!(
        file_at(&l, 1),
        vec![0u8; LEN as usize],
        "the second write is lost"
    );
}

/// A region for the wrong queue count or size is refused with an error
/// the frontend sees, and a ring larger than its region cannot start.
#[test]
fn regions_that_do_not_fit_the_device_are_refused() {
    let l = Looped::with(crate::Engine::Sync, false, 0);
    let b = &l.r.backend;
    for (n, size) in [(0u16, QSIZE), (2, QSIZE), (1, 0)] {
        let e = b
            .get_inflight_fd(&VhostUserInflight::new(0, 0, n, size))
            .map(|_| ())
            .unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
    }
    let (region, file) = b
        .get_inflight_fd(&VhostUserInflight::new(0, 0, 1, QSIZE / 2))
        .unwrap();
    b.set_inflight_fd(&region, file).unwrap();
    let e = b.start_vring(0, &l.r.vring).unwrap_err();
    assert!(e.to_string().contains("tracks 32"), "{e}");
}
