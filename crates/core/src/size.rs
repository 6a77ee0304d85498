//! Parsing of human sizes into MiB, exactly as Ganeti's `ParseUnit`
//! (lib/utils/text.py) does for `gnt-instance add --disk size=` and
//! `gnt-instance grow-disk`.
//!
//! Ganeti matches `^([.\d]+)\s*([a-zA-Z]+)?$`, converts the number with
//! Python's `float()`, scales it by the unit (`m`/`mb`/`mib` = 1, `g`/`gb`/
//! `gib` = 1024, `t`/`tb`/`tib` = 1024², any case; no unit = MiB), rounds up
//! to a whole MiB and then up to the next multiple of 4 MiB. Everything
//! else, `K` and `B` included, is an error. We follow it step by step (an
//! `f64` is Python's float, and both parse decimal text correctly rounded),
//! with three deliberate differences, all on input Ganeti mishandles:
//! numbers Python's `float()` rejects (`1.2.3`, `.`) crash Ganeti and are a
//! clear error here; sizes above [`MAX_SIZE_MIB`] (whose byte count does not
//! fit in 64 bits) are refused; and the non-ASCII digits and spaces that
//! Python 3's `\d` and `\s` also match are refused.

use crate::error::{Error, Result};

/// The largest size accepted, in MiB: 16 EiB minus 4 MiB, the largest
/// multiple of 4 MiB whose size in bytes fits in a `u64`.
pub const MAX_SIZE_MIB: u64 = (u64::MAX >> 20) & !3;

/// Python's `\s` on ASCII text: space, `\t\n\v\f\r` and the separators
/// `\x1c`-`\x1f`.
fn is_python_space(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r' | '\x1c'..='\x1f'
    )
}

/// Parses a size into MiB as Ganeti's `ParseUnit` does: a number (fractions
/// allowed) with an optional unit `M`, `G` or `T` (also `MB`/`MiB`,
/// `GB`/`GiB`, `TB`/`TiB`, any case; none = MiB), rounded up to a whole MiB
/// and then up to a multiple of 4 MiB. `0` is 0; callers decide whether 0
/// is allowed.
pub fn parse_size_mib(text: &str) -> Result<u64> {
    let bad = |why: String| {
        Error::InvalidArgument(format!(
            "size {text:?} {why}; give a number (fractions allowed) with an optional unit M, G \
             or T (MB, MiB, GB, GiB, TB, TiB; any case; no unit = MiB), e.g. 512M or 1.5G; as \
             in Ganeti, sizes are rounded up to a multiple of 4 MiB"
        ))
    };
    // ^([.\d]+)
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let number = &text[..number_end];
    if number.is_empty() {
        return Err(bad(match text.chars().next() {
            None => "is empty".to_owned(),
            Some(c) if !c.is_ascii() => format!("starts with {c:?}, not an ASCII digit"),
            Some(_) => "does not start with a number".to_owned(),
        }));
    }
    // \s*
    let rest = &text[number_end..];
    let rest = rest.trim_start_matches(is_python_space);
    // ([a-zA-Z]+)?
    let unit_end = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    let (unit, tail) = rest.split_at(unit_end);
    // $ (which also matches before a final newline)
    if !(tail.is_empty() || tail == "\n") {
        let c = tail.chars().next().unwrap_or(' ');
        return Err(bad(format!("has {c:?} where the unit or the end belongs")));
    }
    // Python's float() on digits and dots: at most one dot, at least one digit.
    if number.matches('.').count() > 1 {
        return Err(bad(format!(
            "{number:?} is not a number (more than one '.')"
        )));
    }
    if !number.bytes().any(|b| b.is_ascii_digit()) {
        return Err(bad(format!("{number:?} is not a number (no digits)")));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| bad(format!("{number:?} is not a number")))?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1.0,
        "g" | "gb" | "gib" => 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0,
        _ => {
            return Err(bad(format!(
                "has an unknown unit {unit:?} (bytes and K are not accepted)"
            )));
        }
    };
    let mut value = value * scale;
    // `as` saturates, so compare in f64 first (MAX_SIZE_MIB is exact in f64).
    if !value.is_finite() || value > MAX_SIZE_MIB as f64 {
        return Err(bad(format!("is too large (at most {MAX_SIZE_MIB} MiB)")));
    }
    // Ganeti: "if int(value) < value: value += 1", then int(value).
    if value.trunc() < value {
        value += 1.0;
    }
    let mut mib = value.trunc() as u64;
    if !mib.is_multiple_of(4) {
        mib += 4 - mib % 4;
    }
    Ok(mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ganeti's own cases (test/py/legacy/ganeti.utils.text_unittest.py,
    /// TestParseUnit).
    const SCALES: [(&str, u64); 10] = [
        ("", 1),
        ("M", 1),
        ("G", 1024),
        ("T", 1024 * 1024),
        ("MB", 1),
        ("GB", 1024),
        ("TB", 1024 * 1024),
        ("MiB", 1),
        ("GiB", 1024),
        ("TiB", 1024 * 1024),
    ];

    fn p(s: &str) -> u64 {
        parse_size_mib(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn ganeti_rounding() {
        for (s, want) in [
            ("0", 0),
            ("1", 4),
            ("2", 4),
            ("3", 4),
            ("124", 124),
            ("125", 128),
            ("126", 128),
            ("127", 128),
            ("128", 128),
            ("129", 132),
            ("130", 132),
        ] {
            assert_eq!(p(s), want, "{s}");
        }
    }

    #[test]
    fn ganeti_floating() {
        for (s, want) in [
            ("0", 0),
            ("0.5", 4),
            ("1.75", 4),
            ("1.99", 4),
            ("2.00", 4),
            ("2.01", 4),
            ("3.99", 4),
            ("4.00", 4),
            ("4.01", 8),
            ("1.5G", 1536),
            ("1.8G", 1844),
            ("8.28T", 8_682_212),
        ] {
            assert_eq!(p(s), want, "{s}");
        }
    }

    #[test]
    fn ganeti_suffixes() {
        for sep in ["", " ", "   ", "\t", "\t "] {
            for (suffix, scale) in SCALES {
                for s in [
                    suffix.to_owned(),
                    suffix.to_lowercase(),
                    suffix.to_uppercase(),
                ] {
                    assert_eq!(p(&format!("1024{sep}{s}")), 1024 * scale, "{sep:?}{s}");
                }
            }
        }
    }

    #[test]
    fn ganeti_invalid_input() {
        for sep in ["-", "_", ",", "a"] {
            for (suffix, _) in SCALES {
                let s = format!("1{sep}{suffix}");
                assert!(parse_size_mib(&s).is_err(), "{s:?} accepted");
            }
        }
        for (suffix, _) in SCALES {
            let s = format!("1,3{suffix}");
            assert!(parse_size_mib(&s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn what_the_regex_allows_at_the_edges() {
        // `$` matches before a final newline; `\s*` may end the text.
        assert_eq!(p("64\n"), 64);
        assert_eq!(p("64M\n"), 64);
        assert_eq!(p("64 "), 64);
        assert_eq!(p("64 \n"), 64);
        assert_eq!(p("1."), 4);
        assert_eq!(p(".5"), 4);
        assert_eq!(p(".5g"), 512);
        assert_eq!(p("0.0001T"), 108); // 104.8576 -> 105 -> 108
        assert_eq!(p("10g"), 10240);
        assert_eq!(p("1tib"), 1024 * 1024);
        for bad in [
            " 64", "64M ", "64M\n\n", "+1", "-1", "1e3", "0x10", "64 M B",
        ] {
            assert!(parse_size_mib(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bytes_and_kilobytes_are_errors_not_mib() {
        for s in ["64B", "4096B", "4096b", "2048K", "2048KiB", "1k"] {
            let e = parse_size_mib(s).unwrap_err().to_string();
            assert!(e.contains("unknown unit"), "{s}: {e}");
            assert!(e.contains("4 MiB"), "{s}: {e}");
        }
    }

    #[test]
    fn inputs_that_crash_ganeti_are_clear_errors() {
        for (s, why) in [
            ("1.2.3", "more than one '.'"),
            (".", "no digits"),
            ("..", "more than one '.'"),
            ("..M", "more than one '.'"),
            ("", "is empty"),
            ("M", "does not start with a number"),
            ("٣", "not an ASCII digit"),
            ("99999999999999999999", "too large"),
            ("17592186044416", "too large"),
            ("16777216T", "too large"),
        ] {
            let e = parse_size_mib(s).unwrap_err().to_string();
            assert!(e.contains(why), "{s:?}: {e}");
        }
        // Digits beyond f64's range are "too large", not a panic.
        let huge = "9".repeat(400);
        assert!(
            parse_size_mib(&huge)
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
        assert_eq!(p("17592186044412"), MAX_SIZE_MIB);
        assert_eq!(p("17592186044411.5"), MAX_SIZE_MIB);
    }
}
