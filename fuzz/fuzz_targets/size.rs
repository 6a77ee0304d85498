//! Size parsing (see extstorage_fuzz::text::check_size).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    extstorage_fuzz::text::check_size(data);
});
