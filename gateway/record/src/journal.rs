//! The journal in front of redb: what makes a durable commit one sequential write.
//!
//! A commit's writes (its block, the sessions rows it changes, its signed head) are appended
//! here as one record and `fdatasync`'d; that is the moment the commit is durable. redb then
//! takes the same writes without an fsync of its own (`Durability::None`), and is made durable
//! by a plain commit when the journal's oldest record is two seconds old ([`CHECKPOINT_AFTER`]),
//! when a record would not fit, and when the store closes; after each such commit the journal
//! starts over. A redb commit writes a dozen
//! pages in a dozen places and syncs them; a journal record is one write into a file whose
//! blocks exist already, several times cheaper on the disks measured (`benches/RESULTS.md`).
//!
//! At open, redb comes back at its last durable commit (a crash loses the others) and the
//! journal's records past it are checked (each follows the chain's end, its head is signed
//! and names its last entry) and applied, in one durable commit.
//!
//! The file: a header block (magic, version, epoch), then records from [`RECORDS_AT`]:
//! `"SJR1" | epoch u64 | body length u32 | SHA-256(epoch, body) | body`. A record counts only
//! under the header's epoch with a matching digest, so a torn write (a crash in the middle of
//! an append) or the leftovers of an earlier epoch end the journal where they begin. Starting
//! over writes a new epoch into the header and reuses the file from the top.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::SignedHead;

const FILE_MAGIC: &[u8; 8] = b"SLJOURN1";
const RECORD_MAGIC: &[u8; 4] = b"SJR1";
/// Where the first record goes: the header keeps a block of its own.
const RECORDS_AT: u64 = 4096;
const RECORD_HEAD: usize = 4 + 8 + 4 + 32;
/// The journal's size at most; a commit that does not fit goes to redb durably.
const CAPACITY: u64 = 32 << 20;
/// A commit larger than this goes to redb durably too: its pages are mostly its own, written
/// in sequence, so redb's fixed cost per commit (a dozen scattered pages) matters little and
/// the journal would only write its bytes twice (measured: 1,000 events per commit, 370 KB,
/// were 9% slower through the journal, 4 events 2× faster; the threshold between is a choice
/// no run has pinned down; `benches/RESULTS.md`).
const LARGE: usize = 32 << 10;
/// The age of the journal's oldest record at which the next commit goes to redb durably
/// instead: under load, redb becomes durable that often (its pages freed by commits not yet
/// durable are reused only after), while sparse commits (a person typing) still go through
/// the journal. `SLUICE_RECORD_CHECKPOINT_MS` sets another (tests that need commits to stay
/// in the journal). The capacity bounds the work of a start after a crash.
const CHECKPOINT_AFTER: Duration = Duration::from_secs(2);

fn checkpoint_after() -> Duration {
    std::env::var("SLUICE_RECORD_CHECKPOINT_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(CHECKPOINT_AFTER, Duration::from_millis)
}

/// What one commit writes into redb, so that the journal can hold it and apply it again.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Commit {
    /// The block's key (its last entry's index) and the block (`blocks.rs`).
    pub last: u64,
    pub block: Vec<u8>,
    /// Sessions index rows: id, encoded summary.
    pub sessions: Vec<(String, Vec<u8>)>,
    pub head: Option<SignedHead>,
}

impl Commit {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.last.to_le_bytes());
        put(out, &self.block);
        out.extend_from_slice(&(self.sessions.len() as u32).to_le_bytes());
        for (id, row) in &self.sessions {
            put(out, id.as_bytes());
            put(out, row);
        }
        put(
            out,
            &self
                .head
                .as_ref()
                .map(SignedHead::encode)
                .unwrap_or_default(),
        );
    }

    fn decode(mut bytes: &[u8]) -> Option<Commit> {
        let last = u64::from_le_bytes(take(&mut bytes, 8)?.try_into().ok()?);
        let block = take_counted(&mut bytes)?.to_vec();
        let count = u32::from_le_bytes(take(&mut bytes, 4)?.try_into().ok()?);
        let mut sessions = Vec::new();
        for _ in 0..count {
            let id = String::from_utf8(take_counted(&mut bytes)?.to_vec()).ok()?;
            sessions.push((id, take_counted(&mut bytes)?.to_vec()));
        }
        let head = match take_counted(&mut bytes)? {
            [] => None,
            encoded => Some(SignedHead::decode(encoded)?),
        };
        bytes.is_empty().then_some(Commit {
            last,
            block,
            sessions,
            head,
        })
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = bytes.split_at_checked(n)?;
    *bytes = rest;
    Some(head)
}

fn take_counted<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?);
    take(bytes, n as usize)
}

fn digest(epoch: u64, body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(epoch.to_le_bytes());
    hasher.update(body);
    hasher.finalize().into()
}

#[derive(Debug)]
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    epoch: u64,
    /// Where the next record goes.
    end: u64,
    /// A record written whose redb commit was not confirmed (it failed, or panicked): it is
    /// taken back before anything else is written, so the journal never holds a commit the
    /// store did not make.
    unconfirmed: Option<u64>,
    /// When the oldest record of this epoch was written, and its age that calls for a
    /// durable redb commit.
    oldest: Option<Instant>,
    checkpoint_after: Duration,
    /// The record being written, kept to reuse its allocation.
    buffer: Vec<u8>,
}

impl Journal {
    /// Beside the store, named after it: `record.redb` has `record.journal`.
    pub fn path_for(store: &Path) -> PathBuf {
        store.with_extension("journal")
    }

    /// Opens the journal beside `store` (creating it empty), with the commits it holds, in
    /// order. The caller applies those redb lacks, makes redb durable and calls
    /// [`new_epoch`](Journal::new_epoch).
    pub fn open(store: &Path) -> io::Result<(Journal, Vec<Commit>)> {
        let path = Journal::path_for(store);
        if !path.exists() {
            create(&path)?;
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let (epoch, commits) = read(&file, &path)?;
        let journal = Journal {
            file,
            path,
            epoch,
            end: RECORDS_AT,
            unconfirmed: None,
            oldest: None,
            checkpoint_after: checkpoint_after(),
            buffer: Vec::new(),
        };
        Ok((journal, commits))
    }

    /// The commits held in the journal beside `store`, without changing it (offline verify);
    /// none when there is no journal.
    pub fn read_beside(store: &Path) -> io::Result<Vec<Commit>> {
        let path = Journal::path_for(store);
        match File::open(&path) {
            Ok(file) => read(&file, &path).map(|(_, commits)| commits),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Makes `commit` durable in the journal. `Ok(false)` when a durable redb commit should
    /// take it instead (a checkpoint is due, the commit is large, or the journal is full):
    /// the caller makes one and calls [`restart`](Journal::restart).
    pub fn write(&mut self, commit: &Commit) -> io::Result<bool> {
        self.take_back_unconfirmed()?;
        let due = self
            .oldest
            .is_some_and(|at| at.elapsed() >= self.checkpoint_after);
        if due || commit.block.len() > LARGE {
            return Ok(false);
        }
        let mut record = std::mem::take(&mut self.buffer);
        record.clear();
        record.extend_from_slice(RECORD_MAGIC);
        record.extend_from_slice(&self.epoch.to_le_bytes());
        record.extend_from_slice(&[0; 4 + 32]);
        commit.encode(&mut record);
        let body_len = record.len() - RECORD_HEAD;
        if body_len > LARGE || self.end + record.len() as u64 > CAPACITY {
            self.buffer = record;
            return Ok(false);
        }
        let sum = digest(self.epoch, &record[RECORD_HEAD..]);
        record[12..16].copy_from_slice(&(body_len as u32).to_le_bytes());
        record[16..RECORD_HEAD].copy_from_slice(&sum);
        self.unconfirmed = Some(self.end);
        self.oldest.get_or_insert_with(Instant::now);
        let written = self
            .file
            .write_all_at(&record, self.end)
            .and_then(|()| self.file.sync_data());
        self.end += record.len() as u64;
        self.buffer = record;
        written.map(|()| true)
    }

    /// The store made the commit last written: it stays.
    pub fn confirm(&mut self) {
        self.unconfirmed = None;
    }

    /// The store could not make the commit last written: it is taken back now.
    pub fn take_back_unconfirmed(&mut self) -> io::Result<()> {
        if let Some(at) = self.unconfirmed {
            self.file.write_all_at(&[0; 4], at)?;
            self.file.sync_data()?;
            self.end = at;
            self.unconfirmed = None;
        }
        Ok(())
    }

    /// redb is durable with every commit the journal holds: start over. Nothing to do when
    /// it holds none (a stream of large commits pays no second sync).
    pub fn restart(&mut self) -> io::Result<()> {
        if self.end == RECORDS_AT && self.unconfirmed.is_none() {
            return Ok(());
        }
        self.new_epoch()
    }

    /// Starts a new epoch: nothing the file holds counts any more.
    pub fn new_epoch(&mut self) -> io::Result<()> {
        self.epoch += 1;
        self.file.write_all_at(&header(self.epoch), 0)?;
        self.file.sync_data()?;
        self.end = RECORDS_AT;
        self.unconfirmed = None;
        self.oldest = None;
        Ok(())
    }

    /// A new epoch, and the file cut back to its header: a purge
    /// or a compaction leaves no copy of what it deleted in the journal either.
    pub fn erase(&mut self) -> io::Result<()> {
        self.new_epoch()?;
        self.file.set_len(RECORDS_AT)?;
        self.file.sync_all()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn header(epoch: u64) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(FILE_MAGIC);
    bytes[8..].copy_from_slice(&epoch.to_le_bytes());
    bytes
}

/// A new journal appears whole or not at all: written aside, synced, renamed into place.
fn create(path: &Path) -> io::Result<()> {
    let aside = path.with_extension("journal.new");
    let file = File::create(&aside)?;
    file.write_all_at(&header(1), 0)?;
    file.set_len(RECORDS_AT)?;
    file.sync_all()?;
    std::fs::rename(&aside, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The epoch and the valid records of the current one, up to the first that is not.
fn read(file: &File, path: &Path) -> io::Result<(u64, Vec<Commit>)> {
    let damaged = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    };
    let mut head = [0u8; 16];
    file.read_exact_at(&mut head, 0)
        .map_err(|_| damaged("its header is missing"))?;
    if &head[..8] != FILE_MAGIC {
        return Err(damaged("this is not a Sluice record journal"));
    }
    let epoch = u64::from_le_bytes(head[8..].try_into().unwrap_or_default());
    let len = file.metadata()?.len();
    let mut bytes = vec![0; len.saturating_sub(RECORDS_AT) as usize];
    file.read_exact_at(&mut bytes, RECORDS_AT)?;
    let mut commits = Vec::new();
    let mut rest = bytes.as_slice();
    while let Some(record_head) = rest.get(..RECORD_HEAD) {
        if &record_head[..4] != RECORD_MAGIC || record_head[4..12] != epoch.to_le_bytes() {
            break;
        }
        let body_len = u32::from_le_bytes(record_head[12..16].try_into().unwrap_or_default());
        let Some(body) = rest.get(RECORD_HEAD..RECORD_HEAD + body_len as usize) else {
            break;
        };
        if digest(epoch, body)[..] != record_head[16..] {
            break;
        }
        let Some(commit) = Commit::decode(body) else {
            // The digest held: this is not a torn write but a record this version cannot read.
            return Err(damaged(
                "a record's digest holds but its content cannot be read",
            ));
        };
        commits.push(commit);
        rest = &rest[RECORD_HEAD + body.len()..];
    }
    Ok((epoch, commits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(last: u64) -> Commit {
        Commit {
            last,
            block: vec![last as u8; 100],
            sessions: vec![("s1".into(), b"{}".to_vec())],
            head: None,
        }
    }

    #[test]
    fn records_come_back_in_order_and_a_restart_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("record.redb");
        let (mut journal, held) = Journal::open(&store).unwrap();
        assert!(held.is_empty());
        for last in [3, 7] {
            assert!(journal.write(&commit(last)).unwrap());
            journal.confirm();
        }
        drop(journal);
        let (mut journal, held) = Journal::open(&store).unwrap();
        assert_eq!(held, vec![commit(3), commit(7)]);
        journal.new_epoch().unwrap();
        assert!(journal.write(&commit(9)).unwrap());
        journal.confirm();
        // The new epoch's record overwrote the first; the second one's bytes are still in the
        // file, under the old epoch, and must not come back.
        assert_eq!(Journal::read_beside(&store).unwrap(), vec![commit(9)]);
    }

    #[test]
    fn a_torn_record_ends_the_journal_and_an_unconfirmed_one_is_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("record.redb");
        let (mut journal, _) = Journal::open(&store).unwrap();
        for last in [1, 2] {
            assert!(journal.write(&commit(last)).unwrap());
            journal.confirm();
        }
        // A commit redb refused: written, never confirmed, taken back before the next one.
        assert!(journal.write(&commit(3)).unwrap());
        assert!(journal.write(&commit(4)).unwrap());
        assert_eq!(
            Journal::read_beside(&store).unwrap(),
            vec![commit(1), commit(2), commit(4)]
        );
        // A crash in the middle of the last append: its bytes are cut short.
        let path = Journal::path_for(&store);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 10).unwrap();
        assert_eq!(
            Journal::read_beside(&store).unwrap(),
            vec![commit(1), commit(2)]
        );
        // One flipped byte in a record: it and everything after it do not count.
        let first_body = RECORDS_AT as usize + RECORD_HEAD + 20;
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[first_body] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(Journal::read_beside(&store).unwrap().is_empty());
    }

    #[test]
    fn an_old_journal_or_a_large_commit_sends_the_commit_to_redb() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("record.redb");
        let (mut journal, _) = Journal::open(&store).unwrap();
        journal.checkpoint_after = Duration::from_millis(50);
        // However long since the last checkpoint, the first record is journaled...
        std::thread::sleep(Duration::from_millis(60));
        assert!(journal.write(&commit(1)).unwrap());
        journal.confirm();
        assert!(journal.write(&commit(2)).unwrap());
        journal.confirm();
        // ...and once it is old enough, the next commit goes to redb, until a restart.
        let deadline = Instant::now() + Duration::from_secs(10);
        while journal.write(&commit(3)).unwrap() {
            journal.confirm();
            assert!(Instant::now() < deadline, "never due");
        }
        journal.restart().unwrap();
        // Empty now: a restart has nothing to do (no second sync after a large commit).
        let epoch = journal.epoch;
        journal.restart().unwrap();
        assert_eq!(journal.epoch, epoch);
        assert!(journal.write(&commit(4)).unwrap());
        journal.confirm();
        let large = Commit {
            block: vec![0; LARGE + 1],
            ..commit(5)
        };
        assert!(!journal.write(&large).unwrap());
        assert_eq!(Journal::read_beside(&store).unwrap(), vec![commit(4)]);
    }

    use crate::test_events::frame as event;
    use crate::{Store, VerifyOptions, kinds, verify_store};

    const COMMITS: u64 = 40;
    /// Set in the process a crash test starts to play the gateway that crashes.
    const CRASH_DIR: &str = "SLUICE_JOURNAL_CRASH_DIR";

    /// In the process `crashed_store` starts (this test binary again, running only the test
    /// that started it): commits `COMMITS` groups of three events into the folder it was
    /// given and dies without closing anything, as a gateway killed by SIGKILL. In the test's
    /// own process, does nothing.
    fn crash_here_if_child() {
        let Ok(dir) = std::env::var(CRASH_DIR) else {
            return;
        };
        let dir = Path::new(&dir);
        let store = Store::open(&dir.join("record.redb"), &dir.join("record.key")).unwrap();
        for commit in 0..COMMITS {
            let events: Vec<_> = (1..=3).map(|i| event(commit * 3 + i)).collect();
            store.append(&events).unwrap();
        }
        std::process::exit(0);
    }

    /// Runs `test` (which starts with `crash_here_if_child`) in a process of its own over a
    /// fresh folder, where it crashes; returns the folder.
    fn crashed_store(test: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("journal::tests::{test}"), "--quiet"])
            .env(CRASH_DIR, dir.path())
            // No checkpoint while it runs: every commit after the first lives in the journal
            // and redb's memory only.
            .env("SLUICE_RECORD_CHECKPOINT_MS", "600000")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        dir
    }

    fn frames(store: &Store) -> Vec<u64> {
        store
            .entries_from(0, usize::MAX)
            .unwrap()
            .into_iter()
            .filter(|r| r.entry.kind == "frame")
            .map(|r| r.entry.seq)
            .collect()
    }

    #[test]
    fn commits_only_the_journal_held_come_back_after_a_crash() {
        crash_here_if_child();
        let dir = crashed_store("commits_only_the_journal_held_come_back_after_a_crash");
        let store_path = dir.path().join("record.redb");
        // redb's file alone lost what was committed after its last durable commit...
        let bare = tempfile::tempdir().unwrap();
        std::fs::copy(&store_path, bare.path().join("record.redb")).unwrap();
        std::fs::copy(
            dir.path().join("record.key"),
            bare.path().join("record.key"),
        )
        .unwrap();
        let without = Store::open(
            &bare.path().join("record.redb"),
            &bare.path().join("record.key"),
        )
        .unwrap();
        assert!(
            (frames(&without).len() as u64) < COMMITS * 3,
            "redb kept every commit: this test no longer shows the journal's part"
        );
        drop(without);
        // ...offline verify (which repairs a copy) and the next start find all of it.
        let report = verify_store(&store_path, VerifyOptions::default());
        assert!(report.problem.is_none(), "{:?}", report.problem);
        assert!(report.repaired && report.gaps.is_empty());
        assert_eq!(report.entries, COMMITS * 3);
        let store = Store::open(&store_path, &dir.path().join("record.key")).unwrap();
        assert_eq!(frames(&store), (1..=COMMITS * 3).collect::<Vec<_>>());
        let entries = store.entries_from(0, usize::MAX).unwrap();
        assert_eq!(entries[5].payload.as_deref(), Some(&b"payload 6"[..]));
        // The chain goes on from there, and all of it verifies.
        store.append(&[event(1000)]).unwrap();
        let report = store.verify(VerifyOptions::default());
        assert!(report.problem.is_none(), "{:?}", report.problem);
        assert_eq!(report.entries, COMMITS * 3 + 1);
    }

    #[test]
    fn a_journal_cut_short_loses_only_its_last_commit_and_says_so() {
        crash_here_if_child();
        let dir = crashed_store("a_journal_cut_short_loses_only_its_last_commit_and_says_so");
        let store_path = dir.path().join("record.redb");
        // The last record torn, as if the machine lost power during its write: that commit
        // was never acknowledged, but the witness file may name it. Here it does (the child
        // wrote the witness after each commit), so the loss is declared in the chain.
        let journal = Journal::path_for(&store_path);
        let len = std::fs::metadata(&journal).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&journal)
            .unwrap()
            .set_len(len - 7)
            .unwrap();
        let store = Store::open(&store_path, &dir.path().join("record.key")).unwrap();
        assert_eq!(frames(&store), (1..=(COMMITS - 1) * 3).collect::<Vec<_>>());
        let last = store.entries_from(0, usize::MAX).unwrap().pop().unwrap();
        assert_eq!(last.entry.kind, kinds::RECORD_LOSS);
        // Verify names exactly the three entries lost (indices from 0), and accepts the rest.
        let lost = (COMMITS - 1) * 3;
        let report = store.verify(VerifyOptions::default());
        assert!(
            matches!(report.problem, Some(crate::Problem::Lost { from, to, .. }) if from == lost && to == lost + 2),
            "{:?}",
            report.problem
        );
        let accepting = VerifyOptions {
            accept_loss: true,
            ..VerifyOptions::default()
        };
        assert!(store.verify(accepting).problem.is_none());
    }

    #[test]
    fn a_journal_that_does_not_follow_the_store_is_refused_not_applied() {
        crash_here_if_child();
        let dir = crashed_store("a_journal_that_does_not_follow_the_store_is_refused_not_applied");
        // Another store put in place of the crashed one by hand, its journal left behind.
        let other = tempfile::tempdir().unwrap();
        let other_path = other.path().join("record.redb");
        let store = Store::open(&other_path, &other.path().join("record.key")).unwrap();
        store.append(&[event(1), event(2)]).unwrap();
        store.close();
        drop(store);
        let store_path = dir.path().join("record.redb");
        std::fs::copy(&other_path, &store_path).unwrap();
        let e = Store::open(&store_path, &other.path().join("record.key")).unwrap_err();
        assert!(e.to_string().contains("does not follow"), "{e}");
        assert!(e.to_string().contains("sluice store restore"), "{e}");
        // Nothing was applied: the store holds what it held.
        std::fs::remove_file(Journal::path_for(&store_path)).unwrap();
        let store = Store::open(&store_path, &other.path().join("record.key")).unwrap();
        assert_eq!(frames(&store), vec![1, 2]);
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("record.redb");
        std::fs::write(Journal::path_for(&store), b"something else entirely").unwrap();
        let e = Journal::open(&store).unwrap_err();
        assert!(e.to_string().contains("not a Sluice record journal"), "{e}");
    }
}
