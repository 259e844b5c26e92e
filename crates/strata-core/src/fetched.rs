//! What a source returns for one key.

/// The answer of a source (a loader closure, a database, an HTTP origin) for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched<V> {
    /// The value, or `None` when the source says the key does not exist (cached as a negative entry).
    pub value: Option<V>,
    /// The source's version of the row (a version column, a commit LSN), when it has one. Versions order writes:
    /// a fill never replaces an entry or tombstone with a greater version.
    pub version: Option<u64>,
    /// Tags (surrogate keys) the entry belongs to.
    pub tags: Vec<String>,
    /// The source's own freshness lifetime for this answer (an HTTP `Cache-Control: max-age`, a token's
    /// expiry). It only shortens: the entry is fresh for the smaller of this and the namespace's TTL (its
    /// negative TTL for an absent key), without jitter, so the policy stays the ceiling every tier plans with.
    pub ttl: Option<std::time::Duration>,
}

impl<V> Fetched<V> {
    /// A present value with no version and no tags.
    pub fn value(value: V) -> Self {
        Self {
            value: Some(value),
            version: None,
            tags: Vec::new(),
            ttl: None,
        }
    }

    /// The source says the key does not exist.
    pub fn absent() -> Self {
        Self {
            value: None,
            version: None,
            tags: Vec::new(),
            ttl: None,
        }
    }

    /// Sets the source version.
    #[must_use]
    pub fn with_version(mut self, version: u64) -> Self {
        self.version = Some(version);
        self
    }

    /// Sets the source's freshness lifetime (see [`Fetched::ttl`]).
    #[must_use]
    pub fn with_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the tags.
    #[must_use]
    pub fn with_tags(mut self, tags: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }
}

impl<V> From<Option<V>> for Fetched<V> {
    fn from(value: Option<V>) -> Self {
        Self {
            value,
            version: None,
            tags: Vec::new(),
            ttl: None,
        }
    }
}
