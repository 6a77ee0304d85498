//! virtio-blk request parsing over arbitrary descriptor chains and guest memory layouts (see extstorage_fuzz::virtio).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    extstorage_fuzz::virtio::check(&extstorage_fuzz::virtio::Case::decode(data));
});
