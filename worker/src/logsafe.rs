//! Escaping for text that came from clients or servers before it reaches a log line.
//!
//! A user name, database name, query or error text can hold a newline, a carriage return or a
//! terminal escape. Written as is, it forges log lines ("evil\n2025-01-01 ... LOG admin login")
//! or rewrites what a terminal shows, before anyone has authenticated. [`Escaped`] writes such
//! characters as visible escapes, and the backslash itself as `\\`, so every escaped value maps
//! back to exactly one original. [`controls`] is the logger's last line of defence: it escapes
//! control characters in a whole formatted record, leaving backslashes alone so that values
//! already escaped at the call site are not escaped twice.

use std::borrow::Cow;
use std::fmt;

/// Displays a client-supplied string with control characters, line and paragraph
/// separators, bidirectional overrides and backslashes escaped (`\n`, `\r`, `\t`, `\\`,
/// `\xNN`, `\u{NNNN}`). Printable text, UTF-8 included, passes through unchanged.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0, true)
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `s` with control characters escaped as [`Escaped`] does, but backslashes kept: for a
/// whole log record whose client-supplied parts were already escaped. Borrows when there
/// is nothing to escape, which is every ordinary line.
pub fn controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    let _ = write_escaped(&mut out, s, false);
    Cow::Owned(out)
}

/// Characters a log line must not carry raw: C0/C1 controls and DEL, the Unicode line and
/// paragraph separators (some viewers break lines there), and the bidirectional controls
/// that can make a terminal show text in another order than it was written.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn write_escaped(out: &mut impl fmt::Write, s: &str, backslash: bool) -> fmt::Result {
    let mut clean_from = 0;
    for (i, c) in s.char_indices() {
        let escape: Option<&str> = match c {
            '\\' if backslash => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            c if needs_escape(c) => None,
            _ => continue,
        };
        out.write_str(&s[clean_from..i])?;
        match escape {
            Some(e) => out.write_str(e)?,
            None if (c as u32) < 0x100 => write!(out, "\\x{:02x}", c as u32)?,
            None => write!(out, "\\u{{{:04x}}}", c as u32)?,
        }
        clean_from = i + c.len_utf8();
    }
    out.write_str(&s[clean_from..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_backslashes() {
        let cases = [
            ("plain name", "plain name"),
            ("evil\nFAKE LINE", "evil\\nFAKE LINE"),
            ("x\ry", "x\\ry"),
            ("a\tb", "a\\tb"),
            ("back\\slash", "back\\\\slash"),
            ("\\n", "\\\\n"),
            ("\0\x07\x1b[31m\x7f", "\\x00\\x07\\x1b[31m\\x7f"),
            ("c1 \u{85} \u{9b}", "c1 \\x85 \\x9b"),
            ("sep \u{2028}\u{2029}", "sep \\u{2028}\\u{2029}"),
            ("bidi \u{202e}gnp.exe", "bidi \\u{202e}gnp.exe"),
            ("héllo wörld ✓", "héllo wörld ✓"),
            ("", ""),
        ];
        for (raw, want) in cases {
            assert_eq!(Escaped(raw).to_string(), want, "{raw:?}");
        }
    }

    #[test]
    fn escaped_text_has_no_line_breaks_and_maps_back_uniquely() {
        // Two different inputs never escape to the same text: "\\n" vs a newline.
        assert_ne!(Escaped("a\\nb").to_string(), Escaped("a\nb").to_string());
        for s in ["\n\r\u{b}\u{c}\u{85}\u{2028}", "x\r\ny", "\\\\\n"] {
            let e = Escaped(s).to_string();
            assert!(!e.chars().any(needs_escape), "{e:?}");
        }
    }

    #[test]
    fn controls_keeps_backslashes_and_borrows_clean_lines() {
        assert!(matches!(
            controls("C-1: app/app@1.2.3.4:5"),
            Cow::Borrowed(_)
        ));
        assert_eq!(controls("a\\nb"), "a\\nb");
        assert_eq!(controls("a\nFAKE"), "a\\nFAKE");
        // What a call site escaped stays as it is.
        let once = Escaped("u\ns").to_string();
        assert_eq!(controls(&once), once);
    }
}
