//! The envelope: how a cached value travels between tiers.
//!
//! Layout (format version 1, all integers little-endian):
//!
//! ```text
//! magic "ST" | format u8 | flags u8 | created_at u64 | fresh_until u64 | stale_until u64 | delta_ms u32
//! flags: 1 negative, 2 has version, 4 has etag, 8 lz4, 16 tombstone
//! [version u64]                         if flags & HAS_VERSION
//! tag_count u16, (len u16, utf-8)*      tags
//! [len u16, utf-8]                      etag, if flags & HAS_ETAG
//! raw_len u32 | stored_len u32 | bytes  the value; lz4 block if flags & LZ4 (absent for negative entries and
//!                                       tombstones)
//! crc32 u32                             over everything before it
//! ```
//!
//! Invariants: [`Envelope::decode`] never panics and never allocates more than the input justifies (lengths are
//! checked against the remaining input, and a compressed value against [`MAX_VALUE_LEN`]), so bytes from Redis, a
//! journal or the bus can be fed to it as they are. A bad checksum, an unknown format version, unknown flags or
//! trailing bytes are each a distinct [`CodecError`].

use crate::clock::UnixMillis;

const MAGIC: [u8; 2] = *b"ST";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// The largest value (after decompression) an envelope may carry: 256 MiB.
pub const MAX_VALUE_LEN: usize = 256 << 20;

const FLAG_NEGATIVE: u8 = 1 << 0;
const FLAG_HAS_VERSION: u8 = 1 << 1;
const FLAG_HAS_ETAG: u8 = 1 << 2;
const FLAG_LZ4: u8 = 1 << 3;
const FLAG_TOMBSTONE: u8 = 1 << 4;
const KNOWN_FLAGS: u8 =
    FLAG_NEGATIVE | FLAG_HAS_VERSION | FLAG_HAS_ETAG | FLAG_LZ4 | FLAG_TOMBSTONE;
const HEADER_LEN: usize = 2 + 1 + 1 + 8 + 8 + 8 + 4;

/// Whether an envelope carries a value or records that the source has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeKind {
    /// The serialized value.
    Value(Vec<u8>),
    /// The source said the key does not exist (negative caching).
    Absent,
    /// The key was invalidated: read as absent; until `stale_until`, fills older than it are refused.
    Tombstone,
}

/// When values are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Never compress.
    None,
    /// lz4-compress values of at least this many bytes, when that makes them smaller.
    Lz4Above(usize),
}

/// A cached value with the metadata every tier needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// When the entry was created (loaded or written).
    pub created_at: UnixMillis,
    /// Fresh until this instant; afterwards stale.
    pub fresh_until: UnixMillis,
    /// Kept (for stale-while-revalidate and fail-safe) until this instant; afterwards gone.
    pub stale_until: UnixMillis,
    /// The source's version, when it has one.
    pub version: Option<u64>,
    /// Tags (surrogate keys).
    pub tags: Vec<String>,
    /// How long the last load took, in milliseconds (used by XFetch early refresh).
    pub delta_ms: u32,
    /// An entity tag for HTTP revalidation.
    pub etag: Option<String>,
    /// The value or its absence.
    pub kind: EnvelopeKind,
}

/// Why bytes could not be decoded as an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input ended inside the named field.
    #[error("truncated envelope: input ended inside {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// The input does not start with the envelope magic: not a Strata value.
    #[error("not a Strata envelope (bad magic bytes)")]
    BadMagic,
    /// A format version this build does not know.
    #[error("unknown envelope format version {0} (this build reads {FORMAT_VERSION})")]
    UnknownFormat(u8),
    /// Flag bits this build does not know.
    #[error("unknown envelope flags {0:#04x}")]
    UnknownFlags(u8),
    /// The checksum does not match the content.
    #[error("envelope checksum mismatch")]
    Checksum,
    /// A string field is not UTF-8.
    #[error("envelope field {field} is not valid UTF-8")]
    Utf8 {
        /// The field.
        field: &'static str,
    },
    /// The value is larger than [`MAX_VALUE_LEN`] or its lengths disagree.
    #[error("envelope value length {len} is invalid")]
    BadLength {
        /// The length found.
        len: usize,
    },
    /// The compressed value could not be decompressed.
    #[error("envelope value does not decompress: {0}")]
    Decompress(String),
    /// Bytes follow the checksum.
    #[error("{0} trailing bytes after the envelope")]
    Trailing(usize),
    /// A string field is longer than the format can carry (65,535 bytes), or there are more than 65,535 tags.
    #[error("envelope field {field} is too long to encode")]
    FieldTooLong {
        /// The field.
        field: &'static str,
    },
}

impl Envelope {
    /// Encodes the envelope. Fails only when a tag or the etag is longer than 65,535 bytes, there are more than
    /// 65,535 tags, or the value exceeds [`MAX_VALUE_LEN`].
    pub fn encode(&self, compression: Compression) -> Result<Vec<u8>, CodecError> {
        let mut flags = 0u8;
        let (value, raw_len): (Option<std::borrow::Cow<'_, [u8]>>, usize) = match &self.kind {
            EnvelopeKind::Absent => {
                flags |= FLAG_NEGATIVE;
                (None, 0)
            }
            EnvelopeKind::Tombstone => {
                flags |= FLAG_TOMBSTONE;
                (None, 0)
            }
            EnvelopeKind::Value(v) => {
                if v.len() > MAX_VALUE_LEN {
                    return Err(CodecError::BadLength { len: v.len() });
                }
                match compression {
                    Compression::Lz4Above(min) if v.len() >= min => {
                        let c = lz4_flex::block::compress(v);
                        if c.len() < v.len() {
                            flags |= FLAG_LZ4;
                            (Some(c.into()), v.len())
                        } else {
                            (Some(v.as_slice().into()), v.len())
                        }
                    }
                    _ => (Some(v.as_slice().into()), v.len()),
                }
            }
        };
        if self.version.is_some() {
            flags |= FLAG_HAS_VERSION;
        }
        if self.etag.is_some() {
            flags |= FLAG_HAS_ETAG;
        }
        let mut out = Vec::with_capacity(HEADER_LEN + 32 + value.as_ref().map_or(0, |v| v.len()));
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.push(flags);
        out.extend_from_slice(&self.created_at.to_le_bytes());
        out.extend_from_slice(&self.fresh_until.to_le_bytes());
        out.extend_from_slice(&self.stale_until.to_le_bytes());
        out.extend_from_slice(&self.delta_ms.to_le_bytes());
        if let Some(v) = self.version {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let tag_count = u16::try_from(self.tags.len())
            .map_err(|_| CodecError::FieldTooLong { field: "tags" })?;
        out.extend_from_slice(&tag_count.to_le_bytes());
        for tag in &self.tags {
            put_str(&mut out, tag, "tag")?;
        }
        if let Some(etag) = &self.etag {
            put_str(&mut out, etag, "etag")?;
        }
        if let Some(value) = value {
            out.extend_from_slice(&(raw_len as u32).to_le_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(&value);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Decodes an envelope; see the module docs for what is rejected.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, CodecError> {
        if bytes.len() < 2 || bytes[..2] != MAGIC {
            return Err(if bytes.len() < 2 {
                CodecError::Truncated { field: "magic" }
            } else {
                CodecError::BadMagic
            });
        }
        if bytes.len() < HEADER_LEN + 4 {
            return Err(CodecError::Truncated { field: "header" });
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let format = body[2];
        if format != FORMAT_VERSION {
            return Err(CodecError::UnknownFormat(format));
        }
        let flags = body[3];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(CodecError::UnknownFlags(flags));
        }
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(CodecError::Checksum);
        }
        let mut r = Reader { buf: &body[4..] };
        let created_at = r.u64("created_at")?;
        let fresh_until = r.u64("fresh_until")?;
        let stale_until = r.u64("stale_until")?;
        let delta_ms = r.u32("delta_ms")?;
        let version = if flags & FLAG_HAS_VERSION != 0 {
            Some(r.u64("version")?)
        } else {
            None
        };
        let tag_count = r.u16("tag count")?;
        let mut tags = Vec::with_capacity(usize::from(tag_count).min(r.buf.len() / 2));
        for _ in 0..tag_count {
            tags.push(r.string("tag")?);
        }
        let etag = if flags & FLAG_HAS_ETAG != 0 {
            Some(r.string("etag")?)
        } else {
            None
        };
        if flags & FLAG_NEGATIVE != 0 && flags & FLAG_TOMBSTONE != 0 {
            return Err(CodecError::UnknownFlags(flags));
        }
        let kind = if flags & FLAG_NEGATIVE != 0 {
            EnvelopeKind::Absent
        } else if flags & FLAG_TOMBSTONE != 0 {
            EnvelopeKind::Tombstone
        } else {
            let raw_len = r.u32("value length")? as usize;
            let stored_len = r.u32("stored length")? as usize;
            if raw_len > MAX_VALUE_LEN {
                return Err(CodecError::BadLength { len: raw_len });
            }
            let stored = r.take(stored_len, "value")?;
            let value = if flags & FLAG_LZ4 != 0 {
                let v = lz4_flex::block::decompress(stored, raw_len)
                    .map_err(|e| CodecError::Decompress(e.to_string()))?;
                if v.len() != raw_len {
                    return Err(CodecError::BadLength { len: v.len() });
                }
                v
            } else {
                if stored_len != raw_len {
                    return Err(CodecError::BadLength { len: stored_len });
                }
                stored.to_vec()
            };
            EnvelopeKind::Value(value)
        };
        if !r.buf.is_empty() {
            return Err(CodecError::Trailing(r.buf.len()));
        }
        Ok(Envelope {
            created_at,
            fresh_until,
            stale_until,
            version,
            tags,
            delta_ms,
            etag,
            kind,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str, field: &'static str) -> Result<(), CodecError> {
    let len = u16::try_from(s.len()).map_err(|_| CodecError::FieldTooLong { field })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::Truncated { field });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(
            self.take(2, field)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(
            self.take(4, field)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(
            self.take(8, field)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self, field: &'static str) -> Result<String, CodecError> {
        let len = self.u16(field)? as usize;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::Utf8 { field })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(value: Vec<u8>) -> Envelope {
        Envelope {
            created_at: 1_700_000_000_000,
            fresh_until: 1_700_000_060_000,
            stale_until: 1_700_000_120_000,
            version: Some(42),
            tags: vec!["product:7".into(), "category:shoes".into()],
            delta_ms: 35,
            etag: Some("\"abc\"".into()),
            kind: EnvelopeKind::Value(value),
        }
    }

    #[test]
    fn round_trips_with_and_without_compression() {
        let big = vec![b'x'; 10_000];
        for env in [sample(b"hello".to_vec()), sample(big), sample(Vec::new())] {
            for c in [Compression::None, Compression::Lz4Above(16)] {
                let bytes = env.encode(c).unwrap();
                assert_eq!(Envelope::decode(&bytes).unwrap(), env);
            }
        }
        let neg = Envelope {
            kind: EnvelopeKind::Absent,
            version: None,
            etag: None,
            tags: vec![],
            ..sample(vec![])
        };
        assert_eq!(
            Envelope::decode(&neg.encode(Compression::None).unwrap()).unwrap(),
            neg
        );
    }

    #[test]
    fn compression_shrinks_repetitive_values_above_the_threshold() {
        let env = sample(vec![b'a'; 4096]);
        let plain = env.encode(Compression::None).unwrap();
        let packed = env.encode(Compression::Lz4Above(1024)).unwrap();
        assert!(
            packed.len() < plain.len() / 4,
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        let below = env.encode(Compression::Lz4Above(8192)).unwrap();
        assert_eq!(below.len(), plain.len());
    }

    #[test]
    fn rejects_each_kind_of_bad_input() {
        let good = sample(b"value".to_vec()).encode(Compression::None).unwrap();
        assert_eq!(
            Envelope::decode(b""),
            Err(CodecError::Truncated { field: "magic" })
        );
        assert_eq!(Envelope::decode(b"{\"json\":1}"), Err(CodecError::BadMagic));
        assert!(matches!(
            Envelope::decode(&good[..10]),
            Err(CodecError::Truncated { .. })
        ));
        let mut v = good.clone();
        v[2] = 9;
        assert_eq!(Envelope::decode(&v), Err(CodecError::UnknownFormat(9)));
        let mut v = good.clone();
        v[3] |= 0x80;
        assert!(matches!(
            Envelope::decode(&v),
            Err(CodecError::UnknownFlags(_))
        ));
        let mut v = good.clone();
        let mid = v.len() / 2;
        v[mid] ^= 0xff;
        assert_eq!(Envelope::decode(&v), Err(CodecError::Checksum));
        let mut v = good.clone();
        v.truncate(v.len() - 4);
        v.push(0);
        let crc = crc32fast::hash(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(Envelope::decode(&v), Err(CodecError::Trailing(1)));
    }

    #[test]
    fn oversized_fields_are_an_error_not_a_panic() {
        let mut env = sample(vec![]);
        env.etag = Some("e".repeat(70_000));
        assert_eq!(
            env.encode(Compression::None),
            Err(CodecError::FieldTooLong { field: "etag" })
        );
    }

    /// A value that claims a huge decompressed size must be rejected before any allocation of that size.
    #[test]
    fn decompression_bomb_is_rejected() {
        let mut body = Vec::new();
        body.extend_from_slice(&MAGIC);
        body.push(FORMAT_VERSION);
        body.push(FLAG_LZ4);
        body.extend_from_slice(&[0u8; 28]);
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.push(0);
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Envelope::decode(&body),
            Err(CodecError::BadLength { .. })
        ));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = Envelope::decode(&bytes);
            }

            #[test]
            fn decode_never_panics_on_mutated_envelopes(
                value in proptest::collection::vec(any::<u8>(), 0..256),
                at in any::<usize>(),
                flip in 1u8..=255,
                compress in any::<bool>(),
            ) {
                // CRC-32 detects every single-byte error, so any one flipped byte must be rejected.
                let c = if compress { Compression::Lz4Above(0) } else { Compression::None };
                let mut bytes = sample(value).encode(c).unwrap();
                let n = bytes.len();
                bytes[at % n] ^= flip;
                prop_assert!(Envelope::decode(&bytes).is_err());
            }

            #[test]
            fn round_trip(value in proptest::collection::vec(any::<u8>(), 0..2048), version in any::<Option<u64>>(),
                          tags in proptest::collection::vec("[a-z:0-9]{0,12}", 0..4)) {
                let env = Envelope { version, tags, ..sample(value) };
                let bytes = env.encode(Compression::Lz4Above(64)).unwrap();
                prop_assert_eq!(Envelope::decode(&bytes).unwrap(), env);
            }
        }
    }
}
