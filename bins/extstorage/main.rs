//! `extstorage`: run Ganeti ExtStorage provider scripts from the command line.
fn main() {
    println!("extstorage: not yet implemented");
}
