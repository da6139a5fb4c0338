//! What a name of a model, a version or an application may be, and how a message quotes a
//! value a client sent (never whole: a client could send a megabyte of it).
//!
//! A name is 1 to 128 bytes of ASCII letters, digits, `-`, `_` and `.`, and is not `.` or `..`:
//! it must fit a URL path segment (KServe REST), a directory name (the model repository), a
//! Prometheus label and a store key, and it must read the same everywhere.

use std::borrow::Cow;

/// The longest name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// The most of a client's value that a message quotes, in characters.
const QUOTED_CHARS: usize = 64;

/// Checks `name`; the error starts with `what` (the field) and says what is allowed.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what}: a name is required"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{what}: `{}` is {} bytes long; a name has at most {MAX_NAME_BYTES}",
            quoted(name),
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{what}: `{}` contains {c:?}; use letters, digits, `-`, `_` and `.`",
            quoted(name)
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{what}: `{name}` is not a name"));
    }
    Ok(())
}

/// `value` as a message quotes it: whole when short, else its first characters and its
/// length.
pub fn quoted(value: &str) -> Cow<'_, str> {
    match value.char_indices().nth(QUOTED_CHARS) {
        None => Cow::Borrowed(value),
        Some((cut, _)) => Cow::Owned(format!("{}… ({} bytes)", &value[..cut], value.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_plain_and_not_paths() {
        for good in ["digits-logreg", "m_1.2", "7", "2024-05-01"] {
            assert!(check_name("name", good).is_ok(), "{good}");
        }
        let bad = [
            ("", "a name is required"),
            ("a\0b", "contains '\\0'"),
            ("a b", "contains ' '"),
            ("..", "is not a name"),
            ("é", "contains 'é'"),
        ];
        for (name, expected) in bad {
            let err = check_name("name", name).unwrap_err();
            assert!(err.starts_with("name: ") && err.contains(expected), "{err}");
        }
        let long = "x".repeat(1 << 20);
        let err = check_name("name", &long).unwrap_err();
        assert!(
            err.len() < 200,
            "the message quotes, not echoes: {} bytes",
            err.len()
        );
        assert!(err.contains("1048576 bytes"), "{err}");
    }

    #[test]
    fn long_values_are_quoted_by_their_start() {
        assert_eq!(quoted("short"), "short");
        let long = "é".repeat(100);
        let quote = quoted(&long);
        assert!(quote.starts_with(&"é".repeat(64)) && quote.ends_with("(200 bytes)"));
    }
}
