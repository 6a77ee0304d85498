//! The text parsers of extstorage-core: attach output, `parameters.list`
//! and sizes. Each check states the contract of the function (its doc
//! comment and docs/extstorage.md), not its implementation.

use extstorage_core::provider::parse_parameters;
use extstorage_core::volume::{find_uri, parse_attach_output};
use extstorage_core::{Parameter, parse_size_mib};

/// Whitespace as `str::trim` understands it.
fn trimmed(s: &str) -> bool {
    s.trim() == s
}

/// What an attach-output input ended as, for the seed tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// Refused (not UTF-8, or neither a device nor a URI).
    Refused,
    /// A device and/or URIs.
    Parsed {
        /// A device path was found.
        dev: bool,
        /// How many URIs.
        uris: usize,
    },
}

/// `parse_attach_output` and `find_uri` on any bytes. The first byte picks
/// the hypervisor name looked up, the rest is the script's stdout.
pub fn check_attach(data: &[u8]) -> Attach {
    let (pick, stdout) = data.split_first().map_or((0, data), |(p, r)| (*p, r));
    let result = parse_attach_output(stdout);
    let Ok(text) = std::str::from_utf8(stdout) else {
        // Attach output is text: bytes that are not UTF-8 are refused.
        let e = result.expect_err("non-UTF-8 output is refused");
        assert!(!e.is_empty());
        return Attach::Refused;
    };
    // The contract: line 1 is the device or empty, every further non-blank
    // line a URI; lines end at "\n", "\r\n" or a lone "\r" (Ganeti 3 reads
    // script output with Python's universal newlines), and surrounding
    // whitespace does not count.
    let mut lines = text.split(['\n', '\r']).map(str::trim);
    let dev = lines.next().unwrap_or("");
    let uris: Vec<String> = lines.filter(|l| !l.is_empty()).map(str::to_owned).collect();
    let want = ((!dev.is_empty()).then(|| dev.to_owned()), uris);
    let got = match result {
        Err(e) => {
            assert!(!e.is_empty());
            assert!(
                want.0.is_none() && want.1.is_empty(),
                "{text:?} refused ({e}) but has device and URIs {want:?}"
            );
            return Attach::Refused;
        }
        Ok((dev, uris)) => (dev.map(|p| p.to_str().expect("UTF-8").to_owned()), uris),
    };
    assert_eq!(got, want, "device and URIs of {text:?}");
    let (got_dev, got_uris) = got;
    for u in got_uris.iter().chain(&got_dev) {
        assert!(!u.is_empty() && trimmed(u) && !u.contains(['\n', '\r']));
    }

    // find_uri: the first URI whose prefix before the first ':' is the
    // hypervisor (any case), without that prefix.
    let from_input: Vec<&str> = got_uris
        .iter()
        .filter_map(|u| u.split(':').next())
        .collect();
    let mut names = vec!["kvm", "KVM", "xen", "", "k"];
    names.extend(from_input);
    let hv = names[usize::from(pick) % names.len()];
    let want = got_uris.iter().find_map(|u| {
        let i = u.find(':')?;
        u[..i].eq_ignore_ascii_case(hv).then(|| &u[i + 1..])
    });
    assert_eq!(find_uri(&got_uris, hv), want, "find_uri({hv:?})");
    // Each URI line is parsed by the uri crate for kvm-args; no panic either.
    for u in &got_uris {
        let _ = extstorage_uri::parse_attach_line(u);
    }
    Attach::Parsed {
        dev: got_dev.is_some(),
        uris: got_uris.len(),
    }
}

/// `parse_parameters` on any text. Returns the parameter count (`None` when
/// refused).
pub fn check_parameters(data: &[u8]) -> Option<usize> {
    let text = String::from_utf8_lossy(data);
    let params = match parse_parameters(&text) {
        Ok(p) => p,
        Err(e) => {
            assert!(!e.trim().is_empty(), "an empty error for {text:?}");
            return None;
        }
    };
    // One parameter per line that is neither blank nor a comment.
    let listed: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        params.len(),
        listed.len(),
        "one parameter per line of {text:?}"
    );
    for (p, line) in params.iter().zip(&listed) {
        assert!(!p.name.is_empty(), "empty name from {line:?}");
        assert!(
            !p.name.contains([' ', '\t', '\n', '=']) && !p.name.starts_with('#'),
            "name {:?}",
            p.name
        );
        assert!(
            line.starts_with(p.name.as_str()),
            "{:?} is not from {line:?}",
            p.name
        );
        assert!(trimmed(&p.description), "description {:?}", p.description);
        assert!(line.ends_with(p.description.as_str()));
    }
    for (i, p) in params.iter().enumerate() {
        assert!(
            !params[..i].iter().any(|q| q.name == p.name),
            "{:?} listed twice",
            p.name
        );
    }
    // Written back one per line, the list reads back the same.
    let rendered: String = params
        .iter()
        .map(|p| format!("{}\t{}\n", p.name, p.description))
        .collect();
    let again = parse_parameters(&rendered)
        .unwrap_or_else(|e| panic!("{rendered:?} (from {text:?}) is refused: {e}"));
    let same = |a: &[Parameter], b: &[Parameter]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.name == y.name && x.description == y.description)
    };
    assert!(
        same(&params, &again),
        "{text:?} -> {rendered:?} reads back differently"
    );
    Some(params.len())
}

/// `parse_size_mib` on any text: never panics, errors say what to write,
/// a size is a multiple of 4 MiB, and the units relate as units do. Returns the size (`None` when refused).
pub fn check_size(data: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(data).ok()?;
    let got = parse_size_mib(text);
    match &got {
        Ok(_) => {
            // A size is a number first.
            let t = text.trim();
            assert!(
                t.starts_with(|c: char| c.is_ascii_digit() || c == '.'),
                "{text:?} accepted"
            );
            assert!(
                t.contains(|c: char| c.is_ascii_digit()),
                "{text:?} accepted"
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    // Units are case-insensitive.
    let ok = |s: &str| parse_size_mib(s).ok();
    let v = got.ok();
    if let Some(m) = v {
        assert!(
            m.is_multiple_of(4),
            "{text:?} = {m} MiB, not a multiple of 4"
        );
    }
    assert_eq!(ok(&text.to_ascii_uppercase()), v, "{text:?} upper-cased");
    assert_eq!(ok(&text.to_ascii_lowercase()), v, "{text:?} lower-cased");
    // A bare number is MiB; G and T are 1024 and 1024² times more (up to
    // rounding of fractions, and overflow).
    let t = text.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let bare = ok(t);
        assert_eq!(ok(&format!("{t}M")), bare, "{t:?} vs {t}M");
        assert_eq!(ok(&format!("{t}MiB")), bare, "{t:?} vs {t}MiB");
        assert_eq!(ok(&format!("{t}mb")), bare, "{t:?} vs {t}mb");
        if let Some(m) = bare {
            // Rounded up to whole MiB, then to a multiple of 4 MiB, as
            // Ganeti's ParseUnit does.
            assert!(m.is_multiple_of(4), "{t:?} = {m} MiB");
            for (unit, factor) in [("G", 1u64 << 10), ("T", 1 << 20)] {
                if let Some(g) = ok(&format!("{t}{unit}")) {
                    assert!(
                        g <= m.saturating_mul(factor)
                            && g >= m.saturating_sub(4).saturating_mul(factor),
                        "{t}{unit} = {g} MiB but {t} = {m} MiB"
                    );
                }
            }
        }
    }
    v
}

/// Seeds: (target, name, input).
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let t = |target, name, text: &str| (target, name, text.as_bytes().to_vec());
    vec![
        t("attach_output", "device", "\0/dev/loop3\n"),
        t("attach_output", "device-no-newline", "\0/dev/loop3"),
        t(
            "attach_output",
            "device-crlf",
            "\0/dev/loop3\r\nkvm:rbd:pool/img\r\n",
        ),
        t(
            "attach_output",
            "uris-only",
            "\x01\nkvm:nbd+unix:///vol?socket=/run/v.sock\nxen:phy:/dev/x\n",
        ),
        t(
            "attach_output",
            "blank-and-spaces",
            "\x02  /dev/sdb  \n\n   \n\tKVM:rbd:p/i:key=QUJDRA==\n\n",
        ),
        t("attach_output", "nothing", "\x03\n\n \n"),
        t("attach_output", "lone-cr", "\0/dev/loop3\rkvm:rbd:p/i\r"),
        t("attach_output", "empty", ""),
        t("attach_output", "colon-only", "\x05\n:\nkvm\nkvm:\n"),
        ("attach_output", "not-utf8", b"\x00/dev/\xff\xfe\n".to_vec()),
        t(
            "parameters_list",
            "two",
            "dir Directory of the volume files\nsize_hint\tA hint\n",
        ),
        t(
            "parameters_list",
            "comments-blank",
            "# comment\n\n  \nname   description with  spaces  \n",
        ),
        t("parameters_list", "crlf", "a b\r\nc d\r\n"),
        t("parameters_list", "duplicate", "a x\na y\n"),
        t("parameters_list", "equals", "a=b c\n"),
        t("parameters_list", "case", "dir x\nDIR y\n"),
        t("parameters_list", "unicode", "é日 🦀\n\u{a0}x y\n"),
        t("parameters_list", "empty", ""),
        t("size", "plain", "64"),
        t("size", "mib", "512MiB"),
        t("size", "g", "10G"),
        t("size", "t-lower", "1t"),
        t("size", "fraction", "1.5G"),
        t("size", "space", " 4 M "),
        t("size", "bytes", "4096B"),
        t("size", "k", "2048K"),
        t("size", "negative", "-1"),
        t("size", "huge", "99999999999999999999"),
        t("size", "huge-t", "9999999999999999T"),
        t("size", "dots", "1..2"),
        t("size", "empty", ""),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_hold() {
        for (target, name, data) in seeds() {
            match target {
                "attach_output" => {
                    check_attach(&data);
                }
                "parameters_list" => {
                    check_parameters(&data);
                }
                "size" => {
                    check_size(&data);
                }
                other => panic!("{other} for {name}"),
            }
        }
        assert_eq!(
            check_attach(b"\0/dev/loop3\r\nkvm:rbd:pool/img\r\n"),
            Attach::Parsed { dev: true, uris: 1 }
        );
        assert_eq!(check_attach(b"\x03\n\n \n"), Attach::Refused);
        assert_eq!(check_parameters(b"a b\na c\n"), None);
        assert_eq!(check_parameters(b"# x\n\na b\r\n"), Some(1));
        assert_eq!(check_size(b"10G"), Some(10240));
        assert_eq!(check_size(b"5"), Some(8));
        assert_eq!(check_size(b"1.5G"), Some(1536));
        assert_eq!(check_size(b"4096B"), None);
        assert_eq!(
            check_attach(b"\0/dev/loop3\rkvm:rbd:p/i\r"),
            Attach::Parsed { dev: true, uris: 1 }
        );
    }
}
