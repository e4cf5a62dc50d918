//! Text a peer chose, made safe for a log line.

use std::fmt;
use std::fmt::Write as _;

/// Writes `text` for a log line: control characters, line separators and
/// other unprintable characters, quotes and backslashes escaped as in Rust
/// (`\n`, `\u{1b}`, `\u{2028}`, `\"`), and cut after
/// `max` characters with `…`, so that text a peer chose (a method name, an
/// error message) can neither start a line of its own nor make one huge.
#[derive(Clone, Copy)]
pub(crate) struct Escaped<'a> {
    text: &'a str,
    max: usize,
}

/// The most characters of a method name a log line shows.
pub(crate) const LOG_METHOD_CHARS: usize = 64;

impl<'a> Escaped<'a> {
    /// `text`, at most `max` characters of it.
    pub(crate) fn new(text: &'a str, max: usize) -> Self {
        Escaped { text, max }
    }

    /// A method name, at most [`LOG_METHOD_CHARS`] characters of it.
    pub(crate) fn method(text: &'a str) -> Self {
        Escaped::new(text, LOG_METHOD_CHARS)
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Plain text (the common case) is written in one piece.
        // What Rust's debug form leaves as it is: not control characters,
        // line or paragraph separators, format characters (a right-to-left
        // override) or anything else that is not printable; `'` stays too.
        let plain = |c: char| c == '\'' || c.escape_debug().len() == 1;
        let cut = self.text.char_indices().nth(self.max).map(|(at, _)| at);
        let shown = &self.text[..cut.unwrap_or(self.text.len())];
        if shown.chars().all(plain) {
            f.write_str(shown)?;
        } else {
            for c in shown.chars() {
                if plain(c) {
                    f.write_char(c)?;
                } else {
                    write!(f, "{}", c.escape_debug())?;
                }
            }
        }
        if cut.is_some() {
            f.write_char('…')?;
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_text_cannot_break_a_line_and_is_cut() {
        let shown = Escaped::method("evil\nINFO - forged\r\u{1b}[31m\"\\").to_string();
        assert_eq!(shown, "evil\\nINFO - forged\\r\\u{1b}[31m\\\"\\\\");
        assert!(!shown.contains('\n'));
        assert_eq!(Escaped::method("ping").to_string(), "ping");
        assert_eq!(format!("{:?}", Escaped::method("ping")), "\"ping\"");
        let long = "é".repeat(100);
        let shown = Escaped::method(&long).to_string();
        assert_eq!(shown, format!("{}…", "é".repeat(LOG_METHOD_CHARS)));
        // Unicode that is not a control character is shown as it is.
        assert_eq!(Escaped::method("añ✓").to_string(), "añ✓");
        // No character at all comes out as a control character.
        let every: String = (0..=0x10_FFFF).filter_map(char::from_u32).collect();
        let shown = Escaped::new(&every, usize::MAX).to_string();
        assert!(
            !shown
                .chars()
                .any(|c| c.is_control() || (c.is_whitespace() && c != ' ')),
        );
        assert_eq!(
            Escaped::method("a\u{2028}b\u{202e}c'").to_string(),
            "a\\u{2028}b\\u{202e}c'"
        );
    }
}
