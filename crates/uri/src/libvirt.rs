//! libvirt domain XML for a vhost-user-blk disk: the `<disk
//! type='vhostuser'>` element that makes libvirt start QEMU with the same
//! `-chardev` / `vhost-user-blk-pci` pair [`crate::VhostUserBlkDisk`]
//! renders, plus the `<memoryBacking>` a vhost-user domain needs.
//!
//! Pure rendering: every value is checked (libvirt's schema and QEMU's
//! limits) and every attribute escaped, so a hostile socket path yields
//! an error or well-formed XML, never markup of its own.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Result, UriError};
use crate::model::{check_abs, path_str};

/// Longest unix socket path QEMU can connect to (`sun_path` holds 108
/// bytes with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The `<memoryBacking>` element a domain with a vhost-user disk needs
/// (libvirt refuses the disk otherwise: the backend maps guest RAM, so it
/// must be shared). Put it directly under `<domain>`.
pub const SHARED_MEMORY_BACKING: &str =
    "<memoryBacking>\n  <source type='memfd'/>\n  <access mode='shared'/>\n</memoryBacking>\n";

/// Escapes `text` for an XML attribute value in single or double quotes.
/// A tab is written as a character reference (a literal one would be
/// normalised to a space by every parser).
fn escape_attr(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
    out
}

/// Refuses characters that no XML 1.0 document may hold (control
/// characters other than tab, U+FFFE, U+FFFF) and line breaks, which
/// libvirt's schema does not accept in a path.
fn check_xml_text(field: &'static str, value: &str) -> Result<()> {
    let bad = value
        .chars()
        .find(|&c| (c < ' ' && c != '\t') || c == '\u{FFFE}' || c == '\u{FFFF}');
    match bad {
        None => Ok(()),
        Some(c) => Err(UriError::InvalidValue {
            field,
            value: value.escape_debug().to_string(),
            reason: format!(
                "it contains the character {:?}, which libvirt domain XML cannot hold; use a \
                 path without control characters or line breaks",
                c
            ),
        }),
    }
}

/// Checks a virtio disk target name: `vd` and one or more lowercase
/// letters (`vda`, `vdb`, ..., `vdaa`), as libvirt derives the disk index
/// from it.
fn check_target(dev: &str) -> Result<()> {
    let letters = dev.strip_prefix("vd").unwrap_or("");
    if letters.is_empty() || !letters.bytes().all(|b| b.is_ascii_lowercase()) || dev.len() > 16 {
        return Err(UriError::InvalidValue {
            field: "disk target",
            value: dev.escape_debug().to_string(),
            reason: "a virtio disk target is 'vd' and lowercase letters, e.g. vda or vdb".into(),
        });
    }
    Ok(())
}

/// The `<disk type='vhostuser' device='disk'>` element for a disk served on
/// the unix socket `socket` with `num_queues` request queues (state the
/// number the backend serves: QEMU refuses a backend with fewer queues than
/// it asks for), an optional maximum virtqueue size, reconnection to a
/// restarted backend after `reconnect_ms` milliseconds (rounded up to
/// libvirt's whole seconds; `None` or 0: no reconnection) and the guest
/// target `target_dev` (e.g. `vdb`, on the virtio bus).
///
/// The element is indented by two spaces per level and ends with a
/// newline; put it under `<devices>`, and add [`SHARED_MEMORY_BACKING`] to
/// the domain. libvirt has no read-only, serial or cache settings for
/// vhost-user disks: the backend decides those (`extstorage serve
/// --read-only`, `--serial`, `--write-cache`).
pub fn vhost_user_disk_xml(
    socket: &Path,
    num_queues: u16,
    queue_size: Option<u16>,
    reconnect_ms: Option<u32>,
    target_dev: &str,
) -> Result<String> {
    let path = path_str(socket)?;
    check_abs(&path)?;
    check_xml_text("socket path", &path)?;
    if path.len() > MAX_SOCKET_PATH || path.len() < 2 {
        return Err(UriError::InvalidValue {
            field: "socket path",
            value: path.clone(),
            reason: format!(
                "a unix socket path needs 2 to {MAX_SOCKET_PATH} bytes; this one has {}",
                path.len()
            ),
        });
    }
    if num_queues == 0 {
        return Err(UriError::InvalidValue {
            field: "num-queues",
            value: "0".into(),
            reason: "at least one queue; give the number the backend serves".into(),
        });
    }
    if let Some(q) = queue_size
        && (!q.is_power_of_two() || !(2..=1024).contains(&q))
    {
        return Err(UriError::InvalidValue {
            field: "queue-size",
            value: q.to_string(),
            reason: "a power of two from 2 to 1024".into(),
        });
    }
    check_target(target_dev)?;

    let mut xml = String::from("<disk type='vhostuser' device='disk'>\n");
    let _ = write!(
        xml,
        "  <driver name='qemu' type='raw' queues='{num_queues}'"
    );
    if let Some(q) = queue_size {
        let _ = write!(xml, " queue_size='{q}'");
    }
    xml.push_str("/>\n");
    let path = escape_attr(&path);
    match reconnect_ms.filter(|&ms| ms > 0) {
        Some(ms) => {
            let secs = ms.div_ceil(1000);
            let _ = write!(
                xml,
                "  <source type='unix' path='{path}'>\n    <reconnect enabled='yes' timeout='{secs}'/>\n  </source>\n"
            );
        }
        None => {
            let _ = writeln!(xml, "  <source type='unix' path='{path}'/>");
        }
    }
    let _ = writeln!(xml, "  <target dev='{target_dev}' bus='virtio'/>");
    xml.push_str("</disk>\n");
    Ok(xml)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn render(path: &str) -> Result<String> {
        vhost_user_disk_xml(Path::new(path), 2, Some(256), None, "vdb")
    }

    #[test]
    fn the_disk_element() {
        let xml = vhost_user_disk_xml(
            Path::new("/run/extstorage/vhost-user/loopfile.vol1.sock"),
            4,
            Some(256),
            Some(2500),
            "vdb",
        )
        .unwrap();
        assert_eq!(
            xml,
            "<disk type='vhostuser' device='disk'>\n  \
             <driver name='qemu' type='raw' queues='4' queue_size='256'/>\n  \
             <source type='unix' path='/run/extstorage/vhost-user/loopfile.vol1.sock'>\n    \
             <reconnect enabled='yes' timeout='3'/>\n  </source>\n  \
             <target dev='vdb' bus='virtio'/>\n</disk>\n"
        );
        let plain = vhost_user_disk_xml(Path::new("/s"), 1, None, Some(0), "vda").unwrap();
        assert!(plain.contains("<driver name='qemu' type='raw' queues='1'/>"));
        assert!(plain.contains("<source type='unix' path='/s'/>"));
        assert!(!plain.contains("reconnect"));
    }

    #[test]
    fn markup_in_paths_is_escaped() {
        let xml = render("/run/a'b\"c<d>&e\tf.sock").unwrap();
        assert!(
            xml.contains("path='/run/a&apos;b&quot;c&lt;d&gt;&amp;e&#9;f.sock'"),
            "{xml}"
        );
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let source = doc
            .descendants()
            .find(|n| n.has_tag_name("source"))
            .unwrap();
        assert_eq!(source.attribute("path"), Some("/run/a'b\"c<d>&e\tf.sock"));
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        for (path, needle) in [
            ("relative.sock", "absolute"),
            ("/run/a\nb", "line breaks"),
            ("/run/a\u{1}b", "control characters"),
            ("/run/a\u{FFFF}", "libvirt domain XML"),
            ("/run/a\0b", "NUL"),
        ] {
            let err = render(path).unwrap_err().to_string();
            assert!(err.contains(needle), "{path:?}: {err}");
        }
        let long = format!("/{}", "x".repeat(107));
        assert!(render(&long).unwrap_err().to_string().contains("107"));
        let p = Path::new("/s");
        let err = |r: Result<String>| r.unwrap_err().to_string();
        assert!(err(vhost_user_disk_xml(p, 0, None, None, "vda")).contains("at least one"));
        assert!(err(vhost_user_disk_xml(p, 1, Some(100), None, "vda")).contains("power of two"));
        assert!(err(vhost_user_disk_xml(p, 1, Some(2048), None, "vda")).contains("1024"));
        for bad in ["", "vd", "sda", "vd1", "vdA", "vda'/><x", "hda"] {
            assert!(
                err(vhost_user_disk_xml(p, 1, None, None, bad)).contains("'vd'"),
                "{bad:?}"
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let non_utf8 = Path::new(std::ffi::OsStr::from_bytes(b"/run/\xff.sock"));
            assert!(err(vhost_user_disk_xml(non_utf8, 1, None, None, "vda")).contains("UTF-8"));
        }
    }

    #[test]
    fn memory_backing_is_well_formed() {
        let doc = roxmltree::Document::parse(SHARED_MEMORY_BACKING).unwrap();
        let access = doc
            .descendants()
            .find(|n| n.has_tag_name("access"))
            .unwrap();
        assert_eq!(access.attribute("mode"), Some("shared"));
    }

    proptest! {
        /// Whatever the path, the result is an error or one well-formed
        /// `<disk>` element whose source path reads back unchanged.
        #[test]
        fn hostile_paths_stay_well_formed(
            tail in prop_oneof![
                // Markup, quotes, tabs, non-ASCII: all representable.
                3 => "[ -~\t\u{7f}-\u{a0}\u{e9}\u{fffd}\u{10000}]{0,120}",
                // With characters XML cannot hold.
                1 => "[ -~\t\n\r\u{0}-\u{1f}\u{fffe}\u{ffff}]{0,120}",
            ],
            queues in 1u16..=64,
            reconnect in proptest::option::of(0u32..100_000),
        ) {
            let path = format!("/{tail}");
            match vhost_user_disk_xml(Path::new(&path), queues, None, reconnect, "vdc") {
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(!msg.is_empty());
                }
                Ok(xml) => {
                    let doc = roxmltree::Document::parse(&xml)
                        .map_err(|e| TestCaseError::fail(format!("{e}: {xml}")))?;
                    let root = doc.root_element();
                    prop_assert_eq!(root.tag_name().name(), "disk");
                    prop_assert_eq!(root.attribute("type"), Some("vhostuser"));
                    let elements: Vec<&str> = root
                        .descendants()
                        .filter(|n| n.is_element())
                        .map(|n| n.tag_name().name())
                        .collect();
                    let expected: &[&str] = if reconnect.unwrap_or(0) > 0 {
                        &["disk", "driver", "source", "reconnect", "target"]
                    } else {
                        &["disk", "driver", "source", "target"]
                    };
                    prop_assert_eq!(elements, expected);
                    let source = root.descendants().find(|n| n.has_tag_name("source")).unwrap();
                    prop_assert_eq!(source.attribute("path"), Some(path.as_str()));
                    let queues_text = queues.to_string();
                    let driver = root.descendants().find(|n| n.has_tag_name("driver")).unwrap();
                    prop_assert_eq!(driver.attribute("queues"), Some(queues_text.as_str()));
                }
            }
        }
    }
}
