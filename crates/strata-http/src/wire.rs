//! Request framing on the wire: a read-side guard in front of hyper's HTTP/1.1 parser that refuses requests whose
//! framing is ambiguous (RFC 9112 §6.3) with 400, before any byte of them reaches the service.
//!
//! hyper itself handles `Transfer-Encoding` with `Content-Length` as RFC 9112 §6.3 permits — the
//! `Transfer-Encoding` wins, `Content-Length` is dropped, the connection closes after the answer — which is safe
//! but silent: the service never learns the request was ambiguous. A shared cache should not serve such a
//! request at all (it is how smuggling attacks against caches start), so [`FramingGuard`] follows the request
//! stream — each head up to its blank line, then its body by `Content-Length` or chunked framing — and when a head
//! carries both fields, or grows past the header limit, replaces it with a head hyper answers with 400 and ends
//! the stream. Anything it cannot follow (an upgrade, a malformed chunk) it passes through untouched from then
//! on, leaving hyper's own rules as the backstop.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the guard replaces a refused head with: an invalid `Content-Length`, which hyper answers with 400 and
/// a closed connection.
const REFUSAL: &[u8] = b"GET / HTTP/1.1\r\ncontent-length: refused\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// `n` body bytes left.
    Body(u64),
    /// A chunk-size line.
    ChunkSize,
    /// `n` bytes of chunk data left.
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkEnd,
    /// Trailer lines after the last chunk.
    Trailers,
    /// Not followed any more: bytes pass as they are.
    Passthrough,
    /// A head was refused: the replacement goes out, then the stream ends.
    Refused,
}

/// Counts of what the guard refused (for tests and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Heads with both `Transfer-Encoding` and `Content-Length`.
    pub te_and_cl: u64,
    /// Heads past the size limit.
    pub oversized: u64,
}

/// Wraps a connection's I/O; see the module docs. Writes pass straight through.
#[derive(Debug)]
pub struct FramingGuard<T> {
    inner: T,
    state: State,
    /// The head (or chunk-size/trailer line) being collected.
    pending: Vec<u8>,
    /// Bytes released to the reader, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    max_head: usize,
    refusals: Refusals,
}

impl<T> FramingGuard<T> {
    /// Guards `inner`, refusing request heads longer than `max_head` bytes.
    pub fn new(inner: T, max_head: usize) -> Self {
        Self {
            inner,
            state: State::Head,
            pending: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            max_head,
            refusals: Refusals::default(),
        }
    }

    /// What it refused so far.
    pub fn refusals(&self) -> Refusals {
        self.refusals
    }

    /// Feeds bytes read from the connection through the state machine.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Passthrough => {
                    self.out.extend_from_slice(bytes);
                    return;
                }
                State::Refused => return,
                State::Body(n) | State::ChunkData(n) => {
                    let take = (n.min(bytes.len() as u64)) as usize;
                    self.out.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    let left = n - take as u64;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), l) => State::Body(l),
                        (_, 0) => State::ChunkEnd,
                        (_, l) => State::ChunkData(l),
                    };
                }
                State::Head => {
                    // Empty lines before a request line are ignored (RFC 9112 §2.2).
                    if self.pending.is_empty() && (bytes[0] == b'\r' || bytes[0] == b'\n') {
                        self.out.push(bytes[0]);
                        bytes = &bytes[1..];
                        continue;
                    }
                    let (line_end, consumed) = match find_head_end(&self.pending, bytes) {
                        Some(i) => (true, i),
                        None => (false, bytes.len()),
                    };
                    self.pending.extend_from_slice(&bytes[..consumed]);
                    bytes = &bytes[consumed..];
                    if self.pending.len() > self.max_head {
                        self.refusals.oversized += 1;
                        self.refuse();
                        return;
                    }
                    if line_end {
                        self.finish_head();
                    }
                }
                State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let nl = bytes.iter().position(|&b| b == b'\n');
                    let consumed = nl.map_or(bytes.len(), |i| i + 1);
                    self.pending.extend_from_slice(&bytes[..consumed]);
                    self.out.extend_from_slice(&bytes[..consumed]);
                    bytes = &bytes[consumed..];
                    if self.pending.len() > 8192 {
                        self.state = State::Passthrough;
                        continue;
                    }
                    if nl.is_some() {
                        let line = std::mem::take(&mut self.pending);
                        self.end_of_line(&line);
                    }
                }
            }
        }
    }

    fn refuse(&mut self) {
        self.pending.clear();
        self.out.extend_from_slice(REFUSAL);
        self.state = State::Refused;
    }

    fn finish_head(&mut self) {
        let head = std::mem::take(&mut self.pending);
        let mut te: Option<bool> = None; // Some(last coding is chunked)
        let mut cl: Option<u64> = None;
        let mut cl_seen = false;
        let mut upgrade = false;
        let mut lines = head.split(|&b| b == b'\n');
        let request_line = lines.next().unwrap_or_default();
        if request_line.starts_with(b"CONNECT ") {
            upgrade = true;
        }
        for line in lines {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                let last = value
                    .rsplit(|&b| b == b',')
                    .next()
                    .map(trim)
                    .unwrap_or_default();
                te = Some(last.eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case(b"content-length") {
                cl_seen = true;
                cl = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.split(',').next())
                    .and_then(|v| v.trim().parse().ok());
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade = true;
            }
        }
        if te.is_some() && cl_seen {
            self.refusals.te_and_cl += 1;
            self.refuse();
            return;
        }
        self.out.extend_from_slice(&head);
        self.state = match (upgrade, te, cl) {
            (true, _, _) => State::Passthrough,
            (_, Some(true), _) => State::ChunkSize,
            // Not chunked-last, or a Content-Length hyper will refuse: hyper answers, nothing to follow.
            (_, Some(false), _) => State::Passthrough,
            (_, None, Some(0)) | (_, None, None) if !cl_seen || cl == Some(0) => State::Head,
            (_, None, Some(n)) => State::Body(n),
            _ => State::Passthrough,
        };
    }

    fn end_of_line(&mut self, line: &[u8]) {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        self.state = match self.state {
            State::ChunkSize => {
                let size = text
                    .split(|&b| b == b';' || b == b' ' || b == b'\t')
                    .next()
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u64::from_str_radix(h, 16).ok());
                match size {
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    None => State::Passthrough,
                }
            }
            State::ChunkEnd if text.is_empty() => State::ChunkSize,
            State::Trailers if text.is_empty() => State::Head,
            State::Trailers => State::Trailers,
            _ => State::Passthrough,
        };
    }
}

/// Where the head ends within `next` (the index just past its blank line), given what was collected.
fn find_head_end(collected: &[u8], next: &[u8]) -> Option<usize> {
    // Look at the last 3 collected bytes together with the new ones, for a CRLFCRLF or LFLF split across reads.
    let tail_len = collected.len().min(3);
    let mut window = collected[collected.len() - tail_len..].to_vec();
    window.extend_from_slice(next);
    for i in 0..window.len() {
        let end = if window[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if window[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else if window[i..].starts_with(b"\n\r\n") {
            Some(i + 3)
        } else {
            None
        };
        if let Some(e) = end {
            if e > tail_len {
                return Some(e - tail_len);
            }
        }
    }
    None
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Refused {
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let filled = rb.filled();
                    if filled.is_empty() {
                        // End of stream: whatever head was held goes to hyper, which judges it.
                        let held = std::mem::take(&mut this.pending);
                        if held.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        this.out.extend_from_slice(&held);
                        continue;
                    }
                    let filled = filled.to_vec();
                    this.feed(&filled);
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `input` in pieces of `step` bytes and returns what the reader sees.
    fn through(input: &[u8], step: usize) -> (Vec<u8>, Refusals) {
        let mut g = FramingGuard::new((), 1024);
        for piece in input.chunks(step.max(1)) {
            g.feed(piece);
        }
        let out = g.out[g.out_pos..].to_vec();
        (out, g.refusals)
    }

    const PIPELINE: &[u8] = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: h\r\n\r\n\
POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n\
GET /d HTTP/1.1\r\nHost: h\r\n\r\n";

    #[test]
    fn well_framed_pipelines_pass_unchanged_in_any_split() {
        for step in [1, 2, 3, 7, 64, 4096] {
            let (out, r) = through(PIPELINE, step);
            assert_eq!(out, PIPELINE, "step {step}");
            assert_eq!(r, Refusals::default());
        }
    }

    #[test]
    fn rfc9112_6_3_te_with_cl_is_refused_also_later_in_a_pipeline() {
        let smuggle = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for step in [1, 5, 4096] {
            let mut input = PIPELINE.to_vec();
            input.extend_from_slice(smuggle);
            input.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n");
            let (out, r) = through(&input, step);
            let mut want = PIPELINE.to_vec();
            want.extend_from_slice(REFUSAL);
            assert_eq!(out, want, "step {step}");
            assert_eq!(r.te_and_cl, 1);
        }
        // The order of the two fields does not matter.
        let (out, _) = through(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\n\r\n",
            3,
        );
        assert_eq!(out, REFUSAL);
    }

    #[test]
    fn oversized_heads_are_refused() {
        let mut input = b"GET / HTTP/1.1\r\nX: ".to_vec();
        input.extend(std::iter::repeat_n(b'a', 2000));
        let (out, r) = through(&input, 100);
        assert_eq!((out.as_slice(), r.oversized), (REFUSAL, 1));
    }

    #[test]
    fn what_it_cannot_follow_passes_through() {
        let input = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\x81\x05hello";
        assert_eq!(through(input, 4).0, input);
        let input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nanything";
        assert_eq!(through(input, 4).0, input);
    }

    proptest! {
        #[test]
        fn never_panics_and_never_invents_bytes_except_a_refusal(input in proptest::collection::vec(any::<u8>(), 0..512), step in 1usize..64) {
            let (out, r) = through(&input, step);
            if r == Refusals::default() {
                prop_assert!(input.starts_with(&out));
            } else {
                prop_assert!(out.ends_with(REFUSAL));
            }
        }
    }
}
