//! The durable store: SQLite (WAL, synchronous=FULL) on one writer thread with group commit.
//!
//! - `schema.rs`: the file (created exclusively, recognised as cq's) and its migrations;
//! - `writer.rs`: the writer thread and the operations it batches;
//! - `reader.rs`: the reader thread, for queries, on a read-only connection;
//! - `rows.rs`: the SQL of each operation.

mod reader;
mod rows;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use std::sync::mpsc;

use super::pending::Pending;
use super::record::{JobRecord, PrunedJob, Recovered, Store, StoreError, StoredJob};
use crate::auth::Identity;
use crate::job::{JobId, SubmitKey};
use crate::outcome::JobResult;
use writer::{Op, Reply};

/// Jobs in an SQLite database, written by one dedicated thread.
///
/// Each batch of operations that queued up while the previous commit was on disk is applied
/// in one transaction: one fsync for the whole batch.
#[derive(Debug)]
pub struct SqliteStore {
    ops: mpsc::Sender<Op>,
    reads: mpsc::Sender<reader::Read>,
    path: PathBuf,
    commits: Arc<Commits>,
}

/// What the writer thread counts: transactions committed, and the time they took (begin to
/// the end of the commit, fsync included).
#[derive(Debug, Default)]
pub(super) struct Commits {
    pub(super) count: AtomicU64,
    pub(super) nanos: AtomicU64,
}

impl SqliteStore {
    /// Opens the database at `path`, or creates it (mode 0600, never through a symlink), and
    /// applies pending schema migrations. An existing file must belong to this user and be a
    /// cq database: an empty or foreign file is refused rather than replaced by an empty
    /// queue.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] naming the file and the reason (missing directory, read-only
    /// file system, disk full, not a cq database, a newer schema).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = schema::open(path).map_err(|reason| StoreError::Open {
            path: path.display().to_string(),
            reason,
        })?;
        // The reader opens the file again: it must find the writer's file, marked so.
        let mark = open_mark();
        conn.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES ('opened_by', ?1)",
            [mark],
        )
        .map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            reason: format!("cannot write to it: {e}"),
        })?;
        let reading = reader::open(path, mark).map_err(|reason| StoreError::Open {
            path: path.display().to_string(),
            reason: format!("cannot open it for reading: {reason}"),
        })?;
        let (ops, inbox) = mpsc::channel();
        let (reads, read_inbox) = mpsc::channel();
        let commits = Arc::new(Commits::default());
        let counter = commits.clone();
        let thread_failed = |e: std::io::Error| StoreError::Open {
            path: path.display().to_string(),
            reason: format!("cannot start a store thread: {e}"),
        };
        std::thread::Builder::new()
            .name("cq-store".to_owned())
            .spawn(move || writer::run(conn, inbox, &counter))
            .map_err(thread_failed)?;
        std::thread::Builder::new()
            .name("cq-store-read".to_owned())
            .spawn(move || reader::run(reading, read_inbox))
            .map_err(thread_failed)?;
        Ok(Self {
            ops,
            reads,
            path: path.to_owned(),
            commits,
        })
    }

    /// How many transactions have been committed since opening (for monitoring and tests:
    /// fewer commits than operations means operations shared commits).
    pub fn commit_count(&self) -> u64 {
        self.commits.count.load(Ordering::Relaxed)
    }

    /// The time all those transactions took, from begin to the end of the commit (fsync
    /// included): with [`commit_count`](Self::commit_count), the mean commit latency.
    pub fn commit_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.commits.nanos.load(Ordering::Relaxed))
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

/// A value that tells this opening of the database from any other.
fn open_mark() -> i64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Truncated: only uniqueness matters, not the value.
    (nanos as i64) ^ (i64::from(std::process::id()) << 40)
}

impl Store for SqliteStore {
    fn load(&self) -> Pending<Recovered> {
        self.send(|reply| Op::Load { reply })
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

    fn record_requeue(&self, id: JobId) -> Pending<()> {
        self.send(|reply| Op::Requeue { id, reply })
    }

    fn record_runner(&self, id: JobId, worker: String, reference: String) -> Pending<()> {
        self.send(|reply| Op::Runner {
            id,
            worker,
            reference,
            reply,
        })
    }

    fn record_finish(
        &self,
        id: JobId,
        result: JobResult,
        log_bytes: u64,
        at: SystemTime,
    ) -> Pending<()> {
        self.send(|reply| Op::Finish {
            id,
            result,
            log_bytes,
            at,
            reply,
        })
    }

    fn add_waiter(
        &self,
        id: JobId,
        waiter: Identity,
        key: Option<SubmitKey>,
        at: SystemTime,
    ) -> Pending<()> {
        self.send(|reply| Op::AddWaiter {
            id,
            waiter: Box::new(waiter),
            key,
            at,
            reply,
        })
    }

    fn remove_waiter(&self, id: JobId, uid: u32) -> Pending<()> {
        self.send(|reply| Op::RemoveWaiter { id, uid, reply })
    }

    fn describe(&self, id: JobId) -> Pending<Option<JobRecord>> {
        let (reply, pending) = Pending::channel();
        let _ = self.reads.send(reader::Read::Describe { id, reply });
        pending
    }

    fn recent(&self, limit: usize) -> Pending<Vec<JobRecord>> {
        let (reply, pending) = Pending::channel();
        let _ = self.reads.send(reader::Read::Recent { limit, reply });
        pending
    }

    fn prune(&self, before: SystemTime) -> Pending<Vec<PrunedJob>> {
        self.send(|reply| Op::Prune { before, reply })
    }

    fn remember_request(&self, digest: [u8; 32], until: SystemTime) -> Pending<()> {
        self.send(|reply| Op::RememberRequest {
            digest,
            until,
            reply,
        })
    }

    fn forget_requests(&self, before: SystemTime) -> Pending<()> {
        self.send(|reply| Op::ForgetRequests { before, reply })
    }

    fn flush(&self) -> Pending<()> {
        self.send(|reply| Op::Flush { reply })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use rusqlite::Connection;

    use super::*;
    use crate::job::{CommandJob, JobPhase};
    use crate::outcome::Outcome;
    use crate::store::KnownKey;

    fn job(id: u64) -> StoredJob {
        StoredJob {
            id: JobId(id),
            owner: Identity::local(),
            summary: format!("job {id}"),
            command: Some(CommandJob::new(["true", &id.to_string()])),
            key: Some(SubmitKey([id as u8; 16])),
            accepted_at: SystemTime::now(),
            waiters: Vec::new(),
        }
    }

    fn exited(code: i32) -> JobResult {
        JobResult {
            outcome: Outcome::Exited { code },
            runtime: Duration::from_millis(12),
            results: vec![("BUILD_ID".into(), code.to_string())],
        }
    }

    #[tokio::test]
    async fn jobs_survive_reopening_as_they_were_left() {
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
            store
                .record_finish(JobId(1), exited(3), 42, SystemTime::now())
                .await
                .unwrap();
            store
                .record_start(JobId(2), SystemTime::now())
                .await
                .unwrap();
            let key = SubmitKey([9; 16]);
            store
                .add_waiter(JobId(3), Identity::local(), Some(key), SystemTime::now())
                .await
                .unwrap();
            let described = store.describe(JobId(1)).await.unwrap().unwrap().summary;
            assert_eq!(described.phase, JobPhase::Finished);
            assert_eq!(
                (described.outcome, described.runtime_ms),
                (Some(exited(3).outcome), Some(12))
            );
            assert_eq!(described.command, vec!["true".to_owned(), "1".to_owned()]);
        }
        let store = SqliteStore::open(&path).unwrap();
        let recovered = store.load().await.unwrap();
        // Loading changes nothing: what becomes of the running job is the engine's decision.
        let running: Vec<_> = recovered
            .running
            .iter()
            .map(|r| (r.job.id, r.runner.clone()))
            .collect();
        assert_eq!(running, vec![(JobId(2), None)]);
        assert_eq!(
            recovered.queued.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![JobId(3), JobId(4)]
        );
        let mut expected = job(3);
        expected.accepted_at = recovered.queued[0].accepted_at;
        expected.waiters = vec![Identity::local()];
        assert_eq!(
            recovered.queued[0], expected,
            "the waiter survives the restart"
        );
        let me = Identity::local().uid;
        assert!(recovered.keys.contains(&KnownKey {
            uid: me,
            key: SubmitKey([9; 16]),
            job: JobId(3),
            merged: true
        }));
        assert!(recovered.keys.contains(&KnownKey {
            uid: me,
            key: SubmitKey([4; 16]),
            job: JobId(4),
            merged: false
        }));
        assert_eq!(recovered.log_bytes, vec![(me, 42)]);
        let record = store.describe(JobId(3)).await.unwrap().unwrap();
        assert_eq!((record.summary.waiters, record.waiter_uids), (1, vec![me]));
        assert_eq!(recovered.next_id, 5);
        let running = store.describe(JobId(2)).await.unwrap().unwrap().summary;
        assert_eq!(running.phase, JobPhase::Running);
    }

    /// Issue 14: queries waited behind the writer's batches and their fsync. They have a
    /// connection of their own now: one answers while the writer is held up.
    #[tokio::test]
    async fn a_query_answers_while_the_writer_is_held_up() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq.db");
        let store = SqliteStore::open(&path).unwrap();
        store.insert(job(1)).await.unwrap();
        // Another process holds the write lock: the writer's next batch waits for it.
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut held = store.insert(job(2));
        let found = store.describe(JobId(1)).await.unwrap();
        assert_eq!(found.map(|r| r.summary.id), Some(JobId(1)));
        assert!(
            (&mut held).now_or_never().is_none(),
            "the query was answered only after the held-up write"
        );
        holder.execute_batch("ROLLBACK").unwrap();
        let _ = held.await;
    }

    /// Red team: the reader opens the file again after the writer; a file swapped in
    /// between (another database) would have been read as this one.
    #[test]
    fn the_reader_refuses_a_file_the_writer_did_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("cq.db");
        let other = dir.path().join("other.db");
        drop(SqliteStore::open(&ours).unwrap());
        drop(SqliteStore::open(&other).unwrap());
        let mark = |path: &Path| -> i64 {
            Connection::open(path)
                .unwrap()
                .query_row(
                    "SELECT value FROM meta WHERE name = 'opened_by'",
                    [],
                    |row| row.get(0),
                )
                .unwrap()
        };
        assert!(reader::open(&ours, mark(&ours)).is_ok());
        let swapped = reader::open(&other, mark(&ours));
        assert!(
            swapped.is_err(),
            "a file marked by another opening was read"
        );
    }

    #[tokio::test]
    async fn a_running_job_queued_again_is_loaded_queued_in_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("cq.db")).unwrap();
        store.insert(job(1)).await.unwrap();
        store.insert(job(2)).await.unwrap();
        store
            .record_start(JobId(1), SystemTime::now())
            .await
            .unwrap();
        store
            .record_runner(JobId(1), "w1".into(), "1:2:3".into())
            .await
            .unwrap();
        store.record_requeue(JobId(1)).await.unwrap();
        let recovered = store.load().await.unwrap();
        assert!(recovered.running.is_empty());
        assert_eq!(
            recovered.queued.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![JobId(1), JobId(2)]
        );
    }

    #[tokio::test]
    async fn prune_forgets_old_results_only_and_never_frees_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq.db");
        let store = SqliteStore::open(&path).unwrap();
        let long_ago = UNIX_EPOCH + Duration::from_secs(1_000_000);
        for id in 1..=3 {
            store.insert(job(id)).await.unwrap();
        }
        store
            .record_finish(JobId(1), exited(0), 7, long_ago)
            .await
            .unwrap();
        store
            .record_finish(JobId(2), exited(0), 0, SystemTime::now())
            .await
            .unwrap();
        store
            .record_finish(JobId(3), exited(0), 0, long_ago)
            .await
            .unwrap();
        let pruned = store
            .prune(SystemTime::now() - Duration::from_secs(3600))
            .await
            .unwrap();
        let me = Identity::local().uid;
        assert_eq!(
            pruned,
            vec![
                PrunedJob {
                    id: JobId(1),
                    owner_uid: me,
                    log_bytes: 7
                },
                PrunedJob {
                    id: JobId(3),
                    owner_uid: me,
                    log_bytes: 0
                }
            ]
        );
        assert_eq!(store.describe(JobId(1)).await.unwrap(), None);
        let recent: Vec<JobId> = store
            .recent(10)
            .await
            .unwrap()
            .iter()
            .map(|r| r.summary.id)
            .collect();
        assert_eq!(
            recent,
            vec![JobId(2)],
            "only finished jobs, and not the pruned ones"
        );
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store.load().await.unwrap().next_id,
            4,
            "id 3 is not handed out again"
        );
    }

    #[tokio::test]
    async fn request_digests_are_kept_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq.db");
        let later = SystemTime::now() + Duration::from_secs(300);
        {
            let store = SqliteStore::open(&path).unwrap();
            store.remember_request([1; 32], later).await.unwrap();
            store
                .remember_request([2; 32], SystemTime::now() - Duration::from_secs(1))
                .await
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let recovered = store.load().await.unwrap();
        assert_eq!(recovered.requests.len(), 1);
        assert_eq!(recovered.requests[0].0, [1; 32]);
        store
            .forget_requests(later + Duration::from_secs(1))
            .await
            .unwrap();
        assert!(store.load().await.unwrap().requests.is_empty());
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_cq_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        let err = SqliteStore::open(&empty).unwrap_err().to_string();
        assert!(
            err.contains("not a cq database") && err.contains("move it away"),
            "{err}"
        );
        let foreign = dir.path().join("foreign.db");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        assert!(SqliteStore::open(&foreign).is_err());
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(dir.path().join("cq-real.db"), &link).unwrap();
        let err = SqliteStore::open(&link).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
    }

    #[tokio::test]
    async fn the_database_is_private_to_the_server() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq.db");
        let store = SqliteStore::open(&path).unwrap();
        store.insert(job(1)).await.unwrap();
        for name in ["cq.db", "cq.db-wal", "cq.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{name} is {mode:o}");
        }
        drop(store);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(SqliteStore::open(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "an existing database is made private");
    }

    #[tokio::test]
    async fn commands_queued_before_lanes_existed_still_run_after_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq.db");
        let mut queued = job(1);
        if let Some(command) = &mut queued.command {
            command.tags = vec!["arch=amd64".into()];
            command.timeout_ms = Some(300_000); // varint bytes above 0x7f
            command.argv.push("d\u{e9}j\u{e0}".into());
        }
        let store = SqliteStore::open(&path).unwrap();
        store.insert(queued.clone()).await.unwrap();
        drop(store);
        // As the previous schema stored it: without the last field's byte.
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE jobs SET command = substr(command, 1, length(command) - 1) WHERE typeof(command) = 'blob'",
            [],
        )
        .unwrap();
        // And without what later migrations add.
        conn.execute_batch(
            "ALTER TABLE jobs DROP COLUMN worker; ALTER TABLE jobs DROP COLUMN runner;",
        )
        .unwrap();
        conn.pragma_update(None, "user_version", 4).unwrap();
        drop(conn);
        let store = SqliteStore::open(&path).unwrap();
        let recovered = store.load().await.unwrap();
        assert_eq!(recovered.queued.len(), 1);
        assert_eq!(recovered.queued[0].command, queued.command);
    }

    #[tokio::test]
    async fn where_running_jobs_run_is_loaded_when_it_was_recorded_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq.db");
        let store = SqliteStore::open(&path).unwrap();
        for id in 1..=4 {
            store.insert(job(id)).await.unwrap();
            store
                .record_start(JobId(id), SystemTime::now())
                .await
                .unwrap();
        }
        store
            .record_runner(JobId(1), "w1".into(), "1:2:3".into())
            .await
            .unwrap();
        store
            .record_runner(JobId(2), "w2".into(), "4:5:6".into())
            .await
            .unwrap();
        // A claim for a job not running is not recorded (and not answered as durable).
        assert!(
            store
                .record_runner(JobId(99), "w".into(), "r".into())
                .await
                .is_err()
        );
        drop(store);
        // Red team: a runner without its worker made recovery fail, and one without a
        // command left the row running for ever.
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE jobs SET worker = NULL WHERE id = 2", [])
            .unwrap();
        drop(conn);
        let store = SqliteStore::open(&path).unwrap();
        let recovered = store.load().await.unwrap();
        let running: Vec<_> = recovered
            .running
            .iter()
            .map(|r| {
                let runner = r.runner.as_ref();
                (
                    r.job.id,
                    runner.map(|r| (r.worker.as_str(), r.reference.as_str())),
                )
            })
            .collect();
        assert_eq!(
            running,
            [
                (JobId(1), Some(("w1", "1:2:3"))),
                (JobId(2), None),
                (JobId(3), None),
                (JobId(4), None)
            ]
        );
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq.db");
        drop(SqliteStore::open(&path).unwrap());
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
        assert_eq!(store.load().await.unwrap().queued.len(), 200);
    }
}
