//! Structured Field Values (RFC 8941): the strict Dictionary parser the targeted cache fields need (RFC 9213 §2.1)
//! and the serialisers `Cache-Status` (RFC 9211) is written with.
//!
//! Parsing follows RFC 8941 §4.2 to the letter: leading and trailing SP are discarded, members are separated by
//! `OWS "," OWS`, keys are `lcalpha / "*"` then `lcalpha / DIGIT / "_" / "-" / "." / "*"`, no whitespace around
//! `=`, a duplicate key replaces the earlier value (its position stays), a trailing comma or any other leftover
//! is a failure. Integers have at most 15 digits, decimals at most 12 integer and 3 fraction digits. Any failure
//! fails the whole field.

use std::fmt::Write;

/// A bare item (RFC 8941 §3.3).
#[derive(Debug, Clone, PartialEq)]
pub enum BareItem {
    /// An sf-integer.
    Integer(i64),
    /// An sf-decimal.
    Decimal(f64),
    /// An sf-string (unescaped).
    String(String),
    /// An sf-token.
    Token(String),
    /// An sf-binary (decoded bytes are not needed here: kept as the base64 text).
    ByteSequence(String),
    /// An sf-boolean.
    Boolean(bool),
}

/// An item with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The value.
    pub bare: BareItem,
    /// Its parameters, in order.
    pub params: Vec<(String, BareItem)>,
}

/// A dictionary member's value: an item or an inner list.
#[derive(Debug, Clone, PartialEq)]
pub enum ListEntry {
    /// An item.
    Item(Item),
    /// An inner list with its parameters.
    InnerList(Vec<Item>, Vec<(String, BareItem)>),
}

/// Why a structured field failed to parse (the offset of the failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError(pub usize);

/// Parses an sf-dictionary.
pub fn parse_dictionary(input: &[u8]) -> Result<Vec<(String, ListEntry)>, ParseError> {
    let mut p = Parser { s: input, i: 0 };
    p.skip_sp();
    let mut out: Vec<(String, ListEntry)> = Vec::new();
    while !p.done() {
        let key = p.key()?;
        let value = if p.peek() == Some(b'=') {
            p.i += 1;
            p.list_entry()?
        } else {
            ListEntry::Item(Item {
                bare: BareItem::Boolean(true),
                params: p.params()?,
            })
        };
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => out.push((key, value)),
        }
        p.skip_ows();
        if p.done() {
            return Ok(out);
        }
        if p.peek() != Some(b',') {
            return Err(ParseError(p.i));
        }
        p.i += 1;
        p.skip_ows();
        if p.done() {
            return Err(ParseError(p.i));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        // Trailing SP is discarded (RFC 8941 §4.2).
        self.s[self.i..].iter().all(|&b| b == b' ')
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }
    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn err<T>(&self) -> Result<T, ParseError> {
        Err(ParseError(self.i))
    }

    fn key(&mut self) -> Result<String, ParseError> {
        match self.peek() {
            Some(b) if b.is_ascii_lowercase() || b == b'*' => {}
            _ => return self.err(),
        }
        let start = self.i;
        while let Some(b) = self.peek() {
            if b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b) {
                self.i += 1;
            } else {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn list_entry(&mut self) -> Result<ListEntry, ParseError> {
        if self.peek() == Some(b'(') {
            self.i += 1;
            let mut items = Vec::new();
            loop {
                self.skip_sp();
                if self.peek() == Some(b')') {
                    self.i += 1;
                    let params = self.params()?;
                    return Ok(ListEntry::InnerList(items, params));
                }
                let bare = self.bare_item()?;
                let params = self.params()?;
                items.push(Item { bare, params });
                match self.peek() {
                    Some(b' ' | b')') => {}
                    _ => return self.err(),
                }
            }
        }
        let bare = self.bare_item()?;
        let params = self.params()?;
        Ok(ListEntry::Item(Item { bare, params }))
    }

    fn params(&mut self) -> Result<Vec<(String, BareItem)>, ParseError> {
        let mut out: Vec<(String, BareItem)> = Vec::new();
        while self.peek() == Some(b';') {
            self.i += 1;
            self.skip_sp();
            let key = self.key()?;
            let value = if self.peek() == Some(b'=') {
                self.i += 1;
                self.bare_item()?
            } else {
                BareItem::Boolean(true)
            };
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => out.push((key, value)),
            }
        }
        Ok(out)
    }

    fn bare_item(&mut self) -> Result<BareItem, ParseError> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'"') => self.string(),
            Some(b':') => self.bytes(),
            Some(b'?') => {
                self.i += 1;
                let b = match self.peek() {
                    Some(b'0') => false,
                    Some(b'1') => true,
                    _ => return self.err(),
                };
                self.i += 1;
                Ok(BareItem::Boolean(b))
            }
            Some(b) if b.is_ascii_alphabetic() || b == b'*' => {
                let start = self.i;
                while let Some(b) = self.peek() {
                    if crate::directives::is_tchar(b) || b == b':' || b == b'/' {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                Ok(BareItem::Token(
                    String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
                ))
            }
            _ => self.err(),
        }
    }

    fn number(&mut self) -> Result<BareItem, ParseError> {
        let neg = self.peek() == Some(b'-');
        if neg {
            self.i += 1;
        }
        let start = self.i;
        let mut dot: Option<usize> = None;
        while let Some(b) = self.peek() {
            if b.is_ascii_digit() {
                self.i += 1;
            } else if b == b'.' && dot.is_none() {
                let int_digits = self.i - start;
                if int_digits == 0 || int_digits > 12 {
                    return self.err();
                }
                dot = Some(self.i);
                self.i += 1;
            } else {
                break;
            }
            let len = self.i - start;
            if (dot.is_none() && len > 15) || (dot.is_some() && len > 16) {
                return self.err();
            }
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| ParseError(start))?;
        match dot {
            None => {
                if text.is_empty() {
                    return self.err();
                }
                let n: i64 = text.parse().map_err(|_| ParseError(start))?;
                Ok(BareItem::Integer(if neg { -n } else { n }))
            }
            Some(d) => {
                let frac = self.i - d - 1;
                if frac == 0 || frac > 3 {
                    return self.err();
                }
                let n: f64 = text.parse().map_err(|_| ParseError(start))?;
                Ok(BareItem::Decimal(if neg { -n } else { n }))
            }
        }
    }

    fn string(&mut self) -> Result<BareItem, ParseError> {
        self.i += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return self.err(),
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(c as char);
                            self.i += 1;
                        }
                        _ => return self.err(),
                    }
                }
                Some(b'"') => {
                    self.i += 1;
                    return Ok(BareItem::String(out));
                }
                Some(c @ 0x20..=0x7e) => {
                    out.push(c as char);
                    self.i += 1;
                }
                Some(_) => return self.err(),
            }
        }
    }

    fn bytes(&mut self) -> Result<BareItem, ParseError> {
        self.i += 1;
        let start = self.i;
        while let Some(b) = self.peek() {
            match b {
                b':' => {
                    let text = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                    self.i += 1;
                    return Ok(BareItem::ByteSequence(text));
                }
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' | b'=' => self.i += 1,
                _ => return self.err(),
            }
        }
        self.err()
    }
}

/// Whether `s` serialises as an sf-token (RFC 8941 §3.3.4).
pub fn is_token(s: &str) -> bool {
    let b = s.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_alphabetic() || *c == b'*' => {}
        _ => return false,
    }
    b.iter()
        .all(|&c| crate::directives::is_tchar(c) || c == b':' || c == b'/')
}

/// Writes `s` as an sf-string (RFC 8941 §4.1.6): `"` and `\` escaped, characters outside printable ASCII
/// replaced by `?` (an sf-string cannot carry them).
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

/// Writes `n` as an sf-integer, clamped to its range (±999,999,999,999,999).
pub fn write_integer(out: &mut String, n: i64) {
    let _ = write!(
        out,
        "{}",
        n.clamp(-999_999_999_999_999, 999_999_999_999_999)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> Vec<(String, ListEntry)> {
        parse_dictionary(s.as_bytes()).unwrap()
    }

    fn int(n: i64) -> ListEntry {
        ListEntry::Item(Item {
            bare: BareItem::Integer(n),
            params: vec![],
        })
    }

    #[test]
    fn rfc8941_dictionary_members() {
        let d = ok("  a=1, b, c=?0;x, d=\"q\\\"s\", e=tok/x, f=(1 \"two\");p, g=:aGk=:, h=-1.5  ");
        assert_eq!(d[0], ("a".into(), int(1)));
        assert!(matches!(
            &d[1].1,
            ListEntry::Item(Item {
                bare: BareItem::Boolean(true),
                ..
            })
        ));
        assert!(
            matches!(&d[2].1, ListEntry::Item(Item { bare: BareItem::Boolean(false), params }) if params.len() == 1)
        );
        assert!(
            matches!(&d[3].1, ListEntry::Item(Item { bare: BareItem::String(s), .. }) if s == "q\"s")
        );
        assert!(
            matches!(&d[4].1, ListEntry::Item(Item { bare: BareItem::Token(s), .. }) if s == "tok/x")
        );
        assert!(
            matches!(&d[5].1, ListEntry::InnerList(items, p) if items.len() == 2 && p.len() == 1)
        );
        assert!(matches!(
            &d[6].1,
            ListEntry::Item(Item {
                bare: BareItem::ByteSequence(_),
                ..
            })
        ));
        assert!(
            matches!(&d[7].1, ListEntry::Item(Item { bare: BareItem::Decimal(x), .. }) if *x == -1.5)
        );
    }

    #[test]
    fn rfc8941_duplicate_keys_keep_the_last_value() {
        assert_eq!(
            ok("a=1, b=2, a=3"),
            vec![("a".into(), int(3)), ("b".into(), int(2))]
        );
    }

    #[test]
    fn rfc8941_failures() {
        for bad in [
            "a=1,",
            "A=1",
            "a =1",
            "a= 1",
            "a=1 b=2",
            "a=\"x",
            "a=1234567890123456",
            "a=1.2345",
            "&&",
            "a=(1",
            "a=?2",
            "a=:%:",
            ",a=1",
            "a=1.",
            "a=\u{7f}",
        ] {
            assert!(parse_dictionary(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert_eq!(ok("").len(), 0);
        assert_eq!(
            ok("a=123456789012345"),
            vec![("a".into(), int(123_456_789_012_345))]
        );
    }

    #[test]
    fn rfc8941_string_serialisation_escapes() {
        let mut s = String::new();
        write_string(&mut s, "a\"b\\c\u{e9}\n");
        assert_eq!(s, "\"a\\\"b\\\\c??\"");
        assert!(is_token("Strata") && !is_token("1x") && !is_token("a b"));
        let mut s = String::new();
        write_integer(&mut s, i64::MAX);
        assert_eq!(s, "999999999999999");
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse_dictionary(&bytes);
        }

        #[test]
        fn written_strings_parse_back(s in "[ -~]{0,40}") {
            let mut v = String::from("k=");
            write_string(&mut v, &s);
            let d = parse_dictionary(v.as_bytes()).unwrap();
            let parsed = matches!(&d[0].1, ListEntry::Item(Item { bare: BareItem::String(x), .. }) if *x == s);
            prop_assert!(parsed);
        }
    }
}
