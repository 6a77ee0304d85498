//! Validation of provider, volume and snapshot names.
//!
//! Names end up in file names (logs, locks) and in the provider path, so any
//! name that could escape a directory is rejected before anything runs.

use crate::error::{Error, Result};

/// Longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// The character that joins a provider and a volume name in file names
/// (locks, run-directory files and sockets, secret directories, systemd
/// instance names): a provider name cannot contain it.
pub const VOLUME_KEY_SEPARATOR: char = '.';

/// The one name of a volume in file names: `<provider>.<volume>`.
///
/// Unambiguous because a provider name (`[A-Za-z0-9_-]`) cannot contain
/// [`VOLUME_KEY_SEPARATOR`], so the first `.` of a key always ends the
/// provider name (a volume name may contain more): provider `a-b` with
/// volume `c` is `a-b.c`, provider `a` with volume `b-c` is `a.b-c`. It is
/// exactly as long as the old `-` join, so unix socket paths built from it
/// stay short, and it is a valid systemd instance name as it is. Names must
/// already be validated.
pub fn volume_key(provider: &str, volume: &str) -> String {
    format!("{provider}{VOLUME_KEY_SEPARATOR}{volume}")
}

/// Checks a provider name: `^[A-Za-z0-9_-]+$` (Ganeti's rule), at most
/// [`MAX_NAME_LEN`] bytes.
pub fn validate_provider_name(name: &str) -> Result<()> {
    let bad = |reason| Error::InvalidName {
        kind: "provider",
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad("it is longer than 200 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad("only letters, digits, '_' and '-' are allowed"));
    }
    Ok(())
}

/// Checks a volume name: letters, digits and `_ . + -`, not starting with
/// `.` or `-`, at most [`MAX_NAME_LEN`] bytes. Ganeti's `UUID.ext.disk0`
/// passes; `/`, `..`, NUL, spaces and the empty name do not.
pub fn validate_volume_name(name: &str) -> Result<()> {
    validate_volume_like("volume", name)
}

/// Checks a snapshot name with the volume rules.
pub fn validate_snapshot_name(name: &str) -> Result<()> {
    validate_volume_like("snapshot", name)
}

fn validate_volume_like(kind: &'static str, name: &str) -> Result<()> {
    let bad = |reason| Error::InvalidName {
        kind,
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad("it is longer than 200 bytes"));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(bad("it must not start with '.' or '-'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'))
    {
        return Err(bad(
            "only letters, digits and '_', '.', '+', '-' are allowed",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names() {
        for ok in ["loopfile", "rbd_2", "a-b", "X"] {
            validate_provider_name(ok).unwrap();
        }
        for bad in [
            "",
            "a/b",
            "..",
            ".",
            "a.b",
            "a b",
            "a\0b",
            "ü",
            &"a".repeat(201),
        ] {
            assert!(validate_provider_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn volume_keys_are_unambiguous() {
        assert_eq!(volume_key("a-b", "c"), "a-b.c");
        assert_eq!(volume_key("a", "b-c"), "a.b-c");
        assert_ne!(volume_key("a-b", "c"), volume_key("a", "b-c"));
        // The separator is refused in provider names, so the first one in a
        // key always ends the provider name, whatever the volume holds.
        let sep = VOLUME_KEY_SEPARATOR.to_string();
        assert!(validate_provider_name(&format!("a{sep}b")).is_err());
        let key = volume_key("p_1-x", "v.1+2-3.ext.disk0");
        assert_eq!(
            key.split_once(VOLUME_KEY_SEPARATOR),
            Some(("p_1-x", "v.1+2-3.ext.disk0"))
        );
    }

    #[test]
    fn volume_names() {
        for ok in [
            "0b1c2d3e-aaaa-bbbb-cccc-0123456789ab.ext.disk0",
            "vol1",
            "a+b",
            "a..b",
        ] {
            validate_volume_name(ok).unwrap();
        }
        for bad in [
            "", ".", "..", "../x", "a/b", "/abs", "-rf", ".hidden", "a\0b", "a b", "a\nb",
        ] {
            let err = validate_volume_name(bad).unwrap_err();
            assert!(err.to_string().contains("invalid volume name"), "{err}");
        }
    }
}
