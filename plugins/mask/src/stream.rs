//! Masking a byte stream that arrives in chunks of any size, so that a value split across two
//! chunks is still masked whole.
//!
//! The rule: bytes go out as soon as no value that could still grow with the next chunk
//! covers them. Concretely, a chunk releases everything up to the start of its last line
//! (values do not span lines; PEM blocks are tracked as blocks), except that at most
//! `window` bytes of that line are held, and a value touching the end of what has arrived is
//! held whole. A release never falls inside a match, so the name a value is found by
//! (`password=`, `AccountKey=`) never goes out without its value. What is held goes out when:
//!
//! - the gateway flushes the plugin (after a short quiet time, and at the end of the stream);
//! - the oldest held byte has waited `max_hold_ms` while the stream kept trickling;
//! - more than `max_carry` bytes are held (an unterminated block).
//!
//! A value is therefore caught whole when it is at most `window` bytes long and its bytes
//! arrive without a pause long enough for a flush between them.

use std::collections::VecDeque;

use crate::masker::{Hit, Masker};

/// Bytes kept before the release point so `\b` sees what precedes a value.
const CONTEXT: usize = 16;
/// How much of an open block's tail is held back in case its close marker is split.
const CLOSE_MARKER_MAX: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub window: usize,
    pub max_carry: usize,
    pub max_hold_ms: u64,
}

#[derive(Default)]
pub struct Stream {
    buf: Vec<u8>,
    /// `buf[..released]` went out already and stays only as context.
    released: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Per chunk still (partly) held: the stream offset where it ends and when it arrived.
    arrivals: VecDeque<(u64, u64)>,
    /// A block whose opener was forced out before its close arrived: everything up to the
    /// close is masked as this detector's.
    in_block: Option<usize>,
}

impl Stream {
    /// Takes a chunk that arrived at `now_ms` and returns what may go out now, masked, or
    /// `None` when that is exactly the chunk (the common case, worth not copying).
    pub fn push(
        &mut self,
        masker: &mut Masker,
        chunk: &[u8],
        now_ms: u64,
        limits: Limits,
    ) -> Option<Vec<u8>> {
        let nothing_held = self.held() == 0 && self.in_block.is_none();
        self.buf.extend_from_slice(chunk);
        self.arrivals
            .push_back((self.base + self.buf.len() as u64, now_ms));
        let oldest = self.arrivals.front().map_or(now_ms, |&(_, at)| at);
        let forced = now_ms.saturating_sub(oldest) >= limits.max_hold_ms
            || self.buf.len() - self.released > limits.max_carry;
        let (out, unchanged) = self.release(masker, forced, limits.window, nothing_held);
        (!unchanged).then_some(out)
    }

    /// Everything still held, masked: the stream paused or ended.
    pub fn flush(&mut self, masker: &mut Masker) -> Vec<u8> {
        self.release(masker, true, 0, false).0
    }

    pub fn held(&self) -> usize {
        self.buf.len() - self.released
    }

    /// Returns what goes out. When `only_new` (nothing was held before the latest chunk)
    /// and that chunk goes out whole and unmasked, says so instead of copying it: `out` is
    /// then empty and the flag true.
    fn release(
        &mut self,
        masker: &mut Masker,
        all: bool,
        window: usize,
        only_new: bool,
    ) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut from = self.released;
        if let Some(detector) = self.in_block {
            let value_end = match masker.block_close(&self.buf, from) {
                Some(end) => {
                    self.in_block = None;
                    end
                }
                None if all => self.buf.len(),
                None => self.buf.len().saturating_sub(CLOSE_MARKER_MAX).max(from),
            };
            if value_end > from {
                masker.replace(detector, &self.buf[from..value_end], &mut out);
            }
            from = value_end;
            if self.in_block.is_some() {
                self.settle(from);
                return (out, false);
            }
        }
        let len = self.buf.len();
        let mut hits = Vec::new();
        masker.scan(&self.buf, from, &mut hits);
        let mut cut = if all {
            len
        } else {
            let line_start =
                memchr::memrchr(b'\n', &self.buf[from..]).map_or(from, |i| from + i + 1);
            len.saturating_sub(window).max(line_start)
        };
        let mut ready = hits.len();
        for (i, hit) in hits.iter().enumerate() {
            if hit.matched >= cut {
                ready = i;
                break;
            }
            if !all && (hit.open || hit.end == len) {
                // It may grow with the next chunk: hold it whole, with its context.
                cut = hit.matched;
                ready = i;
                break;
            }
            // Complete: it goes out whole, masked.
            cut = cut.max(hit.end);
        }
        let ready: &[Hit] = &hits[..ready];
        if only_new && ready.is_empty() && cut == len {
            self.settle(cut);
            return (out, true);
        }
        out.reserve(cut - from);
        masker.render(&self.buf, ready, from..cut, &mut out);
        if let Some(last) = ready.last()
            && last.open
        {
            self.in_block = Some(last.detector);
        }
        self.settle(cut);
        (out, false)
    }

    /// Marks `buf[..cut]` as gone out, keeping a little context before it.
    fn settle(&mut self, cut: usize) {
        let drop = cut.saturating_sub(CONTEXT);
        self.buf.drain(..drop);
        self.base += drop as u64;
        self.released = cut - drop;
        let released_to = self.base + self.released as u64;
        while self
            .arrivals
            .front()
            .is_some_and(|&(end, _)| end <= released_to)
        {
            self.arrivals.pop_front();
        }
    }
}
