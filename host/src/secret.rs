//! The one type that holds a credential (a token, a password, a private key).
//!
//! Its `Debug` and `Display` print a placeholder, so a secret that reaches a log line, an error
//! message, a panic or a `{:?}` of a config struct shows `<redacted>` instead of its value. Only
//! code that hands the value to the system that needs it (a client writing a credential-helper
//! answer, an HTTP `Authorization` header, a file created 0600) calls [`Secret::expose`]; grep
//! for it to audit every place a secret leaves prpod.

use std::fmt;

/// A credential whose value is never printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

/// What `Debug` and `Display` print instead of a secret's value.
pub const REDACTED: &str = "<redacted>";

impl Secret {
    /// Wraps `value`. Trailing newlines (from a file or stdin) are removed: no registry or forge
    /// issues tokens that end in one, and `echo $TOKEN > file` always adds one.
    pub fn new(value: impl Into<String>) -> Secret {
        let mut v = value.into();
        while v.ends_with('\n') || v.ends_with('\r') {
            v.pop();
        }
        Secret(v)
    }

    /// The value, for the one client call that must send it somewhere. Never format it into a
    /// message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty (an unset variable, an empty file).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces every occurrence of this secret in `text` with the placeholder: the last line of
    /// defence for text that came from outside (a child process's stderr, a server's error body)
    /// and may echo a credential back.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.len() < 4 {
            // Replacing a one-letter "secret" would mangle every message; such a value is not a
            // credential anything accepts anyway.
            return text.to_string();
        }
        text.replace(&self.0, REDACTED)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(v: String) -> Secret {
        Secret::new(v)
    }
}

impl From<&str> for Secret {
    fn from(v: &str) -> Secret {
        Secret::new(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("ghp_supersecret\n");
        assert_eq!(format!("{s} {s:?} {:?}", Some(&s)), "<redacted> <redacted> Some(<redacted>)");
        assert_eq!(s.expose(), "ghp_supersecret");
        assert_eq!(s.scrub("fatal: ghp_supersecret rejected"), "fatal: <redacted> rejected");
    }
}
