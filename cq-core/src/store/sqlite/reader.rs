//! The reader thread: queries (a job's record, the recently finished jobs) on a read-only
//! connection of their own. In WAL mode a reader sees the last commit while the writer
//! works on the next, so a query never waits behind the writer's batches and their fsync; it
//! sees only what is committed.

use std::path::Path;
use std::sync::mpsc;

use rusqlite::{Connection, OpenFlags, params};

use super::rows;
use super::writer::Reply;
use crate::job::JobId;
use crate::store::record::{JobRecord, StoreError};

pub(super) enum Read {
    Describe {
        id: JobId,
        reply: Reply<Option<JobRecord>>,
    },
    Recent {
        limit: usize,
        reply: Reply<Vec<JobRecord>>,
    },
}

/// Opens `path`, which the writer has just opened (and created or migrated) and marked with
/// `mark`, read-only; the mark must be there: a file swapped for another in between is
/// refused.
pub(super) fn open(path: &Path, mark: i64) -> Result<Connection, String> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    conn.pragma_update(None, "cache_size", super::schema::PAGE_CACHE_KIB)
        .map_err(|e| e.to_string())?;
    let found = conn.query_row(
        "SELECT value FROM meta WHERE name = 'opened_by'",
        [],
        |row| row.get::<_, i64>(0),
    );
    match found {
        Ok(found) if found == mark => Ok(conn),
        Ok(_) | Err(rusqlite::Error::QueryReturnedNoRows) => {
            Err("the file changed while it was being opened (replaced by another?)".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

pub(super) fn run(mut conn: Connection, inbox: mpsc::Receiver<Read>) {
    let db = |what: &'static str| {
        move |e: rusqlite::Error| StoreError::Database {
            what,
            reason: e.to_string(),
        }
    };
    while let Ok(read) = inbox.recv() {
        // One read transaction per query: its rows (a job and its waiters) are one commit's.
        let tx = conn.transaction().map_err(db("begin a read"));
        match read {
            Read::Describe { id, reply } => {
                let found = tx.and_then(|tx| {
                    rows::records(&tx, "WHERE id = ?1", params![id.0 as i64])
                        .map(|mut v| v.pop())
                        .map_err(db("describe"))
                });
                let _ = reply.send(found);
            }
            Read::Recent { limit, reply } => {
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                let clause = "WHERE state = 'finished' ORDER BY finished_ms DESC, id DESC LIMIT ?1";
                let found = tx.and_then(|tx| {
                    rows::records(&tx, clause, params![limit]).map_err(db("list recent jobs"))
                });
                let _ = reply.send(found);
            }
        }
    }
}
