//! Text that came from someone else (a plugin's error, log line or finding; a child process's
//! stderr; a server's error body) on its way to a terminal or a log.
//!
//! Such text may carry terminal control sequences: ESC/CSI sequences that clear the screen or
//! move the cursor, OSC sequences that set the window title or write the clipboard (OSC 52), an
//! 8-bit CSI (U+009B), or a newline that forges a whole log line of prpod's own. [`escape`]
//! turns every control character into a visible escape (`\x1b`, `\n`, `\u{9b}`), and Unicode
//! bidirectional overrides (which can make text read differently from what it is) too, so what
//! the user sees is what the plugin sent, inert. [`JsonFormatter`] does the same inside JSON
//! strings, where serde_json already escapes C0 controls but leaves DEL, C1 and bidi controls raw.

use std::borrow::Cow;
use std::io;

/// Whether `c` must not reach a terminal raw: C0 controls (including newline and tab), DEL, C1
/// controls, and the Unicode bidi embedding/override/isolate controls.
pub fn is_dangerous(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

/// `text` with every dangerous character replaced by a visible escape; borrowed when there was
/// nothing to escape (the common case costs one scan).
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_dangerous) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    use std::fmt::Write;
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 && is_dangerous(c) => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if is_dangerous(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// A serde_json formatter (compact or pretty) that also escapes DEL, C1 controls and bidi
/// controls as `\uXXXX`, so no JSON prpod prints can drive a terminal, whatever a plugin put in
/// a string. The JSON value is unchanged: a parser reads the same string back.
pub struct JsonFormatter {
    pretty: Option<serde_json::ser::PrettyFormatter<'static>>,
}

impl JsonFormatter {
    /// Indented output (results for people and machines alike).
    pub fn pretty() -> JsonFormatter {
        JsonFormatter { pretty: Some(serde_json::ser::PrettyFormatter::new()) }
    }

    /// One line (errors, events).
    pub fn compact() -> JsonFormatter {
        JsonFormatter { pretty: None }
    }
}

/// Serializes `value` with a [`JsonFormatter`].
pub fn to_json_writer<W: io::Write, T: serde::Serialize + ?Sized>(
    writer: W,
    value: &T,
    pretty: bool,
) -> serde_json::Result<()> {
    let formatter = if pretty { JsonFormatter::pretty() } else { JsonFormatter::compact() };
    let mut ser = serde_json::Serializer::with_formatter(writer, formatter);
    value.serialize(&mut ser)
}

macro_rules! delegate {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $name<W: ?Sized + io::Write>(&mut self, writer: &mut W $(, $arg: $ty)*) -> io::Result<()> {
                match &mut self.pretty {
                    Some(p) => p.$name(writer $(, $arg)*),
                    None => serde_json::ser::CompactFormatter.$name(writer $(, $arg)*),
                }
            }
        )*
    };
}

impl serde_json::ser::Formatter for JsonFormatter {
    delegate! {
        begin_array();
        end_array();
        begin_array_value(first: bool);
        end_array_value();
        begin_object();
        end_object();
        begin_object_key(first: bool);
        end_object_key();
        begin_object_value();
        end_object_value();
    }

    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()> {
        // serde_json has already escaped C0 controls, quotes and backslashes; what reaches here
        // is the rest, written raw unless we step in.
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if is_dangerous(c) {
                writer.write_all(&fragment.as_bytes()[start..i])?;
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{:04x}", u)?;
                }
                start = i + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_sequences() {
        assert_eq!(escape("plain text"), "plain text");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(escape("\x1b[2J\x1b]0;title\x07"), "\\x1b[2J\\x1b]0;title\\x07");
        assert_eq!(escape("a\nWARN forged"), "a\\nWARN forged");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("x\u{202e}y\x7f"), "x\\u{202e}y\\x7f");
        assert_eq!(escape("naïve ✓"), "naïve ✓");
    }

    #[test]
    fn json_keeps_the_value_and_escapes_controls() {
        let value = serde_json::json!({ "m": "a\u{9b}b\u{202e}c\x1b\x7f ✓" });
        for pretty in [true, false] {
            let mut out = Vec::new();
            to_json_writer(&mut out, &value, pretty).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(!text.chars().any(|c| is_dangerous(c) && c != '\n' && c != ' '), "{text:?}");
            assert!(text.contains("\\u009b") && text.contains("\\u202e") && text.contains("\\u007f"), "{text}");
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back, value);
        }
    }
}
