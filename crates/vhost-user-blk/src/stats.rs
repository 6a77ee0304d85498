//! Per-queue counters: requests by type, bytes, errors, in-flight requests
//! and a latency histogram, kept for the life of the [`Device`](crate::Device)
//! (across frontend connections) and reported by the control socket's
//! `status` request.
//!
//! Each queue's counters are written only by the thread that holds that
//! queue's worker (its mutex hands them from one holder to the next), so a
//! relaxed load and store suffice: no read-modify-write on the I/O path.
//! Readers (the control thread) see values that are at most a few requests
//! old.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use extstorage_serve_api::control::{LatencyBucket, QueueStatus, RequestCounts};
use extstorage_virtio_blk::{RequestType, Status};

/// Latency buckets: `< 1 us`, `< 2 us`, `< 4 us`, ... `< 2^24 us` (about
/// 17 s), and everything slower.
pub const LATENCY_BUCKETS: usize = 26;

/// What a request was, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
    GetId,
    Other,
}

impl From<RequestType> for Kind {
    fn from(t: RequestType) -> Kind {
        match t {
            RequestType::In => Kind::Read,
            RequestType::Out => Kind::Write,
            RequestType::Flush => Kind::Flush,
            RequestType::Discard => Kind::Discard,
            RequestType::WriteZeroes => Kind::WriteZeroes,
            RequestType::GetId => Kind::GetId,
            RequestType::Unsupported(_) => Kind::Other,
        }
    }
}

/// The counters of one queue.
#[derive(Debug, Default)]
pub struct QueueStats {
    read: AtomicU64,
    write: AtomicU64,
    flush: AtomicU64,
    discard: AtomicU64,
    write_zeroes: AtomicU64,
    get_id: AtomicU64,
    other: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    errors: AtomicU64,
    unsupported: AtomicU64,
    in_flight: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
    /// Why the queue is stopped (a ring protocol violation), if it is.
    /// Written only when a queue stops or starts.
    stopped: Mutex<Option<String>>,
}

/// Adds `n` to a counter that only one thread writes at a time.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// The bucket of a latency: the number of significant bits of the whole
/// microseconds, capped.
fn bucket(latency: Duration) -> usize {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    let bits = (u64::BITS - us.leading_zeros()) as usize;
    bits.min(LATENCY_BUCKETS - 1)
}

impl QueueStats {
    /// A request was handed to the I/O engine.
    pub(crate) fn submitted(&self) {
        bump(&self.in_flight, 1);
    }

    /// A request handed to the engine completed, after `latency`.
    pub(crate) fn completed(&self, kind: Kind, status: Status, bytes: u64, latency: Duration) {
        let left = self.in_flight.load(Ordering::Relaxed).saturating_sub(1);
        self.in_flight.store(left, Ordering::Relaxed);
        bump(&self.latency[bucket(latency)], 1);
        self.answered(kind, status, bytes);
    }

    /// A request was answered (with or without the engine).
    pub(crate) fn answered(&self, kind: Kind, status: Status, bytes: u64) {
        let counter = match kind {
            Kind::Read => &self.read,
            Kind::Write => &self.write,
            Kind::Flush => &self.flush,
            Kind::Discard => &self.discard,
            Kind::WriteZeroes => &self.write_zeroes,
            Kind::GetId => &self.get_id,
            Kind::Other => &self.other,
        };
        bump(counter, 1);
        match status {
            Status::Ok => match kind {
                Kind::Read => bump(&self.bytes_read, bytes),
                Kind::Write => bump(&self.bytes_written, bytes),
                _ => {}
            },
            Status::IoErr => bump(&self.errors, 1),
            Status::Unsupp => bump(&self.unsupported, 1),
        }
    }

    /// The queue stopped serving (`Some(why)`) or started again (`None`).
    pub(crate) fn set_stopped(&self, why: Option<String>) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self, index: u16) -> QueueStatus {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let latency = self
            .latency
            .iter()
            .enumerate()
            .filter(|(_, c)| get(c) > 0)
            .map(|(i, c)| LatencyBucket {
                lt_us: (i < LATENCY_BUCKETS - 1).then(|| 1u64 << i),
                count: get(c),
            })
            .collect();
        QueueStatus {
            index,
            requests: RequestCounts {
                read: get(&self.read),
                write: get(&self.write),
                flush: get(&self.flush),
                discard: get(&self.discard),
                write_zeroes: get(&self.write_zeroes),
                get_id: get(&self.get_id),
                other: get(&self.other),
            },
            bytes_read: get(&self.bytes_read),
            bytes_written: get(&self.bytes_written),
            errors: get(&self.errors),
            unsupported: get(&self.unsupported),
            in_flight: get(&self.in_flight),
            latency,
            stopped: self
                .stopped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// The counters of a device: one [`QueueStats`] per queue, and the
/// connection history.
#[derive(Debug)]
pub struct DeviceStats {
    queues: Vec<QueueStats>,
    connected: AtomicBool,
    connections: AtomicU64,
    started: Instant,
}

impl DeviceStats {
    /// Counters for `queues` queues, all zero.
    pub fn new(queues: u16) -> Self {
        DeviceStats {
            queues: (0..queues).map(|_| QueueStats::default()).collect(),
            connected: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// The counters of queue `index` (the last queue's for an index out of
    /// range, which a frontend cannot produce: it is refused at setup).
    pub(crate) fn queue(&self, index: usize) -> &QueueStats {
        let last = self.queues.len().saturating_sub(1);
        &self.queues[index.min(last)]
    }

    /// A frontend connected (true) or went away (false).
    pub(crate) fn set_connected(&self, on: bool) {
        if on {
            self.connections.fetch_add(1, Ordering::Relaxed);
        }
        self.connected.store(on, Ordering::Relaxed);
    }

    /// Whether a frontend is connected now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Frontend connections so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Time since the device was opened.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Every queue's counters.
    pub fn snapshot(&self) -> Vec<QueueStatus> {
        self.queues
            .iter()
            .enumerate()
            .map(|(i, q)| q.snapshot(u16::try_from(i).unwrap_or(u16::MAX)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(Duration::from_nanos(999)), 0);
        assert_eq!(bucket(Duration::from_micros(1)), 1);
        assert_eq!(bucket(Duration::from_micros(3)), 2);
        assert_eq!(bucket(Duration::from_micros(4)), 3);
        assert_eq!(bucket(Duration::from_secs(3600)), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn counts_and_snapshot() {
        let s = QueueStats::default();
        s.submitted();
        s.submitted();
        s.completed(Kind::Read, Status::Ok, 4096, Duration::from_micros(10));
        assert_eq!(s.snapshot(0).in_flight, 1);
        s.completed(Kind::Write, Status::IoErr, 512, Duration::from_micros(10));
        s.answered(Kind::Other, Status::Unsupp, 0);
        let q = s.snapshot(3);
        assert_eq!(q.index, 3);
        assert_eq!(q.requests.read, 1);
        assert_eq!(q.requests.write, 1);
        assert_eq!(q.requests.total(), 3);
        assert_eq!(q.bytes_read, 4096);
        assert_eq!(q.bytes_written, 0, "a failed write moved no bytes");
        assert_eq!((q.errors, q.unsupported, q.in_flight), (1, 1, 0));
        assert_eq!(
            q.latency,
            [LatencyBucket {
                lt_us: Some(16),
                count: 2
            }]
        );
    }
}
