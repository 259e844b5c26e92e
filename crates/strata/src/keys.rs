//! Versioned keys (`user:42:v7`): invalidation by changing the name.
//!
//! When the current version of an object is known cheaply (a version column the caller already read, a schema or
//! deploy version, a content hash), caching under `key:v{version}` needs no invalidation at all: a new version is
//! a new key, readers of the old version keep a consistent snapshot, and old versions age out by TTL (or LRU).
//! This works across every tier unchanged, including L2 and hot-key pins, and it is immune to lost invalidations.
//!
//! ```
//! # async fn demo() -> Result<(), strata::Error> {
//! use strata::{keys, Cache};
//!
//! let cache = Cache::new();
//! let users = cache.namespace::<String>("user").build()?;
//! let v7 = keys::versioned("user:42", 7);
//! assert_eq!(v7, "user:42:v7");
//! users.get_or_load(&v7, || async { Some("Ada".to_string()) }).await?;
//! assert_eq!(keys::split_versioned(&v7), Some(("user:42", 7)));
//! # Ok(()) }
//! ```

/// The key of `key` at `version`: `{key}:v{version}`.
pub fn versioned(key: &str, version: u64) -> String {
    format!("{key}:v{version}")
}

/// Splits a versioned key into its base and version; `None` if it does not end in `:v<digits>`.
pub fn split_versioned(key: &str) -> Option<(&str, u64)> {
    let (base, v) = key.rsplit_once(":v")?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((base, v.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_keys_round_trip_and_reject_lookalikes() {
        assert_eq!(split_versioned(&versioned("a:b", 0)), Some(("a:b", 0)));
        assert_eq!(split_versioned("user:42:v7:v8"), Some(("user:42:v7", 8)));
        for bad in [
            "user:42",
            "user:42:v",
            "user:42:vx",
            "user:42:v-1",
            "user:42:v99999999999999999999",
        ] {
            assert_eq!(split_versioned(bad), None, "{bad}");
        }
    }
}
