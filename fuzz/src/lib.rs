//! The properties the fuzz targets check, one module per parser, each with
//! its seed inputs. The targets in `fuzz_targets/` are one-line wrappers;
//! `cargo test` here runs every seed through the same checks.
//!
//! | target | module |
//! |---|---|
//! | `virtio_blk_request` | [`virtio`] |
//! | `attach_output`, `parameters_list`, `size` | [`text`] |
//! | `uri_roundtrip` | [`uri`] |
//! | `control_protocol` | [`control`] |
//! | `vhost_user_protocol` | [`vhost_user`] |

pub mod bytes;
pub mod control;
pub mod text;
pub mod uri;
pub mod vhost_user;
pub mod virtio;

/// Every seed input, as (target, file name, bytes).
pub fn all_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, case, _) in virtio::seeds() {
        out.push(("virtio_blk_request", name.to_string(), case.encode()));
    }
    for (name, data, _) in uri::seeds() {
        out.push(("uri_roundtrip", name.to_string(), data));
    }
    for (target, name, data) in text::seeds() {
        out.push((target, name.to_string(), data));
    }
    for (name, data) in control::seeds() {
        out.push(("control_protocol", name.to_string(), data));
    }
    for (name, data) in vhost_user::seeds() {
        out.push(("vhost_user_protocol", name.to_string(), data));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The committed seed corpus (`seeds/TARGET/NAME`) is what `all_seeds`
    /// builds. `EXTSTORAGE_WRITE_SEEDS=1 cargo test` rewrites it.
    #[test]
    fn committed_seeds_are_current() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
        let write = std::env::var_os("EXTSTORAGE_WRITE_SEEDS").is_some();
        for (target, name, data) in super::all_seeds() {
            let path = root.join(target).join(&name);
            if write {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &data).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run EXTSTORAGE_WRITE_SEEDS=1 cargo test",
                    path.display()
                )
            });
            assert_eq!(committed, data, "{} is stale", path.display());
        }
    }
}
