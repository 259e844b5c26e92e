//! Byte ranges answered from a stored complete response (RFC 9110 §14).
//!
//! A stored `200` holds the whole representation, so a `GET` with `Range` is answered from it without the origin:
//! - one range (`bytes=a-b`, `bytes=a-`, `bytes=-n`, the unit case-insensitive) that overlaps the body → `206` with
//!   `Content-Range: bytes a-b/len` and just those bytes (§14.2, §15.3.7);
//! - a range that starts at or past the end (or a suffix of an empty body) → `416` with `Content-Range: bytes
//!   */len` (§15.5.17);
//! - several ranges, another unit, or a field that does not parse → the whole `200`: a server "MAY ignore the
//!   Range header field" (§14.2), and one that does not understand it must;
//! - `If-Range` (§13.1.5): the range applies only if the validator matches the stored response — an entity tag
//!   by strong comparison, a date only when it equals a `Last-Modified` that is itself strong (at least a second
//!   older than `Date`); otherwise the whole `200`.
//!
//! Ranges apply to `GET` only (§14.2: a server MUST ignore `Range` for other methods).

use http::header::{HeaderMap, DATE, IF_RANGE, LAST_MODIFIED, RANGE};

use crate::conditional::{etag, EntityTag};
use crate::freshness::parse_http_date;

/// What to send for a request's `Range` against a complete body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole representation (no `Range`, or one that is ignored).
    Full,
    /// `206`: bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// `416`: the range lies past the end.
    Unsatisfiable,
}

/// Decides the answer to `request`'s `Range` from a stored complete response with `stored` fields and a body of
/// `len` bytes (see the module docs).
pub fn evaluate(request: &HeaderMap, stored: &HeaderMap, len: u64) -> RangeAnswer {
    let mut ranges = request.get_all(RANGE).iter();
    let (Some(range), None) = (ranges.next(), ranges.next()) else {
        return RangeAnswer::Full;
    };
    if let Some(if_range) = request.get(IF_RANGE) {
        if !if_range_matches(if_range.as_bytes(), stored) {
            return RangeAnswer::Full;
        }
    }
    parse(range.as_bytes(), len)
}

/// One `bytes` range against `len` bytes.
fn parse(value: &[u8], len: u64) -> RangeAnswer {
    let value = value.trim_ascii();
    let Some(spec) = value
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case(b"bytes="))
        .map(|_| value[6..].trim_ascii())
    else {
        return RangeAnswer::Full;
    };
    if spec.contains(&b',') {
        return RangeAnswer::Full;
    }
    let Some(dash) = spec.iter().position(|b| *b == b'-') else {
        return RangeAnswer::Full;
    };
    let (first, last) = (&spec[..dash], &spec[dash + 1..]);
    match (number(first), number(last)) {
        // bytes=-n: the last n bytes.
        (None, Some(n)) if first.is_empty() => {
            if n == 0 || len == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial {
                    start: len - n.min(len),
                    end: len - 1,
                }
            }
        }
        (Some(start), None) if last.is_empty() => satisfiable(start, len - 1, len),
        (Some(start), Some(end)) if end >= start => {
            satisfiable(start, end.min(len.saturating_sub(1)), len)
        }
        _ => RangeAnswer::Full,
    }
}

fn satisfiable(start: u64, end: u64, len: u64) -> RangeAnswer {
    if start >= len {
        RangeAnswer::Unsatisfiable
    } else {
        RangeAnswer::Partial { start, end }
    }
}

/// `1*DIGIT`, or `None`.
fn number(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Whether `If-Range` names the stored representation (§13.1.5).
fn if_range_matches(value: &[u8], stored: &HeaderMap) -> bool {
    let value = value.trim_ascii();
    if value.first() == Some(&b'"') || value.starts_with(b"W/") {
        return match (EntityTag::parse(value), etag(stored)) {
            (Some(asked), Some(have)) => asked.strong_eq(&have),
            _ => false,
        };
    }
    let date = |name| stored.get(name).and_then(|v| parse_http_date(v.as_bytes()));
    match (parse_http_date(value), date(LAST_MODIFIED), date(DATE)) {
        // A Last-Modified at least a second before Date is a strong validator (RFC 9110 §8.8.2.2).
        (Some(asked), Some(modified), Some(sent)) => asked == modified && modified < sent,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    use crate::testing::fields as h;

    fn range(v: &str, len: u64) -> RangeAnswer {
        evaluate(&h(&[("range", v)]), &HeaderMap::new(), len)
    }

    #[test]
    fn rfc9110_14_1_2_byte_range_forms() {
        use RangeAnswer::*;
        assert_eq!(range("bytes=0-1", 10), Partial { start: 0, end: 1 });
        assert_eq!(range("bytes=2-", 10), Partial { start: 2, end: 9 });
        assert_eq!(range("bytes=-3", 10), Partial { start: 7, end: 9 });
        assert_eq!(range("bytes=-30", 10), Partial { start: 0, end: 9 });
        assert_eq!(range("bytes=5-100", 10), Partial { start: 5, end: 9 });
        assert_eq!(range("BYTES=0-0", 10), Partial { start: 0, end: 0 });
    }

    #[test]
    fn rfc9110_15_5_17_a_range_past_the_end_is_416() {
        assert_eq!(range("bytes=10-", 10), RangeAnswer::Unsatisfiable);
        assert_eq!(range("bytes=10-20", 10), RangeAnswer::Unsatisfiable);
        assert_eq!(range("bytes=-0", 10), RangeAnswer::Unsatisfiable);
        assert_eq!(range("bytes=-5", 0), RangeAnswer::Unsatisfiable);
    }

    #[test]
    fn rfc9110_14_2_what_is_not_one_byte_range_is_ignored() {
        for v in [
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=5-2",
            "bytes=a-b",
            "bytes=",
            "bytes=-",
            "0-1",
        ] {
            assert_eq!(range(v, 10), RangeAnswer::Full, "{v:?}");
        }
        let two = h(&[("range", "bytes=0-1"), ("range", "bytes=2-3")]);
        assert_eq!(evaluate(&two, &HeaderMap::new(), 10), RangeAnswer::Full);
    }

    #[test]
    fn rfc9110_13_1_5_if_range_needs_a_strong_match() {
        let stored = h(&[
            ("etag", "\"v1\""),
            ("last-modified", "Tue, 14 Nov 2023 22:00:00 GMT"),
            ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ]);
        let ask = |if_range: &str| {
            evaluate(
                &h(&[("range", "bytes=0-1"), ("if-range", if_range)]),
                &stored,
                10,
            )
        };
        assert_eq!(ask("\"v1\""), RangeAnswer::Partial { start: 0, end: 1 });
        assert_eq!(ask("\"v2\""), RangeAnswer::Full);
        assert_eq!(ask("W/\"v1\""), RangeAnswer::Full);
        assert_eq!(
            ask("Tue, 14 Nov 2023 22:00:00 GMT"),
            RangeAnswer::Partial { start: 0, end: 1 }
        );
        assert_eq!(ask("Tue, 14 Nov 2023 21:00:00 GMT"), RangeAnswer::Full);
        assert_eq!(ask("garbage"), RangeAnswer::Full);
    }

    proptest! {
        #[test]
        fn any_range_field_gives_an_answer_inside_the_body(v in ".{0,40}", len in 0u64..1000) {
            if let Ok(value) = HeaderValue::from_str(&v) {
                let mut m = HeaderMap::new();
                m.insert(RANGE, value);
                if let RangeAnswer::Partial { start, end } = evaluate(&m, &HeaderMap::new(), len) {
                    prop_assert!(start <= end && end < len);
                }
            }
        }
    }
}
