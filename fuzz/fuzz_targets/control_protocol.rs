//! The control-socket protocol: request and reply lines (see extstorage_fuzz::control).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    extstorage_fuzz::control::check(data);
});
