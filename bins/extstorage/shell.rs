//! Quoting for text a user pastes into a shell: POSIX single quotes, so
//! nothing in a value (`$(..)`, backticks, spaces) is interpreted.

use std::ffi::OsStr;

/// One word: unchanged when it holds only characters no shell treats
/// specially, otherwise single-quoted (a `'` becomes `'\''`).
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._/:=,+@%".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A command line, each word quoted, joined with spaces.
pub fn quote_args<S: AsRef<OsStr>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| quote(&w.as_ref().to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("/dev/loop0"), "/dev/loop0");
        assert_eq!(quote("if=/dev/x"), "if=/dev/x");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("$(touch x)"), "'$(touch x)'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote_args(&["dd", "of=/a b"]), "dd 'of=/a b'");
    }

    #[test]
    fn a_shell_gets_back_the_words() {
        let words = ["x", "$(echo pwned)", "`id`", "a'b\"c", "new\nline", "*", ""];
        let line = quote_args(&words);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("for w in {line}; do printf '%s\\0' \"$w\"; done"))
            .output()
            .unwrap();
        let got: Vec<&[u8]> = out.stdout.split(|&b| b == 0).collect();
        let want: Vec<&[u8]> = words
            .iter()
            .map(|w| w.as_bytes())
            .chain([&b""[..]])
            .collect();
        assert_eq!(got, want);
    }
}
