//! A decoder for the `pgoutput` logical-decoding messages (protocol version 1) that PostgreSQL sends inside
//! `XLogData`: relations, inserts, updates, deletes, truncates, and the framing messages around them.
//!
//! Written here rather than taken from a crate: `pgwire-replication` carries the bytes but does not decode
//! tuples, and the decoders that exist come bundled with their own connection handling. Strata needs only the
//! row images (text format) and must turn *every* malformed byte into a [`DecodeError`] that names the message
//! and the offset — never a panic — because an undecodable change makes the consumer invalidate conservatively
//! rather than stop. A proptest feeds arbitrary and mutated bytes through [`decode`].
//!
//! Reference: PostgreSQL, "Logical Replication Message Formats" (protocol chapter 55.9).

use std::fmt;

/// One column of a row image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    /// SQL NULL.
    Null,
    /// A TOASTed value that did not change (its value is not sent).
    Unchanged,
    /// The value in text format.
    Text(String),
    /// The value in binary format (only with `binary 'true'`, which Strata does not request).
    Binary(Vec<u8>),
}

/// One column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity (the primary key, by default).
    pub key: bool,
    /// The column name.
    pub name: String,
    /// The type OID.
    pub type_oid: u32,
}

/// A relation (table) description; sent before the first change of the table in a session and after DDL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The relation OID.
    pub oid: u32,
    /// The schema (`pg_catalog` when PostgreSQL sends an empty name).
    pub schema: String,
    /// The table name.
    pub name: String,
    /// The replica identity setting: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// The columns in table order.
    pub columns: Vec<Column>,
}

/// Which old image an update or delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// The replica-identity (key) columns only; other columns are NULL.
    Key,
    /// The whole old row (`REPLICA IDENTITY FULL`).
    Full,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Transaction start.
    Begin {
        /// The commit LSN of the transaction.
        final_lsn: u64,
        /// The transaction id.
        xid: u32,
    },
    /// Transaction end.
    Commit {
        /// The commit LSN.
        lsn: u64,
        /// The end LSN of the transaction.
        end_lsn: u64,
    },
    /// Where the transaction came from (replication origins); ignored.
    Origin,
    /// A type description; ignored (Strata reads values in text format).
    Type,
    /// A `pg_logical_emit_message` payload; ignored.
    LogicalMessage,
    /// A relation description.
    Relation(Relation),
    /// A new row.
    Insert {
        /// The relation OID.
        oid: u32,
        /// The row.
        new: Vec<Datum>,
    },
    /// A changed row.
    Update {
        /// The relation OID.
        oid: u32,
        /// The old image, when PostgreSQL sends one (the key changed, or `REPLICA IDENTITY FULL`).
        old: Option<(OldKind, Vec<Datum>)>,
        /// The new row.
        new: Vec<Datum>,
    },
    /// A deleted row.
    Delete {
        /// The relation OID.
        oid: u32,
        /// The old image (key columns, or the full row).
        old: (OldKind, Vec<Datum>),
    },
    /// `TRUNCATE` of one or more relations.
    Truncate {
        /// The relation OIDs.
        oids: Vec<u32>,
    },
}

/// Why bytes are not a valid pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The message type byte (`?` when the message is empty).
    pub tag: char,
    /// The byte offset at which decoding failed.
    pub offset: usize,
    /// What was wrong.
    pub problem: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "undecodable pgoutput message '{}' at byte {}: {}",
            self.tag, self.offset, self.problem
        )
    }
}

impl std::error::Error for DecodeError {}

/// The largest column count accepted (PostgreSQL's limit is 1,600).
const MAX_COLUMNS: usize = 1_600;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    tag: char,
}

impl<'a> Reader<'a> {
    fn fail<T>(&self, problem: impl Into<String>) -> Result<T, DecodeError> {
        Err(DecodeError {
            tag: self.tag,
            offset: self.pos,
            problem: problem.into(),
        })
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        match self.buf.get(self.pos..self.pos.saturating_add(n)) {
            Some(s) if self.pos.checked_add(n).is_some() => {
                self.pos += n;
                Ok(s)
            }
            _ => self.fail(format!(
                "{what}: needs {n} bytes, {} left",
                self.buf.len().saturating_sub(self.pos)
            )),
        }
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos.min(self.buf.len())..];
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return self.fail(format!("{what}: string without its NUL terminator"));
        };
        let s = match std::str::from_utf8(&rest[..end]) {
            Ok(s) => s.to_owned(),
            Err(_) => return self.fail(format!("{what}: not UTF-8")),
        };
        self.pos += end + 1;
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<Datum>, DecodeError> {
        let n = usize::from(self.u16("column count")?);
        if n > MAX_COLUMNS {
            return self.fail(format!("{n} columns (at most {MAX_COLUMNS})"));
        }
        let mut cols = Vec::with_capacity(n);
        for i in 0..n {
            let kind = self.u8("column kind")?;
            cols.push(match kind {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' | b'b' => {
                    let len = self.u32("value length")? as usize;
                    let bytes = self.take(len, "value")?;
                    if kind == b't' {
                        match std::str::from_utf8(bytes) {
                            Ok(s) => Datum::Text(s.to_owned()),
                            Err(_) => {
                                return self.fail(format!("column {i}: text value not UTF-8"))
                            }
                        }
                    } else {
                        Datum::Binary(bytes.to_vec())
                    }
                }
                other => {
                    return self.fail(format!(
                        "column {i}: unknown column kind {:?}",
                        char::from(other)
                    ))
                }
            });
        }
        Ok(cols)
    }

    fn old_kind(&mut self, b: u8) -> Result<OldKind, DecodeError> {
        match b {
            b'K' => Ok(OldKind::Key),
            b'O' => Ok(OldKind::Full),
            other => self.fail(format!(
                "expected 'K' or 'O' before the old row, got {:?}",
                char::from(other)
            )),
        }
    }

    fn expect(&mut self, want: u8, what: &str) -> Result<(), DecodeError> {
        let got = self.u8(what)?;
        if got != want {
            return self.fail(format!(
                "{what}: expected {:?}, got {:?}",
                char::from(want),
                char::from(got)
            ));
        }
        Ok(())
    }
}

/// Decodes one pgoutput message. Trailing bytes are an error (they mean the format is not what we think).
pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    let Some(&first) = buf.first() else {
        return Err(DecodeError {
            tag: '?',
            offset: 0,
            problem: "empty message".into(),
        });
    };
    let mut r = Reader {
        buf,
        pos: 1,
        tag: char::from(first),
    };
    let msg = match first {
        b'B' => {
            let final_lsn = r.u64("final LSN")?;
            let _ts = r.u64("commit timestamp")?;
            let xid = r.u32("xid")?;
            Message::Begin { final_lsn, xid }
        }
        b'C' => {
            let _flags = r.u8("flags")?;
            let lsn = r.u64("commit LSN")?;
            let end_lsn = r.u64("end LSN")?;
            let _ts = r.u64("commit timestamp")?;
            Message::Commit { lsn, end_lsn }
        }
        b'O' => {
            r.u64("origin LSN")?;
            r.string("origin name")?;
            Message::Origin
        }
        b'Y' => {
            r.u32("type OID")?;
            r.string("type schema")?;
            r.string("type name")?;
            Message::Type
        }
        b'M' => {
            r.u8("flags")?;
            r.u64("message LSN")?;
            r.string("prefix")?;
            let len = r.u32("content length")? as usize;
            r.take(len, "content")?;
            Message::LogicalMessage
        }
        b'R' => {
            let oid = r.u32("relation OID")?;
            let schema = r.string("schema")?;
            let name = r.string("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let n = usize::from(r.u16("column count")?);
            if n > MAX_COLUMNS {
                return r.fail(format!("{n} columns (at most {MAX_COLUMNS})"));
            }
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                let cname = r.string("column name")?;
                let type_oid = r.u32("column type")?;
                let _typmod = r.u32("column type modifier")?;
                columns.push(Column {
                    key: flags & 1 == 1,
                    name: cname,
                    type_oid,
                });
            }
            Message::Relation(Relation {
                oid,
                schema: if schema.is_empty() {
                    "pg_catalog".into()
                } else {
                    schema
                },
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let oid = r.u32("relation OID")?;
            r.expect(b'N', "new row marker")?;
            Message::Insert {
                oid,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let oid = r.u32("relation OID")?;
            let marker = r.u8("row marker")?;
            let old = if marker == b'N' {
                None
            } else {
                let kind = r.old_kind(marker)?;
                let old = r.tuple()?;
                r.expect(b'N', "new row marker")?;
                Some((kind, old))
            };
            Message::Update {
                oid,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let oid = r.u32("relation OID")?;
            let marker = r.u8("row marker")?;
            let kind = r.old_kind(marker)?;
            Message::Delete {
                oid,
                old: (kind, r.tuple()?),
            }
        }
        b'T' => {
            let n = r.u32("relation count")? as usize;
            let _options = r.u8("options")?;
            if n > buf.len() / 4 {
                return r.fail(format!("{n} relations in a {}-byte message", buf.len()));
            }
            let mut oids = Vec::with_capacity(n);
            for _ in 0..n {
                oids.push(r.u32("relation OID")?);
            }
            Message::Truncate { oids }
        }
        other => {
            return Err(DecodeError {
                tag: char::from(other),
                offset: 0,
                problem: "unknown message type".into(),
            })
        }
    };
    if r.pos != buf.len() {
        return r.fail(format!("{} trailing bytes", buf.len() - r.pos));
    }
    Ok(msg)
}

/// An encoder for tests: the inverse of [`decode`] for the row-carrying messages.
#[doc(hidden)]
pub mod encode {
    use super::{Datum, OldKind, Relation};

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn tuple(out: &mut Vec<u8>, cols: &[Datum]) {
        out.extend_from_slice(&(cols.len() as u16).to_be_bytes());
        for c in cols {
            match c {
                Datum::Null => out.push(b'n'),
                Datum::Unchanged => out.push(b'u'),
                Datum::Text(s) => {
                    out.push(b't');
                    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                Datum::Binary(b) => {
                    out.push(b'b');
                    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }

    /// A Relation message.
    pub fn relation(r: &Relation) -> Vec<u8> {
        let mut out = vec![b'R'];
        out.extend_from_slice(&r.oid.to_be_bytes());
        string(&mut out, &r.schema);
        string(&mut out, &r.name);
        out.push(r.replica_identity);
        out.extend_from_slice(&(r.columns.len() as u16).to_be_bytes());
        for c in &r.columns {
            out.push(u8::from(c.key));
            string(&mut out, &c.name);
            out.extend_from_slice(&c.type_oid.to_be_bytes());
            out.extend_from_slice(&(-1i32).to_be_bytes());
        }
        out
    }

    /// An Insert message.
    pub fn insert(oid: u32, new: &[Datum]) -> Vec<u8> {
        let mut out = vec![b'I'];
        out.extend_from_slice(&oid.to_be_bytes());
        out.push(b'N');
        tuple(&mut out, new);
        out
    }

    /// An Update message.
    pub fn update(oid: u32, old: Option<(OldKind, &[Datum])>, new: &[Datum]) -> Vec<u8> {
        let mut out = vec![b'U'];
        out.extend_from_slice(&oid.to_be_bytes());
        if let Some((kind, old)) = old {
            out.push(match kind {
                OldKind::Key => b'K',
                OldKind::Full => b'O',
            });
            tuple(&mut out, old);
        }
        out.push(b'N');
        tuple(&mut out, new);
        out
    }

    /// A Delete message.
    pub fn delete(oid: u32, kind: OldKind, old: &[Datum]) -> Vec<u8> {
        let mut out = vec![b'D'];
        out.extend_from_slice(&oid.to_be_bytes());
        out.push(match kind {
            OldKind::Key => b'K',
            OldKind::Full => b'O',
        });
        tuple(&mut out, old);
        out
    }

    /// A Truncate message.
    pub fn truncate(oids: &[u32]) -> Vec<u8> {
        let mut out = vec![b'T'];
        out.extend_from_slice(&(oids.len() as u32).to_be_bytes());
        out.push(0);
        for o in oids {
            out.extend_from_slice(&o.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn product() -> Relation {
        Relation {
            oid: 16384,
            schema: "public".into(),
            name: "product".into(),
            replica_identity: b'd',
            columns: vec![
                Column {
                    key: true,
                    name: "id".into(),
                    type_oid: 23,
                },
                Column {
                    key: false,
                    name: "price".into(),
                    type_oid: 1700,
                },
            ],
        }
    }

    fn text(s: &str) -> Datum {
        Datum::Text(s.into())
    }

    #[test]
    fn decodes_each_row_message() {
        let rel = product();
        assert_eq!(
            decode(&encode::relation(&rel)).unwrap(),
            Message::Relation(rel)
        );
        let new = vec![text("7"), text("99.00")];
        assert_eq!(
            decode(&encode::insert(16384, &new)).unwrap(),
            Message::Insert {
                oid: 16384,
                new: new.clone()
            }
        );
        let old = vec![text("7"), Datum::Null];
        assert_eq!(
            decode(&encode::update(16384, Some((OldKind::Key, &old)), &new)).unwrap(),
            Message::Update {
                oid: 16384,
                old: Some((OldKind::Key, old.clone())),
                new: new.clone()
            }
        );
        assert_eq!(
            decode(&encode::update(16384, None, &new)).unwrap(),
            Message::Update {
                oid: 16384,
                old: None,
                new: new.clone()
            }
        );
        assert_eq!(
            decode(&encode::delete(16384, OldKind::Full, &new)).unwrap(),
            Message::Delete {
                oid: 16384,
                old: (OldKind::Full, new)
            }
        );
        assert_eq!(
            decode(&encode::truncate(&[1, 2])).unwrap(),
            Message::Truncate { oids: vec![1, 2] }
        );
    }

    #[test]
    fn empty_schema_means_pg_catalog() {
        let mut rel = product();
        rel.schema = String::new();
        let Message::Relation(got) = decode(&encode::relation(&rel)).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(got.schema, "pg_catalog");
    }

    #[test]
    fn errors_name_the_message_and_offset() {
        let mut bytes = encode::insert(16384, &[text("7")]);
        bytes.truncate(bytes.len() - 1);
        let e = decode(&bytes).unwrap_err();
        assert_eq!(e.tag, 'I');
        assert!(e.problem.contains("value"), "{e}");
        let e = decode(b"Zjunk").unwrap_err();
        assert_eq!(e.problem, "unknown message type");
        let mut bytes = encode::insert(16384, &[text("7")]);
        bytes.push(0);
        assert!(decode(&bytes).unwrap_err().problem.contains("trailing"));
        assert!(decode(&[]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn rows_round_trip_and_any_truncation_is_detected(
            values in proptest::collection::vec(proptest::option::of("[a-z0-9 ]{0,12}"), 0..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let new: Vec<Datum> = values.iter().map(|v| v.as_ref().map_or(Datum::Null, |s| text(s))).collect();
            let bytes = encode::update(9, Some((OldKind::Full, &new)), &new);
            prop_assert_eq!(
                decode(&bytes).unwrap(),
                Message::Update { oid: 9, old: Some((OldKind::Full, new.clone())), new }
            );
            let at = cut.index(bytes.len());
            prop_assert!(decode(&bytes[..at]).is_err());
        }
    }
}
