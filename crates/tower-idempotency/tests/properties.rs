//! Property tests for the parts that read untrusted input: the key parser, the fingerprint
//! and the JSON canonicaliser.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderValue, Method, header::CONTENT_TYPE};
use proptest::prelude::*;
use tower_idempotency::{Fingerprint, IdempotencyKey, MAX_KEY_LEN, fingerprint::canonical_json};

/// Arbitrary JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Serialises `value` with object members in reverse order and random-ish whitespace.
fn reordered(value: &serde_json::Value, pad: &str) -> String {
    match value {
        serde_json::Value::Object(map) => {
            let members: Vec<String> = map
                .iter()
                .rev()
                .map(|(k, v)| {
                    format!(
                        "{pad}{}{pad}:{pad}{}",
                        serde_json::to_string(k).unwrap(),
                        reordered(v, pad)
                    )
                })
                .collect();
            format!("{{{}{pad}}}", members.join(","))
        }
        serde_json::Value::Array(items) => {
            let items: Vec<String> = items
                .iter()
                .map(|v| format!("{pad}{}", reordered(v, pad)))
                .collect();
            format!("[{}{pad}]", items.join(","))
        }
        other => serde_json::to_string(other).unwrap(),
    }
}

fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h
}

fn fingerprint(body: &[u8]) -> Fingerprint {
    Fingerprint::of_request(&Method::POST, &"/x".parse().unwrap(), &json_headers(), body)
}

/// A number's exact decimal value: sign, significant digits (no leading or trailing zeros),
/// exponent. Zero is `(false, "", 0)`.
fn exact_decimal(text: &str) -> (bool, String, i64) {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], text[at + 1..].parse::<i64>().unwrap()),
        None => (text, 0),
    };
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits = format!("{int}{frac}").trim_start_matches('0').to_owned();
    let mut exponent = exponent - frac.len() as i64;
    if digits.is_empty() {
        return (false, String::new(), 0);
    }
    while digits.ends_with('0') {
        digits.pop();
        exponent += 1;
    }
    (negative, digits, exponent)
}

/// A JSON value as the fingerprint sees it: numbers by exact decimal value, objects unordered.
#[derive(Debug, PartialEq)]
enum Model {
    Null,
    Bool(bool),
    Number((bool, String, i64)),
    String(String),
    Array(Vec<Model>),
    Object(BTreeMap<String, Model>),
}

fn model(value: &serde_json::Value) -> Model {
    use serde_json::Value;
    match value {
        Value::Null => Model::Null,
        Value::Bool(b) => Model::Bool(*b),
        Value::Number(n) => Model::Number(exact_decimal(&n.to_string())),
        Value::String(s) => Model::String(s.clone()),
        Value::Array(items) => Model::Array(items.iter().map(model).collect()),
        Value::Object(map) => {
            Model::Object(map.iter().map(|(k, v)| (k.clone(), model(v))).collect())
        }
    }
}

/// A decimal in normal form: sign, significant digits (no leading or trailing zeros),
/// exponent.
fn decimal() -> impl Strategy<Value = (bool, String, i64)> {
    (
        any::<bool>(),
        "[1-9]([0-9]{0,24}[1-9])?",
        prop_oneof![3 => -30i64..30, 1 => -(1i64 << 50)..(1i64 << 50)],
    )
}

/// The documented canonical spelling of a non-zero decimal in normal form.
fn canonical_spelling((negative, digits, exponent): &(bool, String, i64)) -> String {
    let sign = if *negative { "-" } else { "" };
    match *exponent {
        e @ 0..=20 => format!("{sign}{digits}{}", "0".repeat(e as usize)),
        e => format!("{sign}{digits}e{e}"),
    }
}

/// Some valid JSON spelling of a decimal in normal form: extra trailing zeros, the decimal
/// point anywhere (or `0.` and leading zeros), `e`/`E`/`e+`, zero-padded or omitted exponent.
fn spelling(decimal: (bool, String, i64)) -> impl Strategy<Value = String> {
    (
        0usize..4,
        0usize..32,
        0usize..3,
        any::<bool>(),
        prop::sample::select(vec!["e", "E", "e+", "E+"]),
        0usize..3,
    )
        .prop_map(move |(zeros, split, leading, force_exponent, e, padding)| {
            let (negative, digits, exponent) = &decimal;
            let all = format!("{digits}{}", "0".repeat(zeros));
            let split = split.min(all.len());
            let (int, frac) = if split == 0 {
                ("0".to_owned(), format!("{}{all}", "0".repeat(leading)))
            } else {
                (all[..split].to_owned(), all[split..].to_owned())
            };
            // int.frac × 10^written = all × 10^(exponent − zeros)
            let written = exponent - zeros as i64 + frac.len() as i64;
            let mut out = format!("{}{int}", if *negative { "-" } else { "" });
            if !frac.is_empty() {
                out.push('.');
                out.push_str(&frac);
            }
            if written != 0 || force_exponent {
                let pad = "0".repeat(padding);
                if written < 0 {
                    out.push_str(&format!("{}-{pad}{}", &e[..1], written.unsigned_abs()));
                } else {
                    out.push_str(&format!("{e}{pad}{written}"));
                }
            }
            out
        })
}

/// Number-like text: mostly near-valid JSON numbers, some arbitrary runs of number bytes.
/// Short enough that no exponent overflows an i64.
fn number_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?[0-9]{0,3}(\\.[0-9]{0,3})?([eE][-+]?[0-9]{0,3})?",
        "[-+0-9.eE]{1,18}",
    ]
}

proptest! {
    #[test]
    fn key_parser_never_panics_and_accepts_only_valid_keys(raw in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(key) = IdempotencyKey::parse(&raw) {
            prop_assert!(!key.as_str().is_empty() && key.as_str().len() <= MAX_KEY_LEN);
            prop_assert!(key.as_str().bytes().all(|b| (0x20..=0x7e).contains(&b)));
        }
    }

    #[test]
    fn quoting_a_bare_key_names_the_same_key(key in "[!#-+\\--~]{1,255}") {
        let bare = IdempotencyKey::parse(key.as_bytes()).unwrap();
        let escaped = key.replace('\\', "\\\\");
        let quoted = IdempotencyKey::parse(format!("\"{escaped}\"").as_bytes()).unwrap();
        prop_assert_eq!(bare.as_str(), key.as_str());
        prop_assert_eq!(bare, quoted);
    }

    #[test]
    fn canonical_json_ignores_order_and_whitespace(value in json_value(), pad in "[ \t\n]{0,3}") {
        let compact = serde_json::to_vec(&value).unwrap();
        let other = reordered(&value, &pad);
        prop_assert_eq!(canonical_json(&compact), canonical_json(other.as_bytes()));
        prop_assert_eq!(fingerprint(&compact), fingerprint(other.as_bytes()));
    }

    /// The canonical form is a fixed point.
    #[test]
    fn canonical_json_is_idempotent(value in json_value(), pad in "[ \t\n]{0,3}") {
        let once = canonical_json(reordered(&value, &pad).as_bytes()).unwrap();
        let twice = canonical_json(&once).unwrap();
        prop_assert_eq!(once, twice);
    }

    /// A client that parses its payload and writes it again (serde_json, without float loss)
    /// sends the same request; the canonical form is valid JSON holding the same values.
    #[test]
    fn reserialising_through_serde_json_keeps_the_fingerprint(value in json_value(), pad in "[ \t\n]{0,3}") {
        let sent = reordered(&value, &pad);
        let canonical = canonical_json(sent.as_bytes()).unwrap();
        let reparsed: serde_json::Value = serde_json::from_slice(&canonical).unwrap();
        prop_assert_eq!(model(&reparsed), model(&value));
        let resent = serde_json::to_vec(&reparsed).unwrap();
        prop_assert_eq!(fingerprint(sent.as_bytes()), fingerprint(&resent));
        let roundtrip: serde_json::Value = serde_json::from_str(&sent).unwrap();
        prop_assert_eq!(fingerprint(sent.as_bytes()), fingerprint(&serde_json::to_vec_pretty(&roundtrip).unwrap()));
    }

    #[test]
    fn canonicaliser_never_panics_on_arbitrary_bytes(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Some(canonical) = canonical_json(&raw) {
            prop_assert_eq!(canonical_json(&canonical), Some(canonical.clone()));
        }
        let _ = fingerprint(&raw);
    }

    #[test]
    fn different_json_values_differ(a in json_value(), b in json_value()) {
        prop_assume!(model(&a) != model(&b));
        let fa = fingerprint(&serde_json::to_vec(&a).unwrap());
        let fb = fingerprint(&serde_json::to_vec(&b).unwrap());
        prop_assert_ne!(fa, fb);
    }
}

proptest! {
    /// The canonical form agrees with an exact model on which documents are the same value:
    /// serde_json's equality, except that numbers are equal when their decimal values are
    /// (`1` and `1.0` are one number).
    #[test]
    fn canonical_equality_matches_value_equality(a in json_value(), b in json_value()) {
        let (ta, tb) = (serde_json::to_vec(&a).unwrap(), serde_json::to_vec(&b).unwrap());
        prop_assert_eq!(canonical_json(&ta) == canonical_json(&tb), model(&a) == model(&b));
    }

    /// Whatever serde_json accepts (within the depth limit), the canonicaliser accepts too.
    #[test]
    fn accepts_every_document_serde_json_writes(value in json_value()) {
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        prop_assert!(canonical_json(&pretty).is_some());
    }

    /// Every spelling of a number canonicalises to the documented spelling of its exact
    /// decimal value, and so fingerprints the same.
    #[test]
    fn numbers_equal_as_exact_decimals_canonicalise_equally(
        (value, a, b) in decimal().prop_flat_map(|d| (Just(d.clone()), spelling(d.clone()), spelling(d)))
    ) {
        let expected = canonical_spelling(&value);
        let canonical = |s: &str| canonical_json(s.as_bytes()).map(|c| String::from_utf8(c).unwrap());
        prop_assert_eq!(canonical(&a), Some(expected.clone()), "{}", a);
        prop_assert_eq!(canonical(&b), Some(expected), "{}", b);
        prop_assert_eq!(fingerprint(format!("[{a}]").as_bytes()), fingerprint(format!("[ {b} ]").as_bytes()));
    }

    /// Numbers that differ, even in the last of many digits, never meet.
    #[test]
    fn numbers_that_differ_never_meet(
        ((x, y), sx, sy) in (decimal(), decimal(), any::<bool>(), 0usize..30, 1u8..10)
            .prop_map(|(x, y, near, zeros, last)| {
                // Half the time, y is x plus a tiny amount (x's digits, zeros, one more digit),
                // which f64 could not tell apart.
                let tiny = (x.0, format!("{}{}{last}", x.1, "0".repeat(zeros)), x.2 - zeros as i64 - 1);
                if near { (x, tiny) } else { (x, y) }
            })
            .prop_flat_map(|(x, y)| (Just((x.clone(), y.clone())), spelling(x), spelling(y)))
    ) {
        prop_assume!(x != y);
        prop_assert_ne!(canonical_json(sx.as_bytes()), canonical_json(sy.as_bytes()));
        prop_assert_ne!(fingerprint(sx.as_bytes()), fingerprint(sy.as_bytes()));
    }

    /// The number grammar is JSON's, exactly as serde_json reads it; accepted numbers
    /// canonicalise to themselves and to the exact decimal value.
    #[test]
    fn numbers_follow_the_json_grammar(text in number_like()) {
        let ours = canonical_json(text.as_bytes());
        let serde = serde_json::from_str::<serde_json::Value>(&text);
        let serde_accepts = match &serde {
            Ok(_) => true,
            // serde_json stops at an exponent past f64's range before it reads the rest, so
            // its verdict on the grammar is then ours to check.
            Err(e) if e.to_string().starts_with("number out of range") => is_json_number(&text),
            Err(_) => false,
        };
        prop_assert_eq!(ours.is_some(), serde_accepts, "{:?}", serde);
        if let Some(canonical) = ours {
            prop_assert_eq!(canonical_json(&canonical), Some(canonical.clone()));
            let canonical = String::from_utf8(canonical).unwrap();
            prop_assert_eq!(exact_decimal(&canonical), exact_decimal(&text));
        }
    }
}

/// RFC 8259's `number` production, for inputs serde_json cannot judge.
fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}
