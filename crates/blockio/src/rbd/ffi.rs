//! The librados/librbd calls the rbd engine needs, resolved at run time
//! with `dlopen`, so nothing links against Ceph at build time and a node
//! without its libraries runs every other engine.
//!
//! Signatures follow `rados/librados.h` and `rbd/librbd.h` (Ceph 15 and
//! later: `rbd_aio_write_zeroes` is the newest call used).

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::OnceLock;

/// `rados_t`.
pub(crate) type Rados = *mut c_void;
/// `rados_ioctx_t`.
pub(crate) type IoCtx = *mut c_void;
/// `rbd_image_t`.
pub(crate) type Image = *mut c_void;
/// `rbd_completion_t`.
pub(crate) type RbdCompletion = *mut c_void;
/// `rbd_callback_t`.
pub(crate) type CompletionCallback = extern "C" fn(RbdCompletion, *mut c_void);
/// `rbd_update_callback_t`.
pub(crate) type UpdateCallback = extern "C" fn(*mut c_void);

/// The library librbd is loaded from unless `EXTSTORAGE_LIBRBD` names another.
pub const LIBRBD: &str = "librbd.so.1";
/// The library librados is loaded from unless `EXTSTORAGE_LIBRADOS` names another.
pub const LIBRADOS: &str = "librados.so.2";

/// Declares [`Api`], one field per C function, and how to resolve each
/// from its library.
macro_rules! api {
    (($rados:ident, $rbd:ident) $($lib:ident . $name:ident : $ty:ty;)*) => {
        /// The function table: every pointer was resolved from the loaded
        /// libraries, which are never unloaded.
        #[derive(Debug)]
        pub(crate) struct Api {
            $(pub $name: $ty,)*
        }

        impl Api {
            fn resolve($rados: &Lib, $rbd: &Lib) -> Result<Api, LoadError> {
                Ok(Api {
                    $($name: {
                        let p = $lib.sym(stringify!($name))?;
                        // SAFETY: `p` is the address of the C function of
                        // that name, whose prototype in Ceph's headers is
                        // `$ty`; function and data pointers have the same
                        // size on Linux.
                        unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
                    },)*
                })
            }
        }
    };
}

api! {
    (rados, rbd)
    rados.rados_create2: unsafe extern "C" fn(*mut Rados, *const c_char, *const c_char, u64) -> c_int;
    rados.rados_conf_read_file: unsafe extern "C" fn(Rados, *const c_char) -> c_int;
    rados.rados_conf_set: unsafe extern "C" fn(Rados, *const c_char, *const c_char) -> c_int;
    rados.rados_connect: unsafe extern "C" fn(Rados) -> c_int;
    rados.rados_shutdown: unsafe extern "C" fn(Rados);
    rados.rados_ioctx_create: unsafe extern "C" fn(Rados, *const c_char, *mut IoCtx) -> c_int;
    rados.rados_ioctx_destroy: unsafe extern "C" fn(IoCtx);
    rados.rados_ioctx_set_namespace: unsafe extern "C" fn(IoCtx, *const c_char);
    rbd.rbd_open: unsafe extern "C" fn(IoCtx, *const c_char, *mut Image, *const c_char) -> c_int;
    rbd.rbd_open_read_only: unsafe extern "C" fn(IoCtx, *const c_char, *mut Image, *const c_char) -> c_int;
    rbd.rbd_close: unsafe extern "C" fn(Image) -> c_int;
    rbd.rbd_get_size: unsafe extern "C" fn(Image, *mut u64) -> c_int;
    rbd.rbd_aio_create_completion: unsafe extern "C" fn(*mut c_void, CompletionCallback, *mut RbdCompletion) -> c_int;
    rbd.rbd_aio_get_return_value: unsafe extern "C" fn(RbdCompletion) -> isize;
    rbd.rbd_aio_release: unsafe extern "C" fn(RbdCompletion);
    rbd.rbd_aio_readv: unsafe extern "C" fn(Image, *const libc::iovec, c_int, u64, RbdCompletion) -> c_int;
    rbd.rbd_aio_writev: unsafe extern "C" fn(Image, *const libc::iovec, c_int, u64, RbdCompletion) -> c_int;
    rbd.rbd_aio_flush: unsafe extern "C" fn(Image, RbdCompletion) -> c_int;
    rbd.rbd_aio_discard: unsafe extern "C" fn(Image, u64, u64, RbdCompletion) -> c_int;
    rbd.rbd_aio_write_zeroes: unsafe extern "C" fn(Image, u64, usize, RbdCompletion, c_int, c_int) -> c_int;
    rbd.rbd_update_watch: unsafe extern "C" fn(Image, *mut u64, UpdateCallback, *mut c_void) -> c_int;
    rbd.rbd_update_unwatch: unsafe extern "C" fn(Image, u64) -> c_int;
}

/// Why the Ceph libraries could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// A library could not be loaded.
    #[error(
        "cannot load {library} ({reason}): the rbd engine needs Ceph's client libraries; install the {package} package (apt install {package})"
    )]
    Library {
        /// The file name or path tried.
        library: String,
        /// The package that ships it.
        package: &'static str,
        /// dlopen's message.
        reason: String,
    },
    /// A library lacks a function the engine calls.
    #[error(
        "{library} has no {symbol} ({reason}): the rbd engine needs librbd from Ceph 15 (Octopus) or later; upgrade the librbd1 package"
    )]
    Symbol {
        /// The library searched.
        library: String,
        /// The missing function.
        symbol: &'static str,
        /// dlsym's message.
        reason: String,
    },
}

/// The last `dlerror()` text.
fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until
    // the next dl* call on this thread; it is copied at once.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        "unknown error".to_owned()
    } else {
        // SAFETY: non-null, NUL-terminated (above).
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// A loaded library (never closed: the function pointers stay valid for
/// the life of the process).
struct Lib {
    handle: *mut c_void,
    name: String,
}

impl Lib {
    fn open(env: &str, default: &str, package: &'static str) -> Result<Lib, LoadError> {
        let name = std::env::var(env).unwrap_or_else(|_| default.to_owned());
        let err = |reason: String| LoadError::Library {
            library: name.clone(),
            package,
            reason,
        };
        let c =
            CString::new(name.clone()).map_err(|_| err("the name contains a NUL byte".into()))?;
        // SAFETY: `c` is a valid C string; loading runs the library's
        // initialisers, which for librados/librbd only set up their globals.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(err(dlerror()));
        }
        Ok(Lib { handle, name })
    }

    fn sym(&self, symbol: &'static str) -> Result<*mut c_void, LoadError> {
        let c = CString::new(symbol).expect("symbol names have no NUL");
        // SAFETY: `handle` came from a successful dlopen and is never
        // closed; `c` is a valid C string.
        let p = unsafe { libc::dlsym(self.handle, c.as_ptr()) };
        if p.is_null() {
            return Err(LoadError::Symbol {
                library: self.name.clone(),
                symbol,
                reason: dlerror(),
            });
        }
        Ok(p)
    }
}

impl Api {
    fn load() -> Result<Api, LoadError> {
        let rados = Lib::open("EXTSTORAGE_LIBRADOS", LIBRADOS, "librados2")?;
        let rbd = Lib::open("EXTSTORAGE_LIBRBD", LIBRBD, "librbd1")?;
        Api::resolve(&rados, &rbd)
    }
}

/// The function table, loading the libraries on first use (once per process).
pub(crate) fn api() -> Result<&'static Api, LoadError> {
    static API: OnceLock<Result<Api, LoadError>> = OnceLock::new();
    API.get_or_init(Api::load).as_ref().map_err(Clone::clone)
}
