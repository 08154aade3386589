//! A single-pass JSON canonicaliser: validates a document and writes its canonical form.
//!
//! Canonical means: no insignificant whitespace; strings re-escaped one way (`\"`, `\\`,
//! `\b\f\n\r\t`, `\u00xx` for other control characters, everything else as raw UTF-8); object
//! members sorted by their canonical key bytes (a stable sort, so duplicate keys keep their
//! order); numbers as their exact decimal value in one spelling.
//!
//! # Numbers
//!
//! A number is read exactly, never through `f64`: `1.00000000000000001` and `1` differ, and
//! so do `9007199254740993` and `9007199254740992.0`, while `1`, `1.0`, `1e0`, `10E-1` and
//! `0.1e1` are one value. Its canonical spelling is
//!
//! - `0` for zero, whatever its sign, fraction or exponent (`-0`, `0.0`, `0e5`);
//! - otherwise an optional `-`, then the significant digits `d` (no leading or trailing
//!   zeros), then, with the value being `±d × 10^e`: `e` zeros when `0 ≤ e ≤ 20`
//!   ([`MAX_PLAIN_ZEROS`]), else `e` followed by the exponent in decimal (`e-1`, `e21`).
//!
//! So `100` and `1e2` are `100`, `1.5` is `15e-1`, `-0.001` is `-1e-3`, `1e21` is `1e21`
//! and `1e1000000000` stays `1e1000000000`. Every canonical spelling is itself valid JSON
//! that canonicalises to itself, no number grows by more than 20 bytes, and a document
//! whose exponent (adjusted for the fraction) does not fit an `i64` is not canonicalised.
//! The numeric grammar is JSON's, strictly: no `+1`, `01`, `1.`, `.5`, `NaN` or `Infinity`.
//!
//! Unlike parsing into a `serde_json::Value`, nothing is allocated per string, member or
//! object: everything is written to one output buffer, each object's members in input order;
//! an object whose keys are out of order is then rewritten sorted, in place.

/// Documents nested deeper than this are not canonicalised (their bytes are compared).
pub(crate) const MAX_DEPTH: usize = 128;

/// Integers with at most this many trailing zeros are written out in full; beyond it, with
/// an exponent. Every 64-bit integer is written in full, and no number grows by more than
/// this many bytes.
pub(crate) const MAX_PLAIN_ZEROS: i64 = 20;

/// Scratch buffers up to this size are kept per thread between documents; larger ones are
/// dropped after use, so one huge body does not pin its memory.
const KEPT_SCRATCH: usize = 64 * 1024;

/// Scratch space for one document: its output and its object members.
#[derive(Default)]
struct Scratch {
    out: Vec<u8>,
    spans: Vec<(usize, usize, usize)>,
}

thread_local! {
    /// Reused by every fingerprint on a thread: canonicalising then allocates nothing.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

pub(crate) fn canonicalize(input: &[u8]) -> Option<Vec<u8>> {
    with_canonical(input, <[u8]>::to_vec)
}

/// Calls `f` with the canonical form of `input`, written to a per-thread buffer; `None` if
/// `input` is not a JSON document this canonicaliser accepts.
pub(crate) fn with_canonical<T>(input: &[u8], f: impl FnOnce(&[u8]) -> T) -> Option<T> {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => {
            let Scratch { out, spans } = &mut *scratch;
            out.clear();
            spans.clear();
            let result = canonicalize_into(input, out, spans).map(|()| f(out));
            if out.capacity() > KEPT_SCRATCH {
                *out = Vec::new();
            }
            if spans.capacity() * std::mem::size_of::<(usize, usize, usize)>() > KEPT_SCRATCH {
                *spans = Vec::new();
            }
            result
        }
        // Only if `f` itself fingerprints (it never does here): use buffers of its own.
        Err(_) => {
            let (mut out, mut spans) = (Vec::new(), Vec::new());
            canonicalize_into(input, &mut out, &mut spans).map(|()| f(&out))
        }
    })
}

fn canonicalize_into(
    input: &[u8],
    out: &mut Vec<u8>,
    spans: &mut Vec<(usize, usize, usize)>,
) -> Option<()> {
    let mut parser = Parser {
        input,
        pos: 0,
        spans: std::mem::take(spans),
    };
    out.reserve(input.len());
    parser.skip_whitespace();
    let parsed = parser.value(out, 0).and_then(|()| {
        parser.skip_whitespace();
        (parser.pos == input.len()).then_some(())
    });
    *spans = parser.spans; // handed back, to be reused
    parsed
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

    /// Reads a number (strictly by the JSON grammar) and writes its exact decimal value in
    /// the one spelling described in the module docs.
    fn number(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let int_start = self.pos;
        match self.bump()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let int = int_start..self.pos;
        let mut frac = self.pos..self.pos;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            let frac_start = self.pos;
            self.digits1()?;
            frac = frac_start..self.pos;
        }
        let mut exponent = None;
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            let exp_negative = self.peek() == Some(b'-');
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            let exp_start = self.pos;
            self.digits1()?;
            exponent = Some((exp_negative, exp_start..self.pos));
        }
        let (int, frac) = (&self.input[int], &self.input[frac]);

        // The value is ±(int ‖ frac) × 10^(exponent − |frac|). Find its significant digits.
        let digit = |i: usize| {
            if i < int.len() {
                int[i]
            } else {
                frac[i - int.len()]
            }
        };
        let len = int.len() + frac.len();
        let Some(first) = (0..len).find(|&i| digit(i) != b'0') else {
            // Zero, whatever its sign or exponent.
            out.push(b'0');
            return Some(());
        };
        let last = (first..len).rev().find(|&i| digit(i) != b'0')?;
        let exponent = match exponent {
            None => 0,
            // Read into an i128 (what overflows that is far beyond i64 after adjustment too).
            Some((exp_negative, digits)) => {
                self.input[digits].iter().try_fold(0i128, |acc, &b| {
                    let digit = i128::from(b - b'0');
                    let acc = acc.checked_mul(10)?;
                    if exp_negative {
                        acc.checked_sub(digit)
                    } else {
                        acc.checked_add(digit)
                    }
                })?
            }
        };
        // Lengths are far below 2^64, so this cannot overflow an i128; the result must fit
        // an i64.
        let trailing_zeros = (len - 1 - last) as i128;
        let exponent = i64::try_from(exponent - frac.len() as i128 + trailing_zeros).ok()?;

        if negative {
            out.push(b'-');
        }
        let (end, split) = (last + 1, int.len());
        out.extend_from_slice(&int[first.min(split)..end.min(split)]);
        out.extend_from_slice(&frac[first.saturating_sub(split)..end.saturating_sub(split)]);
        match exponent {
            0..=MAX_PLAIN_ZEROS => out.resize(out.len() + exponent as usize, b'0'),
            _ => {
                out.push(b'e');
                out.extend_from_slice(exponent.to_string().as_bytes());
            }
        }
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
            canon("[1, 1.0, 1.00, 1e0, 1E+0, 10e-1, 10E-1, 0.1e1, 0.001e3, 100e-2]").unwrap(),
            "[1,1,1,1,1,1,1,1,1,1]"
        );
        assert_eq!(
            canon("[-0, 0, -0.0, 0.0, 0e5, -0E-7, 0.000e+99]").unwrap(),
            "[0,0,0,0,0,0,0]"
        );
        assert_eq!(
            canon("123456789012345678901234567890").unwrap(),
            "123456789012345678901234567890"
        );
        assert_eq!(
            canon("[1e2, 100.0, 100, 1000e-1]").unwrap(),
            "[100,100,100,100]"
        );
        assert_eq!(
            canon("[1.5, -0.001, 0.1, 1.50, 15e-1, -1.2345e2]").unwrap(),
            "[15e-1,-1e-3,1e-1,15e-1,15e-1,-12345e-2]"
        );
    }

    #[test]
    fn numbers_compare_by_exact_decimal_value() {
        assert_ne!(canon("1.00000000000000001"), canon("1"));
        assert_eq!(
            canon("1.00000000000000001").unwrap(),
            "100000000000000001e-17"
        );
        assert_ne!(canon("9007199254740993"), canon("9007199254740992.0"));
        assert_eq!(canon("9007199254740992.0"), canon("9007199254740992"));
        assert_ne!(canon("0.1"), canon("0.1000000000000000055511151231257827"));
        assert_ne!(canon("1"), canon("-1"));
        assert_ne!(canon("1e-1"), canon("1e1"));
    }

    #[test]
    fn large_exponents_stay_exponents() {
        // Up to 20 trailing zeros are written out (every 64-bit integer); beyond, an exponent.
        assert_eq!(canon("1e20").unwrap(), format!("1{}", "0".repeat(20)));
        assert_eq!(
            canon("18446744073709551615").unwrap(),
            "18446744073709551615"
        );
        assert_eq!(canon("1e21").unwrap(), "1e21");
        assert_eq!(canon(&format!("1{}", "0".repeat(21))).unwrap(), "1e21");
        assert_eq!(canon("-25e30").unwrap(), "-25e30");
        // Exact and bounded: no billion zeros, and no float overflow either.
        assert_eq!(canon("1e1000000000").unwrap(), "1e1000000000");
        assert_eq!(canon("1e999").unwrap(), "1e999");
        assert_eq!(canon("1e-999").unwrap(), "1e-999");
        assert_eq!(canon("1e000000000000000000000000000002").unwrap(), "100");
        let max = i64::MAX;
        assert_eq!(canon(&format!("1e{max}")).unwrap(), format!("1e{max}"));
        assert_eq!(canon(&format!("1e-{max}")).unwrap(), format!("1e-{max}"));
        assert_eq!(
            canon(&format!("10e{}", max - 1)).unwrap(),
            format!("1e{max}")
        );
        assert_eq!(
            canon(&format!("0.1e-{}", max - 1)).unwrap(),
            format!("1e-{max}")
        );
        // Exponents that do not fit an i64 (before or after adjustment): not canonicalised.
        let min = i64::MIN;
        assert_eq!(canon(&format!("1e{min}")).unwrap(), format!("1e{min}"));
        assert_eq!(canon(&format!("0.1e-{max}")).unwrap(), format!("1e{min}"));
        assert_eq!(canon("1e9223372036854775808"), None);
        assert_eq!(canon("1e-9223372036854775809"), None);
        assert_eq!(canon(&format!("10e{max}")), None);
        assert_eq!(canon(&format!("0.01e-{max}")), None);
        // Adjustment can bring an exponent back into range.
        assert_eq!(canon(&format!("1.0e{min}")).unwrap(), format!("1e{min}"));
        assert_eq!(
            canon("100e-9223372036854775810").unwrap(),
            "1e-9223372036854775808"
        );
        assert_eq!(
            canon("0.001e9223372036854775810").unwrap(),
            "1e9223372036854775807"
        );
        assert_eq!(canon("1.01e-9223372036854775807"), None);
        assert_eq!(canon("1e99999999999999999999999999"), None);
        // Zero is zero, whatever the exponent.
        assert_eq!(canon("0e99999999999999999999999999").unwrap(), "0");
    }

    #[test]
    fn canonical_numbers_canonicalise_to_themselves() {
        for n in [
            "0",
            "1",
            "-1",
            "15e-1",
            "-1e-3",
            "1e21",
            "100",
            "1e1000000000",
            "123e-456",
        ] {
            assert_eq!(canon(n).unwrap(), n);
        }
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
            "+1",
            "-01",
            "00",
            "1.e5",
            "-.5",
            "1e+",
            "1e-",
            "- 1",
            "1.5.5",
            "1e5e5",
            "0x10",
            "NaN",
            "Infinity",
            "-Infinity",
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
