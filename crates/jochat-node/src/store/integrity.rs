//! The start-up check of a node's database file: SQLite's `PRAGMA quick_check` (every page
//! read, the b-tree structure of every table and index, records well formed, no page used
//! twice or lost; not the agreement of each index with its table, which `integrity_check`
//! adds at several times the cost), stopped after a time budget so that a large file does
//! not hold up a start for long.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::error::NodeError;

/// How many SQLite virtual-machine steps pass between two looks at the clock.
const STEPS_BETWEEN_CLOCK_READS: i32 = 10_000;
/// How many of the problems found are quoted in the error.
const PROBLEMS_QUOTED: usize = 5;

/// What the check found in a file that opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No file there yet: nothing to check.
    Absent,
    /// Every page was checked and found sound.
    Sound,
    /// Sound as far as the check went, but the budget ran out first.
    Partial,
}

/// Checks the database at `path` within `budget` (`Duration::ZERO`: not at all).
///
/// # Errors
/// `NodeError::Corrupt` when the file is not a database or the check finds a problem.
pub fn check(path: &Path, budget: Duration) -> Result<Verdict, NodeError> {
    if !path.exists() {
        return Ok(Verdict::Absent);
    }
    if budget.is_zero() {
        return Ok(Verdict::Partial);
    }
    let corrupt = |detail: String| NodeError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let started = Instant::now();
    conn.progress_handler(
        STEPS_BETWEEN_CLOCK_READS,
        Some(move || started.elapsed() > budget),
    )?;
    let rows: Result<Vec<String>, rusqlite::Error> =
        conn.prepare("PRAGMA quick_check")
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| row.get::<_, String>(0))?
                    .collect()
            });
    match rows {
        Ok(rows) if rows == ["ok"] => Ok(Verdict::Sound),
        Ok(rows) => {
            let quoted: Vec<&str> = rows
                .iter()
                .take(PROBLEMS_QUOTED)
                .map(String::as_str)
                .collect();
            Err(corrupt(format!(
                "{} problem(s), first: {}",
                rows.len(),
                quoted.join("; ")
            )))
        }
        Err(rusqlite::Error::SqliteFailure(failure, _))
            if failure.code == rusqlite::ErrorCode::OperationInterrupted =>
        {
            tracing::warn!(
                budget_secs = budget.as_secs_f64(),
                path = %path.display(),
                "the start-up check of the database ran out of time: the file was only partly checked (--startup-check-secs)"
            );
            Ok(Verdict::Partial)
        }
        Err(rusqlite::Error::SqliteFailure(failure, message))
            if matches!(
                failure.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ) =>
        {
            Err(corrupt(message.unwrap_or_else(|| failure.to_string())))
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    /// A database of a few hundred pages.
    fn database(path: &Path) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "PRAGMA page_size = 4096;
             CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT);
             CREATE INDEX t_body ON t (body);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO t SELECT i, printf('row %08d %s', i, hex(randomblob(16))) FROM n;",
        )
        .unwrap();
    }

    #[test]
    fn a_sound_file_passes_and_garbage_in_its_middle_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        assert_eq!(
            check(&path, Duration::from_secs(10)).unwrap(),
            Verdict::Absent
        );
        database(&path);
        assert_eq!(
            check(&path, Duration::from_secs(10)).unwrap(),
            Verdict::Sound
        );

        let length = std::fs::metadata(&path).unwrap().len();
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(length / 2)).unwrap();
        file.write_all(&[0xA5; 8192]).unwrap();
        drop(file);
        let error = check(&path, Duration::from_secs(10)).unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, NodeError::Corrupt { .. }), "{text}");
        assert!(text.contains("node.db"), "{text}");
    }

    #[test]
    fn a_file_that_is_no_database_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        std::fs::write(&path, vec![0x5Au8; 64 * 1024]).unwrap();
        let error = check(&path, Duration::from_secs(10)).unwrap_err();
        assert!(matches!(error, NodeError::Corrupt { .. }), "{error}");
    }
}
