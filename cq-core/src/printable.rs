//! Text from the network made safe to print: a terminal must never receive a peer's escape
//! sequences, and a log line must never be split by a peer's newline.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every control character (C0, DEL, C1) written as an escape: `\n`, `\t`,
/// `\r`, `\\` for a backslash before one, `\x1b`, `\u{9b}`. Text without control characters
/// is returned as it is.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Makes a job's output safe for a terminal, chunk by chunk: every control character but
/// newline and tab is written as an escape (`\x1b`, `\r`, `\u{9b}`), so that output cannot
/// move the cursor, rewrite what is on screen, set the window title or answer back. Other
/// bytes pass as they are (output need not be UTF-8).
#[derive(Debug, Default)]
pub struct TerminalEscaper {
    /// The last chunk ended with 0xC2, which may begin an encoded C1 control.
    pending_c2: bool,
}

impl TerminalEscaper {
    /// A new escaper.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `chunk`, made safe, to `out`.
    pub fn escape(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        use std::io::Write as _;
        for &byte in chunk {
            if std::mem::take(&mut self.pending_c2) {
                if (0x80..=0x9f).contains(&byte) {
                    let _ = write!(out, "\\u{{{byte:x}}}");
                    continue;
                }
                out.push(0xc2);
            }
            match byte {
                b'\n' | b'\t' => out.push(byte),
                b'\r' => out.extend_from_slice(b"\\r"),
                0..=0x1f | 0x7f => {
                    let _ = write!(out, "\\x{byte:02x}");
                }
                0xc2 => self.pending_c2 = true,
                _ => out.push(byte),
            }
        }
    }

    /// Appends what is still held back (a final 0xC2) to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_c2) {
            out.push(0xc2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_for_a_terminal_keeps_lines_and_text_and_escapes_controls_across_chunks() {
        let mut escaper = TerminalEscaper::new();
        let mut out = Vec::new();
        let csi = "\u{9b}".as_bytes();
        escaper.escape(b"ok\tdone\n\x1b]0;owned\x07\rhidden ", &mut out);
        escaper.escape(&csi[..1], &mut out);
        escaper.escape(&csi[1..], &mut out);
        escaper.escape("2J caf\u{e9} \u{a0}".as_bytes(), &mut out);
        escaper.escape(b"\xc2", &mut out);
        escaper.finish(&mut out);
        assert_eq!(
            out,
            b"ok\tdone\n\\x1b]0;owned\\x07\\rhidden \\u{9b}2J caf\xc3\xa9 \xc2\xa0\xc2".to_vec()
        );
    }

    #[test]
    fn control_characters_are_escaped_and_plain_text_kept() {
        assert!(matches!(printable("plain text, ünïcode"), Cow::Borrowed(_)));
        assert_eq!(printable("a\nb\tc"), "a\\nb\\tc");
        assert_eq!(printable("\x1b[2J\x07"), "\\x1b[2J\\x07");
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(printable("\x7f"), "\\x7f");
    }
}
