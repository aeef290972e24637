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

/// Every secret of a process, to scrub from whatever is printed: the reporter's last line of
/// defence for text that came from outside (Helm's, buildah's, git's and the cluster's messages,
/// a chart's manifests). Besides each value itself, its base64 forms are scrubbed (at each of the
/// three alignments it can have inside a longer base64 text, as `b64enc` of a file holding it
/// would print it).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    needles: Vec<Secret>,
}

impl Redactor {
    /// Adds `secret` (values shorter than 4 characters are ignored, as in [`Secret::scrub`]).
    pub fn add(&mut self, secret: &Secret) {
        use base64::Engine;
        let v = secret.expose();
        if v.len() < 4 || self.needles.iter().any(|n| n.expose() == v) {
            return;
        }
        self.needles.push(secret.clone());
        let b64 = base64::engine::general_purpose::STANDARD;
        for pad in 0..3usize {
            let mut bytes = vec![0u8; pad];
            bytes.extend_from_slice(v.as_bytes());
            let enc = b64.encode(&bytes);
            // Drop the characters that depend on the filler before and on what follows after.
            let start = if pad == 0 { 0 } else { (pad * 8).div_ceil(6) };
            let end_bits = bytes.len() * 8;
            let end = end_bits / 6;
            if end > start + 6 {
                self.needles.push(Secret::new(enc[start..end].to_string()));
            }
        }
    }

    /// `text` with every secret (and its base64 forms) replaced by the placeholder.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for n in &self.needles {
            if out.contains(n.expose()) {
                out = n.scrub(&out);
            }
        }
        out
    }

    /// Whether there is nothing to scrub.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
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

    #[test]
    fn redactor_scrubs_values_and_their_base64_inside_longer_text() {
        use base64::Engine;
        let mut r = Redactor::default();
        r.add(&Secret::new("hunter2-token"));
        r.add(&Secret::new("ab"));
        assert_eq!(r.scrub("pw=hunter2-token ab"), "pw=<redacted> ab");
        let b64 = base64::engine::general_purpose::STANDARD;
        for prefix in ["", "A", "AB", "PATH=/bin\0X=", "KEY="] {
            let env = format!("{prefix}hunter2-token\0HOME=/root");
            let enc = b64.encode(env.as_bytes());
            let out = r.scrub(&enc);
            assert!(out.contains(REDACTED), "{prefix:?}: {enc}");
        }
    }
}
