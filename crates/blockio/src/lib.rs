//! I/O engines over a file or block device, for the vhost-user-blk backend.
//!
//! This crate knows nothing about virtio: it moves bytes between memory the
//! caller owns and a [`Backing`] store. An [`Engine`] is completion-oriented
//! (submit, commit, then collect completions), so the synchronous engine and
//! an asynchronous one (io_uring) look the same to the caller.
//!
//! One engine belongs to one queue worker; the [`Backing`] is shared between
//! engines behind an `Arc` and holds no lock on the I/O path.
//!
//! With `O_DIRECT`, every read and write uses the backing's one direct
//! descriptor. Requests whose memory breaks the alignment are copied through
//! aligned bounce buffers pooled per engine; requests whose offset or length
//! break it fail with `EINVAL` (see [`OpenOptions::logical_block_size`]).
#![warn(missing_docs)]

mod backing;
mod bounce;
mod engine;
mod error;
mod kind;
pub mod rbd;
mod split;
mod sync;
#[cfg(test)]
mod testutil;
mod uring;

pub use backing::{Backing, BackingKind, OpenOptions};
pub use engine::{
    Completion, Engine, EnginePaths, EventLoop, IoBuf, Op, Request, SubmitError, Watches,
};
pub use error::Error;
pub use kind::{EngineKind, ParseEngineKindError, open_engine};
pub use rbd::{RbdEngine, RbdImage, RbdSpec};
pub use split::{DEFAULT_SPLIT_BYTES, SplitEngine};
pub use sync::SyncEngine;
pub use uring::UringEngine;
