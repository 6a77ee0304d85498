//! `extstorage-serve-api`: the contract between a served volume and
//! everything that talks to it, with no I/O machinery of its own, so the
//! CLI can speak it without linking vhost or io_uring.
//!
//! - [`options`]: the device options of a served volume, typed once.
//!   [`DeviceArgs`] is the clap definition that both `extstorage serve` and
//!   `extstorage-vhost-user-blk serve` (and `extstorage kvm-args`) flatten;
//!   [`DeviceOptions`] is the validated result, which renders back to the
//!   exact arguments that produce it ([`DeviceOptions::to_args`]), so a
//!   command line printed for one program is parsed identically by another.
//! - [`listen`]: where a backend listens (socket path or an inherited
//!   socket) and who may connect (owner, group, mode).
//! - [`control`]: the control-socket protocol: `resize`, `status` and
//!   `config` requests, JSON replies, a client.
//! - [`rbd`]: serving a Ceph RBD image (`--rbd POOL/IMAGE`) instead of
//!   a file, and how to reach its cluster.
//! - [`paths`]: where a served volume's sockets and claim live under the
//!   run directory.
//! - [`systemd`]: socket activation and readiness notification.
#![warn(missing_docs)]

pub mod control;
mod error;
pub mod listen;
pub mod options;
pub mod paths;
pub mod rbd;
pub mod systemd;

pub use error::Error;
pub use listen::{ListenArgs, ListenOptions, SocketAccess};
pub use options::{CpuList, DeviceArgs, DeviceOptions, Engine, WriteCache};
pub use paths::RunDir;
pub use rbd::{RbdArgs, RbdSource};

/// Parsing as the programs do: both option groups flattened into one
/// command, so a clash between them fails here too.
#[cfg(test)]
pub(crate) mod testutil {
    use std::ffi::OsString;

    use clap::Parser;

    use crate::{DeviceArgs, DeviceOptions, ListenArgs, ListenOptions};

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        device: DeviceArgs,
        #[command(flatten)]
        listen: ListenArgs,
    }

    /// Parses and resolves `args`; errors as text.
    pub(crate) fn parse(args: &[OsString]) -> Result<(DeviceOptions, ListenOptions), String> {
        let argv = std::iter::once(OsString::from("prog")).chain(args.iter().cloned());
        let cmd = Cmd::try_parse_from(argv).map_err(|e| e.to_string())?;
        let device = cmd.device.resolve().map_err(|e| e.to_string())?;
        let listen = cmd.listen.resolve().map_err(|e| e.to_string())?;
        Ok((device, listen))
    }
}
