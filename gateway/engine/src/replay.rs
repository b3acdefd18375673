//! A terminal session's replay in segments, so a player starts, and seeks, without loading
//! the whole session. A quick walk of the record cuts the session's cast (as
//! `audit::asciicast` renders it) into segments every few seconds or MiB of output; a second
//! walk, while the player already starts, opens each with a keyframe: the screen at that
//! point, made by a terminal emulator (`avt`, the one asciinema-player itself runs) and
//! dumped as the escape sequences that redraw it.
//! Served in asciinema-player's segmented format: an index (size, duration, segment starts,
//! markers), then each segment on request (its keyframe and its events). Both are read a page
//! of entries at a time, so the gateway's memory does not grow with the session.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::audit::{CastClock, EventView, cast_lines, seconds};
use sluice_record::{Record, RecordError, SessionSummary};

/// Entries read from the store at a time.
const PAGE: usize = 256;

/// When a new segment (and so a keyframe) begins: after this much output, or this long
/// after the last one began if the screen has changed since.
#[derive(Clone, Copy, Debug)]
pub struct Cutting {
    pub bytes: usize,
    pub every_ms: u64,
}

impl Default for Cutting {
    fn default() -> Cutting {
        Cutting {
            bytes: 1 << 20,
            every_ms: 5_000,
        }
    }
}

/// The screen where a segment begins, as a player restores it.
#[derive(Clone, Debug, PartialEq)]
pub struct Keyframe {
    pub cols: u64,
    pub rows: u64,
    /// Escape sequences that redraw the screen on an empty terminal of this size.
    pub init: String,
}

#[derive(Clone, Debug)]
pub struct Segment {
    /// Milliseconds since the session began: the time of its first event.
    pub start_ms: u64,
    /// The entry its first event comes from.
    pub first_index: u64,
}

/// A session's replay: what a player needs before its first segment, and the segments'
/// keyframes as they are made.
#[derive(Debug)]
pub struct ReplayIndex {
    pub session: String,
    /// The session's entries when it was made: a live session that has grown since needs
    /// a new one.
    pub last_index: u64,
    pub start_ms: u64,
    pub cols: u64,
    pub rows: u64,
    pub duration_ms: u64,
    pub segments: Vec<Segment>,
    pub markers: Vec<(u64, String)>,
    keyframes: Keyframes,
}

/// Keyframes in segment order, made by one walk through the emulator (`make_keyframes`)
/// while the index is already served: segment K waits for keyframe K alone.
#[derive(Debug, Default)]
struct Keyframes {
    made: Mutex<Made>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct Made {
    frames: Vec<Keyframe>,
    bytes: usize,
    failed: Option<String>,
}

impl ReplayIndex {
    /// Walks session `summary`'s entries once, without emulating the terminal: where each
    /// segment begins (after `cutting.bytes` of output, or `cutting.every_ms` after the
    /// last began if anything was shown since), the markers and the duration. Fast, so a
    /// player starts at once; the keyframes come after (`make_keyframes`).
    pub fn scan(
        store: &dyn Record,
        summary: &SessionSummary,
        cutting: Cutting,
    ) -> Result<ReplayIndex, RecordError> {
        let mut index = ReplayIndex {
            session: summary.id.clone(),
            last_index: summary.last_index,
            start_ms: 0,
            cols: 80,
            rows: 24,
            duration_ms: 0,
            segments: Vec::new(),
            markers: Vec::new(),
            keyframes: Keyframes::default(),
        };
        let mut clock = CastClock::starting(0);
        // Output since the current segment began.
        let mut bytes = 0usize;
        let mut last_event: Option<u64> = None;
        for_each_entry(store, summary, summary.first_index, |e| {
            if index.segments.is_empty() {
                // The first entry opens the session: its time is the cast's zero.
                (index.cols, index.rows) = Screen::clamped(e.terminal_size());
                index.start_ms = e.time_ms;
                clock = CastClock::starting(e.time_ms);
                index.segments.push(Segment {
                    start_ms: 0,
                    first_index: e.index,
                });
            }
            let lines = cast_lines(e, (index.cols, index.rows));
            if lines.is_empty() {
                return;
            }
            let t = clock.at(e.time_ms);
            let current = index.segments.last().map_or(0, |s| s.start_ms);
            // A segment begins at an event later than every event before it, so that the
            // markers and events of the one before all come before it.
            let due = bytes >= cutting.bytes || (bytes > 0 && t >= current + cutting.every_ms);
            if due && last_event.is_some_and(|last| t > last) {
                index.segments.push(Segment {
                    start_ms: t,
                    first_index: e.index,
                });
                bytes = 0;
            }
            for (code, text) in lines {
                match code {
                    "o" => bytes += text.len(),
                    "m" => index.markers.push((t, text)),
                    _ => {}
                }
            }
            last_event = Some(t);
        })?;
        index.duration_ms = last_event.unwrap_or(0);
        // A player wants every segment to begin before the end; the last one may not.
        if index.segments.len() > 1
            && index
                .segments
                .last()
                .is_some_and(|s| s.start_ms >= index.duration_ms)
        {
            index.segments.pop();
        }
        if index.segments.is_empty() {
            // No entries at all (purged, or never any).
            index.segments.push(Segment {
                start_ms: 0,
                first_index: summary.first_index,
            });
        }
        Ok(index)
    }

    /// Walks the session again through the terminal emulator, making each segment's
    /// keyframe (the screen just before its first entry) in order, and waking whoever waits
    /// for it. A failed read is kept, and said to each waiter.
    pub fn make_keyframes(&self, store: &dyn Record) {
        let mut screen = Screen::new(self.cols, self.rows);
        let mut next = 0;
        let summary = SessionSummary {
            id: self.session.clone(),
            last_index: self.last_index,
            ..SessionSummary::default()
        };
        let first = self.segments[0].first_index;
        let walked = for_each_entry(store, &summary, first, |e| {
            while self
                .segments
                .get(next)
                .is_some_and(|s| s.first_index <= e.index)
            {
                self.keyframes.add(screen.keyframe());
                next += 1;
            }
            for (code, text) in cast_lines(e, (self.cols, self.rows)) {
                match code {
                    "o" => screen.feed(&text),
                    "r" => screen.resize(&text),
                    _ => {}
                }
            }
        });
        match walked {
            Err(e) => self.keyframes.fail(e.to_string()),
            Ok(()) => {
                while next < self.segments.len() {
                    self.keyframes.add(screen.keyframe());
                    next += 1;
                }
            }
        }
    }

    /// Segment `k`'s keyframe, waiting up to `wait` for it to be made.
    fn keyframe(&self, k: usize, wait: Duration) -> Result<Keyframe, String> {
        self.keyframes.get(k, wait)
    }

    /// The index as asciinema-player's segmented recording reads it; segment `k` is at
    /// `segment_url(k)`.
    pub fn to_json(&self, segment_url: impl Fn(usize) -> String) -> serde_json::Value {
        json!({
            "version": 1,
            "duration": seconds(self.duration_ms),
            "term": {"cols": self.cols, "rows": self.rows},
            "segments": self.segments.iter().enumerate()
                .map(|(k, s)| json!({"start": seconds(s.start_ms), "url": segment_url(k)}))
                .collect::<Vec<_>>(),
            "markers": self.markers.iter().map(|(t, label)| json!([seconds(*t), label])).collect::<Vec<_>>(),
        })
    }

    /// Segment `k`: its keyframe (waiting up to `wait` for it) and its events (those of
    /// entries from its first to the next segment's), as JSON; `None` past the last.
    pub fn segment_json(
        &self,
        store: &dyn Record,
        k: usize,
        wait: Duration,
    ) -> Result<Option<String>, String> {
        let Some(segment) = self.segments.get(k) else {
            return Ok(None);
        };
        let keyframe = self.keyframe(k, wait)?;
        let end = self
            .segments
            .get(k + 1)
            .map_or(self.last_index, |next| next.first_index.saturating_sub(1));
        let summary = SessionSummary {
            id: self.session.clone(),
            last_index: end,
            ..SessionSummary::default()
        };
        let mut clock = CastClock::resumed(self.start_ms, segment.start_ms);
        let mut events = String::from("[");
        for_each_entry(store, &summary, segment.first_index, |e| {
            let lines = cast_lines(e, (self.cols, self.rows));
            if lines.is_empty() {
                return;
            }
            let t = seconds(clock.at(e.time_ms));
            for (code, text) in lines {
                if events.len() > 1 {
                    events.push(',');
                }
                events.push_str(&json!([t, code, text]).to_string());
            }
        })
        .map_err(|e| e.to_string())?;
        if events.len() == 1 {
            // A session that showed nothing: a player still wants one event, at its end.
            events.push_str(&json!([seconds(self.duration_ms), "o", ""]).to_string());
        }
        events.push(']');
        let snapshot = json!({
            "cols": keyframe.cols,
            "rows": keyframe.rows,
            "init": keyframe.init,
        });
        Ok(Some(format!(
            r#"{{"snapshot":{snapshot},"events":{events}}}"#
        )))
    }

    /// Roughly the memory the index holds (its segments, keyframes and markers).
    pub fn weight(&self) -> usize {
        let markers: usize = self.markers.iter().map(|(_, m)| m.len() + 32).sum();
        self.segments.len() * 64 + markers + self.keyframes.lock().bytes
    }
}

impl Keyframes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Made> {
        self.made.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, keyframe: Keyframe) {
        let mut made = self.lock();
        made.bytes += keyframe.init.len() + 32;
        made.frames.push(keyframe);
        self.ready.notify_all();
    }

    fn fail(&self, why: String) {
        self.lock().failed = Some(why);
        self.ready.notify_all();
    }

    fn get(&self, k: usize, wait: Duration) -> Result<Keyframe, String> {
        let deadline = std::time::Instant::now() + wait;
        let mut made = self.lock();
        loop {
            if let Some(frame) = made.frames.get(k) {
                return Ok(frame.clone());
            }
            if let Some(why) = &made.failed {
                return Err(format!("the replay's keyframes could not be made: {why}"));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "keyframe {k} is still being made ({} of them so far); try again",
                    made.frames.len()
                ));
            }
            made = self
                .ready
                .wait_timeout(made, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The terminal emulator that keyframes come from.
struct Screen {
    terminal: avt::Terminal,
    size: (u64, u64),
}

impl Screen {
    /// A size the emulator takes: 1 to 1000 each way.
    fn clamped((cols, rows): (u64, u64)) -> (u64, u64) {
        (cols.clamp(1, 1000), rows.clamp(1, 1000))
    }

    fn new(cols: u64, rows: u64) -> Screen {
        let (cols, rows) = Screen::clamped((cols, rows));
        Screen {
            // No scrollback: a keyframe is the screen, and its size stays flat.
            terminal: avt::Terminal::new(cols as usize, rows as usize)
                .unwrap_or_else(|_| unreachable!("clamped to at least 1x1")),
            size: (cols, rows),
        }
    }

    fn feed(&mut self, text: &str) {
        self.terminal.feed(text);
    }

    fn resize(&mut self, spec: &str) {
        if let Some((cols, rows)) = parse_size(spec) {
            let (cols, rows) = Screen::clamped((cols, rows));
            self.terminal.resize(cols as usize, rows as usize);
            self.size = (cols, rows);
        }
    }

    fn keyframe(&self) -> Keyframe {
        Keyframe {
            cols: self.size.0,
            rows: self.size.1,
            init: self.terminal.dump(),
        }
    }
}

/// `COLSxROWS`, as a resize event says it.
fn parse_size(spec: &str) -> Option<(u64, u64)> {
    let (cols, rows) = spec.split_once('x')?;
    Some((cols.parse().ok()?, rows.parse().ok()?))
}

/// Calls `f` with each entry of session `summary` from entry `from` through its last, read a
/// page at a time.
fn for_each_entry(
    store: &dyn Record,
    summary: &SessionSummary,
    from: u64,
    mut f: impl FnMut(&EventView),
) -> Result<(), RecordError> {
    let mut next = from;
    while next <= summary.last_index {
        let page = store.session_page(&summary.id, next..=summary.last_index, PAGE)?;
        let Some(last) = page.last() else { break };
        next = last.entry.index + 1;
        for recorded in page {
            f(&EventView::of(recorded));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use sluice_record::{NewEvent, Store, kinds};

    const SESSION: &str = "s1";

    /// A store holding one session: `events` as (ms, kind, meta, payload), with another
    /// session's entries between them (a replay must skip those).
    fn store_with(
        events: &[(u64, &str, serde_json::Value, Vec<u8>)],
    ) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("r.redb"), &dir.path().join("r.key")).unwrap();
        for (seq, (time_ms, kind, meta, payload)) in events.iter().enumerate() {
            let event = |session: &str| NewEvent {
                session: session.into(),
                seq: seq as u64,
                kind: (*kind).into(),
                time_ms: *time_ms,
                meta: meta.to_string(),
                payload: payload.clone(),
            };
            store.append(&[event(SESSION), event("other")]).unwrap();
        }
        (dir, store)
    }

    fn out(ms: u64, text: &str) -> (u64, &'static str, serde_json::Value, Vec<u8>) {
        let meta = json!({"dir": "out", "content": "bytes", "outcome": "pass"});
        (ms, "frame", meta, text.as_bytes().to_vec())
    }

    /// A terminal session that draws: colours, cursor moves, a clear screen, the alternate
    /// screen, a resize, a statement, a clock that steps back once.
    fn drawing() -> Vec<(u64, &'static str, serde_json::Value, Vec<u8>)> {
        let mut events = vec![(
            1_000,
            kinds::SESSION_OPEN,
            json!({"mode": "interactive", "cols": 40, "rows": 6}),
            vec![],
        )];
        let mut t = 1_000;
        for i in 0..120u64 {
            t += if i % 7 == 0 { 40 } else { 3 };
            let text = match i % 10 {
                0 => format!("\x1b[2J\x1b[H\x1b[1;3{}mpage {i}\x1b[0m\r\n", i % 8),
                3 => format!("\x1b[3;5Hat 3,5: {i}"),
                5 => "\x1b[?1049h\x1b[Halt screen\r\n".to_string(),
                6 => "\x1b[?1049lback\r\n".to_string(),
                _ => format!("line {i} {}\r\n", "x".repeat((i % 13) as usize)),
            };
            events.push(out(t, &text));
            if i == 50 {
                events.push((t + 1, kinds::RESIZE, json!({"cols": 30, "rows": 8}), vec![]));
            }
            if i == 70 {
                let meta = json!({"dir": "in", "content": "statement", "outcome": "pass"});
                events.push((t + 1, "frame", meta, b"select 1;\n".to_vec()));
            }
            if i == 90 {
                events.push(out(t - 500, "the clock stepped back\r\n"));
            }
        }
        events.push((
            t + 10,
            kinds::SESSION_CLOSE,
            json!({"exit_status": 0}),
            vec![],
        ));
        events
    }

    const NOW: Duration = Duration::ZERO;

    /// The index with every keyframe made: `scan`, then `make_keyframes`.
    fn built(store: &Store, summary: &SessionSummary, cutting: Cutting) -> ReplayIndex {
        let index = ReplayIndex::scan(store, summary, cutting).unwrap();
        index.make_keyframes(store);
        index
    }

    fn segment(index: &ReplayIndex, store: &Store, k: usize) -> serde_json::Value {
        serde_json::from_str(&index.segment_json(store, k, NOW).unwrap().unwrap()).unwrap()
    }

    /// The screen's text after `init` and then `events` (`o` and `r` lines).
    fn screen(cols: u64, rows: u64, init: &str, events: &[serde_json::Value]) -> Vec<String> {
        let mut vt = avt::Terminal::new(cols as usize, rows as usize).unwrap();
        vt.feed(init);
        for e in events {
            match e[1].as_str().unwrap() {
                "o" => vt.feed(e[2].as_str().unwrap()),
                "r" => {
                    let (c, r) = parse_size(e[2].as_str().unwrap()).unwrap();
                    vt.resize(c as usize, r as usize);
                }
                _ => {}
            }
        }
        vt.screen().text()
    }

    #[test]
    fn each_segment_opens_on_the_screen_the_whole_cast_shows_there() {
        let (_dir, store) = store_with(&drawing());
        let summary = store.session(SESSION).unwrap().unwrap();
        let cutting = Cutting {
            bytes: 200,
            every_ms: 100,
        };
        let index = built(&store, &summary, cutting);
        assert!(index.segments.len() > 5, "{}", index.segments.len());
        assert_eq!((index.cols, index.rows), (40, 6));

        // The segments, end to end, are the whole asciicast, event for event.
        let segments: Vec<serde_json::Value> = (0..index.segments.len())
            .map(|k| segment(&index, &store, k))
            .collect();
        assert!(
            index
                .segment_json(&store, index.segments.len(), NOW)
                .unwrap()
                .is_none()
        );
        let joined: Vec<serde_json::Value> = segments
            .iter()
            .flat_map(|s| s["events"].as_array().unwrap().clone())
            .collect();
        let views: Vec<EventView> = store
            .session_events(SESSION)
            .unwrap()
            .into_iter()
            .map(EventView::of)
            .collect();
        let cast: Vec<serde_json::Value> = crate::audit::asciicast(&views)
            .lines()
            .skip(1)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(joined, cast);

        // What asciinema-player checks of a segmented recording holds.
        let json = index.to_json(|k| format!("replay/{k}"));
        assert_eq!(json["segments"][0]["start"], 0.0);
        let markers = json["markers"].as_array().unwrap();
        assert_eq!(markers.len(), 1);
        assert_eq!(markers[0][1], "select 1;");
        let mut previous_start = -1.0;
        let mut previous_time = -1.0;
        for (k, s) in segments.iter().enumerate() {
            let start = json["segments"][k]["start"].as_f64().unwrap();
            assert!(
                start > previous_start && (k == 0 || start < json["duration"].as_f64().unwrap())
            );
            previous_start = start;
            let events = s["events"].as_array().unwrap();
            assert!(!events.is_empty());
            if k > 0 {
                assert_eq!(events[0][0].as_f64().unwrap(), start, "segment {k}");
            }
            for e in events {
                let time = e[0].as_f64().unwrap();
                assert!(time >= previous_time && time >= start, "segment {k}: {e}");
                previous_time = time;
            }
        }
        assert_eq!(previous_time, json["duration"].as_f64().unwrap());

        // A segment's keyframe and its events draw what the whole cast draws up to its end.
        for (k, s) in segments.iter().enumerate() {
            let snapshot = &s["snapshot"];
            let (cols, rows) = (
                snapshot["cols"].as_u64().unwrap(),
                snapshot["rows"].as_u64().unwrap(),
            );
            let from_keyframe = screen(
                cols,
                rows,
                snapshot["init"].as_str().unwrap(),
                s["events"].as_array().unwrap(),
            );
            let upto: usize = segments[..=k]
                .iter()
                .map(|s| s["events"].as_array().unwrap().len())
                .sum();
            let from_start = screen(40, 6, "", &cast[..upto]);
            assert_eq!(from_keyframe, from_start, "segment {k}");
        }
        // The resize reached the keyframes after it.
        assert!(
            segments
                .iter()
                .any(|s| s["snapshot"]["cols"] == 30 && s["snapshot"]["rows"] == 8)
        );
    }

    #[test]
    fn output_cuts_segments_by_size_and_idle_screens_make_no_keyframes() {
        let mut events = vec![(
            0,
            kinds::SESSION_OPEN,
            json!({"mode": "interactive"}),
            vec![],
        )];
        // 10 KiB at once, then a long silence, then a line.
        for i in 0..10 {
            events.push(out(10 + i, &"y".repeat(1024)));
        }
        events.push(out(60_000, "late\r\n"));
        events.push(out(60_001, "later\r\n"));
        let (_dir, store) = store_with(&events);
        let summary = store.session(SESSION).unwrap().unwrap();
        let cutting = Cutting {
            bytes: 4096,
            every_ms: 1_000,
        };
        let index = built(&store, &summary, cutting);
        let starts: Vec<u64> = index.segments.iter().map(|s| s.start_ms).collect();
        // After each 4 KiB (at the fifth and ninth frame), then at the late line: nothing
        // in the silence.
        assert_eq!(starts, vec![0, 14, 18, 60_000]);
        assert_eq!(index.duration_ms, 60_001);

        // A segment may not begin at the very end: without the last line, the late one
        // ends the session, and joins the segment before it.
        events.pop();
        let (_dir, store) = store_with(&events);
        let summary = store.session(SESSION).unwrap().unwrap();
        let index = built(&store, &summary, cutting);
        let starts: Vec<u64> = index.segments.iter().map(|s| s.start_ms).collect();
        assert_eq!(starts, vec![0, 14, 18]);
        let last = segment(&index, &store, 2);
        assert_eq!(
            last["events"].as_array().unwrap().last().unwrap()[2],
            "late\r\n"
        );
    }

    #[test]
    fn the_index_is_served_before_the_keyframes_and_a_segment_waits_for_its_own() {
        let (_dir, store) = store_with(&drawing());
        let summary = store.session(SESSION).unwrap().unwrap();
        let cutting = Cutting {
            bytes: 200,
            every_ms: 100,
        };
        let index = std::sync::Arc::new(ReplayIndex::scan(&store, &summary, cutting).unwrap());
        let last = index.segments.len() - 1;
        assert_eq!(index.keyframes.lock().frames.len(), 0);
        let early = index.segment_json(&store, last, NOW).unwrap_err();
        assert!(early.contains("still being made"), "{early}");
        let store = std::sync::Arc::new(store);
        let (making, from) = (index.clone(), store.clone());
        let maker = std::thread::spawn(move || making.make_keyframes(&*from));
        let waited = index
            .segment_json(&*store, last, Duration::from_secs(30))
            .unwrap();
        assert!(waited.is_some());
        maker.join().unwrap();
        assert_eq!(index.keyframes.lock().frames.len(), index.segments.len());
        // The same as made in one go.
        let whole = built(&store, &summary, cutting);
        assert_eq!(waited, whole.segment_json(&*store, last, NOW).unwrap());
    }

    #[test]
    fn a_session_that_showed_nothing_is_one_empty_segment() {
        let events = vec![
            (5, kinds::SESSION_OPEN, json!({"mode": "exec"}), vec![]),
            (9, kinds::SESSION_CLOSE, json!({"exit_status": 0}), vec![]),
        ];
        let (_dir, store) = store_with(&events);
        let summary = store.session(SESSION).unwrap().unwrap();
        let index = built(&store, &summary, Cutting::default());
        assert_eq!(index.segments.len(), 1);
        assert_eq!(index.duration_ms, 0);
        let s = segment(&index, &store, 0);
        assert_eq!(s["events"], json!([[0.0, "o", ""]]));
        assert_eq!(
            (
                s["snapshot"]["cols"].as_u64(),
                s["snapshot"]["rows"].as_u64()
            ),
            (Some(80), Some(24))
        );
    }
}
