//! The one thread that writes: operations that queue up while a commit is on disk share the
//! next transaction (group commit).

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use rusqlite::{Connection, Transaction};
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::rows;
use crate::auth::Identity;
use crate::job::{JobId, SubmitKey};
use crate::outcome::JobResult;
use crate::store::record::{PrunedJob, Recovered, StoreError, StoredJob};

/// At most this many operations share one commit, so that one commit stays short.
const MAX_BATCH: usize = 1024;

/// How long a batch of nothing but request digests waits for the request's own change, so
/// that both share one commit (one fsync on the submit path instead of two).
const DIGESTS_WAIT: Duration = Duration::from_millis(20);

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) enum Op {
    Load {
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
    Requeue {
        id: JobId,
        reply: Reply<()>,
    },
    Runner {
        id: JobId,
        worker: String,
        reference: String,
        reply: Reply<()>,
    },
    Finish {
        id: JobId,
        result: JobResult,
        log_bytes: u64,
        at: SystemTime,
        reply: Reply<()>,
    },
    AddWaiter {
        id: JobId,
        waiter: Box<Identity>,
        key: Option<SubmitKey>,
        at: SystemTime,
        reply: Reply<()>,
    },
    RemoveWaiter {
        id: JobId,
        uid: u32,
        reply: Reply<()>,
    },
    Prune {
        before: SystemTime,
        reply: Reply<Vec<PrunedJob>>,
    },
    RememberRequest {
        digest: [u8; 32],
        until: SystemTime,
        reply: Reply<()>,
    },
    ForgetRequests {
        before: SystemTime,
        reply: Reply<()>,
    },
    Flush {
        reply: Reply<()>,
    },
}

impl Op {
    /// A request's digest, which nobody waits for.
    fn is_digest(&self) -> bool {
        matches!(self, Self::RememberRequest { .. })
    }
}

/// A finished operation waiting for its commit before its reply is sent.
type Done = Box<dyn FnOnce(Option<&StoreError>) + Send>;

pub(super) fn run(mut conn: Connection, inbox: mpsc::Receiver<Op>, commits: &super::Commits) {
    while let Ok(first) = inbox.recv() {
        let mut batch = vec![first];
        let drain = |batch: &mut Vec<Op>| {
            while batch.len() < MAX_BATCH {
                match inbox.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
        };
        drain(&mut batch);
        // A digest is written no later than its request's change (they are sent in that
        // order), so it may wait for it: nobody waits for a digest alone.
        if batch.iter().all(Op::is_digest)
            && let Ok(op) = inbox.recv_timeout(DIGESTS_WAIT)
        {
            batch.push(op);
            drain(&mut batch);
        }
        let began = std::time::Instant::now();
        let tx = match conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let error = StoreError::Database {
                    what: "begin",
                    reason: e.to_string(),
                };
                for op in batch {
                    fail(op, &error);
                }
                continue;
            }
        };
        let done: Vec<Done> = batch.into_iter().map(|op| apply(&tx, op)).collect();
        let commit = tx.commit().err().map(|e| StoreError::Database {
            what: "commit",
            reason: e.to_string(),
        });
        commits.count.fetch_add(1, Ordering::Relaxed);
        commits.nanos.fetch_add(
            u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
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
        Op::Load { reply } => finish(reply, rows::load(tx).map_err(db("load"))),
        Op::Insert { job, reply } => finish(reply, rows::insert(tx, &job).map_err(db("insert"))),
        Op::Start { id, at, reply } => finish(
            reply,
            rows::record_start(tx, id, at).map_err(db("record start")),
        ),
        Op::Requeue { id, reply } => finish(
            reply,
            rows::record_requeue(tx, id).map_err(db("record requeue")),
        ),
        Op::Runner {
            id,
            worker,
            reference,
            reply,
        } => finish(
            reply,
            rows::record_runner(tx, id, &worker, &reference).map_err(db("record runner")),
        ),
        Op::Finish {
            id,
            result,
            log_bytes,
            at,
            reply,
        } => finish(
            reply,
            rows::record_finish(tx, id, &result, log_bytes, at).map_err(db("record finish")),
        ),
        Op::AddWaiter {
            id,
            waiter,
            key,
            at,
            reply,
        } => finish(
            reply,
            rows::add_waiter(tx, id, &waiter, key, at).map_err(db("add a waiter")),
        ),
        Op::RemoveWaiter { id, uid, reply } => finish(
            reply,
            rows::remove_waiter(tx, id, uid).map_err(db("remove a waiter")),
        ),
        Op::Prune { before, reply } => finish(reply, rows::prune(tx, before).map_err(db("prune"))),
        Op::RememberRequest {
            digest,
            until,
            reply,
        } => finish(
            reply,
            rows::remember_request(tx, &digest, until).map_err(db("remember a request")),
        ),
        Op::ForgetRequests { before, reply } => finish(
            reply,
            rows::forget_requests(tx, before).map_err(db("forget old requests")),
        ),
        Op::Flush { reply } => finish(reply, Ok(())),
    }
}

fn fail(op: Op, error: &StoreError) {
    let e = Err(error.clone());
    match op {
        Op::Load { reply } => drop(reply.send(e.map(|()| Recovered::default()))),
        Op::Insert { reply, .. }
        | Op::Start { reply, .. }
        | Op::Requeue { reply, .. }
        | Op::Runner { reply, .. }
        | Op::Finish { reply, .. }
        | Op::AddWaiter { reply, .. }
        | Op::RemoveWaiter { reply, .. }
        | Op::RememberRequest { reply, .. }
        | Op::ForgetRequests { reply, .. }
        | Op::Flush { reply } => drop(reply.send(e)),
        Op::Prune { reply, .. } => drop(reply.send(e.map(|()| Vec::new()))),
    }
}
