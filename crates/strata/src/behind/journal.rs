//! The write-behind journal: an append-only file of checksummed records, so that an acknowledged write survives a
//! crash (`kill -9`, power loss with [`Fsync::Always`]).
//!
//! # Format
//! A file is `journal-<first seq>.log` and starts with the 8-byte [`FILE_MAGIC`]. Each record is
//! `magic u32 | len u32 | crc32 u32 | body`, little-endian, where `magic` is [`RECORD_MAGIC`] (so recovery can find
//! the next record after a damaged one), `crc32` covers `len` and `body`, and
//! `body = seq u64 | op u8 | [version u64] | ns_len u16 | ns | key_len u32 | key | value_len u32 | value`, where
//! `op` is 1 (upsert) or 2 (delete), or 3 / 4 for the same with the write's version (write-behind's hybrid logical
//! clock) following it. `seq` increases by one per record across restarts. A new file starts when the current
//! one passes [`JournalOptions::segment_bytes`], and files wholly below the checkpoint are deleted. Files written
//! before the magic numbers existed (no file header, records without `magic`) still read.
//!
//! # Durability
//! Appends go to one writer thread, which takes every record queued so far, writes them with one `write` and —
//! with [`Fsync::Always`] (the default) — one `fsync` (group commit), and only then acknowledges each append. So
//! "acknowledged" means "on disk", and concurrent writers share the cost of a sync. [`Fsync::EveryMs`] acknowledges
//! after the write and syncs on a timer: faster, and a crash of the machine (not of the process) may lose the last
//! interval.
//!
//! # Recovery
//! [`Journal::open`] reads every file and returns the records above the checkpoint — the highest sequence the
//! flusher has committed to the source, kept in `checkpoint` (written to a temporary file and renamed, so it is
//! never torn). What it can find wrong, and what it does:
//! - **A torn tail** — the end of a file holds a record cut short (a crash mid-append: fewer bytes than a header,
//!   a header whose length runs past the end, or only zeros): the file is truncated there, a warning is logged and
//!   the bytes are counted in [`Recovery::truncated_bytes`]. Nothing acknowledged is lost: the record was not
//!   acknowledged before it was whole on disk.
//! - **Damage** — a record that fails its checksum or does not parse with intact records after it, a complete
//!   record at the end that fails its checksum, a file that is not a journal, a file that is empty or starts later
//!   than its name says while records of it are above the checkpoint: acknowledged writes may be gone. Recovery
//!   resynchronises on the next [`RECORD_MAGIC`] and keeps every intact record after it, copies the damaged file
//!   to `<name>.damaged` (once), and reports each damage with its file and byte offset in [`Recovery::damage`].
//!   Unless [`JournalOptions::recover_damaged`] is set, `open` then fails with [`Error::JournalDamaged`] naming the
//!   first one: a start must not go on as if nothing happened. With it set, the damaged files are rewritten with
//!   their intact records (the copy keeps the original) and the journal opens.
//! - A checkpoint that is not a number, or so large that sequence numbers would wrap, is an error naming the file.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use parking_lot::Mutex;
use strata_core::Error;
use tokio::sync::oneshot;

/// The first 8 bytes of every journal file written by this version.
pub const FILE_MAGIC: [u8; 8] = *b"STRJRNL2";
/// The first 4 bytes of every record (little-endian `u32`): where recovery resynchronises after damage.
pub const RECORD_MAGIC: u32 = 0x5354_4a52;
/// `magic | len | crc`.
const HEADER: usize = 12;
/// A record of the journals written before [`FILE_MAGIC`]: `len | crc`.
const LEGACY_HEADER: usize = 8;
/// No record is larger than this (a longer length field means a torn or corrupt record).
pub const MAX_RECORD: usize = 64 << 20;
/// Checkpoints and sequence numbers stay below this: far beyond any real count, and far from wrapping.
const MAX_SEQ: u64 = 1 << 62;

/// When appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// `fsync` before acknowledging (group commit). The default.
    Always,
    /// Acknowledge after `write`; `fsync` every this many milliseconds.
    EveryMs(u64),
}

/// Journal settings.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// When appends reach the disk. Default: [`Fsync::Always`].
    pub fsync: Fsync,
    /// Start a new file after this many bytes. Default: 64 MiB.
    pub segment_bytes: u64,
    /// Open a damaged journal anyway, keeping every intact record (the server's `--recover-journal`). Default:
    /// `false`: damage stops the open with [`Error::JournalDamaged`].
    pub recover_damaged: bool,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            fsync: Fsync::Always,
            segment_bytes: 64 << 20,
            recover_damaged: false,
        }
    }
}

/// What a record does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write this (codec-encoded) value.
    Upsert(Vec<u8>),
    /// Delete the key.
    Delete,
}

/// One journaled write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the journal (increasing).
    pub seq: u64,
    /// The namespace.
    pub namespace: String,
    /// The key.
    pub key: String,
    /// The write.
    pub op: Op,
    /// The write's version, when it has one (write-behind writes do).
    pub version: Option<u64>,
}

impl Record {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
        out.extend_from_slice(&[0; HEADER - 4]);
        out.extend_from_slice(&self.seq.to_le_bytes());
        let (op, value): (u8, &[u8]) = match &self.op {
            Op::Upsert(v) => (1, v),
            Op::Delete => (2, &[]),
        };
        match self.version {
            None => out.push(op),
            Some(v) => {
                out.push(op + 2);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out.extend_from_slice(&(self.namespace.len() as u16).to_le_bytes());
        out.extend_from_slice(self.namespace.as_bytes());
        out.extend_from_slice(&(self.key.len() as u32).to_le_bytes());
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
        let body_len = (out.len() - start - HEADER) as u32;
        out[start + 4..start + 8].copy_from_slice(&body_len.to_le_bytes());
        let crc = checksum(&out[start + 4..start + 8], &out[start + HEADER..]);
        out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes one record at the start of `bytes`.
    fn decode(bytes: &[u8]) -> Decoded {
        let Some(head) = bytes.get(..HEADER) else {
            return Decoded::Short;
        };
        if u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) != RECORD_MAGIC {
            return Decoded::Bad;
        }
        let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            return Decoded::Bad;
        }
        let Some(body) = bytes.get(HEADER..HEADER + len) else {
            return Decoded::Short;
        };
        if checksum(&head[4..8], body) != crc {
            return Decoded::Bad;
        }
        match Self::parse_body(body) {
            Some(r) => Decoded::Ok(r, HEADER + len),
            None => Decoded::Bad,
        }
    }

    /// A record of a journal written before the magic numbers: `len u32 | crc32 u32 | body`, `crc32` over `body`.
    fn decode_legacy(bytes: &[u8]) -> Option<(Record, usize)> {
        let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
        if len > MAX_RECORD {
            return None;
        }
        let body = bytes.get(LEGACY_HEADER..LEGACY_HEADER + len)?;
        if crc32fast::hash(body) != crc {
            return None;
        }
        Some((Self::parse_body(body)?, LEGACY_HEADER + len))
    }

    fn parse_body(body: &[u8]) -> Option<Record> {
        let mut r = Reader(body);
        let seq = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let mut op = r.take(1)?[0];
        let version = if matches!(op, 3 | 4) {
            op -= 2;
            Some(u64::from_le_bytes(r.take(8)?.try_into().ok()?))
        } else {
            None
        };
        let ns_len = u16::from_le_bytes(r.take(2)?.try_into().ok()?) as usize;
        let namespace = String::from_utf8(r.take(ns_len)?.to_vec()).ok()?;
        let key_len = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        let key = String::from_utf8(r.take(key_len)?.to_vec()).ok()?;
        let value_len = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        let value = r.take(value_len)?.to_vec();
        if !r.0.is_empty() {
            return None;
        }
        let op = match op {
            1 => Op::Upsert(value),
            2 => Op::Delete,
            _ => return None,
        };
        Some(Record {
            seq,
            namespace,
            key,
            op,
            version,
        })
    }
}

/// What [`Record::decode`] found at an offset.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    /// A record, and the bytes it used.
    Ok(Record, usize),
    /// The bytes end before the record does (a torn write, if nothing follows).
    Short,
    /// Not a record: wrong magic, an impossible length, a failed checksum, or a body that does not parse.
    Bad,
}

fn checksum(len: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(body);
    h.finalize()
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
}

/// What [`Journal::open`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Records above the checkpoint, in order: writes acknowledged but not yet in the source.
    pub pending: Vec<Record>,
    /// Bytes cut off the tail of a file (a torn last write).
    pub truncated_bytes: u64,
    /// The checkpoint read.
    pub checkpoint: u64,
    /// Damage found (only when [`JournalOptions::recover_damaged`] let the open go on; else `open` failed).
    pub damage: Vec<Damage>,
}

/// One damaged place in a journal file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The file.
    pub path: PathBuf,
    /// The byte offset where the damage starts.
    pub offset: u64,
    /// How many bytes are unreadable from there (0: records are missing, not bytes).
    pub len: u64,
    /// What is wrong.
    pub problem: String,
}

impl Damage {
    fn error(&self, more: usize) -> Error {
        let others = match more {
            0 => String::new(),
            n => format!(" (and {n} more damaged place(s))"),
        };
        Error::JournalDamaged {
            path: self.path.display().to_string(),
            offset: self.offset,
            problem: format!(
                "{}{others}; a copy is kept as {}.damaged; start with --recover-journal to keep \
                 the intact records and go on",
                self.problem,
                self.path.display()
            ),
        }
    }
}

/// What one file held.
struct Scanned {
    records: Vec<Record>,
    /// Bytes to keep (the rest is a torn tail).
    keep: usize,
    damage: Vec<Damage>,
    /// Written before the magic numbers (no file header).
    legacy: bool,
}

/// Reads one file's records. A legacy file stops at its first unreadable record (its format cannot tell a torn
/// tail from damage); a current one resynchronises on [`RECORD_MAGIC`] (see the module docs).
fn scan(path: &Path, bytes: &[u8]) -> Scanned {
    let mut out = Scanned {
        records: Vec::new(),
        keep: bytes.len(),
        damage: Vec::new(),
        legacy: false,
    };
    let damage = |offset: usize, len: usize, problem: String| Damage {
        path: path.to_path_buf(),
        offset: offset as u64,
        len: len as u64,
        problem,
    };
    if bytes.is_empty() {
        return out;
    }
    if !bytes.starts_with(&FILE_MAGIC) {
        if FILE_MAGIC.starts_with(bytes) {
            // A header cut short: the file was created and the process died writing its first bytes.
            out.keep = 0;
            return out;
        }
        let mut at = 0;
        while let Some((record, used)) = Record::decode_legacy(&bytes[at..]) {
            out.records.push(record);
            at += used;
        }
        if out.records.is_empty() {
            out.damage.push(damage(
                0,
                bytes.len(),
                "the file is not a journal (no header and no readable record)".into(),
            ));
            return out;
        }
        out.legacy = true;
        out.keep = at;
        return out;
    }
    let mut at = FILE_MAGIC.len();
    while at < bytes.len() {
        let why = match Record::decode(&bytes[at..]) {
            Decoded::Ok(record, used) => {
                out.records.push(record);
                at += used;
                continue;
            }
            Decoded::Short => "a record is cut short",
            Decoded::Bad => "a record fails its checksum or does not parse",
        };
        match resync(bytes, at + 1) {
            Some(next) => {
                out.damage.push(damage(
                    at,
                    next - at,
                    format!("{why}, and intact records follow it"),
                ));
                at = next;
            }
            None => {
                let rest = &bytes[at..];
                let torn = rest.len() < HEADER
                    || rest.iter().all(|b| *b == 0)
                    || (rest.starts_with(&RECORD_MAGIC.to_le_bytes())
                        && Record::decode(rest) == Decoded::Short);
                if torn {
                    out.keep = at;
                } else {
                    out.damage.push(damage(
                        at,
                        rest.len(),
                        format!("{why} at the end of the file"),
                    ));
                }
                break;
            }
        }
    }
    out
}

/// The offset of the next intact record at or after `from`.
fn resync(bytes: &[u8], from: usize) -> Option<usize> {
    let magic = RECORD_MAGIC.to_le_bytes();
    (from..bytes.len().saturating_sub(HEADER - 1))
        .filter(|&i| bytes[i..].starts_with(&magic))
        .find(|&i| matches!(Record::decode(&bytes[i..]), Decoded::Ok(..)))
}

/// Keeps the damaged file's original bytes beside it (once: a later open does not overwrite the first copy).
fn keep_copy(path: &Path) -> Result<(), Error> {
    let copy = PathBuf::from(format!("{}.damaged", path.display()));
    if !copy.exists() {
        fs::copy(path, &copy).map_err(|e| io_err("copying", path, e))?;
    }
    Ok(())
}

/// Rewrites a damaged file with its intact records (write to a temporary file, sync, rename).
fn rewrite(path: &Path, records: &[Record]) -> Result<(), Error> {
    let mut bytes = FILE_MAGIC.to_vec();
    for r in records {
        r.encode(&mut bytes);
    }
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(&bytes)?;
            f.sync_all()
        })
        .and_then(|_| fs::rename(&tmp, path))
        .map_err(|e| io_err("rewriting", path, e))
}

struct Append {
    record: Record,
    ack: oneshot::Sender<Result<(), String>>,
}

/// An open journal. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<JournalInner>,
}

struct JournalInner {
    dir: PathBuf,
    next_seq: AtomicU64,
    checkpoint: AtomicU64,
    tx: Mutex<Option<mpsc::Sender<Append>>>,
    /// (first seq, path) of every file, oldest first.
    segments: Arc<Mutex<Vec<(u64, PathBuf)>>>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Unavailable {
        tier: strata_core::Tier::Source,
        message: format!("write-behind journal: {what} {}: {e}", path.display()),
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and recovers what it holds.
    pub fn open(dir: impl AsRef<Path>, options: JournalOptions) -> Result<(Self, Recovery), Error> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| io_err("creating", &dir, e))?;
        let checkpoint = read_checkpoint(&dir)?;
        let mut segments: Vec<(u64, PathBuf)> = fs::read_dir(&dir)
            .map_err(|e| io_err("listing", &dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let first = name
                    .strip_prefix("journal-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()?;
                Some((first, e.path()))
            })
            .collect();
        segments.sort();
        let mut recovery = Recovery {
            checkpoint,
            ..Recovery::default()
        };
        let mut last_seq = checkpoint;
        let mut damage = Vec::new();
        let mut damaged_files = Vec::new();
        for (i, (first, path)) in segments.iter().enumerate() {
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| io_err("reading", path, e))?;
            let scanned = scan(path, &bytes);
            // A file whose name says it starts at `first` must hold `first` first, unless everything from
            // `first` on was checkpointed or nothing was ever written to it (the last file, or one that the next
            // file's name follows directly).
            let holds_from = scanned.records.first().map(|r| r.seq);
            let next_first = segments.get(i + 1).map(|(n, _)| *n);
            let expected_upto = match (holds_from, next_first) {
                (Some(h), _) => h,
                (None, Some(n)) => n,
                (None, None) => *first,
            };
            if expected_upto > (*first).max(checkpoint + 1) && scanned.damage.is_empty() {
                damage.push(Damage {
                    path: path.clone(),
                    offset: 0,
                    len: 0,
                    problem: format!(
                        "records {}..{} are missing: the file's name says it starts at {first}",
                        (*first).max(checkpoint + 1),
                        expected_upto - 1
                    ),
                });
            }
            for record in &scanned.records {
                last_seq = last_seq.max(record.seq);
                if record.seq > checkpoint {
                    recovery.pending.push(record.clone());
                }
            }
            if !scanned.damage.is_empty() {
                damage.extend(scanned.damage.iter().cloned());
                damaged_files.push((path.clone(), scanned.records));
            } else if scanned.keep < bytes.len() {
                let cut = (bytes.len() - scanned.keep) as u64;
                recovery.truncated_bytes += cut;
                tracing::warn!(
                    "{}",
                    format!(
                    "write-behind journal {}: cut a torn tail of {cut} bytes at offset {} (a write \
                     interrupted by a crash; it was never acknowledged)",
                    path.display(),
                    scanned.keep
                )
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| io_err("opening", path, e))?;
                f.set_len(scanned.keep as u64)
                    .and_then(|_| f.sync_all())
                    .map_err(|e| io_err("truncating", path, e))?;
            }
        }
        if !damage.is_empty() {
            metrics::counter!("strata_journal_damage_total").increment(damage.len() as u64);
            for (path, _) in &damaged_files {
                keep_copy(path)?;
            }
            for d in &damage {
                tracing::error!(
                    "{}",
                    format!(
                        "write-behind journal {} damaged at byte {} ({} bytes): {}",
                        d.path.display(),
                        d.offset,
                        d.len,
                        d.problem
                    )
                );
            }
            if !options.recover_damaged {
                return Err(damage[0].error(damage.len() - 1));
            }
            for (path, records) in &damaged_files {
                rewrite(path, records)?;
            }
            recovery.damage = damage;
        }
        recovery.pending.sort_by_key(|r| r.seq);
        recovery.pending.dedup_by_key(|r| r.seq);
        if last_seq >= MAX_SEQ {
            return Err(Error::JournalDamaged {
                path: dir.display().to_string(),
                offset: 0,
                problem: format!(
                    "sequence number {last_seq} (checkpoint or record) is implausibly large: \
                     continuing would make sequence numbers wrap"
                ),
            });
        }
        let next_seq = last_seq + 1;
        // Appends always go to a new file, so a recovered file is never written again.
        let path = dir.join(format!("journal-{next_seq:020}.log"));
        let file = open_segment(&path)?;
        sync_dir(&dir)?;
        // The file may exist already: an earlier process opened it and died before appending. It is listed
        // once: a second entry would let a checkpoint delete the file this process appends to.
        if !segments.iter().any(|(first, _)| *first == next_seq) {
            segments.push((next_seq, path.clone()));
        }
        let segments = Arc::new(Mutex::new(segments));
        let (tx, rx) = mpsc::channel::<Append>();
        let writer = Writer {
            dir: dir.clone(),
            file,
            written: 0,
            options,
            segments: segments.clone(),
        };
        std::thread::Builder::new()
            .name("strata-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| io_err("starting the writer for", &dir, e))?;
        let journal = Self {
            inner: Arc::new(JournalInner {
                dir,
                next_seq: AtomicU64::new(next_seq),
                checkpoint: AtomicU64::new(checkpoint),
                tx: Mutex::new(Some(tx)),
                segments,
            }),
        };
        Ok((journal, recovery))
    }

    /// Appends a write; resolves once it is durable (per [`Fsync`]). Returns its sequence number.
    pub async fn append(&self, namespace: &str, key: &str, op: Op) -> Result<u64, Error> {
        let (seq, durable) = self.submit(namespace, key, op)?;
        durable.wait().await.map(|()| seq)
    }

    /// Queues a write for the writer and returns its sequence number at once, with a handle that resolves when
    /// the record is durable. Lets a caller record the sequence (e.g. as unflushed) before the record can be
    /// acknowledged.
    pub fn submit(&self, namespace: &str, key: &str, op: Op) -> Result<(u64, Durable), Error> {
        self.submit_versioned(namespace, key, op, None)
    }

    /// [`submit`](Self::submit) with the write's version.
    pub fn submit_versioned(
        &self,
        namespace: &str,
        key: &str,
        op: Op,
        version: Option<u64>,
    ) -> Result<(u64, Durable), Error> {
        let (ack, done) = oneshot::channel();
        let seq = {
            // The sequence is taken under the sender lock so records reach the writer in sequence order.
            let tx = self.inner.tx.lock();
            let tx = tx
                .as_ref()
                .ok_or(Error::InvalidState("the journal is closed"))?;
            let seq = self.inner.next_seq.fetch_add(1, Ordering::SeqCst);
            let record = Record {
                seq,
                namespace: namespace.to_owned(),
                key: key.to_owned(),
                op,
                version,
            };
            tx.send(Append { record, ack })
                .map_err(|_| Error::InvalidState("the journal writer stopped"))?;
            seq
        };
        Ok((seq, Durable(done)))
    }

    /// Records that every write up to `seq` is in the source; files wholly below it are deleted.
    pub fn checkpoint(&self, seq: u64) -> Result<(), Error> {
        let dir = &self.inner.dir;
        if seq >= self.inner.next_seq.load(Ordering::SeqCst) {
            return Err(Error::InvalidState(
                "a journal checkpoint must not pass the last sequence number issued",
            ));
        }
        let previous = self.inner.checkpoint.fetch_max(seq, Ordering::SeqCst);
        if seq <= previous {
            return Ok(());
        }
        let tmp = dir.join("checkpoint.tmp");
        let path = dir.join("checkpoint");
        File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(seq.to_string().as_bytes())?;
                f.sync_all()
            })
            .and_then(|_| fs::rename(&tmp, &path))
            .map_err(|e| io_err("writing", &path, e))?;
        sync_dir(dir)?;
        // A file can go when the next one starts at or below the checkpoint + 1.
        let mut segments = self.inner.segments.lock();
        while segments.len() > 1 && segments[1].0 <= seq + 1 {
            let (_, old) = segments.remove(0);
            let _ = fs::remove_file(old);
        }
        Ok(())
    }

    /// The highest sequence known to be in the source.
    pub fn checkpointed(&self) -> u64 {
        self.inner.checkpoint.load(Ordering::SeqCst)
    }

    /// Stops accepting appends; the writer finishes what is queued.
    pub fn close(&self) {
        self.inner.tx.lock().take();
    }
}

/// Resolves when a submitted record is durable.
#[derive(Debug)]
pub struct Durable(oneshot::Receiver<Result<(), String>>);

impl Durable {
    /// Waits until the record is on disk (per [`Fsync`]), or the write failed.
    pub async fn wait(self) -> Result<(), Error> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(Error::Unavailable {
                tier: strata_core::Tier::Source,
                message: format!("write-behind journal: {message}"),
            }),
            Err(_) => Err(Error::InvalidState("the journal writer stopped")),
        }
    }
}

fn read_checkpoint(dir: &Path) -> Result<u64, Error> {
    let path = dir.join("checkpoint");
    match fs::read_to_string(&path) {
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(seq) if seq < MAX_SEQ => Ok(seq),
            Ok(seq) => Err(Error::JournalDamaged {
                path: path.display().to_string(),
                offset: 0,
                problem: format!(
                    "the checkpoint {seq} is implausibly large: continuing would make sequence numbers wrap"
                ),
            }),
            Err(_) => Err(Error::JournalDamaged {
                path: path.display().to_string(),
                offset: 0,
                problem: format!("the checkpoint holds {s:?}, not a sequence number"),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err("reading", &path, e)),
    }
}

/// Opens a segment for appending, writing the file header if the file is new (or was left empty, or with a header
/// cut short, by a process that died right after creating it).
fn open_segment(path: &Path) -> Result<File, Error> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io_err("creating", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| io_err("inspecting", path, e))?
        .len();
    if len < FILE_MAGIC.len() as u64 {
        file.set_len(0)
            .and_then(|_| file.write_all(&FILE_MAGIC))
            .and_then(|_| file.sync_all())
            .map_err(|e| io_err("writing the header of", path, e))?;
    }
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("syncing", dir, e))
}

struct Writer {
    dir: PathBuf,
    file: File,
    written: u64,
    options: JournalOptions,
    segments: Arc<Mutex<Vec<(u64, PathBuf)>>>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Append>) {
        let tick = match self.options.fsync {
            Fsync::Always => None,
            Fsync::EveryMs(ms) => Some(Duration::from_millis(ms.max(1))),
        };
        let mut dirty = false;
        loop {
            let first = match tick {
                None => match rx.recv() {
                    Ok(a) => a,
                    Err(_) => return,
                },
                Some(t) => match rx.recv_timeout(t) {
                    Ok(a) => a,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if dirty {
                            let _ = self.file.sync_data();
                            dirty = false;
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        let _ = self.file.sync_data();
                        return;
                    }
                },
            };
            let mut batch = vec![first];
            while let Ok(a) = rx.try_recv() {
                batch.push(a);
            }
            let result = self.write(&batch);
            if result.is_ok() && tick.is_some() {
                dirty = true;
            }
            for a in batch {
                let _ = a.ack.send(result.clone());
            }
        }
    }

    fn write(&mut self, batch: &[Append]) -> Result<(), String> {
        if self.written >= self.options.segment_bytes {
            let first = batch[0].record.seq;
            let path = self.dir.join(format!("journal-{first:020}.log"));
            self.file
                .sync_all()
                .map_err(|e| format!("syncing before starting {}: {e}", path.display()))?;
            self.file = open_segment(&path).map_err(|e| e.to_string())?;
            sync_dir(&self.dir).map_err(|e| e.to_string())?;
            self.segments.lock().push((first, path));
            self.written = 0;
        }
        let mut bytes = Vec::new();
        for a in batch {
            a.record.encode(&mut bytes);
        }
        self.file
            .write_all(&bytes)
            .map_err(|e| format!("appending: {e}"))?;
        if self.options.fsync == Fsync::Always {
            self.file.sync_data().map_err(|e| format!("fsync: {e}"))?;
        }
        self.written += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "strata-journal-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    /// A journal in a fresh `dir(name)` that starts a new file every `segment_bytes`, and its options.
    fn segmented(name: &str, segment_bytes: u64) -> (PathBuf, JournalOptions, Journal) {
        let d = dir(name);
        let options = JournalOptions {
            segment_bytes,
            ..JournalOptions::default()
        };
        let (j, _) = Journal::open(&d, options.clone()).unwrap();
        (d, options, j)
    }

    /// Appends `n` upserts of 100-byte values (keys `k0`…), then closes the journal and waits for its writer.
    async fn append_and_close(j: Journal, n: u8) {
        for i in 0..n {
            j.append("n", &format!("k{i}"), Op::Upsert(vec![i; 100]))
                .await
                .unwrap();
        }
        j.close();
        drop(j);
    }

    /// The journal files in `d`, in order.
    fn log_files(d: &Path) -> Vec<PathBuf> {
        let mut logs: Vec<PathBuf> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        logs
    }

    #[tokio::test]
    async fn appends_survive_reopen_and_the_checkpoint_hides_flushed_ones() {
        let d = dir("reopen");
        let (j, rec) = Journal::open(&d, JournalOptions::default()).unwrap();
        assert!(rec.pending.is_empty());
        let s1 = j.append("n", "a", Op::Upsert(b"1".to_vec())).await.unwrap();
        let s2 = j.append("n", "b", Op::Delete).await.unwrap();
        let s3 = j.append("n", "a", Op::Upsert(b"3".to_vec())).await.unwrap();
        assert_eq!((s1 + 1, s2 + 1), (s2, s3));
        j.checkpoint(s1).unwrap();
        j.close();
        drop(j);
        let (j, rec) = Journal::open(&d, JournalOptions::default()).unwrap();
        let keys: Vec<(u64, &str)> = rec
            .pending
            .iter()
            .map(|r| (r.seq, r.key.as_str()))
            .collect();
        assert_eq!(keys, vec![(s2, "b"), (s3, "a")]);
        assert_eq!(rec.truncated_bytes, 0);
        // Sequence numbers keep increasing across restarts.
        assert!(j.append("n", "c", Op::Delete).await.unwrap() > s3);
    }

    #[test]
    fn a_garbage_checkpoint_is_a_clear_error_naming_the_file() {
        let d = dir("badcp");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("checkpoint"), "not-a-number").unwrap();
        let err = Journal::open(&d, JournalOptions::default())
            .err()
            .expect("a garbage checkpoint must not open")
            .to_string();
        assert!(
            err.contains("checkpoint") && err.contains("not-a-number"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_counted_and_the_rest_is_kept() {
        let (d, file) = five_records("torn").await;
        let len = fs::metadata(&file).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len - 30)
            .unwrap();
        let (_, rec) = Journal::open(&d, JournalOptions::default()).unwrap();
        assert_eq!(rec.pending.len(), 4);
        assert!(rec.truncated_bytes > 0);
    }

    #[tokio::test]
    async fn concurrent_appends_share_fsyncs_and_all_land() {
        let d = dir("group");
        let (j, _) = Journal::open(&d, JournalOptions::default()).unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let j = j.clone();
                tokio::spawn(async move { j.append("n", &format!("k{i}"), Op::Delete).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        j.close();
        drop(j);
        let (_, rec) = Journal::open(&d, JournalOptions::default()).unwrap();
        assert_eq!(rec.pending.len(), 200);
        let seqs: Vec<u64> = rec.pending.iter().map(|r| r.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] + 1 == w[1]),
            "sequence has holes or disorder"
        );
    }

    #[tokio::test]
    async fn segments_rotate_and_checkpointed_ones_are_deleted() {
        let (d, options, j) = segmented("rotate", 1024);
        let mut last = 0;
        for i in 0..50 {
            last = j
                .append("n", &format!("k{i}"), Op::Upsert(vec![0; 200]))
                .await
                .unwrap();
        }
        let logs = || log_files(&d).len();
        assert!(logs() > 5);
        j.checkpoint(last).unwrap();
        assert_eq!(logs(), 1);
        j.close();
        drop(j);
        let (_, rec) = Journal::open(&d, options).unwrap();
        assert!(rec.pending.is_empty());
        assert_eq!(rec.checkpoint, last);
    }

    /// The race: a process opens the journal (creating an empty `journal-N.log`) and is killed before it
    /// appends; the next process opens the same `N`. It listed the file twice, so a checkpoint at `N` deleted the
    /// file it was appending to, and its later acknowledged writes were gone at the next restart. Found by the
    /// write-behind crash benchmark (a contiguous block of ~1,000 acknowledged writes lost).
    #[tokio::test]
    async fn an_empty_segment_left_by_a_killed_process_is_not_deleted_under_the_next_one() {
        let d = dir("empty-segment");
        let (j, _) = Journal::open(&d, JournalOptions::default()).unwrap();
        let s1 = j.append("n", "a", Op::Upsert(b"1".to_vec())).await.unwrap();
        j.close();
        drop(j);
        // Killed right after opening: its segment stays empty.
        let (j, _) = Journal::open(&d, JournalOptions::default()).unwrap();
        j.close();
        drop(j);
        let (j, rec) = Journal::open(&d, JournalOptions::default()).unwrap();
        assert_eq!(rec.pending.len(), 1);
        j.checkpoint(s1).unwrap();
        let s2 = j.append("n", "b", Op::Upsert(b"2".to_vec())).await.unwrap();
        let s3 = j.append("n", "c", Op::Upsert(b"3".to_vec())).await.unwrap();
        j.checkpoint(s2).unwrap();
        j.close();
        drop(j);
        let (_, rec) = Journal::open(&d, JournalOptions::default()).unwrap();
        let pending: Vec<u64> = rec.pending.iter().map(|r| r.seq).collect();
        assert_eq!(
            pending,
            vec![s3],
            "an acknowledged write above the checkpoint was lost"
        );
    }

    /// Five records of 100-byte values in one file; returns the journal's directory and the file.
    async fn five_records(name: &str) -> (PathBuf, PathBuf) {
        let d = dir(name);
        let (j, _) = Journal::open(&d, JournalOptions::default()).unwrap();
        append_and_close(j, 5).await;
        let file = fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                fs::metadata(p).map(|m| m.len() > 8).unwrap_or(false)
                    && p.extension().is_some_and(|x| x == "log")
            })
            .unwrap();
        (d, file)
    }

    fn damage_at(file: &Path, offset: usize, bytes: &[u8]) {
        let mut all = fs::read(file).unwrap();
        all[offset..offset + bytes.len()].copy_from_slice(bytes);
        fs::write(file, all).unwrap();
    }

    fn recovering() -> JournalOptions {
        JournalOptions {
            recover_damaged: true,
            ..JournalOptions::default()
        }
    }

    /// One record is `12 + 8 + 1 + 8? + 2 + 1 + 4 + 2 + 4 + 100` bytes; the third starts after the header and
    /// two records.
    fn record_len() -> usize {
        let mut b = Vec::new();
        Record {
            seq: 1,
            namespace: "n".into(),
            key: "k0".into(),
            op: Op::Upsert(vec![0; 100]),
            version: None,
        }
        .encode(&mut b);
        b.len()
    }

    fn keys(rec: &Recovery) -> Vec<String> {
        rec.pending.iter().map(|r| r.key.clone()).collect()
    }

    #[tokio::test]
    async fn a_flipped_byte_mid_file_stops_the_open_naming_file_and_offset_and_recovery_keeps_the_rest(
    ) {
        let (d, file) = five_records("flip").await;
        let third = FILE_MAGIC.len() + 2 * record_len();
        damage_at(&file, third + 30, &[0xff]);
        let err = Journal::open(&d, JournalOptions::default())
            .err()
            .expect("a damaged journal must not open silently")
            .to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains(&format!("byte {third}")), "{err}");
        assert!(err.contains("--recover-journal"), "{err}");
        let copy = PathBuf::from(format!("{}.damaged", file.display()));
        assert!(copy.exists(), "the damaged file was not kept");
        let (_, rec) = Journal::open(&d, recovering()).unwrap();
        assert_eq!(keys(&rec), ["k0", "k1", "k3", "k4"]);
        assert_eq!(rec.damage.len(), 1);
        // The damaged file was rewritten with its intact records: the next start is clean.
        let (_, rec) = Journal::open(&d, JournalOptions::default()).unwrap();
        assert_eq!(keys(&rec), ["k0", "k1", "k3", "k4"]);
    }

    #[tokio::test]
    async fn a_zeroed_block_mid_file_is_damage_not_a_tail() {
        let (d, file) = five_records("zeroed").await;
        let second = FILE_MAGIC.len() + record_len();
        damage_at(&file, second, &vec![0; record_len() + 20]);
        assert!(Journal::open(&d, JournalOptions::default()).is_err());
        let (_, rec) = Journal::open(&d, recovering()).unwrap();
        assert_eq!(keys(&rec), ["k0", "k3", "k4"]);
    }

    #[tokio::test]
    async fn a_huge_length_field_is_damage_and_the_records_after_it_are_kept() {
        let (d, file) = five_records("huge").await;
        let first = FILE_MAGIC.len();
        damage_at(&file, first + 4, &u32::MAX.to_le_bytes());
        let err = Journal::open(&d, JournalOptions::default()).err().unwrap();
        assert!(
            matches!(err, Error::JournalDamaged { offset: 8, .. }),
            "{err}"
        );
        let (_, rec) = Journal::open(&d, recovering()).unwrap();
        assert_eq!(keys(&rec), ["k1", "k2", "k3", "k4"]);
    }

    #[tokio::test]
    async fn a_flipped_byte_in_the_last_whole_record_is_damage_too() {
        let (d, file) = five_records("last").await;
        let len = fs::metadata(&file).unwrap().len() as usize;
        damage_at(&file, len - 3, &[0x01]);
        assert!(Journal::open(&d, JournalOptions::default()).is_err());
    }

    #[tokio::test]
    async fn a_zero_filled_tail_is_a_torn_write_and_is_cut() {
        let (d, file) = five_records("zero-tail").await;
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(&[0; 4096]).unwrap();
        let (_, rec) = Journal::open(&d, JournalOptions::default()).unwrap();
        assert_eq!(rec.pending.len(), 5);
        assert_eq!(rec.truncated_bytes, 4096);
    }

    #[tokio::test]
    async fn a_garbage_segment_is_damage() {
        let (d, file) = five_records("garbage").await;
        fs::write(&file, vec![0x42; 700]).unwrap();
        let err = Journal::open(&d, JournalOptions::default()).err().unwrap();
        assert!(err.to_string().contains("not a journal"), "{err}");
    }

    #[tokio::test]
    async fn an_emptied_segment_whose_records_are_missing_is_damage() {
        let (d, options, j) = segmented("emptied", 300);
        append_and_close(j, 6).await;
        let logs = log_files(&d);
        assert!(logs.len() >= 2, "{logs:?}");
        fs::write(&logs[0], b"").unwrap();
        let err = Journal::open(&d, options.clone()).err().unwrap();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn a_checkpoint_that_would_make_sequences_wrap_is_refused() {
        let d = dir("wrap");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("checkpoint"), u64::MAX.to_string()).unwrap();
        let err = Journal::open(&d, JournalOptions::default()).err().unwrap();
        assert!(err.to_string().contains("wrap"), "{err}");
    }

    #[tokio::test]
    async fn a_checkpoint_past_the_last_sequence_is_refused() {
        let d = dir("cp-past");
        let (j, _) = Journal::open(&d, JournalOptions::default()).unwrap();
        let s = j.append("n", "a", Op::Delete).await.unwrap();
        assert!(j.checkpoint(u64::MAX).is_err());
        j.checkpoint(s).unwrap();
        assert!(j.append("n", "b", Op::Delete).await.unwrap() > s);
    }

    #[test]
    fn a_journal_written_before_the_magic_numbers_still_reads() {
        let d = dir("legacy");
        fs::create_dir_all(&d).unwrap();
        let mut bytes = Vec::new();
        for (seq, key) in [(1u64, "a"), (2, "b")] {
            let mut body = Vec::new();
            body.extend_from_slice(&seq.to_le_bytes());
            body.push(2);
            body.extend_from_slice(&1u16.to_le_bytes());
            body.extend_from_slice(b"n");
            body.extend_from_slice(&1u32.to_le_bytes());
            body.extend_from_slice(key.as_bytes());
            body.extend_from_slice(&0u32.to_le_bytes());
            bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            bytes.extend_from_slice(&body);
        }
        fs::write(d.join("journal-00000000000000000001.log"), bytes).unwrap();
        let (_, rec) = Journal::open(&d, JournalOptions::default()).unwrap();
        assert_eq!(keys(&rec), ["a", "b"]);
    }

    proptest! {
        #[test]
        fn records_round_trip_and_damage_is_always_detected(
            ns in "[a-z]{0,12}", key in ".{0,40}", value in proptest::collection::vec(any::<u8>(), 0..300),
            delete in any::<bool>(), flip in any::<usize>(), cut in any::<usize>(),
            version in proptest::option::of(any::<u64>()),
        ) {
            let r = Record { seq: 7, namespace: ns, key, op: if delete { Op::Delete } else { Op::Upsert(value) }, version };
            let mut bytes = Vec::new();
            r.encode(&mut bytes);
            prop_assert_eq!(Record::decode(&bytes), Decoded::Ok(r.clone(), bytes.len()));
            let mut damaged = bytes.clone();
            let i = flip % damaged.len();
            damaged[i] ^= 0x5a;
            prop_assert!(!matches!(Record::decode(&damaged), Decoded::Ok(..)), "a flipped byte at {} went unnoticed", i);
            let short = &bytes[..cut % bytes.len()];
            prop_assert!(!matches!(Record::decode(short), Decoded::Ok(..)));
        }
    }
}
