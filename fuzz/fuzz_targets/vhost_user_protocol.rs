//! The vhost-user protocol against the real server (see extstorage_fuzz::vhost_user).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    extstorage_fuzz::vhost_user::check(data);
});
