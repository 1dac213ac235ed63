//! OLPC canonical JSON, the byte form that TUF signs.
//!
//! The rules are those of securesystemslib's `encode_canonical`, which python-tuf and most
//! TUF tools use: object keys sorted by code point, no insignificant white space, strings
//! with only `"` and `\` escaped (every other character, control characters included, is
//! written as its raw UTF-8 bytes), integers only (floats are refused), `true`, `false`
//! and `null` as themselves.

use serde::Serialize;
use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CanonicalError {
    /// Canonical JSON has no floating-point numbers.
    #[error("canonical JSON has no floating-point numbers (found {0})")]
    Float(String),
    /// The value could not be turned into JSON at all.
    #[error("value cannot be represented as JSON: {0}")]
    Serialize(String),
}

/// Encodes a JSON value in canonical form.
pub fn to_canonical(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out)?;
    Ok(out)
}

/// Serialises any serde value and encodes it in canonical form.
pub fn to_canonical_from<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let v = serde_json::to_value(value).map_err(|e| CanonicalError::Serialize(e.to_string()))?;
    to_canonical(&v)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                return Err(CanonicalError::Float(n.to_string()));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Sort explicitly: serde_json's map is ordered only while no crate in the build
            // turns on its `preserve_order` feature, and signatures must not depend on that.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_value(v, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_and_drops_whitespace() {
        let v = json!({"b": 1, "a": [true, null, "x"], "A": {"z": -3, "y": "q\"\\"}});
        let got = to_canonical(&v).unwrap();
        assert_eq!(
            std::str::from_utf8(&got).unwrap(),
            r#"{"A":{"y":"q\"\\","z":-3},"a":[true,null,"x"],"b":1}"#
        );
    }

    #[test]
    fn control_characters_and_unicode_are_raw() {
        let v = json!({"s": "line\nbreak\ttab é"});
        let got = to_canonical(&v).unwrap();
        assert_eq!(got, "{\"s\":\"line\nbreak\ttab é\"}".as_bytes());
    }

    #[test]
    fn floats_are_refused() {
        assert!(matches!(
            to_canonical(&json!({"x": 1.5})),
            Err(CanonicalError::Float(_))
        ));
    }

    #[test]
    fn key_order_is_code_point_order() {
        // "é" (U+00E9) sorts after "z"; "Z" before "a".
        let v = json!({"é": 1, "z": 2, "Z": 3, "a": 4});
        assert_eq!(
            to_canonical(&v).unwrap(),
            "{\"Z\":3,\"a\":4,\"z\":2,\"é\":1}".as_bytes()
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            // Canonical JSON writes control characters raw, which strict JSON parsers refuse;
            // the round trip is checked on everything else (raw output is tested above).
            "[^\\x00-\\x1f]*".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map("[^\\x00-\\x1f]*", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn canonical_round_trips(v in arb_json()) {
            let bytes = to_canonical(&v).unwrap();
            // Canonical output is valid JSON that parses back to the same value...
            let back: Value = serde_json::from_slice(&bytes).unwrap();
            prop_assert_eq!(&back, &v);
            // ...and is a fixed point: encoding the parsed value gives the same bytes.
            prop_assert_eq!(to_canonical(&back).unwrap(), bytes.clone());
        }

        #[test]
        fn object_keys_are_written_in_ascending_order(m in prop::collection::btree_map("[^\\x00-\\x1f]{0,6}", any::<u8>(), 0..12)) {
            let v = Value::Object(m.iter().map(|(k, n)| (k.clone(), json!(n))).collect());
            let bytes = to_canonical(&v).unwrap();
            // Walk the top level with a streaming deserializer that keeps order.
            let order: Vec<String> = top_level_keys(&bytes);
            let mut sorted = order.clone();
            sorted.sort();
            prop_assert_eq!(order, sorted);
            prop_assert_eq!(bytes.iter().filter(|b| **b == b' ').count(),
                m.keys().map(|k| k.bytes().filter(|b| *b == b' ').count()).sum::<usize>());
        }
    }

    /// Keys of a top-level object in the order they appear in the bytes.
    fn top_level_keys(bytes: &[u8]) -> Vec<String> {
        use serde::de::{Deserializer, MapAccess, Visitor};
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut keys = Vec::new();
                while let Some((k, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(k);
                }
                Ok(keys)
            }
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        de.deserialize_map(Keys).unwrap()
    }
}
