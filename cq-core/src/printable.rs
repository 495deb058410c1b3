//! Text from the network made safe to print: a terminal must never receive a peer's escape
//! sequences, and a log line must never be split by a peer's newline.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a terminal or a log as it is: control characters (C0, DEL,
/// C1), and the invisible formatting characters that reorder or hide text (bidirectional
/// overrides and isolates, zero-width characters, line and paragraph separators, tags).
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{ad}'
                | '\u{600}'..='\u{605}'
                | '\u{61c}'
                | '\u{6dd}'
                | '\u{70f}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{e0001}'
                | '\u{e0020}'..='\u{e007f}'
        )
}

/// `text` with every unsafe character ([`is_unsafe`]) written as an escape (`\n`, `\t`,
/// `\r`, `\x1b`, `\u{202e}`), and every backslash doubled, so that an escape in the output
/// always means an escape. Text without either is returned as it is.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c == '\\' || is_unsafe(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        c if (c as u32) < 0x80 && c.is_control() => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if is_unsafe(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// Makes a job's output safe for a terminal, chunk by chunk: newlines and tabs pass, every
/// other unsafe character ([`is_unsafe`]) is written as an escape, and so is every byte
/// that is not part of valid UTF-8 (`\xNN`), so that output cannot move the cursor,
/// rewrite what is on screen, set the window title or answer back, even on a terminal that
/// reads 8-bit controls. Backslashes pass as they are: this is output, not a quotation.
#[derive(Debug, Default)]
pub struct TerminalEscaper {
    /// The start of a UTF-8 sequence the last chunk ended in.
    pending: Vec<u8>,
}

impl TerminalEscaper {
    /// A new escaper.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `chunk`, made safe, to `out`.
    pub fn escape(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let joined;
        let mut rest: &[u8] = if self.pending.is_empty() {
            chunk
        } else {
            let mut bytes = std::mem::take(&mut self.pending);
            bytes.extend_from_slice(chunk);
            joined = bytes;
            &joined
        };
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    push_text(text, out);
                    return;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // SAFETY-free: `valid_up_to` bytes are valid UTF-8 by the error's contract.
                    push_text(std::str::from_utf8(valid).unwrap_or_default(), out);
                    match e.error_len() {
                        Some(bad) => {
                            for byte in &after[..bad] {
                                push_byte_escape(*byte, out);
                            }
                            rest = &after[bad..];
                        }
                        // An incomplete sequence at the end: it may go on in the next chunk.
                        None => {
                            self.pending = after.to_vec();
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Appends what is still held back (an incomplete sequence at the very end) to `out`,
    /// escaped.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        for byte in std::mem::take(&mut self.pending) {
            push_byte_escape(byte, out);
        }
    }
}

fn push_text(text: &str, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4];
    for c in text.chars() {
        match c {
            '\n' | '\t' | '\\' => out.push(c as u8),
            c if is_unsafe(c) => {
                let mut escaped = String::new();
                push_escaped(&mut escaped, c);
                out.extend_from_slice(escaped.as_bytes());
            }
            c => out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
        }
    }
}

fn push_byte_escape(byte: u8, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let _ = write!(out, "\\x{byte:02x}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_format_characters_and_backslashes_are_escaped_and_plain_text_kept() {
        assert!(matches!(printable("plain text, ünïcode"), Cow::Borrowed(_)));
        assert_eq!(printable("a\nb\tc"), "a\\nb\\tc");
        assert_eq!(printable("\x1b[2J\x07"), "\\x1b[2J\\x07");
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(printable("\x7f"), "\\x7f");
        // A literal backslash-n is not a newline.
        assert_eq!(printable("a\\nb"), "a\\\\nb");
        assert_eq!(printable("evil\u{202e}gpj.exe"), "evil\\u{202e}gpj.exe");
        assert_eq!(printable("a\u{2028}b\u{200b}"), "a\\u{2028}b\\u{200b}");
    }

    #[test]
    fn output_for_a_terminal_keeps_lines_and_text_and_escapes_controls_across_chunks() {
        let mut escaper = TerminalEscaper::new();
        let mut out = Vec::new();
        let csi = "\u{9b}".as_bytes();
        escaper.escape(b"ok\tdone\n\x1b]0;owned\x07\rhidden ", &mut out);
        escaper.escape(&csi[..1], &mut out);
        escaper.escape(&csi[1..], &mut out);
        escaper.escape("2J caf\u{e9} \u{a0}\u{202e}".as_bytes(), &mut out);
        // Not UTF-8: a raw 8-bit CSI, an overlong encoding of it, and a lone lead byte.
        escaper.escape(b"\x9b1m\xe0\x82\x9b", &mut out);
        escaper.escape(b"\xc2", &mut out);
        escaper.finish(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ok\tdone\n\\x1b]0;owned\\x07\\rhidden \\u{9b}2J caf\u{e9} \u{a0}\\u{202e}\\x9b1m\\xe0\\x82\\x9b\\xc2"
        );
    }
}
