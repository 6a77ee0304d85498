//! Attach output parsing and URI lookup (see extstorage_fuzz::text::check_attach).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    extstorage_fuzz::text::check_attach(data);
});
