//! The Raft log on disk: append-only segment files, written by the writer's appender thread and
//! read by anyone through a shared index.
//!
//! `<db>.log/` holds segment files named by the index of their first entry, in 20 digits so
//! that names sort as numbers (`00000000000000000001.seg`). A segment begins with the 8
//! bytes [`SEGMENT_MAGIC`], then holds records one after the other:
//!
//! | bytes | what |
//! |---|---|
//! | 4 | payload length, little endian |
//! | 4 | CRC-32 of the 16 bytes that follow and of the payload, little endian |
//! | 8 | the entry's index, little endian |
//! | 8 | the entry's term, little endian |
//! | n | the payload: the entry as openraft's serde encodes it (JSON), as `raft_log.entry` held it |
//!
//! Appends write at the end of the last segment (a new one is started once it passes
//! [`SEGMENT_BYTES_MAX`]) and [`LogFile::sync`] makes everything written durable with one
//! `fdatasync` per segment written (usually one), plus one of the folder when segments were
//! created or removed. Truncation (a follower's conflicting entries) cuts the segment holding
//! the first removed entry at that record and removes every later segment; purging removes
//! whole segments whose every entry is purged.
//!
//! Opening checks every record. A crash can leave the last segment with a record cut short or
//! never fully written (only records not yet synced, which were never reported durable): the
//! segment is cut back to the last whole record. A damaged record anywhere else is refused
//! with an error naming the file and offset, since the entries after it were reported durable
//! and cannot just be dropped.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The first 8 bytes of every segment file (format version 1).
pub const SEGMENT_MAGIC: [u8; 8] = *b"JCLOGv01";

/// A segment takes no more records once it holds this many bytes (one record may take it
/// past that).
pub const SEGMENT_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// The bytes before each record's payload.
const RECORD_HEADER_BYTES: usize = 24;

/// The largest payload a record may hold: far above any entry (entries are at most about 1
/// MiB), so that a damaged length is caught before it allocates.
const PAYLOAD_BYTES_MAX: u32 = 256 * 1024 * 1024;

/// What can go wrong with the log's files.
#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    /// Reading, writing or syncing a file failed.
    #[error("log file {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A record before the last segment's end does not check out.
    #[error(
        "log file {path} is damaged at byte {offset}: {what}; the entries after it were \
         reported durable, so the node does not start on it (restore the node from its \
         peers: remove its data folder and join it again, or `--rebuild`)"
    )]
    Damaged {
        /// The segment.
        path: PathBuf,
        /// Where the damaged record starts.
        offset: u64,
        /// What is wrong with it.
        what: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LogFileError + '_ {
    move |source| LogFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One entry as the log file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The entry's index.
    pub index: u64,
    /// The entry's term.
    pub term: u64,
    /// The encoded entry.
    pub payload: Vec<u8>,
}

impl Record {
    fn encoded_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.payload.len()
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        let len = u32::try_from(self.payload.len()).unwrap_or(u32::MAX);
        let mut body = [0u8; 16];
        body[..8].copy_from_slice(&self.index.to_le_bytes());
        body[8..].copy_from_slice(&self.term.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&body);
        crc.update(&self.payload);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&self.payload);
    }
}

/// Why the bytes at some offset are not a whole, correct record.
#[derive(Debug)]
enum Bad {
    /// The file ends inside the record.
    Short,
    /// The record is whole but wrong.
    Wrong(String),
}

/// Decodes the record at the front of `bytes`, which must be entry `expected` if given.
/// Returns it and its length.
fn decode(bytes: &[u8], expected: Option<u64>) -> Result<(Record, usize), Bad> {
    let header = bytes.get(..RECORD_HEADER_BYTES).ok_or(Bad::Short)?;
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let long = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let (len, crc, index, term) = (word(0), word(4), long(8), long(16));
    if len > PAYLOAD_BYTES_MAX {
        return Err(Bad::Wrong(format!("a record length of {len} bytes")));
    }
    let total = RECORD_HEADER_BYTES + len as usize;
    let payload = bytes.get(RECORD_HEADER_BYTES..total).ok_or(Bad::Short)?;
    let mut check = crc32fast::Hasher::new();
    check.update(&header[8..]);
    check.update(payload);
    if check.finalize() != crc {
        return Err(Bad::Wrong("the record's checksum does not match".into()));
    }
    if let Some(expected) = expected.filter(|expected| *expected != index) {
        return Err(Bad::Wrong(format!(
            "entry {index} where entry {expected} belongs"
        )));
    }
    Ok((
        Record {
            index,
            term,
            payload: payload.to_vec(),
        },
        total,
    ))
}

/// One segment file: where each of its records starts.
#[derive(Debug, Clone)]
struct Segment {
    /// The index of its first entry (and its file name).
    first: u64,
    path: PathBuf,
    /// The byte offset of each record: record `i` holds entry `first + i`.
    offsets: Vec<u32>,
    /// The byte after the last record.
    end: u64,
}

impl Segment {
    /// The index after its last entry.
    fn next(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }

    /// The offset of entry `index`'s record, or the end for the index after the last.
    fn offset_of(&self, index: u64) -> u64 {
        usize::try_from(index - self.first)
            .ok()
            .and_then(|at| self.offsets.get(at))
            .map_or(self.end, |offset| u64::from(*offset))
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// Where every entry of the log files is, shared by the writer and the readers.
#[derive(Debug, Default)]
pub struct LogIndex {
    segments: Mutex<Vec<Segment>>,
}

impl LogIndex {
    fn segments(&self) -> std::sync::MutexGuard<'_, Vec<Segment>> {
        self.segments
            .lock()
            .expect("the log index's mutex is never held across a panic")
    }

    /// The index after the last entry in the files (`None`: no entries).
    pub fn next_index(&self) -> Option<u64> {
        self.segments().last().map(Segment::next)
    }

    /// The records of the entries from `from` to before `to` that the files hold, in order.
    /// Entries of a segment removed meanwhile (purged) are left out, with everything after
    /// them.
    ///
    /// # Errors
    /// A file cannot be read, or a record does not check out.
    pub fn read(&self, from: u64, to: u64) -> Result<Vec<Record>, LogFileError> {
        // The byte ranges, found under the lock; read after.
        let spans: Vec<(PathBuf, u64, u64, u64)> = self
            .segments()
            .iter()
            .filter(|segment| segment.first < to && segment.next() > from)
            .map(|segment| {
                let lo = from.max(segment.first);
                let hi = to.min(segment.next());
                (
                    segment.path.clone(),
                    lo,
                    segment.offset_of(lo),
                    segment.offset_of(hi),
                )
            })
            .collect();
        let mut records = Vec::new();
        for (path, first, start, end) in spans {
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => break,
                Err(error) => return Err(io_error(&path)(error)),
            };
            let len = usize::try_from(end - start).unwrap_or(usize::MAX);
            let mut bytes = vec![0u8; len];
            file.read_exact_at(&mut bytes, start)
                .map_err(io_error(&path))?;
            let mut at = 0;
            let mut expected = first;
            while at < bytes.len() {
                let (record, used) =
                    decode(&bytes[at..], Some(expected)).map_err(|bad| LogFileError::Damaged {
                        path: path.clone(),
                        offset: start + at as u64,
                        what: match bad {
                            Bad::Short => "a record is cut short".into(),
                            Bad::Wrong(what) => what,
                        },
                    })?;
                records.push(record);
                at += used;
                expected += 1;
            }
        }
        Ok(records)
    }

    /// The last record in the files, if any.
    ///
    /// # Errors
    /// As [`LogIndex::read`].
    pub fn last(&self) -> Result<Option<Record>, LogFileError> {
        let Some(next) = self.next_index() else {
            return Ok(None);
        };
        Ok(self.read(next - 1, next)?.pop())
    }

    /// Every record from the newest back, one segment at a time, until `keep_going` says
    /// stop.
    ///
    /// # Errors
    /// As [`LogIndex::read`].
    pub fn scan_back(
        &self,
        mut keep_going: impl FnMut(&Record) -> bool,
    ) -> Result<(), LogFileError> {
        let ranges: Vec<(u64, u64)> = self
            .segments()
            .iter()
            .rev()
            .map(|segment| (segment.first, segment.next()))
            .collect();
        for (from, to) in ranges {
            for record in self.read(from, to)?.iter().rev() {
                if !keep_going(record) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// The last segment, open for appending.
#[derive(Debug)]
struct Active {
    file: File,
    path: PathBuf,
    /// Written since the last sync.
    dirty: bool,
}

/// The writing side of the log's files; owned by the writer (`raft::writer`): its appender
/// thread writes and syncs it.
#[derive(Debug)]
pub struct LogFile {
    dir: PathBuf,
    index: Arc<LogIndex>,
    active: Option<Active>,
    /// Segments written since the last sync that are no longer the active one.
    unsynced: Vec<(PathBuf, File)>,
    /// Segments were created or removed since the last sync.
    dir_dirty: bool,
    /// Whether [`LogFile::sync`] syncs (`--sync-mode full`).
    sync: bool,
    segment_bytes_max: u64,
    /// A reused buffer for encoding records.
    buffer: Vec<u8>,
}

/// What [`LogFile::open`] found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Entries in the files.
    pub entries: u64,
    /// Bytes cut from the end of the last segment: a record a crash left unfinished.
    pub cut_bytes: u64,
    /// Segment files removed: every entry in them purged, or nothing whole in them.
    pub removed_segments: usize,
}

impl LogFile {
    /// Opens the log in `dir` (created if missing), dropping every segment whose entries are
    /// all at or below `purged` and cutting an unfinished record off the last segment.
    /// With `sync`, [`LogFile::sync`] makes writes durable.
    ///
    /// # Errors
    /// A file cannot be read or written, or a segment is damaged before its end (see the
    /// module documentation).
    pub fn open(
        dir: &Path,
        purged: Option<u64>,
        sync: bool,
    ) -> Result<(Self, Recovered), LogFileError> {
        Self::open_with(dir, purged, sync, SEGMENT_BYTES_MAX)
    }

    /// [`LogFile::open`] with segments of `segment_bytes_max` bytes.
    ///
    /// # Errors
    /// As [`LogFile::open`].
    pub fn open_with(
        dir: &Path,
        purged: Option<u64>,
        sync: bool,
        segment_bytes_max: u64,
    ) -> Result<(Self, Recovered), LogFileError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let firsts = segment_firsts(dir)?;
        let mut recovered = Recovered::default();
        let mut segments: Vec<Segment> = Vec::new();
        let count = firsts.len();
        for (position, first) in firsts.into_iter().enumerate() {
            let path = segment_path(dir, first);
            let last_file = position + 1 == count;
            let segment = scan_segment(&path, first, last_file, Some(&mut recovered))?;
            let dead = segment.offsets.is_empty()
                || purged.is_some_and(|purged| segment.next() <= purged + 1);
            if dead {
                std::fs::remove_file(&path).map_err(io_error(&path))?;
                recovered.removed_segments += 1;
                continue;
            }
            if let Some(before) = segments.last() {
                if segment.first < before.next() {
                    return Err(LogFileError::Damaged {
                        path,
                        offset: 0,
                        what: format!(
                            "it starts at entry {} but the segment before it holds entries up to {}",
                            segment.first,
                            before.next() - 1
                        ),
                    });
                }
            }
            recovered.entries += segment.offsets.len() as u64;
            segments.push(segment);
        }
        if recovered.removed_segments > 0 || recovered.cut_bytes > 0 {
            sync_dir(dir)?;
        }
        let active = match segments.last() {
            Some(last) => Some(Active {
                file: OpenOptions::new()
                    .write(true)
                    .open(&last.path)
                    .map_err(io_error(&last.path))?,
                path: last.path.clone(),
                dirty: false,
            }),
            None => None,
        };
        let index = Arc::new(LogIndex {
            segments: Mutex::new(segments),
        });
        Ok((
            Self {
                dir: dir.to_owned(),
                index,
                active,
                unsynced: Vec::new(),
                dir_dirty: false,
                sync,
                segment_bytes_max,
                buffer: Vec::new(),
            },
            recovered,
        ))
    }

    /// The index readers share.
    pub fn index(&self) -> Arc<LogIndex> {
        Arc::clone(&self.index)
    }

    /// Writes `records` (consecutive entries) at the end of the log, replacing any entry at
    /// their indexes or after. Entries that start past the end of the log (after a snapshot
    /// was installed) start a new segment. Durable once [`LogFile::sync`] returns.
    ///
    /// # Errors
    /// A file cannot be created or written.
    pub fn append(&mut self, records: &[Record]) -> Result<(), LogFileError> {
        let Some(first) = records.first().map(|record| record.index) else {
            return Ok(());
        };
        let next = self.index.next_index();
        if next.is_some_and(|next| first < next) {
            self.truncate_from(first)?;
        } else if next.is_some_and(|next| first > next) {
            // A hole: the entries before `first` are purged. Start a segment of their own.
            self.close_active();
        }
        let mut rest = records;
        while !rest.is_empty() {
            let start_new = {
                let segments = self.index.segments();
                match (&self.active, segments.last()) {
                    (Some(_), Some(last)) => {
                        !last.offsets.is_empty()
                            && last.end + rest[0].encoded_len() as u64 > self.segment_bytes_max
                    }
                    _ => true,
                }
            };
            if start_new {
                self.start_segment(rest[0].index)?;
            }
            // As many records as fit (at least one).
            let (mut take, mut bytes) = (0, self.index.segments().last().map_or(0, |s| s.end));
            for record in rest {
                let len = record.encoded_len() as u64;
                if take > 0 && bytes + len > self.segment_bytes_max {
                    break;
                }
                bytes += len;
                take += 1;
            }
            let (now, later) = rest.split_at(take);
            self.write_records(now)?;
            rest = later;
        }
        Ok(())
    }

    fn write_records(&mut self, records: &[Record]) -> Result<(), LogFileError> {
        let active = self
            .active
            .as_mut()
            .expect("a segment is started before records are written to it");
        let start = self
            .index
            .segments()
            .last()
            .map_or(SEGMENT_MAGIC.len() as u64, |segment| segment.end);
        self.buffer.clear();
        let mut offsets = Vec::with_capacity(records.len());
        for record in records {
            offsets.push(u32::try_from(start + self.buffer.len() as u64).unwrap_or(u32::MAX));
            record.encode_into(&mut self.buffer);
        }
        active
            .file
            .write_all_at(&self.buffer, start)
            .map_err(io_error(&active.path))?;
        active.dirty = true;
        let mut segments = self.index.segments();
        let segment = segments
            .last_mut()
            .expect("the active segment is the last one in the index");
        segment.offsets.extend(offsets);
        segment.end = start + self.buffer.len() as u64;
        Ok(())
    }

    fn close_active(&mut self) {
        if let Some(active) = self.active.take() {
            if active.dirty {
                self.unsynced.push((active.path, active.file));
            }
        }
    }

    fn start_segment(&mut self, first: u64) -> Result<(), LogFileError> {
        self.close_active();
        let path = segment_path(&self.dir, first);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_error(&path))?;
        file.write_all_at(&SEGMENT_MAGIC, 0)
            .map_err(io_error(&path))?;
        self.dir_dirty = true;
        self.index.segments().push(Segment {
            first,
            path: path.clone(),
            offsets: Vec::new(),
            end: SEGMENT_MAGIC.len() as u64,
        });
        self.active = Some(Active {
            file,
            path,
            dirty: true,
        });
        Ok(())
    }

    /// Removes the entries from `index` on. Durable once [`LogFile::sync`] returns.
    ///
    /// # Errors
    /// A file cannot be cut or removed.
    pub fn truncate_from(&mut self, index: u64) -> Result<(), LogFileError> {
        let mut removed = Vec::new();
        let mut cut = None;
        {
            let mut segments = self.index.segments();
            while segments.last().is_some_and(|last| last.first >= index) {
                removed.extend(segments.pop().map(|segment| segment.path));
            }
            if let Some(last) = segments.last_mut().filter(|last| last.next() > index) {
                let offset = last.offset_of(index);
                last.offsets
                    .truncate(usize::try_from(index - last.first).unwrap_or(usize::MAX));
                last.end = offset;
                cut = Some((last.path.clone(), offset));
            }
        }
        if removed.is_empty() && cut.is_none() {
            return Ok(());
        }
        let active_path = self.active.as_ref().map(|active| active.path.clone());
        if active_path
            .as_ref()
            .is_some_and(|path| removed.contains(path))
        {
            self.active = None;
        }
        self.unsynced.retain(|(path, _)| !removed.contains(path));
        for path in &removed {
            std::fs::remove_file(path).map_err(io_error(path))?;
            self.dir_dirty = true;
        }
        if let Some((path, offset)) = cut {
            if active_path.as_ref() != Some(&path) || self.active.is_none() {
                self.close_active();
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_error(&path))?;
                self.active = Some(Active {
                    file,
                    path: path.clone(),
                    dirty: false,
                });
            }
            let active = self.active.as_mut().expect("set just above");
            active.file.set_len(offset).map_err(io_error(&path))?;
            active.dirty = true;
        }
        Ok(())
    }

    /// Removes every segment whose entries are all at or below `index` (purged). The
    /// entries at or below it in the first segment kept stay in the file, unread.
    ///
    /// # Errors
    /// A file cannot be removed.
    pub fn purge_upto(&mut self, index: u64) -> Result<(), LogFileError> {
        let removed: Vec<PathBuf> = {
            let mut segments = self.index.segments();
            let dead = segments
                .iter()
                .take_while(|segment| segment.next() <= index + 1)
                .count();
            segments.drain(..dead).map(|segment| segment.path).collect()
        };
        if self
            .active
            .as_ref()
            .is_some_and(|active| removed.contains(&active.path))
        {
            self.active = None;
        }
        self.unsynced.retain(|(path, _)| !removed.contains(path));
        for path in &removed {
            std::fs::remove_file(path).map_err(io_error(path))?;
        }
        Ok(())
    }

    /// Makes everything written so far durable (with `--sync-mode full`; otherwise only
    /// forgets what was written).
    ///
    /// # Errors
    /// An `fdatasync` fails: what it did not write is unknown, so the log must not be
    /// written again.
    pub fn sync(&mut self) -> Result<(), LogFileError> {
        let sync = self.sync;
        for (path, file) in self.unsynced.drain(..) {
            if sync {
                file.sync_data().map_err(io_error(&path))?;
            }
        }
        if let Some(active) = self.active.as_mut().filter(|active| active.dirty) {
            if sync {
                active.file.sync_data().map_err(io_error(&active.path))?;
            }
            active.dirty = false;
        }
        if std::mem::take(&mut self.dir_dirty) && sync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Whether anything was written since the last [`LogFile::sync`].
    pub fn needs_sync(&self) -> bool {
        self.dir_dirty
            || !self.unsynced.is_empty()
            || self.active.as_ref().is_some_and(|active| active.dirty)
    }
}

/// The first indexes of the segment files in `dir`, in order.
fn segment_firsts(dir: &Path) -> Result<Vec<u64>, LogFileError> {
    let mut firsts: Vec<u64> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|item| {
            let name = item.ok()?.file_name();
            let stem = name.to_str()?.strip_suffix(".seg")?;
            (stem.len() == 20).then(|| stem.parse().ok()).flatten()
        })
        .collect();
    firsts.sort_unstable();
    Ok(firsts)
}

/// The index of the last whole entry in the log files in `dir` (`None`: none), read without
/// changing anything: for looking at a running node's files from outside.
///
/// # Errors
/// The folder or a file cannot be read, or a segment before the last is damaged.
pub fn last_index_in(dir: &Path) -> Result<Option<u64>, LogFileError> {
    let firsts = segment_firsts(dir)?;
    let count = firsts.len();
    for (position, first) in firsts.into_iter().enumerate().rev() {
        let segment = scan_segment(
            &segment_path(dir, first),
            first,
            position + 1 == count,
            None,
        )?;
        if !segment.offsets.is_empty() {
            return Ok(Some(segment.next() - 1));
        }
    }
    Ok(None)
}

fn sync_dir(dir: &Path) -> Result<(), LogFileError> {
    File::open(dir)
        .and_then(|folder| folder.sync_all())
        .map_err(io_error(dir))
}

/// Reads the segment at `path` (whose first entry is `first`), checking every record. In
/// the last segment an unfinished record (and anything after it) is left out, and cut off
/// the file when `recovered` is given; elsewhere it is an error.
fn scan_segment(
    path: &Path,
    first: u64,
    last_file: bool,
    recovered: Option<&mut Recovered>,
) -> Result<Segment, LogFileError> {
    let file = File::open(path).map_err(io_error(path))?;
    let file_len = file.metadata().map_err(io_error(path))?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut segment = Segment {
        first,
        path: path.to_owned(),
        offsets: Vec::new(),
        end: 0,
    };
    let mut magic = [0u8; 8];
    let whole_magic = reader.read_exact(&mut magic).is_ok() && magic == SEGMENT_MAGIC;
    let mut bad: Option<(u64, Bad)> = None;
    if whole_magic {
        let mut offset = SEGMENT_MAGIC.len() as u64;
        let mut record = Vec::new();
        loop {
            if offset == file_len {
                break;
            }
            record.clear();
            record.resize(RECORD_HEADER_BYTES, 0);
            if (&mut reader)
                .take(RECORD_HEADER_BYTES as u64)
                .read_exact(&mut record)
                .is_err()
            {
                bad = Some((offset, Bad::Short));
                break;
            }
            let len = u32::from_le_bytes(record[..4].try_into().expect("4 bytes"));
            if len <= PAYLOAD_BYTES_MAX {
                let header = record.len();
                record.resize(header + len as usize, 0);
                if reader.read_exact(&mut record[header..]).is_err() {
                    bad = Some((offset, Bad::Short));
                    break;
                }
            }
            let expected = first + segment.offsets.len() as u64;
            match decode(&record, Some(expected)) {
                Ok((_, used)) => {
                    segment
                        .offsets
                        .push(u32::try_from(offset).unwrap_or(u32::MAX));
                    offset += used as u64;
                }
                Err(why) => {
                    bad = Some((offset, why));
                    break;
                }
            }
        }
        segment.end = offset;
    } else if file_len > 0 && !(last_file && file_len < SEGMENT_MAGIC.len() as u64) {
        bad = Some((
            0,
            Bad::Wrong("it does not start as a JoChat log segment".into()),
        ));
    }
    if let Some((offset, why)) = bad {
        let what = match why {
            Bad::Short => "a record is cut short".to_owned(),
            Bad::Wrong(what) => what,
        };
        if !last_file {
            return Err(LogFileError::Damaged {
                path: path.to_owned(),
                offset,
                what,
            });
        }
        let Some(recovered) = recovered else {
            segment.end = offset;
            return Ok(segment);
        };
        tracing::warn!(
            path = %path.display(),
            offset,
            cut_bytes = file_len - offset,
            reason = %what,
            "the log's last segment ends in an unfinished record (a crash while it was written): cut back to the last whole one"
        );
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_error(path))?;
        file.set_len(offset).map_err(io_error(path))?;
        file.sync_all().map_err(io_error(path))?;
        recovered.cut_bytes += file_len - offset;
        segment.end = offset;
    }
    if !whole_magic {
        segment.offsets.clear();
    }
    Ok(segment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(index: u64) -> Record {
        Record {
            index,
            term: 1 + index / 10,
            payload: format!(
                "{{\"entry\":{index},\"pad\":\"{}\"}}",
                "x".repeat((index % 7) as usize)
            )
            .into_bytes(),
        }
    }

    fn records(from: u64, to: u64) -> Vec<Record> {
        (from..to).map(record).collect()
    }

    fn all(log: &LogFile) -> Vec<Record> {
        log.index().read(0, u64::MAX).expect("the log reads")
    }

    #[test]
    fn appends_read_back_across_segments_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let (mut log, found) = LogFile::open_with(dir.path(), None, true, 400).expect("opens");
        assert_eq!(found, Recovered::default());
        log.append(&records(1, 20)).expect("appended");
        log.append(&records(20, 41)).expect("appended");
        log.sync().expect("synced");
        let segments = std::fs::read_dir(dir.path()).expect("listed").count();
        assert!(segments > 2, "400-byte segments: {segments}");
        assert_eq!(all(&log), records(1, 41));
        assert_eq!(log.index().read(7, 12).expect("reads"), records(7, 12));
        assert_eq!(log.index().last().expect("reads"), Some(record(40)));
        drop(log);

        let (log, found) = LogFile::open_with(dir.path(), None, true, 400).expect("reopens");
        assert_eq!(found.entries, 40);
        assert_eq!(found.cut_bytes, 0);
        assert_eq!(all(&log), records(1, 41));
    }

    #[test]
    fn truncation_and_overwrites_replace_the_end_of_the_log() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let (mut log, _) = LogFile::open_with(dir.path(), None, true, 300).expect("opens");
        log.append(&records(1, 30)).expect("appended");
        // 1. Cut in the middle of a segment, then append again from there.
        log.truncate_from(17).expect("truncated");
        assert_eq!(log.index().next_index(), Some(17));
        let mut other = record(17);
        other.term = 99;
        log.append(std::slice::from_ref(&other)).expect("appended");
        // 2. An append at an index already written replaces it and everything after it.
        log.append(&records(10, 12)).expect("appended");
        log.sync().expect("synced");
        assert_eq!(all(&log), records(1, 12));
        drop(log);
        let (log, _) = LogFile::open_with(dir.path(), None, true, 300).expect("reopens");
        assert_eq!(all(&log), records(1, 12));
        // 3. Truncating everything leaves no segment.
        let mut log = log;
        log.truncate_from(0).expect("truncated");
        log.sync().expect("synced");
        assert_eq!(log.index().next_index(), None);
        assert_eq!(std::fs::read_dir(dir.path()).expect("listed").count(), 0);
    }

    #[test]
    fn purging_removes_whole_segments_and_a_hole_starts_a_new_one() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let (mut log, _) = LogFile::open_with(dir.path(), None, true, 300).expect("opens");
        log.append(&records(1, 30)).expect("appended");
        log.sync().expect("synced");
        let before = std::fs::read_dir(dir.path()).expect("listed").count();
        log.purge_upto(15).expect("purged");
        let after = std::fs::read_dir(dir.path()).expect("listed").count();
        assert!(after < before, "{before} segments, then {after}");
        let kept = all(&log);
        assert!(kept.first().is_some_and(|r| r.index <= 16));
        assert_eq!(kept.last(), Some(&record(29)));

        // Everything purged (a snapshot installed up to 100), then entries after it.
        log.purge_upto(100).expect("purged");
        assert_eq!(log.index().next_index(), None);
        log.append(&records(101, 104)).expect("appended");
        log.sync().expect("synced");
        assert_eq!(all(&log), records(101, 104));

        // Reopened with that purge recorded, the files say the same.
        drop(log);
        let (log, _) = LogFile::open_with(dir.path(), Some(100), true, 300).expect("reopens");
        assert_eq!(all(&log), records(101, 104));
    }

    #[test]
    fn opening_drops_segments_a_recorded_purge_covers() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let (mut log, _) = LogFile::open_with(dir.path(), None, true, 300).expect("opens");
        log.append(&records(1, 30)).expect("appended");
        log.sync().expect("synced");
        drop(log);
        // A crash after the purge was recorded, before its files were removed.
        let (log, found) = LogFile::open_with(dir.path(), Some(20), true, 300).expect("reopens");
        assert!(found.removed_segments > 0);
        let kept = all(&log);
        assert!(kept.first().is_some_and(|r| r.index > 1 && r.index <= 21));
        assert_eq!(kept.last(), Some(&record(29)));
    }

    #[test]
    fn a_damaged_record_before_the_last_segment_is_refused() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let (mut log, _) = LogFile::open_with(dir.path(), None, true, 300).expect("opens");
        log.append(&records(1, 30)).expect("appended");
        log.sync().expect("synced");
        drop(log);
        let first = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&first).expect("read");
        let at = SEGMENT_MAGIC.len() + RECORD_HEADER_BYTES + 2;
        bytes[at] ^= 0xff;
        std::fs::write(&first, bytes).expect("written");
        let refused = LogFile::open_with(dir.path(), None, true, 300).map(|_| ());
        match refused {
            Err(LogFileError::Damaged { path, offset, what }) => {
                assert_eq!(path, first);
                assert_eq!(offset, SEGMENT_MAGIC.len() as u64);
                assert!(what.contains("checksum"), "{what}");
            }
            other => panic!("expected a damaged segment, got {other:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// A crash can leave the last segment cut at any byte (or with garbage after its last
        /// whole record): reopened, the log is exactly the whole records before that point,
        /// and appends continue after them.
        #[test]
        fn a_torn_tail_recovers_the_whole_records_before_it(
            count in 1u64..12,
            garbage in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let dir = tempfile::tempdir().expect("a temporary folder");
            let (mut log, _) = LogFile::open(dir.path(), None, false).expect("opens");
            log.append(&records(1, 1 + count)).expect("appended");
            log.sync().expect("synced");
            drop(log);
            let path = segment_path(dir.path(), 1);
            let whole = std::fs::read(&path).expect("read");
            // Where each record ends.
            let mut ends = vec![SEGMENT_MAGIC.len()];
            for index in 1..=count {
                ends.push(ends.last().copied().unwrap_or(0) + record(index).encoded_len());
            }
            for cut in 0..=whole.len() {
                let mut bytes = whole[..cut].to_vec();
                if cut == whole.len() {
                    bytes.extend_from_slice(&garbage);
                }
                std::fs::write(&path, &bytes).expect("written");
                let (mut log, found) = LogFile::open(dir.path(), None, false).expect("reopens");
                let kept = ends.iter().rposition(|end| *end <= cut).unwrap_or(0) as u64;
                prop_assert_eq!(all(&log), records(1, 1 + kept), "cut at {}", cut);
                prop_assert_eq!(found.entries, kept);
                // The log goes on after what was kept.
                log.append(&records(1 + kept, 2 + kept)).expect("appended");
                log.sync().expect("synced");
                drop(log);
                let (log, _) = LogFile::open(dir.path(), None, false).expect("reopens");
                prop_assert_eq!(all(&log), records(1, 2 + kept));
                drop(log);
                // Back to the whole file for the next cut (the first segment may be gone).
                std::fs::write(&path, &whole).expect("written");
            }
        }
    }
}
