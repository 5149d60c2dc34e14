//! The decision cache of one compiled bundle version.
//!
//! A cache belongs to one [`super::CompiledBundle`], so its key is (bundle, version) by
//! construction: a new version is a new snapshot with an empty cache, and no answer of an
//! older version can be served once the new one is published. Within it, answers are keyed
//! by the rule and the SHA-256 of the canonical input.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::analysis::VOLATILE_CONTEXT;

const SHARDS: usize = 16;

/// A cache key: the SHA-256 of the rule name and the canonical input.
pub type CacheKey = [u8; 32];

/// Bounded map from key to a rule's value (`None`: undefined).
#[derive(Debug)]
pub struct DecisionCache {
    shards: Vec<Mutex<Generations>>,
    per_shard: usize,
}

/// Two generations per shard: entries are inserted in `current`; when it is full it becomes
/// `previous` (dropping the old `previous`), and a hit in `previous` moves back to
/// `current`. Each shard holds at most `per_shard` entries and keeps what is in use.
#[derive(Debug, Default)]
struct Generations {
    current: HashMap<CacheKey, Option<Value>>,
    previous: HashMap<CacheKey, Option<Value>>,
}

impl DecisionCache {
    /// A cache of at most about `capacity` answers.
    pub fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(2);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard,
        }
    }

    fn shard(&self, key: &CacheKey) -> &Mutex<Generations> {
        &self.shards[usize::from(key[0]) % SHARDS]
    }

    /// The cached value of a key, if present.
    pub fn get(&self, key: &CacheKey) -> Option<Option<Value>> {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(value) = shard.current.get(key) {
            return Some(value.clone());
        }
        let value = shard.previous.remove(key)?;
        shard.insert(*key, value.clone(), self.per_shard / 2);
        Some(value)
    }

    /// Remembers a value.
    pub fn insert(&self, key: CacheKey, value: Option<Value>) {
        self.shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, value, self.per_shard / 2);
    }

    /// The most entries it holds.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// Entries held (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                s.current.len() + s.previous.len()
            })
            .sum()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Generations {
    fn insert(&mut self, key: CacheKey, value: Option<Value>, generation: usize) {
        if self.current.len() >= generation && !self.current.contains_key(&key) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, value);
    }
}

/// The key of `rule` for `input`, leaving out the volatile context fields (the caller
/// only caches bundles that never read them).
pub fn key(rule: &str, input: &Value) -> CacheKey {
    let mut hasher = Sha256::new();
    write_str(&mut hasher, rule);
    write_value(&mut hasher, input, true);
    hasher.finalize().into()
}

/// An unambiguous encoding: a tag per type, lengths before contents, object keys sorted.
fn write_value(hasher: &mut Sha256, value: &Value, top_level: bool) {
    match value {
        Value::Null => hasher.update(b"n"),
        Value::Bool(b) => hasher.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            hasher.update(b"#");
            write_str(hasher, &n.to_string());
        }
        Value::String(s) => {
            hasher.update(b"s");
            write_str(hasher, s);
        }
        Value::Array(items) => {
            hasher.update(b"[");
            hasher.update((items.len() as u64).to_be_bytes());
            for item in items {
                write_value(hasher, item, false);
            }
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            hasher.update(b"{");
            hasher.update((keys.len() as u64).to_be_bytes());
            for key in keys {
                write_str(hasher, key);
                match (&map[key], top_level && key == "context") {
                    (Value::Object(context), true) => write_context(hasher, context),
                    (value, _) => write_value(hasher, value, false),
                }
            }
        }
    }
}

fn write_context(hasher: &mut Sha256, context: &serde_json::Map<String, Value>) {
    let mut keys: Vec<&String> = context
        .keys()
        .filter(|k| !VOLATILE_CONTEXT.contains(&k.as_str()))
        .collect();
    keys.sort();
    hasher.update(b"{");
    hasher.update((keys.len() as u64).to_be_bytes());
    for key in keys {
        write_str(hasher, key);
        write_value(hasher, &context[key], false);
    }
}

fn write_str(hasher: &mut Sha256, s: &str) {
    hasher.update((s.len() as u64).to_be_bytes());
    hasher.update(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_ignore_key_order_and_volatile_context_but_nothing_else() {
        let a = json!({"user": {"role": "admin", "id": 1}, "context": {"time": "t1", "node_id": "n1", "ip": "1.2.3.4"}});
        let b = json!({"context": {"ip": "1.2.3.4", "node_id": "n2", "time": "t2"}, "user": {"id": 1, "role": "admin"}});
        assert_eq!(key("allow", &a), key("allow", &b));
        assert_ne!(key("allow", &a), key("reason", &a));
        let other_ip = json!({"user": {"role": "admin", "id": 1}, "context": {"ip": "1.2.3.5"}});
        assert_ne!(key("allow", &a), key("allow", &other_ip));
        // Nested fields named like volatile ones are data, not context.
        let nested = json!({"user": {"time": 1}});
        assert_ne!(
            key("allow", &nested),
            key("allow", &json!({"user": {"time": 2}}))
        );
        assert_ne!(
            key("allow", &json!(["ab", "c"])),
            key("allow", &json!(["a", "bc"]))
        );
        assert_ne!(key("allow", &json!("1")), key("allow", &json!(1)));
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_what_is_used() {
        let cache = DecisionCache::new(64);
        let hot = key("allow", &json!({"hot": true}));
        cache.insert(hot, Some(json!(true)));
        for i in 0..10_000 {
            cache.insert(key("allow", &json!({"i": i})), None);
            assert_eq!(cache.get(&hot), Some(Some(json!(true))), "after {i}");
        }
        assert!(cache.len() <= 64 + SHARDS * 2, "{} entries", cache.len());
    }
}
