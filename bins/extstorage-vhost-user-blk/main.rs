//! `extstorage-vhost-user-blk`: serve a volume to QEMU over vhost-user-blk.
fn main() {
    println!("extstorage-vhost-user-blk: not yet implemented");
}
