//! QEMU storage sources: a typed model, parsing of legacy filenames and
//! attach-script URIs, and rendering to `-drive`, `-blockdev` JSON and
//! vhost-user-blk arguments.
//!
//! The crate is pure: it parses and renders strings and never starts a
//! process. The one module that touches the filesystem is [`secret_files`],
//! which writes the secret files rendering asks for.
//!
//! ```
//! use extstorage_uri::{DiskOptions, Source, render_blockdev};
//! let src = Source::parse_legacy("rbd:pool/vol:id=admin").unwrap();
//! let args = render_blockdev(&src, &DiskOptions::default(), "disk0").unwrap();
//! assert!(args.json_nodes[0].contains(r#""driver":"rbd""#));
//! ```
#![warn(missing_docs)]

pub mod device;
pub mod error;
pub mod kvm;
pub mod libvirt;
pub mod model;
pub mod options;
pub mod parse;
pub mod render;
pub mod secret_files;
pub mod vhost;

pub use device::VirtioBlkDevice;
pub use error::{Result, UriError};
pub use kvm::{AccessMode, DiskAccess, KvmArgs, KvmDisk};
pub use model::{
    Curl, CurlScheme, Gluster, GlusterServer, Host, HostKeyCheck, Iscsi, IscsiTransport, Nbd,
    NbdServer, Nfs, Rbd, Secret, Server, Source, Ssh,
};
pub use options::{Aio, CacheMode, DetectZeroes, Discard, DiskOptions};
pub use parse::parse_attach_line;
pub use render::{
    BlockdevArgs, DriveArgs, JsonFilename, SecretFormat, SecretObject, escape_opt_value,
    render_blockdev, render_drive, render_json_filename, split_opts,
};
pub use vhost::{QemuVersion, SharedMemory, VhostUserBlkDisk};
