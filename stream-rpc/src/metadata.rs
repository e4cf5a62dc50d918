//! [`Metadata`]: the bounded map of short string keys to string values a
//! request carries beside its payload (the packet's `meta` field,
//! PROTOCOL.md §Metadata): auth tokens, tenant ids, trace context.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// The most entries a packet's `meta` holds.
pub const MAX_META_ENTRIES: usize = 32;
/// The longest key of a `meta` entry, in bytes (keys are 1 to 64 bytes of
/// `a-z 0-9 - _ .`).
pub const MAX_META_KEY_LEN: usize = 64;
/// The longest value of a `meta` entry, in bytes of UTF-8.
pub const MAX_META_VALUE_LEN: usize = 1024;
/// The most bytes of a packet's `meta`: its keys and values added up.
pub const MAX_META_BYTES: usize = 8192;

/// The key of the W3C trace context (<https://www.w3.org/TR/trace-context/>)
/// a traced call carries: `00-<trace id>-<parent id>-<flags>`.
pub const TRACEPARENT: &str = "traceparent";
/// The key of the W3C `tracestate` that goes with [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";

/// Per-call metadata: a bounded map of short string keys to string values,
/// sent in a request's `meta` field, read by handlers
/// ([`Context::meta`](crate::Context::meta)) and by layers, set by
/// callers ([`Call::meta`](crate::Call)) and by layers.
///
/// Every limit of the protocol holds at all times: a key is 1 to
/// [`MAX_META_KEY_LEN`] bytes of `a-z 0-9 - _ .` (lower case, like HTTP/2
/// header names), a value at most [`MAX_META_VALUE_LEN`] bytes, at most
/// [`MAX_META_ENTRIES`] entries and [`MAX_META_BYTES`] of keys and values
/// in all; [`insert`](Self::insert) refuses what would break one. Keys are
/// kept (and sent) in sorted order.
///
/// ```
/// use stream_rpc::{Metadata, MetadataError};
///
/// let mut meta = Metadata::new();
/// meta.insert("authorization", "token-1")?;
/// meta.insert("tenant", "acme")?;
/// assert_eq!(meta.get("tenant"), Some("acme"));
/// assert_eq!(meta.iter().map(|(key, _)| key).collect::<Vec<_>>(), ["authorization", "tenant"]);
/// assert!(matches!(meta.insert("Tenant", "x"), Err(MetadataError::InvalidKey { .. })));
/// # Ok::<(), MetadataError>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: BTreeMap<String, String>,
    /// Keys and values added up, in bytes.
    bytes: usize,
}

/// An entry [`Metadata`] refused: it would break a limit of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The key is empty, longer than [`MAX_META_KEY_LEN`] bytes, or has a
    /// byte other than `a-z 0-9 - _ .`.
    #[error(
        "meta key {} is not 1 to 64 bytes of a-z 0-9 - _ .",
        crate::logging::Escaped::new(.key, MAX_META_KEY_LEN + 1)
    )]
    InvalidKey {
        /// The key refused (the peer's text when read: shown escaped).
        key: String,
    },
    /// The value is longer than [`MAX_META_VALUE_LEN`] bytes.
    #[error("meta value of `{key}` is {len} bytes, more than 1024")]
    ValueTooLong {
        /// The entry's key.
        key: String,
        /// The value's length in bytes.
        len: usize,
    },
    /// There would be more than [`MAX_META_ENTRIES`] entries.
    #[error("meta has more than 32 entries")]
    TooManyEntries,
    /// The keys and values would add up to more than [`MAX_META_BYTES`].
    #[error("meta keys and values add up to {bytes} bytes, more than 8192")]
    TooLarge {
        /// What they would add up to.
        bytes: usize,
    },
    /// The same key twice in one packet's `meta`.
    #[error("meta key `{key}` is given twice")]
    Duplicate {
        /// The key.
        key: String,
    },
}

/// Whether `key` is 1 to 64 bytes of `a-z 0-9 - _ .`.
fn valid_key(key: &str) -> bool {
    (1..=MAX_META_KEY_LEN).contains(&key.len())
        && key
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.'))
}

/// What a request without `meta` has.
pub(crate) static EMPTY: Metadata = Metadata {
    entries: BTreeMap::new(),
    bytes: 0,
};

impl Metadata {
    /// Empty metadata (what a request without `meta` has).
    pub fn new() -> Self {
        Metadata::default()
    }

    /// Sets `key` to `value`; the value it had, if any. Refused (and
    /// nothing changed) when the entry would break a limit.
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Option<String>, MetadataError> {
        let (key, value) = (key.into(), value.into());
        if !valid_key(&key) {
            return Err(MetadataError::InvalidKey { key });
        }
        if value.len() > MAX_META_VALUE_LEN {
            let len = value.len();
            return Err(MetadataError::ValueTooLong { key, len });
        }
        let old = self
            .entries
            .get(&key)
            .map_or(0, |old| key.len() + old.len());
        if old == 0 && self.entries.len() >= MAX_META_ENTRIES {
            return Err(MetadataError::TooManyEntries);
        }
        let bytes = self.bytes - old + key.len() + value.len();
        if bytes > MAX_META_BYTES {
            return Err(MetadataError::TooLarge { bytes });
        }
        self.bytes = bytes;
        Ok(self.entries.insert(key, value))
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Removes `key`; the value it had, if any.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let value = self.entries.remove(key)?;
        self.bytes -= key.len() + value.len();
        Some(value)
    }

    /// The entries, in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keys and values added up, in bytes (at most [`MAX_META_BYTES`]).
    pub fn byte_len(&self) -> usize {
        self.bytes
    }
}

/// The keys only: values may be secrets (tokens), and are never shown by
/// `Debug` (so never in a log line that prints a packet or a call).
impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.entries.keys()).finish()
    }
}

impl<'a> IntoIterator for &'a Metadata {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

impl<K: Into<String>, V: Into<String>> TryFrom<Vec<(K, V)>> for Metadata {
    type Error = MetadataError;

    /// Metadata of these entries (a later entry with the same key wins),
    /// or the first limit they break.
    fn try_from(entries: Vec<(K, V)>) -> Result<Self, MetadataError> {
        let mut meta = Metadata::new();
        for (key, value) in entries {
            meta.insert(key, value)?;
        }
        Ok(meta)
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (key, value) in &self.entries {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// Reads an object of strings, refusing what breaks a limit (with the
/// reason) as soon as it is seen: a peer's oversized `meta` is never
/// held whole.
impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;

        impl<'de> Visitor<'de> for Entries {
            type Value = Metadata;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of strings (meta)")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
                let mut meta = Metadata::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !valid_key(&key) {
                        // Not kept whole: a key may be long.
                        let key = key.chars().take(MAX_META_KEY_LEN + 1).collect();
                        return Err(de::Error::custom(MetadataError::InvalidKey { key }));
                    }
                    let value = map.next_value::<String>()?;
                    if meta.contains_key(&key) {
                        return Err(de::Error::custom(MetadataError::Duplicate { key }));
                    }
                    meta.insert(key, value).map_err(de::Error::custom)?;
                }
                Ok(meta)
            }
        }

        deserializer.deserialize_map(Entries)
    }
}

/// `skip_serializing_if` of a packet's `meta`: absent when empty.
pub(crate) fn is_absent(meta: &Option<Metadata>) -> bool {
    meta.as_ref().is_none_or(Metadata::is_empty)
}

/// `deserialize_with` of a packet's `meta`: `null` and `{}` are none.
pub(crate) fn read_option<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Metadata>, D::Error> {
    let meta = Option::<Metadata>::deserialize(deserializer)?;
    Ok(meta.filter(|meta| !meta.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_is_held_by_insert_at_its_edge() {
        let mut meta = Metadata::new();
        assert!(meta.insert("", "v").is_err());
        assert!(meta.insert("a".repeat(65), "v").is_err());
        meta.insert("a".repeat(64), "v").unwrap();
        for bad in ["A", "a b", "a/b", "é", "a:b"] {
            assert_eq!(
                meta.insert(bad, "v"),
                Err(MetadataError::InvalidKey { key: bad.into() })
            );
        }
        meta.insert("ok-_.09", "x".repeat(1024)).unwrap();
        assert!(matches!(
            meta.insert("k", "x".repeat(1025)),
            Err(MetadataError::ValueTooLong { len: 1025, .. })
        ));

        let mut full = Metadata::new();
        for i in 0..32 {
            full.insert(format!("k{i}"), "v").unwrap();
        }
        assert_eq!(full.insert("k32", "v"), Err(MetadataError::TooManyEntries));
        // Replacing an entry of a full map is no new entry.
        assert_eq!(full.insert("k0", "w"), Ok(Some("v".into())));

        let mut big = Metadata::new();
        for i in 0..7 {
            big.insert(format!("k{i}"), "x".repeat(1022)).unwrap();
        }
        // 7 * 1024 = 7168 bytes; 1024 more is 8192, one more byte is not.
        big.insert("k7", "x".repeat(1022)).unwrap();
        assert_eq!(big.byte_len(), MAX_META_BYTES);
        assert_eq!(
            big.insert("k8", ""),
            Err(MetadataError::TooLarge { bytes: 8194 })
        );
        // A shorter value in place of a longer one fits.
        big.insert("k7", "x".repeat(100)).unwrap();
        assert_eq!(big.byte_len(), MAX_META_BYTES - 922);
        assert_eq!(big.remove("k7").as_deref(), Some(&*"x".repeat(100)));
        assert_eq!(big.byte_len(), 7 * 1024);
    }

    #[test]
    fn reading_refuses_what_insert_refuses_with_the_reason() {
        let read = |text: &str| serde_json::from_str::<Metadata>(text).map_err(|e| e.to_string());
        assert_eq!(read(r#"{"b":"2","a":"1"}"#).unwrap().len(), 2);
        for (text, reason) in [
            (r#"{"A":"1"}"#, "is not 1 to 64 bytes"),
            (r#"{"":"1"}"#, "is not 1 to 64 bytes"),
            (r#"{"a":1}"#, "expected a string"),
            (r#"{"a":null}"#, "expected a string"),
            (r#"["a"]"#, "an object of strings"),
            (r#"{"a":"1","a":"2"}"#, "given twice"),
        ] {
            let err = read(text).unwrap_err();
            assert!(err.contains(reason), "{text}: {err}");
        }
        let long = format!(r#"{{"a":"{}"}}"#, "x".repeat(1025));
        assert!(read(&long).unwrap_err().contains("more than 1024"));
        let many: Vec<String> = (0..33).map(|i| format!(r#""k{i}":"v""#)).collect();
        let many = format!("{{{}}}", many.join(","));
        assert!(read(&many).unwrap_err().contains("more than 32"));
    }

    #[test]
    fn debug_shows_keys_never_values() {
        let meta = Metadata::try_from(vec![("authorization", "secret-token")]).unwrap();
        let shown = format!("{meta:?}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
