//! The log's tail in memory: the entries openraft appended most recently, whether or not the
//! writer's appender has put them in the log's files yet.
//!
//! `append` must make its entries readable before it returns, but writing them (and the
//! fsync) happens later, on the appender's thread (`raft::writer`), for many appends at once. The tail is
//! what makes both true: it is authoritative for every index from [`Tail::start`] on (an index
//! past its last entry does not exist), and SQLite is authoritative, through committed rows
//! only, for every index below it. Entries leave the tail from the front only once the
//! transaction that wrote them has committed, so every index is always readable from exactly
//! one of the two. Replication reads recent entries from here, without SQLite or decoding.

use std::collections::VecDeque;

use openraft::{Entry, LogId};

use super::TypeConfig;

/// How many written entries the tail keeps for readers at most (entries not yet written are
/// always kept, however many there are).
pub const TAIL_CAPACITY: usize = 4096;
/// How many bytes of written entries (as [`entry_bytes`] estimates them) the tail keeps for
/// readers at most. Replication in step with the leader reads entries appended moments ago;
/// a follower further behind reads SQLite. Without it, 4,096 entries of up to 1 MiB each
/// could stay in memory.
pub const TAIL_WRITTEN_BYTES_MAX: usize = 2 * 1024 * 1024;

/// One appended entry and the append job that writes it.
#[derive(Debug, Clone)]
struct Cached {
    entry: Entry<TypeConfig>,
    /// The sequence number of the append job that writes this entry.
    job: u64,
    /// [`entry_bytes`] of `entry`.
    bytes: usize,
}

/// About how much memory `entry` holds: its commands' variable parts plus a fixed amount for
/// the rest. An estimate for the tail's budget, not an exact size.
pub fn entry_bytes(entry: &Entry<TypeConfig>) -> usize {
    const FIXED: usize = 256;
    match &entry.payload {
        openraft::EntryPayload::Normal(batch) => {
            FIXED
                + batch
                    .0
                    .iter()
                    .map(|command| command.approximate_bytes())
                    .sum::<usize>()
        }
        openraft::EntryPayload::Blank | openraft::EntryPayload::Membership(_) => FIXED,
    }
}

/// The entries from `start` on. See the module documentation.
#[derive(Debug)]
pub struct Tail {
    start: u64,
    entries: VecDeque<Cached>,
    /// Every append job up to this sequence number has committed.
    written_job: u64,
    capacity: usize,
    /// Bytes ([`entry_bytes`]) of all entries held.
    bytes: usize,
    /// The most bytes of written entries kept.
    bytes_max: usize,
}

/// Why an append cannot go into the tail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log entry {index} would leave a hole: the log ends before index {next}")]
pub struct Hole {
    /// The first index appended.
    pub index: u64,
    /// The index the log continues at.
    pub next: u64,
}

impl Tail {
    /// An empty tail whose first index is `start` (one past the last entry in SQLite),
    /// keeping at most `capacity` written entries and [`TAIL_WRITTEN_BYTES_MAX`] of them.
    pub fn new(start: u64, capacity: usize) -> Self {
        Self::with_bytes_max(start, capacity, TAIL_WRITTEN_BYTES_MAX)
    }

    /// [`Tail::new`] with its own byte budget for written entries.
    pub fn with_bytes_max(start: u64, capacity: usize, bytes_max: usize) -> Self {
        Self {
            start,
            entries: VecDeque::new(),
            written_job: 0,
            capacity,
            bytes: 0,
            bytes_max,
        }
    }

    /// About how many bytes the entries held take ([`entry_bytes`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Removes the front entry.
    fn pop_front(&mut self) -> Option<Cached> {
        let cached = self.entries.pop_front()?;
        self.bytes -= cached.bytes;
        Some(cached)
    }

    /// The first index the tail answers for; SQLite answers below it.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The index after the last entry of the log.
    pub fn end(&self) -> u64 {
        self.start + self.entries.len() as u64
    }

    /// The id of the last entry in the tail, if it holds any.
    pub fn last_log_id(&self) -> Option<LogId<u64>> {
        self.entries.back().map(|cached| cached.entry.log_id)
    }

    /// Adds `entries` (consecutive, as openraft appends them), written by append job `job`.
    /// An entry at an index the tail already holds replaces it and everything after it.
    ///
    /// openraft may append past the end of the log (after installing a snapshot, the next
    /// entry follows the snapshot, not the log). The tail then starts over at the new entry,
    /// which is only right once every entry it holds is written: SQLite answers for them from
    /// then on.
    ///
    /// # Errors
    /// [`Hole`] when the first entry is past the end of the log and some entry is not yet
    /// written: wait for the writer, then append again.
    pub fn append(&mut self, entries: &[Entry<TypeConfig>], job: u64) -> Result<(), Hole> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let index = first.log_id.index;
        if index > self.end() {
            let all_written = self
                .entries
                .back()
                .is_none_or(|cached| cached.job <= self.written_job);
            if !all_written {
                return Err(Hole {
                    index,
                    next: self.end(),
                });
            }
            self.entries.clear();
            self.bytes = 0;
            self.start = index;
        }
        self.truncate(index);
        for entry in entries {
            debug_assert_eq!(
                entry.log_id.index,
                self.end(),
                "the log tail is contiguous: each entry follows the one before"
            );
            let bytes = entry_bytes(entry);
            self.bytes += bytes;
            self.entries.push_back(Cached {
                entry: entry.clone(),
                job,
                bytes,
            });
        }
        Ok(())
    }

    /// Removes every entry from `index` on. The store waits for the truncation to be written
    /// before it appends again (so no row it removes can reappear below the start).
    pub fn truncate(&mut self, index: u64) {
        if index < self.start {
            self.entries.clear();
            self.start = index;
        } else {
            let keep = usize::try_from(index - self.start).unwrap_or(usize::MAX);
            self.entries.truncate(keep);
        }
        self.bytes = self.entries.iter().map(|cached| cached.bytes).sum();
    }

    /// Removes every entry up to `index` inclusive: the log now starts after it.
    pub fn purge(&mut self, index: u64) {
        while self
            .entries
            .front()
            .is_some_and(|cached| cached.entry.log_id.index <= index)
        {
            self.pop_front();
        }
        self.start = self.start.max(index + 1);
    }

    /// Records that every append job up to `job` has committed, and lets go of the oldest
    /// written entries beyond the capacity or the byte budget.
    pub fn written(&mut self, job: u64) {
        self.written_job = self.written_job.max(job);
        self.keep_written(self.capacity, self.bytes_max);
    }

    /// Lets go of every written entry (SQLite answers for them) and of the memory the deque
    /// kept for more: for an idle node, which replicates nothing.
    pub fn forget_written(&mut self) {
        self.keep_written(0, 0);
        self.entries.shrink_to_fit();
    }

    /// Lets go of the oldest written entries until at most `entries` are held and the written
    /// ones take at most `bytes`.
    fn keep_written(&mut self, entries: usize, bytes: usize) {
        // Jobs grow along the deque, so the written entries are a prefix of it.
        let mut written_bytes: usize = self
            .entries
            .iter()
            .take_while(|cached| cached.job <= self.written_job)
            .map(|cached| cached.bytes)
            .sum();
        while (self.entries.len() > entries || written_bytes > bytes)
            && self
                .entries
                .front()
                .is_some_and(|cached| cached.job <= self.written_job)
        {
            if let Some(cached) = self.pop_front() {
                written_bytes -= cached.bytes;
                self.start += 1;
            }
        }
    }

    /// Clones of the entries in `[from, to)` that the tail holds (those at or after its start).
    pub fn read(&self, from: u64, to: u64) -> Vec<Entry<TypeConfig>> {
        let from = from.max(self.start);
        let to = to.min(self.end());
        if from >= to {
            return Vec::new();
        }
        let skip = usize::try_from(from - self.start).unwrap_or(usize::MAX);
        let take = usize::try_from(to - from).unwrap_or(usize::MAX);
        self.entries
            .iter()
            .skip(skip)
            .take(take)
            .map(|cached| cached.entry.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn entry(index: u64, term: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn terms(entries: &[Entry<TypeConfig>]) -> Vec<(u64, u64)> {
        entries
            .iter()
            .map(|e| (e.log_id.index, e.log_id.leader_id.term))
            .collect()
    }

    #[test]
    fn appends_past_the_end_wait_until_everything_is_written() {
        let mut tail = Tail::new(5, 10);
        tail.append(&[entry(5, 1), entry(6, 1)], 1).unwrap();
        assert_eq!(tail.end(), 7);
        assert_eq!(tail.last_log_id().map(|id| id.index), Some(6));
        assert_eq!(
            tail.append(&[entry(9, 1)], 2),
            Err(Hole { index: 9, next: 7 })
        );
        tail.written(1);
        tail.append(&[entry(9, 1)], 2).unwrap();
        assert_eq!((tail.start(), tail.end()), (9, 10));
    }

    #[test]
    fn unwritten_entries_stay_whatever_the_capacity() {
        let mut tail = Tail::new(1, 2);
        let entries: Vec<_> = (1..=5).map(|i| entry(i, 1)).collect();
        tail.append(&entries, 1).unwrap();
        tail.written(0);
        assert_eq!(tail.start(), 1, "nothing is written yet");
        tail.written(1);
        assert_eq!((tail.start(), tail.end()), (4, 6));
        assert_eq!(terms(&tail.read(0, 100)), vec![(4, 1), (5, 1)]);
    }

    fn message(index: u64, content_bytes: usize) -> Entry<TypeConfig> {
        use jochat_core::ops::SendMessage;
        use jochat_core::types::{Content, SessionToken, Username};
        use jochat_core::{Action, Command};
        let command = Command {
            at_ms: 1,
            idempotency_key: None,
            action: Action::SendMessage(SendMessage {
                session: SessionToken::from_random_bytes([1; 32]).digest(),
                recipient: Username::new("bob").expect("a valid name"),
                content: Content::new("x".repeat(content_bytes), content_bytes)
                    .expect("content within its own limit"),
            }),
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(crate::raft::Batch(vec![command; 10])),
        }
    }

    #[test]
    fn written_entries_are_kept_within_the_byte_budget_and_unwritten_ones_always() {
        // Ten commands of 10,000 bytes: each entry is about 100 KB.
        let size = entry_bytes(&message(1, 10_000));
        assert!((100_000..110_000).contains(&size), "{size}");
        let mut tail = Tail::with_bytes_max(1, 4096, 3 * size);
        let entries: Vec<_> = (1..=8).map(|i| message(i, 10_000)).collect();
        tail.append(&entries[..5], 1).unwrap();
        tail.append(&entries[5..], 2).unwrap();
        assert_eq!(tail.bytes(), 8 * size);
        tail.written(0);
        assert_eq!(tail.start(), 1, "nothing is written yet");
        // Job 1 written: of its five entries, the newest that fit the budget stay (none of
        // job 2's count, since they are not written).
        tail.written(1);
        assert_eq!((tail.start(), tail.end()), (3, 9));
        assert_eq!(tail.bytes(), 6 * size);
        tail.written(2);
        assert_eq!((tail.start(), tail.end()), (6, 9));
        assert_eq!(tail.bytes(), 3 * size);
        assert_eq!(tail.read(0, 100).len(), 3);
    }

    #[test]
    fn forgetting_written_entries_keeps_the_unwritten_ones() {
        let mut tail = Tail::new(1, 4096);
        let entries: Vec<_> = (1..=6).map(|i| message(i, 100)).collect();
        tail.append(&entries[..4], 1).unwrap();
        tail.append(&entries[4..], 2).unwrap();
        tail.written(1);
        assert_eq!(
            (tail.start(), tail.end()),
            (1, 7),
            "within budget, all are kept"
        );
        tail.forget_written();
        assert_eq!((tail.start(), tail.end()), (5, 7));
        assert_eq!(tail.bytes(), 2 * entry_bytes(&entries[4]));
        assert_eq!(tail.read(0, 100).len(), 2);
        tail.written(2);
        tail.forget_written();
        assert_eq!((tail.start(), tail.end(), tail.bytes()), (7, 7, 0));
    }

    #[test]
    fn truncating_below_the_start_empties_it() {
        let mut tail = Tail::new(10, 4);
        tail.append(&[entry(10, 1)], 1).unwrap();
        tail.truncate(7);
        assert_eq!((tail.start(), tail.end()), (7, 7));
        tail.append(&[entry(7, 2)], 2).unwrap();
        assert_eq!(terms(&tail.read(0, 100)), vec![(7, 2)]);
    }

    /// What a store made of the tail and a written part answers, against a plain map.
    #[derive(Debug, Clone)]
    enum Op {
        Append {
            at_back: u64,
            gap: u64,
            count: u64,
            term: u64,
        },
        Truncate {
            back: u64,
        },
        Purge {
            forward: u64,
        },
        Written,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3u64, prop_oneof![3 => Just(0u64), 1 => 1..3u64], 1..6u64, 1..4u64)
                .prop_map(|(at_back, gap, count, term)| Op::Append { at_back, gap, count, term }),
            1 => (0..8u64).prop_map(|back| Op::Truncate { back }),
            1 => (0..4u64).prop_map(|forward| Op::Purge { forward }),
            2 => Just(Op::Written),
        ]
    }

    /// The writer commits every pending job, in order: each first deletes from its cut on.
    fn flush(
        pending: &mut Vec<(u64, Vec<(u64, u64)>)>,
        written: &mut BTreeMap<u64, u64>,
        first: u64,
    ) {
        for (_, rows) in pending.drain(..) {
            let (cut, _) = rows[0];
            written.retain(|&i, _| i < cut);
            written.extend(rows[1..].iter().copied().filter(|(i, _)| *i >= first));
        }
    }

    proptest! {
        /// Every index is readable from exactly one place: the tail from its start, the
        /// written rows below it, and together they are the log.
        #[test]
        fn tail_and_written_rows_together_are_the_log(ops in proptest::collection::vec(op(), 1..60)) {
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            // What SQLite holds: rows written by committed jobs, in job order.
            let mut written: BTreeMap<u64, u64> = BTreeMap::new();
            let mut pending: Vec<(u64, Vec<(u64, u64)>)> = Vec::new();
            let mut tail = Tail::new(1, 3);
            let mut job = 0;
            let mut first = 1;
            for op in ops {
                let next = model.keys().next_back().map_or(first, |last| last + 1);
                match op {
                    Op::Append { at_back, gap, count, term } => {
                        let at = if gap > 0 { next + gap } else { next.saturating_sub(at_back).max(first) };
                        job += 1;
                        let entries: Vec<_> = (at..at + count).map(|i| entry(i, term)).collect();
                        if tail.append(&entries, job).is_err() {
                            // A hole: the store waits for the writer, then appends again.
                            flush(&mut pending, &mut written, first);
                            tail.written(job - 1);
                            tail.append(&entries, job).unwrap();
                        }
                        model.retain(|&i, _| i < at);
                        model.extend((at..at + count).map(|i| (i, term)));
                        pending.push((job, (at..at + count).map(|i| (i, term)).collect()));
                        // A truncation the writer performs in order with the appends.
                        pending.last_mut().unwrap().1.insert(0, (at, 0));
                    }
                    Op::Truncate { back } => {
                        let at = next.saturating_sub(back).max(first);
                        tail.truncate(at);
                        model.retain(|&i, _| i < at);
                        job += 1;
                        pending.push((job, vec![(at, 0)]));
                        // The store awaits a truncation: it and every job before it commit.
                        flush(&mut pending, &mut written, first);
                        tail.written(job);
                    }
                    Op::Purge { forward } => {
                        let upto = (first + forward).min(next.saturating_sub(1));
                        if upto >= first {
                            // Awaited too: everything before it commits first.
                            flush(&mut pending, &mut written, first);
                            tail.written(job);
                            tail.purge(upto);
                            model.retain(|&i, _| i > upto);
                            written.retain(|&i, _| i > upto);
                            first = upto + 1;
                        }
                    }
                    Op::Written => {
                        flush(&mut pending, &mut written, first);
                        tail.written(job);
                    }
                }
                let mut read: Vec<(u64, u64)> = written
                    .range(..tail.start())
                    .map(|(&i, &t)| (i, t))
                    .filter(|(i, _)| *i >= first)
                    .collect();
                read.extend(terms(&tail.read(0, u64::MAX)));
                let expected: Vec<(u64, u64)> = model.iter().map(|(&i, &t)| (i, t)).collect();
                prop_assert_eq!(read, expected);
            }
        }
    }
}
