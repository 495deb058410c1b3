//! The database file: created exclusively, recognised as cq's before use, and migrated.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rusqlite::Connection;

/// `PRAGMA application_id` of a cq database ("cqDB"), so that a file that is not one (empty,
/// truncated, another program's) is refused instead of silently starting a new queue.
const APPLICATION_ID: i64 = 0x6371_4442;

/// SQLite's page cache per connection (`PRAGMA cache_size`, negative: KiB), 512 KiB instead of
/// its 2 MB: the writer appends and updates rows by id, and the kernel's page cache holds the
/// file anyway; a smaller cache is memory the server keeps for queued jobs instead.
pub(super) const PAGE_CACHE_KIB: i64 = -512;

/// Schema migrations; `PRAGMA user_version` counts those applied. Append only.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE jobs (
        id          INTEGER PRIMARY KEY,
        owner_uid   INTEGER NOT NULL,
        owner_gid   INTEGER NOT NULL,
        owner_user  TEXT,
        owner_host  TEXT,
        auth_method TEXT NOT NULL,
        summary     TEXT NOT NULL,
        command     BLOB,            -- postcard CommandJob; NULL for in-process jobs
        state       TEXT NOT NULL CHECK (state IN ('queued', 'running', 'finished')),
        accepted_ms INTEGER NOT NULL,
        started_ms  INTEGER,
        finished_ms INTEGER,
        outcome     BLOB,            -- postcard Outcome
        outcome_word TEXT,           -- for people reading the database
        runtime_ms  INTEGER
    );
    CREATE INDEX jobs_by_state ON jobs (state, id);
    CREATE INDEX jobs_by_finish ON jobs (finished_ms) WHERE state = 'finished';
",
    "
    CREATE TABLE waiters (
        job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        uid         INTEGER NOT NULL,
        gid         INTEGER NOT NULL,
        user        TEXT,
        host        TEXT,
        auth_method TEXT NOT NULL,
        added_ms    INTEGER NOT NULL
    );
    CREATE INDEX waiters_by_job ON waiters (job_id);
",
    // Ids are never reused (a counter that pruning cannot lower), submissions are
    // idempotent by key, replayed requests are recognised, and kept log sizes are known.
    "
    ALTER TABLE jobs ADD COLUMN submit_key BLOB;
    ALTER TABLE jobs ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN owner_principal TEXT;
    ALTER TABLE waiters ADD COLUMN submit_key BLOB;
    ALTER TABLE waiters ADD COLUMN principal TEXT;
    CREATE UNIQUE INDEX jobs_by_key ON jobs (owner_uid, submit_key) WHERE submit_key IS NOT NULL;
    CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (name, value) SELECT 'next_id', coalesce(max(id), 0) + 1 FROM jobs;
    CREATE TABLE seen_requests (digest BLOB PRIMARY KEY, until_ms INTEGER NOT NULL) WITHOUT ROWID;
",
    // What a job reported back, kept with its outcome.
    "
    ALTER TABLE jobs ADD COLUMN results BLOB;   -- postcard Vec<(String, String)>
",
    // CommandJob grew a last field, `lane: Option<String>`: postcard writes fields in order
    // and None as one 0 byte, so a stored command gains exactly that byte. (`||` makes text
    // of its operands' bytes, unchanged; the cast makes them a blob again.)
    "
    UPDATE jobs SET command = CAST(command || X'00' AS BLOB) WHERE command IS NOT NULL;
",
    // Where a started job runs when it runs elsewhere (a worker on another host), so that
    // a restarted server waits for its end instead of recording it lost.
    "
    ALTER TABLE jobs ADD COLUMN worker TEXT;
    ALTER TABLE jobs ADD COLUMN runner TEXT;   -- the executor's reference to the run
",
];

/// Opens the database at `path`: a new file is created (mode 0600, never through a
/// symlink); an existing one must be a regular file of this user that is a cq database.
/// Applies pending migrations.
///
/// # Errors
///
/// What is wrong with the file, in words for the admin.
pub(super) fn open(path: &Path) -> Result<Connection, String> {
    let fresh = create_or_check(path)?;
    let mut conn = Connection::open(path).map_err(|e| e.to_string())?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    if !fresh {
        recognise(&conn)?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| e.to_string())?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| e.to_string())?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(|e| e.to_string())?;
    conn.pragma_update(None, "cache_size", PAGE_CACHE_KIB)
        .map_err(|e| e.to_string())?;
    conn.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(|e| e.to_string())?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Creates the file if it is missing (`true`), or checks the one that is there (`false`).
fn create_or_check(path: &Path) -> Result<bool, String> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(_) => return Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.to_string()),
    }
    let meta = path.symlink_metadata().map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err(
            "it is not a regular file (a symlink?); cq never opens its database through one".into(),
        );
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "it belongs to uid {}, not to cq_server's uid {me}",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        // It holds every job's environment: readable by the server's user only.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot make it private (mode 0600): {e}"))?;
        for suffix in ["-wal", "-shm"] {
            let side = path.with_file_name(format!(
                "{}{suffix}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ));
            if side
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_file())
            {
                let _ = std::fs::set_permissions(&side, std::fs::Permissions::from_mode(0o600));
            }
        }
    }
    Ok(false)
}

/// Accepts an existing file only if it is a cq database (or one made before cq marked its
/// databases, recognised by its tables).
fn recognise(conn: &Connection) -> Result<(), String> {
    let not_ours = |why: &str| {
        format!(
            "it exists but is not a cq database ({why}); move it away to start with an empty queue"
        )
    };
    // Only a file SQLite reads and finds foreign is "not ours": a read that fails (I/O, a
    // full disk, a lock) says so, and the advice to move the queue away would lose it.
    let unreadable = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) | None => not_ours(&e.to_string()),
        Some(_) => format!("it cannot be read ({e}); see that its disk is sound and has room"),
    };
    let pragma = |name: &str| -> Result<i64, String> {
        conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
            .map_err(unreadable)
    };
    let application_id = pragma("application_id")?;
    if application_id == APPLICATION_ID {
        return Ok(());
    }
    if application_id != 0 {
        return Err(not_ours(&format!(
            "its application id is {application_id:#x}"
        )));
    }
    let has_jobs: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(unreadable)?;
    if pragma("user_version")? >= 1 && has_jobs {
        return Ok(());
    }
    Err(not_ours("it is empty or damaged"))
}

fn migrate(conn: &mut Connection) -> Result<(), String> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| e.to_string())?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(format!(
            "its schema version {version} is newer than this cq_server knows ({}): upgrade cq",
            MIGRATIONS.len()
        ));
    }
    for (applied, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        tx.execute_batch(migration).map_err(|e| e.to_string())?;
        tx.pragma_update(None, "user_version", applied as i64 + 1)
            .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
    }
    Ok(())
}
