//! Property tests for the parts that read untrusted input: the key parser, the fingerprint
//! and the JSON canonicaliser.

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
        let method = Method::POST;
        let uri = "/x".parse().unwrap();
        prop_assert_eq!(
            Fingerprint::of_request(&method, &uri, &json_headers(), &compact),
            Fingerprint::of_request(&method, &uri, &json_headers(), other.as_bytes())
        );
    }

    #[test]
    fn canonical_json_is_stable(value in json_value()) {
        let once = canonical_json(&serde_json::to_vec(&value).unwrap()).unwrap();
        let twice = canonical_json(&once).unwrap();
        prop_assert_eq!(once, twice);
    }

    #[test]
    fn canonicaliser_never_panics_on_arbitrary_bytes(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = canonical_json(&raw);
        let _ = Fingerprint::of_request(&Method::POST, &"/x".parse().unwrap(), &json_headers(), &raw);
    }

    #[test]
    fn different_json_values_differ(a in json_value(), b in json_value()) {
        prop_assume!(a != b);
        let fa = Fingerprint::of_request(&Method::POST, &"/x".parse().unwrap(), &json_headers(), &serde_json::to_vec(&a).unwrap());
        let fb = Fingerprint::of_request(&Method::POST, &"/x".parse().unwrap(), &json_headers(), &serde_json::to_vec(&b).unwrap());
        prop_assert_ne!(fa, fb);
    }
}

proptest! {
    /// The canonical form agrees with serde_json on which documents are the same value.
    #[test]
    fn canonical_equality_matches_value_equality(a in json_value(), b in json_value()) {
        let (ta, tb) = (serde_json::to_vec(&a).unwrap(), serde_json::to_vec(&b).unwrap());
        prop_assert_eq!(canonical_json(&ta) == canonical_json(&tb), a == b);
    }

    /// Whatever serde_json accepts (within the depth limit), the canonicaliser accepts too.
    #[test]
    fn accepts_every_document_serde_json_writes(value in json_value()) {
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        prop_assert!(canonical_json(&pretty).is_some());
    }
}
