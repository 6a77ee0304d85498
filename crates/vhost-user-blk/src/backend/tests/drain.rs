//! Draining a queue whose engine still holds a request that was queued
//! and never committed: the drain commits it first, so it completes
//! instead of being waited for for ever (the sync engine has nothing to
//! wait on, and would spin).

use std::sync::mpsc;

use super::*;

#[test]
fn drain_commits_a_queued_write_through_first() {
    let r = Rig::new(false);
    let data = 0x10_0000u64;
    r.gm.memory()
        .write_slice(&[0x6bu8; 512], GuestAddress(data))
        .unwrap();
    let status = GuestAddress(st(0));
    r.gm.memory().write_obj(0xffu8, status).unwrap();
    {
        let mut w = r.backend.worker(0).unwrap();
        w.vring = Some(r.vring.clone());
        let mem: Arc<Mem> = r.gm.memory().into_inner();
        let buf = IoBuf {
            addr: mem.get_host_address(GuestAddress(data)).unwrap(),
            len: 512,
        };
        let slot = w.alloc_slot(InFlight {
            head: 0,
            status,
            used_len: 1,
            kind: Kind::Write,
            bytes: 512,
            started: Instant::now(),
            mem: Arc::clone(&mem),
        });
        let io = IoRequest {
            op: Op::WriteThrough,
            offset: 0,
            len: 512,
            bufs: &[buf],
        };
        // SAFETY: the buffer is in `mem`, which the in-flight entry keeps
        // mapped until the completion is reaped.
        unsafe { w.engine.submit(&io, slot as u64) }.unwrap();
        assert_eq!(w.engine.in_flight(), 1, "queued, not committed");
    }
    let (tx, rx) = mpsc::channel();
    let backend = r.backend.clone();
    std::thread::spawn(move || {
        backend.drain();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("drain did not return in 10 s with a queued write-through left in the engine");
    assert_eq!(r.backend.worker(0).unwrap().engine.in_flight(), 0);
    assert_eq!(
        r.status(status),
        Status::Ok.as_u8(),
        "the write completed OK"
    );
    let used_idx: u16 =
        r.gm.memory()
            .read_obj(r.used_addr.unchecked_add(2))
            .unwrap();
    assert_eq!(used_idx, 1, "the write was returned to the guest");
    let mut back = [0u8; 512];
    std::fs::File::open(&r.file)
        .unwrap()
        .read_exact_at(&mut back, 0)
        .unwrap();
    assert_eq!(back, [0x6bu8; 512], "the write reached the file");
}
