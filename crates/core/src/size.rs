//! Parsing of human sizes into MiB, as Ganeti's command line does.

use crate::error::{Error, Result};

/// Parses a size into MiB: a plain number is MiB (Ganeti's convention);
/// suffixes `M`, `G`, `T` (optionally followed by `iB` or `B`, any case) are
/// binary units. `K` is accepted when it is a whole number of MiB.
pub fn parse_size_mib(text: &str) -> Result<u64> {
    let bad = |why: &str| {
        Error::InvalidArgument(format!(
            "size {text:?} {why}; use a number of MiB or a number with M, G or T (e.g. 512M, 10G)"
        ))
    };
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(bad("does not start with a number"));
    }
    let number: u64 = t[..digits_end].parse().map_err(|_| bad("is too large"))?;
    let unit = t[digits_end..].trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let mib = match unit {
        "" | "m" => Some(number),
        "g" => number.checked_mul(1024),
        "t" => number.checked_mul(1024 * 1024),
        "k" => {
            if !number.is_multiple_of(1024) {
                return Err(bad("is not a whole number of MiB"));
            }
            Some(number / 1024)
        }
        _ => return Err(bad("has an unknown unit")),
    };
    mib.ok_or_else(|| bad("is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mib("64").unwrap(), 64);
        assert_eq!(parse_size_mib("512M").unwrap(), 512);
        assert_eq!(parse_size_mib("512MiB").unwrap(), 512);
        assert_eq!(parse_size_mib("10G").unwrap(), 10240);
        assert_eq!(parse_size_mib("10g").unwrap(), 10240);
        assert_eq!(parse_size_mib("1T").unwrap(), 1024 * 1024);
        assert_eq!(parse_size_mib("2048K").unwrap(), 2);
        for bad in [
            "",
            "M",
            "-1",
            "1.5G",
            "10X",
            "1000K",
            "99999999999999999999",
            "9999999999999999T",
        ] {
            assert!(parse_size_mib(bad).is_err(), "{bad:?} accepted");
        }
    }
}
