//! The durable store: SQLite (WAL, synchronous=FULL) on one writer thread with group commit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, Transaction, params};
use tokio::sync::{mpsc, oneshot};

use super::pending::Pending;
use super::record::{Recovered, Store, StoreError, StoredJob};
use crate::auth::{AuthMethod, Identity};
use crate::engine::JobResult;
use crate::job::{CommandJob, JobId, JobPhase, JobSummary};
use crate::outcome::Outcome;

/// At most this many operations share one commit, so that one commit stays short.
const MAX_BATCH: usize = 1024;

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
];

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Op {
    Recover {
        requeue_running: bool,
        reply: Reply<Recovered>,
    },
    Insert {
        job: Box<StoredJob>,
        reply: Reply<()>,
    },
    Start {
        id: JobId,
        at: SystemTime,
        reply: Reply<()>,
    },
    Finish {
        id: JobId,
        result: JobResult,
        at: SystemTime,
        reply: Reply<()>,
    },
    AddWaiter {
        id: JobId,
        waiter: Box<Identity>,
        at: SystemTime,
        reply: Reply<()>,
    },
    Describe {
        id: JobId,
        reply: Reply<Option<JobSummary>>,
    },
    Recent {
        limit: usize,
        reply: Reply<Vec<JobSummary>>,
    },
    Prune {
        before: SystemTime,
        reply: Reply<Vec<JobId>>,
    },
    Flush {
        reply: Reply<()>,
    },
}

/// Jobs in an SQLite database, written by one dedicated thread.
///
/// Each batch of operations that queued up while the previous commit was on disk is applied
/// in one transaction: one fsync for the whole batch.
#[derive(Debug)]
pub struct SqliteStore {
    ops: mpsc::UnboundedSender<Op>,
    path: PathBuf,
    commits: Arc<AtomicU64>,
}

impl SqliteStore {
    /// Opens (or creates) the database at `path` and applies pending schema migrations.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] naming the file and the reason (missing directory, read-only
    /// file system, disk full, not a database, a newer schema).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        let mut conn = Connection::open(path).map_err(|e| open_error(e.to_string()))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| open_error(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| open_error(e.to_string()))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| open_error(e.to_string()))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| open_error(e.to_string()))?;
        migrate(&mut conn).map_err(open_error)?;
        let (ops, inbox) = mpsc::unbounded_channel();
        let commits = Arc::new(AtomicU64::new(0));
        let counter = commits.clone();
        std::thread::Builder::new()
            .name("cq-store".to_owned())
            .spawn(move || writer(conn, inbox, &counter))
            .map_err(|e| open_error(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            ops,
            path: path.to_owned(),
            commits,
        })
    }

    /// How many transactions have been committed since opening (for monitoring and tests:
    /// fewer commits than operations means operations shared commits).
    pub fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Pending<T> {
        let (reply, pending) = Pending::channel();
        // If the writer is gone, the reply is dropped and the pending result says Closed.
        let _ = self.ops.send(make(reply));
        pending
    }
}

impl Store for SqliteStore {
    fn recover(&self, requeue_running: bool) -> Pending<Recovered> {
        self.send(|reply| Op::Recover {
            requeue_running,
            reply,
        })
    }

    fn insert(&self, job: StoredJob) -> Pending<()> {
        self.send(|reply| Op::Insert {
            job: Box::new(job),
            reply,
        })
    }

    fn record_start(&self, id: JobId, at: SystemTime) -> Pending<()> {
        self.send(|reply| Op::Start { id, at, reply })
    }

    fn record_finish(&self, id: JobId, result: JobResult, at: SystemTime) -> Pending<()> {
        self.send(|reply| Op::Finish {
            id,
            result,
            at,
            reply,
        })
    }

    fn add_waiter(&self, id: JobId, waiter: Identity, at: SystemTime) -> Pending<()> {
        self.send(|reply| Op::AddWaiter {
            id,
            waiter: Box::new(waiter),
            at,
            reply,
        })
    }

    fn describe(&self, id: JobId) -> Pending<Option<JobSummary>> {
        self.send(|reply| Op::Describe { id, reply })
    }

    fn recent(&self, limit: usize) -> Pending<Vec<JobSummary>> {
        self.send(|reply| Op::Recent { limit, reply })
    }

    fn prune(&self, before: SystemTime) -> Pending<Vec<JobId>> {
        self.send(|reply| Op::Prune { before, reply })
    }

    fn flush(&self) -> Pending<()> {
        self.send(|reply| Op::Flush { reply })
    }
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

/// A finished operation waiting for its commit before its reply is sent.
type Done = Box<dyn FnOnce(Option<&StoreError>) + Send>;

fn writer(mut conn: Connection, mut inbox: mpsc::UnboundedReceiver<Op>, commits: &AtomicU64) {
    while let Some(first) = inbox.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match inbox.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let tx = match conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let error = StoreError::Database {
                    what: "begin",
                    reason: e.to_string(),
                };
                batch
                    .into_iter()
                    .map(|op| apply_failed(op, &error))
                    .for_each(drop);
                continue;
            }
        };
        let done: Vec<Done> = batch.into_iter().map(|op| apply(&tx, op)).collect();
        let commit = tx.commit().err().map(|e| StoreError::Database {
            what: "commit",
            reason: e.to_string(),
        });
        commits.fetch_add(1, Ordering::Relaxed);
        for reply in done {
            reply(commit.as_ref());
        }
    }
}

/// Applies one operation inside the batch's transaction; the returned closure replies after
/// the commit (with the commit's error, if it failed).
fn apply(tx: &Transaction<'_>, op: Op) -> Done {
    fn finish<T: Send + 'static>(reply: Reply<T>, result: Result<T, StoreError>) -> Done {
        Box::new(move |commit: Option<&StoreError>| {
            let _ = reply.send(match commit {
                Some(e) => Err(e.clone()),
                None => result,
            });
        })
    }
    let db = |what: &'static str| {
        move |e: rusqlite::Error| StoreError::Database {
            what,
            reason: e.to_string(),
        }
    };
    match op {
        Op::Recover {
            requeue_running,
            reply,
        } => finish(reply, recover(tx, requeue_running).map_err(db("recover"))),
        Op::Insert { job, reply } => finish(reply, insert(tx, &job).map_err(db("insert"))),
        Op::Start { id, at, reply } => {
            let result = tx
                .execute(
                    "UPDATE jobs SET state = 'running', started_ms = ?2 WHERE id = ?1",
                    params![id.0 as i64, millis(at)],
                )
                .map(drop)
                .map_err(db("record start"));
            finish(reply, result)
        }
        Op::Finish {
            id,
            result,
            at,
            reply,
        } => finish(
            reply,
            record_finish(tx, id, &result, at).map_err(db("record finish")),
        ),
        Op::AddWaiter {
            id,
            waiter,
            at,
            reply,
        } => finish(
            reply,
            add_waiter(tx, id, &waiter, at).map_err(db("add a waiter")),
        ),
        Op::Describe { id, reply } => {
            let found = summaries(tx, "WHERE id = ?1", params![id.0 as i64]).map(|mut v| v.pop());
            finish(reply, found.map_err(db("describe")))
        }
        Op::Recent { limit, reply } => {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let clause = "WHERE state = 'finished' ORDER BY finished_ms DESC, id DESC LIMIT ?1";
            finish(
                reply,
                summaries(tx, clause, params![limit]).map_err(db("list recent jobs")),
            )
        }
        Op::Prune { before, reply } => finish(reply, prune(tx, before).map_err(db("prune"))),
        Op::Flush { reply } => finish(reply, Ok(())),
    }
}

fn apply_failed(op: Op, error: &StoreError) {
    let e = Err(error.clone());
    match op {
        Op::Recover { reply, .. } => drop(reply.send(e.map(|()| Recovered::default()))),
        Op::Insert { reply, .. }
        | Op::Start { reply, .. }
        | Op::Finish { reply, .. }
        | Op::Flush { reply } => drop(reply.send(e)),
        Op::AddWaiter { reply, .. } => drop(reply.send(e)),
        Op::Describe { reply, .. } => drop(reply.send(e.map(|()| None))),
        Op::Recent { reply, .. } => drop(reply.send(e.map(|()| Vec::new()))),
        Op::Prune { reply, .. } => drop(reply.send(e.map(|()| Vec::new()))),
    }
}

fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn method_name(method: AuthMethod) -> &'static str {
    match method {
        AuthMethod::Custom(name) => name,
        AuthMethod::Local => "local",
        AuthMethod::Munge => "munge",
        AuthMethod::MutualTls => "tls",
    }
}

fn method_from(name: &str) -> AuthMethod {
    match name {
        "local" => AuthMethod::Local,
        "munge" => AuthMethod::Munge,
        "tls" => AuthMethod::MutualTls,
        _ => AuthMethod::Custom("restored"),
    }
}

fn insert(tx: &Transaction<'_>, job: &StoredJob) -> rusqlite::Result<()> {
    let command = job
        .command
        .as_ref()
        .map(|c| postcard::to_allocvec(c).unwrap_or_default());
    tx.execute(
        "INSERT INTO jobs (id, owner_uid, owner_gid, owner_user, owner_host, auth_method, summary, command, state, accepted_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9)",
        params![
            job.id.0 as i64,
            job.owner.uid,
            job.owner.gid,
            job.owner.user,
            job.owner.host,
            method_name(job.owner.method),
            job.summary,
            command,
            millis(job.accepted_at),
        ],
    )
    .map(drop)
}

fn record_finish(
    tx: &Transaction<'_>,
    id: JobId,
    result: &JobResult,
    at: SystemTime,
) -> rusqlite::Result<()> {
    let outcome = postcard::to_allocvec(&result.outcome).unwrap_or_default();
    tx.execute(
        "UPDATE jobs SET state = 'finished', finished_ms = ?2, outcome = ?3, outcome_word = ?4, runtime_ms = ?5
         WHERE id = ?1",
        params![
            id.0 as i64,
            millis(at),
            outcome,
            result.outcome.word(),
            i64::try_from(result.runtime.as_millis()).unwrap_or(i64::MAX),
        ],
    )
    .map(drop)
}

fn add_waiter(
    tx: &Transaction<'_>,
    id: JobId,
    waiter: &Identity,
    at: SystemTime,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO waiters (job_id, uid, gid, user, host, auth_method, added_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id.0 as i64, waiter.uid, waiter.gid, waiter.user, waiter.host, method_name(waiter.method), millis(at)],
    )
    .map(drop)
}

fn identity_at(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Identity> {
    let method: String = row.get(first + 4)?;
    Ok(Identity {
        uid: row.get(first)?,
        gid: row.get(first + 1)?,
        user: row.get(first + 2)?,
        host: row.get(first + 3)?,
        method: method_from(&method),
    })
}

fn waiters_of(tx: &Transaction<'_>, id: i64) -> rusqlite::Result<Vec<Identity>> {
    tx.prepare_cached(
        "SELECT uid, gid, user, host, auth_method FROM waiters WHERE job_id = ?1 ORDER BY added_ms",
    )?
    .query_map(params![id], |row| identity_at(row, 0))?
    .collect()
}

fn ms_to_u64(ms: Option<i64>) -> Option<u64> {
    ms.map(|ms| u64::try_from(ms).unwrap_or(0))
}

/// Job summaries for the rows a `WHERE ... [ORDER BY ...] [LIMIT ...]` clause selects.
fn summaries(
    tx: &Transaction<'_>,
    clause: &str,
    args: impl rusqlite::Params,
) -> rusqlite::Result<Vec<JobSummary>> {
    let sql = format!(
        "SELECT id, owner_uid, owner_gid, owner_user, owner_host, auth_method, summary, command, state,
                accepted_ms, started_ms, finished_ms, outcome, runtime_ms,
                (SELECT count(*) FROM waiters WHERE job_id = jobs.id)
         FROM jobs {clause}"
    );
    let mut statement = tx.prepare(&sql)?;
    let rows = statement.query_map(args, |row| {
        let owner = identity_at(row, 1)?;
        let summary: String = row.get(6)?;
        let command: Option<Vec<u8>> = row.get(7)?;
        let state: String = row.get(8)?;
        let outcome: Option<Vec<u8>> = row.get(12)?;
        Ok(JobSummary {
            id: JobId(row.get::<_, i64>(0)? as u64),
            owner: owner.to_string(),
            owner_uid: owner.uid,
            command: command
                .and_then(|bytes| postcard::from_bytes::<CommandJob>(&bytes).ok())
                .map_or_else(|| vec![summary], |c| c.argv),
            phase: match state.as_str() {
                "queued" => JobPhase::Queued,
                "running" => JobPhase::Running,
                _ => JobPhase::Finished,
            },
            accepted_ms: ms_to_u64(Some(row.get(9)?)).unwrap_or(0),
            started_ms: ms_to_u64(row.get(10)?),
            finished_ms: ms_to_u64(row.get(11)?),
            // A row this build cannot read is reported as lost rather than failing the reader.
            outcome: outcome.map(|bytes| postcard::from_bytes(&bytes).unwrap_or(Outcome::Lost)),
            runtime_ms: ms_to_u64(row.get(13)?),
            waiters: row.get(14)?,
        })
    })?;
    rows.collect()
}

fn recover(tx: &Transaction<'_>, requeue_running: bool) -> rusqlite::Result<Recovered> {
    let now = millis(SystemTime::now());
    let mut recovered = Recovered::default();
    let running: Vec<(i64, bool)> = tx
        .prepare("SELECT id, command IS NOT NULL FROM jobs WHERE state = 'running' ORDER BY id")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let lost = postcard::to_allocvec(&Outcome::Lost).unwrap_or_default();
    for (id, has_command) in running {
        if requeue_running && has_command {
            tx.execute(
                "UPDATE jobs SET state = 'queued', started_ms = NULL WHERE id = ?1",
                params![id],
            )?;
            recovered.requeued.push(JobId(id as u64));
        } else {
            tx.execute(
                "UPDATE jobs SET state = 'finished', finished_ms = ?2, outcome = ?3, outcome_word = 'lost', runtime_ms = 0
                 WHERE id = ?1",
                params![id, now, lost],
            )?;
            recovered.lost.push(JobId(id as u64));
        }
    }
    let mut statement = tx.prepare(
        "SELECT id, owner_uid, owner_gid, owner_user, owner_host, auth_method, summary, command, accepted_ms
         FROM jobs WHERE state = 'queued' ORDER BY id",
    )?;
    let rows = statement.query_map([], |row| {
        let command: Option<Vec<u8>> = row.get(7)?;
        let method: String = row.get(5)?;
        let accepted_ms: i64 = row.get(8)?;
        Ok(StoredJob {
            id: JobId(row.get::<_, i64>(0)? as u64),
            owner: Identity {
                uid: row.get(1)?,
                gid: row.get(2)?,
                user: row.get(3)?,
                host: row.get(4)?,
                method: method_from(&method),
            },
            summary: row.get(6)?,
            command: command.and_then(|bytes| postcard::from_bytes::<CommandJob>(&bytes).ok()),
            accepted_at: UNIX_EPOCH
                + Duration::from_millis(u64::try_from(accepted_ms).unwrap_or(0)),
            waiters: Vec::new(),
        })
    })?;
    recovered.queued = rows.collect::<rusqlite::Result<_>>()?;
    for job in &mut recovered.queued {
        job.waiters = waiters_of(tx, job.id.0 as i64)?;
    }
    let max: Option<i64> = tx.query_row("SELECT max(id) FROM jobs", [], |row| row.get(0))?;
    recovered.next_id = max.map_or(1, |m| m as u64 + 1);
    Ok(recovered)
}

fn prune(tx: &Transaction<'_>, before: SystemTime) -> rusqlite::Result<Vec<JobId>> {
    let ids: Vec<i64> = tx
        .prepare("DELETE FROM jobs WHERE state = 'finished' AND finished_ms < ?1 RETURNING id")?
        .query_map(params![millis(before)], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(ids.into_iter().map(|id| JobId(id as u64)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64) -> StoredJob {
        StoredJob {
            id: JobId(id),
            owner: Identity::local(),
            summary: format!("job {id}"),
            command: Some(CommandJob::new(["true", &id.to_string()])),
            accepted_at: SystemTime::now(),
            waiters: Vec::new(),
        }
    }

    #[tokio::test]
    async fn jobs_survive_reopening_and_running_ones_are_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            for id in 1..=4 {
                store.insert(job(id)).await.unwrap();
            }
            store
                .record_start(JobId(1), SystemTime::now())
                .await
                .unwrap();
            let done = JobResult {
                outcome: Outcome::Exited { code: 3 },
                runtime: Duration::from_millis(12),
            };
            store
                .record_finish(JobId(1), done.clone(), SystemTime::now())
                .await
                .unwrap();
            store
                .record_start(JobId(2), SystemTime::now())
                .await
                .unwrap();
            store
                .add_waiter(JobId(3), Identity::local(), SystemTime::now())
                .await
                .unwrap();
            let described = store.describe(JobId(1)).await.unwrap().unwrap();
            assert_eq!(described.phase, JobPhase::Finished);
            assert_eq!(
                (described.outcome, described.runtime_ms),
                (Some(done.outcome), Some(12))
            );
            assert_eq!(described.command, vec!["true".to_owned(), "1".to_owned()]);
        }
        let store = SqliteStore::open(&path).unwrap();
        let recovered = store.recover(false).await.unwrap();
        assert_eq!(recovered.lost, vec![JobId(2)]);
        assert_eq!(
            recovered.queued.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![JobId(3), JobId(4)]
        );
        let mut expected = job(3).clone_with_time(recovered.queued[0].accepted_at);
        expected.waiters = vec![Identity::local()];
        assert_eq!(
            recovered.queued[0], expected,
            "the waiter survives the restart"
        );
        assert_eq!(
            store.describe(JobId(3)).await.unwrap().map(|s| s.waiters),
            Some(1)
        );
        assert_eq!(recovered.next_id, 5);
        let lost = store.describe(JobId(2)).await.unwrap().unwrap();
        assert_eq!(
            (lost.phase, lost.outcome),
            (JobPhase::Finished, Some(Outcome::Lost))
        );
    }

    impl StoredJob {
        fn clone_with_time(mut self, at: SystemTime) -> Self {
            self.accepted_at = at;
            self
        }
    }

    #[tokio::test]
    async fn running_jobs_can_be_requeued_instead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq.db");
        let store = SqliteStore::open(&path).unwrap();
        store.insert(job(1)).await.unwrap();
        store.insert(job(2)).await.unwrap();
        store
            .record_start(JobId(1), SystemTime::now())
            .await
            .unwrap();
        let recovered = store.recover(true).await.unwrap();
        assert_eq!(recovered.requeued, vec![JobId(1)]);
        assert_eq!(
            recovered.queued.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![JobId(1), JobId(2)]
        );
    }

    #[tokio::test]
    async fn prune_forgets_old_results_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("cq.db")).unwrap();
        let long_ago = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let result = JobResult {
            outcome: Outcome::Exited { code: 0 },
            runtime: Duration::ZERO,
        };
        for id in 1..=3 {
            store.insert(job(id)).await.unwrap();
        }
        store
            .record_finish(JobId(1), result.clone(), long_ago)
            .await
            .unwrap();
        store
            .record_finish(JobId(2), result.clone(), SystemTime::now())
            .await
            .unwrap();
        let pruned = store
            .prune(SystemTime::now() - Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(pruned, vec![JobId(1)]);
        assert_eq!(store.describe(JobId(1)).await.unwrap(), None);
        let recent: Vec<JobId> = store
            .recent(10)
            .await
            .unwrap()
            .iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(
            recent,
            vec![JobId(2)],
            "only finished jobs, and not the pruned one"
        );
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(
            err.to_string().contains("newer than this cq_server knows"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn concurrent_inserts_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("cq.db")).unwrap();
        let before = store.commit_count();
        let pending: Vec<_> = (1..=200).map(|id| store.insert(job(id))).collect();
        for p in pending {
            p.await.unwrap();
        }
        let commits = store.commit_count() - before;
        assert!(
            commits < 200,
            "200 concurrent inserts took {commits} commits"
        );
        assert_eq!(store.recover(false).await.unwrap().queued.len(), 200);
    }
}
