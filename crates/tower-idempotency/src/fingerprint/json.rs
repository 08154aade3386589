//! A single-pass JSON canonicaliser: validates a document and writes its canonical form.
//!
//! Canonical means: no insignificant whitespace; strings re-escaped one way (`\"`, `\\`,
//! `\b\f\n\r\t`, `\u00xx` for other control characters, everything else as raw UTF-8); object
//! members sorted by their canonical key bytes (a stable sort, so duplicate keys keep their
//! order); integers as written (arbitrarily large ones exactly, `-0` as `0`); other numbers
//! parsed to the nearest `f64` and written in Rust's shortest round-trip form.
//!
//! Unlike parsing into a `serde_json::Value`, nothing is allocated per string, member or
//! object: everything is written to one output buffer, each object's members in input order;
//! an object whose keys are out of order is then rewritten sorted, in place.

/// Documents nested deeper than this are not canonicalised (their bytes are compared).
pub(crate) const MAX_DEPTH: usize = 128;

pub(crate) fn canonicalize(input: &[u8]) -> Option<Vec<u8>> {
    let mut parser = Parser {
        input,
        pos: 0,
        spans: Vec::new(),
    };
    let mut out = Vec::with_capacity(input.len());
    parser.skip_whitespace();
    parser.value(&mut out, 0)?;
    parser.skip_whitespace();
    (parser.pos == input.len()).then_some(out)
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    /// Members of the objects being parsed, innermost last: (key start, key end, value end)
    /// as offsets into the output.
    spans: Vec<(usize, usize, usize)>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.bump()? == byte).then_some(())
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(out, depth + 1),
            b'[' => self.array(out, depth + 1),
            b'"' => self.string(out),
            b't' => self.literal(b"true", out),
            b'f' => self.literal(b"false", out),
            b'n' => self.literal(b"null", out),
            b'-' | b'0'..=b'9' => self.number(out),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8], out: &mut Vec<u8>) -> Option<()> {
        let end = self.pos + word.len();
        (self.input.get(self.pos..end)? == word).then_some(())?;
        self.pos = end;
        out.extend_from_slice(word);
        Some(())
    }

    fn object(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.expect(b'{')?;
        self.skip_whitespace();
        let start = out.len();
        out.push(b'{');
        if self.peek()? == b'}' {
            self.pos += 1;
            out.push(b'}');
            return Some(());
        }
        // Write the members as they come, `"key":value` separated by commas, remembering
        // where each key and value lies.
        let first_span = self.spans.len();
        loop {
            self.skip_whitespace();
            if self.peek()? != b'"' {
                return None;
            }
            let key_start = out.len();
            self.string(out)?;
            let key_end = out.len();
            self.skip_whitespace();
            self.expect(b':')?;
            self.skip_whitespace();
            out.push(b':');
            self.value(out, depth)?;
            self.spans.push((key_start, key_end, out.len()));
            self.skip_whitespace();
            match self.bump()? {
                b',' => out.push(b','),
                b'}' => break,
                _ => return None,
            }
        }
        out.push(b'}');
        let members = &mut self.spans[first_span..];
        let key = |span: &(usize, usize, usize)| &out[span.0..span.1];
        if !members.is_sorted_by(|a, b| key(a) <= key(b)) {
            // A stable sort: duplicate keys keep their order.
            members.sort_by(|a, b| key(a).cmp(key(b)));
            // Emit the sorted object after the unsorted one, then move it into its place.
            let end = out.len();
            out.push(b'{');
            for (i, &(key_start, key_end, value_end)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_within(key_start..key_end);
                out.extend_from_within(key_end..value_end);
            }
            out.push(b'}');
            out.copy_within(end.., start);
            out.truncate(start + (out.len() - end));
        }
        self.spans.truncate(first_span);
        Some(())
    }

    fn array(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.expect(b'[')?;
        self.skip_whitespace();
        out.push(b'[');
        if self.peek()? == b']' {
            self.pos += 1;
            out.push(b']');
            return Some(());
        }
        loop {
            self.skip_whitespace();
            self.value(out, depth)?;
            self.skip_whitespace();
            match self.bump()? {
                b',' => out.push(b','),
                b']' => break,
                _ => return None,
            }
        }
        out.push(b']');
        Some(())
    }

    /// Reads a string literal and writes it re-escaped canonically.
    fn string(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.expect(b'"')?;
        out.push(b'"');
        loop {
            // Copy the run of plain bytes up to the next quote, backslash or control byte.
            let run_start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            let run = &self.input[run_start..self.pos];
            std::str::from_utf8(run).ok()?;
            out.extend_from_slice(run);
            match self.bump()? {
                b'"' => break,
                b'\\' => {
                    let c = self.escape()?;
                    write_char(out, c);
                }
                _ => return None, // a raw control character
            }
        }
        out.push(b'"');
        Some(())
    }

    /// Decodes the escape after a backslash, surrogate pairs included.
    fn escape(&mut self) -> Option<char> {
        Some(match self.bump()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = self.hex4()?;
                match high {
                    0xD800..=0xDBFF => {
                        self.expect(b'\\')?;
                        self.expect(b'u')?;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                        char::from_u32(code)?
                    }
                    _ => char::from_u32(high)?, // lone low surrogates are refused here
                }
            }
            _ => return None,
        })
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.input.get(self.pos..self.pos + 4)?;
        let text = std::str::from_utf8(digits).ok()?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.pos += 4;
        u32::from_str_radix(text, 16).ok()
    }

    fn number(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.bump()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            integer = false;
            self.digits1()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.digits1()?;
        }
        let text = &self.input[start..self.pos];
        if integer {
            out.extend_from_slice(if text == b"-0" { b"0" } else { text });
            return Some(());
        }
        let value: f64 = std::str::from_utf8(text).ok()?.parse().ok()?;
        if !value.is_finite() {
            return None;
        }
        // One spelling per value: shortest round-trip form, and no negative zero.
        let value = if value == 0.0 { 0.0 } else { value };
        out.extend_from_slice(format!("{value:?}").as_bytes());
        Some(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn digits1(&mut self) -> Option<()> {
        let start = self.pos;
        self.digits();
        (self.pos > start).then_some(())
    }
}

fn write_char(out: &mut Vec<u8>, c: char) {
    match c {
        '"' => out.extend_from_slice(b"\\\""),
        '\\' => out.extend_from_slice(b"\\\\"),
        '\u{8}' => out.extend_from_slice(b"\\b"),
        '\u{c}' => out.extend_from_slice(b"\\f"),
        '\n' => out.extend_from_slice(b"\\n"),
        '\r' => out.extend_from_slice(b"\\r"),
        '\t' => out.extend_from_slice(b"\\t"),
        c if (c as u32) < 0x20 => {
            out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
        }
        c => {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::canonicalize;

    fn canon(s: &str) -> Option<String> {
        canonicalize(s.as_bytes()).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn sorts_members_and_drops_whitespace() {
        assert_eq!(
            canon(" { \"b\" : [ 1 , {\"z\":null,\"a\":true} ] , \"a\" : \"x\" } ").unwrap(),
            r#"{"a":"x","b":[1,{"a":true,"z":null}]}"#
        );
        assert_eq!(canon("{}").unwrap(), "{}");
        assert_eq!(canon("[ ]").unwrap(), "[]");
    }

    #[test]
    fn strings_have_one_spelling() {
        assert_eq!(
            canon(r#""\u0041\/\u00e9é\n\u001f\ud83d\ude00""#).unwrap(),
            "\"A/éé\\n\\u001f😀\""
        );
        assert_eq!(canon(r#"{"\u0061":1}"#), canon(r#"{"a":1}"#));
    }

    #[test]
    fn numbers_have_one_spelling() {
        assert_eq!(
            canon("[1.0, 1.00, 1e0, 10E-1]").unwrap(),
            "[1.0,1.0,1.0,1.0]"
        );
        assert_eq!(canon("[-0, 0, -0.0, 0e5]").unwrap(), "[0,0,0.0,0.0]");
        assert_eq!(
            canon("123456789012345678901234567890").unwrap(),
            "123456789012345678901234567890"
        );
        assert_eq!(canon("[1e2, 100.0]").unwrap(), "[100.0,100.0]");
    }

    #[test]
    fn rejects_what_is_not_json() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\"}",
            "{\"a\":1,}",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "tru",
            "\"\u{1}\"",
            r#""\x""#,
            r#""\ud800""#,
            r#""\udc00""#,
            "[1] x",
            "1e999",
            "{1:2}",
            "\"\\u12\"",
        ] {
            assert_eq!(canon(bad), None, "{bad:?}");
        }
        assert_eq!(canonicalize(b"\"\xff\""), None, "invalid UTF-8");
    }

    #[test]
    fn depth_is_bounded() {
        let ok = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert!(canon(&ok).is_some());
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert!(canon(&deep).is_none());
    }
}
