//! JSON as the client prints it: the server's document on one line, members in the server's
//! order, numbers and strings exactly as sent.

use serde::de::IgnoredAny;

/// `json` without insignificant whitespace, if it is one valid JSON document.
///
/// Re-serialising through `serde_json::Value` would sort object members by name; this keeps
/// the server's order (`id` first) and only drops the whitespace between tokens.
pub fn compact(json: &[u8]) -> Result<String, serde_json::Error> {
    serde_json::from_slice::<IgnoredAny>(json)?;
    let mut out = Vec::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json {
        if in_string {
            out.push(byte);
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if byte == b'"' {
            in_string = true;
            out.push(byte);
        } else if !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            out.push(byte);
        }
    }
    // Valid JSON with only whitespace removed outside strings is still valid UTF-8.
    Ok(String::from_utf8(out).expect("valid JSON is UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_whitespace_between_tokens_only() {
        let pretty =
            b"{\n  \"id\": \"a b\",\n  \"n\": [1, 2.50, -3e2],\r\n\t\"s\": \"q\\\" \\\\ x\" }\n";
        assert_eq!(
            compact(pretty).unwrap(),
            r#"{"id":"a b","n":[1,2.50,-3e2],"s":"q\" \\ x"}"#
        );
    }

    #[test]
    fn keeps_the_member_order() {
        assert_eq!(
            compact(br#"{"z":1,"a":{"y":null,"b":true}}"#).unwrap(),
            r#"{"z":1,"a":{"y":null,"b":true}}"#
        );
    }

    #[test]
    fn refuses_what_is_not_one_json_document() {
        assert!(compact(b"").is_err());
        assert!(compact(b"{\"a\":").is_err());
        assert!(compact(b"{} {}").is_err());
        assert!(compact(b"<html>").is_err());
    }
}
