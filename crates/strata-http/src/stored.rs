//! What the edge tier stores: [`StoredResponse`] — status, header fields, body, the request and response
//! times the age calculation needs (RFC 9111 §4.2.3) and the `Vary` values of the request that produced it
//! (§4.1) — and its binary form for L2 ([`StoredCodec`]).
//!
//! # Building
//! [`StoredResponse::new`] removes what a cache must not store (§3.1): hop-by-hop fields and the fields
//! `Connection` lists ([`crate::headers`]), and the fields `private="…"` names (the [`StorePlan`]). A response
//! without `Date` gets one from the response time (RFC 9110 §6.6.1), so the stored copy ages correctly.
//!
//! # Tags
//! [`StoredResponse::tags`] reads `Surrogate-Key` (space-separated) and `Cache-Tag` (comma-separated) into the
//! engine entry's tags ([`strata::Fetched::tags`]), so purge by tag is the engine's `invalidate_tag`: exact
//! match, every variant.
//!
//! # Encoding
//! ```text
//! magic "SHR" | version 1 | status u16 | request_time u64 | response_time u64
//! | fields u32 × (name u16-len bytes, value u32-len bytes)
//! | vary u16 × (name u16-len bytes, present u8, value u32-len bytes)
//! | body u32-len bytes | crc32 of everything before it
//! ```
//! little-endian. Decoding checks every length against what is left, every name and value against HTTP's
//! syntax, the status range, trailing bytes and the checksum: corrupt or foreign bytes are an error (the engine
//! counts a miss), never a panic.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, DATE};
use http::StatusCode;
use strata_core::UnixMillis;

use crate::directives::{FieldList, STRATA_CACHE_CONTROL};
use crate::freshness::{format_http_date, Facts, StoredView};
use crate::headers::remove_hop_by_hop;
use crate::key::{Vary, VaryValues};
use crate::storable::StorePlan;

/// `Surrogate-Key`: space-separated tags of a response (Fastly's convention).
pub static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
/// `Cache-Tag`: comma-separated tags of a response (Cloudflare's convention).
pub static CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// A stored HTTP response.
///
/// Besides what is stored, it carries what the hit path reads, derived from the fields when it is built (by
/// [`new`](Self::new), [`from_parts`](Self::from_parts), [`decode`](Self::decode)) rather than on every hit:
/// the [`Facts`] of freshness, its `Vary`, and the header block an unvalidated answer starts from. The public
/// fields are read-only by contract: to change one, build a new response (the derived parts would not follow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The status.
    pub status: StatusCode,
    /// The header fields, without hop-by-hop fields.
    pub headers: HeaderMap,
    /// The content.
    pub body: Bytes,
    /// When the request that produced it was sent (Unix ms).
    pub request_time: UnixMillis,
    /// When the response arrived (Unix ms).
    pub response_time: UnixMillis,
    /// The request's values of the fields the response varies on.
    pub vary: VaryValues,
    facts: Facts,
    varies: Vary,
    downstream: HeaderMap,
}

impl StoredResponse {
    /// A response to store: hop-by-hop fields, `Connection`-listed fields and the plan's omitted fields are
    /// removed, and a missing `Date` is set to the response time.
    pub fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        request_time: UnixMillis,
        response_time: UnixMillis,
        vary: VaryValues,
        plan: &StorePlan,
    ) -> Self {
        remove_hop_by_hop(&mut headers);
        for name in &plan.omit {
            headers.remove(name);
        }
        if !headers.contains_key(DATE) {
            if let Ok(v) = HeaderValue::from_str(&format_http_date(response_time)) {
                headers.insert(DATE, v);
            }
        }
        Self::from_parts(status, headers, body, request_time, response_time, vary)
    }

    /// A response from fields that are already what is stored (a decoded entry, a 304 update).
    pub fn from_parts(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        request_time: UnixMillis,
        response_time: UnixMillis,
        vary: VaryValues,
    ) -> Self {
        let facts = Facts::parse(status, &headers, request_time, response_time);
        let varies = Vary::from_headers(&headers);
        // An answer without a successful validation: `Strata-Cache-Control` targets this tier only (RFC 9213)
        // and the fields `no-cache="…"` names are not sent (RFC 9111 §5.2.2.4).
        let mut downstream = headers.clone();
        downstream.remove(&STRATA_CACHE_CONTROL);
        if let Some(FieldList::Fields(fields)) = &facts.directives.no_cache {
            for f in fields {
                if let Ok(name) = HeaderName::from_bytes(f.as_bytes()) {
                    downstream.remove(name);
                }
            }
        }
        Self {
            status,
            headers,
            body,
            request_time,
            response_time,
            vary,
            facts,
            varies,
            downstream,
        }
    }

    /// The same response with `body` as its content.
    pub fn with_body(self, body: Bytes) -> Self {
        Self { body, ..self }
    }

    /// The freshness facts of its fields.
    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// Its `Vary`.
    pub fn varies(&self) -> &Vary {
        &self.varies
    }

    /// The header fields an answer from it starts from: without `Strata-Cache-Control`, and — unless
    /// `validated` (the answer to the request whose revalidation or fill it was) — without the fields
    /// `no-cache="…"` names.
    pub fn downstream_headers(&self, validated: bool) -> HeaderMap {
        if validated {
            let mut h = self.headers.clone();
            h.remove(&STRATA_CACHE_CONTROL);
            h
        } else {
            self.downstream.clone()
        }
    }

    /// The view [`crate::freshness::evaluate`] reads.
    pub fn view(&self) -> StoredView<'_> {
        StoredView {
            status: self.status,
            headers: &self.headers,
            request_time: self.request_time,
            response_time: self.response_time,
        }
    }

    /// The tags of `Surrogate-Key` and `Cache-Tag`, deduplicated, in order of appearance.
    pub fn tags(&self) -> Vec<String> {
        tags(&self.headers)
    }

    /// An estimate of the bytes it occupies, for the L1 budget.
    pub fn weight(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 16)
                .sum::<usize>()
            + self
                .vary
                .0
                .iter()
                .map(|(n, v)| n.len() + v.as_ref().map_or(0, String::len) + 16)
                .sum::<usize>()
            + 96
    }

    /// The binary form (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.weight() + 32);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.status.as_u16().to_le_bytes());
        out.extend_from_slice(&self.request_time.to_le_bytes());
        out.extend_from_slice(&self.response_time.to_le_bytes());
        out.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (name, value) in &self.headers {
            put_u16_bytes(&mut out, name.as_str().as_bytes());
            put_u32_bytes(&mut out, value.as_bytes());
        }
        out.extend_from_slice(&(self.vary.0.len() as u16).to_le_bytes());
        for (name, value) in &self.vary.0 {
            put_u16_bytes(&mut out, name.as_bytes());
            match value {
                Some(v) => {
                    out.push(1);
                    put_u32_bytes(&mut out, v.as_bytes());
                }
                None => {
                    out.push(0);
                    put_u32_bytes(&mut out, b"");
                }
            }
        }
        put_u32_bytes(&mut out, &self.body);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes [`encode`](Self::encode)'s bytes; any damage is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < MAGIC.len() + 1 + 4 {
            return Err(DecodeError::Truncated);
        }
        let (content, crc) = bytes.split_at(bytes.len() - 4);
        if content[..MAGIC.len()] != *MAGIC {
            return Err(DecodeError::Magic);
        }
        if content[MAGIC.len()] != VERSION {
            return Err(DecodeError::Version(content[MAGIC.len()]));
        }
        let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32fast::hash(content) != want {
            return Err(DecodeError::Checksum);
        }
        let mut r = Reader {
            b: &content[MAGIC.len() + 1..],
        };
        let status = StatusCode::from_u16(r.u16()?).map_err(|_| DecodeError::Invalid("status"))?;
        let request_time = r.u64()?;
        let response_time = r.u64()?;
        let n = r.u32()? as usize;
        // Every field takes at least 6 bytes: a count beyond what is left is damage, not an allocation.
        if n > r.b.len() / 6 {
            return Err(DecodeError::Truncated);
        }
        let mut headers = HeaderMap::with_capacity(n);
        for _ in 0..n {
            let name = HeaderName::from_bytes(r.u16_bytes()?)
                .map_err(|_| DecodeError::Invalid("field name"))?;
            let value = HeaderValue::from_bytes(r.u32_bytes()?)
                .map_err(|_| DecodeError::Invalid("field value"))?;
            headers.append(name, value);
        }
        let n = r.u16()? as usize;
        if n > r.b.len() / 7 {
            return Err(DecodeError::Truncated);
        }
        let mut vary = Vec::with_capacity(n);
        for _ in 0..n {
            let name = std::str::from_utf8(r.u16_bytes()?)
                .map_err(|_| DecodeError::Invalid("vary name"))?
                .to_string();
            let present = r.u8()?;
            let value = r.u32_bytes()?;
            let value = match present {
                0 if value.is_empty() => None,
                1 => Some(
                    std::str::from_utf8(value)
                        .map_err(|_| DecodeError::Invalid("vary value"))?
                        .to_string(),
                ),
                _ => return Err(DecodeError::Invalid("vary flag")),
            };
            vary.push((name, value));
        }
        let body = Bytes::copy_from_slice(r.u32_bytes()?);
        if !r.b.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(Self::from_parts(
            status,
            headers,
            body,
            request_time,
            response_time,
            VaryValues(vary),
        ))
    }
}

/// The tags of `Surrogate-Key` (space-separated) and `Cache-Tag` (comma-separated) in `headers`.
pub fn tags(headers: &HeaderMap) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |t: &str| {
        let t = t.trim();
        // A tag with whitespace inside (possible in `Cache-Tag`) is not indexed: internal tags have a space
        // (see `crate::purge`), so an origin cannot name one.
        if !t.is_empty() && !t.contains(char::is_whitespace) && !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    };
    for v in headers.get_all(&SURROGATE_KEY) {
        if let Ok(s) = v.to_str() {
            s.split([' ', '\t']).for_each(&mut push);
        }
    }
    for v in headers.get_all(&CACHE_TAG) {
        if let Ok(s) = v.to_str() {
            s.split(',').for_each(&mut push);
        }
    }
    out
}

const MAGIC: &[u8; 3] = b"SHR";
const VERSION: u8 = 1;

fn put_u16_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let len = b.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&b[..len]);
}

fn put_u32_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let len = b.len().min(u32::MAX as usize);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&b[..len]);
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn u16_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn u32_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// Why bytes are not a [`StoredResponse`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than its lengths say.
    #[error("truncated")]
    Truncated,
    /// Not a stored response.
    #[error("bad magic")]
    Magic,
    /// A format version this build does not read.
    #[error("unknown format version {0}")]
    Version(u8),
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// A part is not valid HTTP.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// Bytes after the body.
    #[error("trailing bytes")]
    TrailingBytes,
}

/// The [`Codec`](strata::codec::Codec) of a `Namespace<StoredResponse>` with L2.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoredCodec;

impl strata::codec::Codec<StoredResponse> for StoredCodec {
    fn encode(&self, value: &StoredResponse) -> Result<Vec<u8>, String> {
        Ok(value.encode())
    }
    fn decode(&self, bytes: &[u8]) -> Result<StoredResponse, String> {
        StoredResponse::decode(bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use strata::codec::Codec;

    fn sample() -> StoredResponse {
        let mut h = HeaderMap::new();
        h.append("content-type", HeaderValue::from_static("text/plain"));
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append("set-cookie", HeaderValue::from_static("b=2"));
        h.append("connection", HeaderValue::from_static("x-hop"));
        h.append("x-hop", HeaderValue::from_static("1"));
        h.append("transfer-encoding", HeaderValue::from_static("chunked"));
        h.append("x-private", HeaderValue::from_static("secret"));
        h.append("surrogate-key", HeaderValue::from_static("a b  c"));
        h.append("cache-tag", HeaderValue::from_static("c, d"));
        StoredResponse::new(
            StatusCode::OK,
            h,
            Bytes::from_static(b"hello"),
            1_700_000_000_000,
            1_700_000_000_250,
            VaryValues(vec![
                ("accept".into(), Some("text/html".into())),
                ("x-a".into(), None),
            ]),
            &StorePlan {
                omit: vec![HeaderName::from_static("x-private")],
            },
        )
    }

    #[test]
    fn rfc9111_3_1_hop_by_hop_connection_listed_and_private_fields_are_not_stored() {
        let s = sample();
        for gone in ["connection", "x-hop", "transfer-encoding", "x-private"] {
            assert!(!s.headers.contains_key(gone), "{gone}");
        }
        assert_eq!(s.headers.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn rfc9110_6_6_1_a_missing_date_is_the_response_time() {
        let s = sample();
        assert_eq!(s.headers[DATE], "Tue, 14 Nov 2023 22:13:20 GMT");
    }

    #[test]
    fn tags_from_surrogate_key_and_cache_tag() {
        assert_eq!(sample().tags(), vec!["a", "b", "c", "d"]);
    }

    #[test]
    fn encoding_round_trips_with_repeated_fields_and_vary() {
        let s = sample();
        let bytes = StoredCodec.encode(&s).unwrap();
        assert_eq!(StoredCodec.decode(&bytes).unwrap(), s);
    }

    #[test]
    fn corrupt_bytes_are_errors() {
        let bytes = sample().encode();
        assert_eq!(StoredResponse::decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(
            StoredResponse::decode(b"XYZ\x01\0\0\0\0"),
            Err(DecodeError::Magic)
        );
        let mut v = bytes.clone();
        v[3] = 9;
        assert_eq!(StoredResponse::decode(&v), Err(DecodeError::Version(9)));
        for i in 4..bytes.len() {
            let mut v = bytes.clone();
            v[i] ^= 0x40;
            assert!(StoredResponse::decode(&v).is_err(), "flip at {i}");
        }
        assert!(StoredResponse::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    /// Bytes with a valid checksum but impossible content: the structure checks, not the CRC, refuse them.
    #[test]
    fn structurally_damaged_bytes_with_a_valid_checksum_are_errors() {
        let seal = |mut body: Vec<u8>| {
            let crc = crc32fast::hash(&body);
            body.extend_from_slice(&crc.to_le_bytes());
            body
        };
        let head = |status: u16| {
            let mut v = b"SHR\x01".to_vec();
            v.extend_from_slice(&status.to_le_bytes());
            v.extend_from_slice(&[0; 16]);
            v
        };
        let mut bad_status = head(42);
        bad_status.extend_from_slice(&[0; 10]);
        assert!(StoredResponse::decode(&seal(bad_status)).is_err());
        let mut huge_count = head(200);
        huge_count.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            StoredResponse::decode(&seal(huge_count)),
            Err(DecodeError::Truncated)
        );
        let mut bad_name = head(200);
        bad_name.extend_from_slice(&1u32.to_le_bytes());
        bad_name.extend_from_slice(&2u16.to_le_bytes());
        bad_name.extend_from_slice(b"a ");
        bad_name.extend_from_slice(&0u32.to_le_bytes());
        bad_name.extend_from_slice(&[0; 6]);
        assert_eq!(
            StoredResponse::decode(&seal(bad_name)),
            Err(DecodeError::Invalid("field name"))
        );
        let mut trailing = head(200);
        trailing.extend_from_slice(&[0; 4 + 2 + 4 + 1]);
        assert_eq!(
            StoredResponse::decode(&seal(trailing)),
            Err(DecodeError::TrailingBytes)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = StoredResponse::decode(&bytes);
            let mut sealed = b"SHR\x01".to_vec();
            sealed.extend_from_slice(&bytes);
            let crc = crc32fast::hash(&sealed);
            sealed.extend_from_slice(&crc.to_le_bytes());
            let _ = StoredResponse::decode(&sealed);
        }

        #[test]
        fn round_trip(status in 100u16..1000, body in proptest::collection::vec(any::<u8>(), 0..64),
                      fields in proptest::collection::vec(("[a-z][a-z0-9-]{0,10}", "[ -~]{0,20}"), 0..8),
                      t in any::<u64>()) {
            let mut h = HeaderMap::new();
            for (n, v) in &fields {
                if crate::headers::HOP_BY_HOP.contains(&n.as_str()) { continue; }
                h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v.trim()).unwrap());
            }
            h.insert(DATE, HeaderValue::from_static("Tue, 14 Nov 2023 22:13:20 GMT"));
            let s = StoredResponse::new(StatusCode::from_u16(status).unwrap(), h, Bytes::from(body), t, t, VaryValues::default(), &StorePlan::default());
            prop_assert_eq!(StoredResponse::decode(&s.encode()).unwrap(), s);
        }
    }
}
