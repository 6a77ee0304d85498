//! Legacy URI parsing and rendering round trips (see extstorage_fuzz::uri).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    extstorage_fuzz::uri::check(data);
});
