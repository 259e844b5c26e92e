//! Invalidation messages: what travels on the bus between nodes (DESIGN §6).
//!
//! A message says what changed — one key, every entry with a tag, or the whole namespace — with the source
//! version when known, who sent it (`origin`: a node id that is new on every process start) and the origin's
//! sequence number. Receivers ignore their own origin, drop duplicates by `(origin, seq)`, and treat a jump in an
//! origin's sequence as a gap (see `strata::bus::SeqTracker`).
//!
//! The wire format is JSON, so that any language can publish an invalidation; unknown fields are ignored (newer
//! senders may add some). [`BusMessage::decode`] validates
//! everything and returns a [`BusError`] naming the problem; a receiver counts and skips such messages.

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;
use crate::error::Error;

/// The largest message accepted, in bytes.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// What a message invalidates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Invalidation {
    /// One key was deleted or changed: drop it.
    Delete {
        /// The key.
        key: String,
    },
    /// One key was written with a new value (write-through elsewhere): drop the local copy, the next read gets the
    /// new one from L2.
    Set {
        /// The key.
        key: String,
    },
    /// Every entry carrying this tag.
    Tag {
        /// The tag.
        tag: String,
    },
    /// The whole namespace (generation bump).
    Clear,
    /// Not an invalidation: a lease holder filled the shared tier (or gave its lease up). Nodes waiting on that
    /// key's lease look again; nothing is dropped.
    Filled {
        /// The key.
        key: String,
    },
    /// Not an invalidation: the change feed `feed` (a CDC consumer's slot) has applied — in L2 and on the bus,
    /// before this message — every source commit made more than `age_ms` before this message was sent. The
    /// message's `namespace` is the feed's name too. Namespaces fed by it trust their caches only while such a
    /// mark is recent.
    FeedMark {
        /// The feed.
        feed: String,
        /// How old the confirmation already was when sent.
        age_ms: u64,
    },
}

/// One bus message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusMessage {
    /// The namespace.
    pub namespace: String,
    /// What is invalidated.
    #[serde(flatten)]
    pub what: Invalidation,
    /// The source version after the change, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The sending node (unique per process start).
    pub origin: String,
    /// The origin's sequence number, starting at 1 and increasing by one per message.
    pub seq: u64,
    /// When the origin sent it.
    pub ts: UnixMillis,
}

/// Why bytes are not a valid bus message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// Larger than [`MAX_MESSAGE_LEN`].
    #[error("bus message of {0} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit")]
    TooLarge(usize),
    /// Not JSON of the expected shape; says which field and where.
    #[error("malformed bus message: {0}")]
    Malformed(String),
    /// A field is present but invalid.
    #[error("invalid bus message field `{field}`: {problem}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
}

impl BusMessage {
    /// The JSON encoding.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a bus message always serializes")
    }

    /// Decodes and validates a message.
    pub fn decode(bytes: &[u8]) -> Result<Self, BusError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(BusError::TooLarge(bytes.len()));
        }
        let msg: BusMessage =
            serde_json::from_slice(bytes).map_err(|e| BusError::Malformed(e.to_string()))?;
        let invalid = |field, problem| Err(BusError::Invalid { field, problem });
        if msg.namespace.is_empty() {
            return invalid("namespace", "must not be empty");
        }
        if msg.origin.is_empty() {
            return invalid("origin", "must not be empty");
        }
        if msg.seq == 0 {
            return invalid("seq", "must start at 1");
        }
        match &msg.what {
            Invalidation::Delete { key }
            | Invalidation::Set { key }
            | Invalidation::Filled { key }
                if key.is_empty() =>
            {
                invalid("key", "must not be empty")
            }
            Invalidation::Tag { tag } if tag.is_empty() => invalid("tag", "must not be empty"),
            Invalidation::FeedMark { feed, .. } if feed.is_empty() => {
                invalid("feed", "must not be empty")
            }
            _ => Ok(msg),
        }
    }
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// A message.
    Message(BusMessage),
    /// Messages were lost (the transport says so); the receiver must assume anything changed.
    Gap {
        /// What the transport knows about the loss.
        reason: String,
    },
    /// Bytes that are not a valid message (from transports that carry bytes).
    Malformed(BusError),
    /// Contact confirmed: every message published more than `behind` before this event was yielded has been
    /// yielded before it. Transports that report a [`Bus::liveness_bound`] yield one at least that often while
    /// the link is healthy; the node trusts its L1 only while the last one is younger than the bound.
    Live {
        /// How far the confirmation lags the moment the event is yielded.
        behind: std::time::Duration,
    },
}

/// A transport for invalidation messages. Implementations MUST deliver each node's messages in publish order
/// or report a [`BusEvent::Gap`]; they may deliver duplicates.
pub trait Bus: Send + Sync + 'static {
    /// Sends one message; resolves when the transport has accepted it.
    fn publish(&self, msg: BusMessage) -> BoxFuture<'_, Result<(), Error>>;
    /// Messages published from now on.
    fn subscribe(&self) -> BoxStream<'static, BusEvent>;
    /// The longest a healthy subscription goes between two [`BusEvent::Live`] events (its heartbeat plus the
    /// transport's timeout): the staleness bound of a node's L1. `None` (the default): the transport does not
    /// confirm contact, and nodes trust their L1 without it.
    fn liveness_bound(&self) -> Option<std::time::Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(what: Invalidation) -> BusMessage {
        BusMessage {
            namespace: "price".into(),
            what,
            version: Some(43),
            origin: "node-a-7f3c".into(),
            seq: 12,
            ts: 1_700_000_000_000,
        }
    }

    #[test]
    fn round_trips_every_kind() {
        for what in [
            Invalidation::Delete {
                key: "sku-1".into(),
            },
            Invalidation::Set {
                key: "sku-1".into(),
            },
            Invalidation::Tag {
                tag: "category:tv".into(),
            },
            Invalidation::Clear,
            Invalidation::Filled {
                key: "sku-1".into(),
            },
        ] {
            let m = msg(what);
            assert_eq!(BusMessage::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn the_wire_format_is_plain_json_other_languages_can_write() {
        let raw = br#"{"namespace":"price","kind":"delete","key":"sku-1","origin":"php-worker","seq":1,"ts":5}"#;
        let m = BusMessage::decode(raw).unwrap();
        assert_eq!(
            m.what,
            Invalidation::Delete {
                key: "sku-1".into()
            }
        );
        assert_eq!(m.version, None);
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        let cases: [(&[u8], &str); 7] = [
            (b"not json", "malformed"),
            (
                br#"{"namespace":"p","kind":"explode","key":"k","origin":"o","seq":1,"ts":0}"#,
                "explode",
            ),
            (
                br#"{"namespace":"p","kind":"delete","origin":"o","seq":1,"ts":0}"#,
                "key",
            ),
            (
                br#"{"namespace":"","kind":"clear","origin":"o","seq":1,"ts":0}"#,
                "namespace",
            ),
            (
                br#"{"namespace":"p","kind":"clear","origin":"o","seq":0,"ts":0}"#,
                "seq",
            ),
            (
                br#"{"namespace":"p","kind":"tag","tag":"","origin":"o","seq":1,"ts":0}"#,
                "tag",
            ),
            (
                br#"{"namespace":"p","kind":"clear","origin":"o","seq":-1,"ts":0}"#,
                "malformed",
            ),
        ];
        for (raw, needle) in cases {
            let err = BusMessage::decode(raw).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle}");
        }
        assert!(matches!(
            BusMessage::decode(&vec![b' '; MAX_MESSAGE_LEN + 1]),
            Err(BusError::TooLarge(_))
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = BusMessage::decode(&bytes);
        }
    }
}
