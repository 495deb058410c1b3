//! The SQL of each operation, inside the writer's transaction.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{OptionalExtension, Transaction, params};

use crate::auth::{AuthMethod, Identity};
use crate::job::{CommandJob, JobId, JobPhase, JobSummary, SubmitKey};
use crate::outcome::JobResult;
use crate::outcome::Outcome;
use crate::store::record::{
    JobRecord, KnownKey, PrunedJob, RecordedRunner, Recovered, RunningJob, StoredJob,
};

pub(super) fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn method_name(method: AuthMethod) -> &'static str {
    match method {
        AuthMethod::Custom(name) => name,
        AuthMethod::Local => "local",
        AuthMethod::Munge => "munge",
        AuthMethod::MutualTls => "tls",
        AuthMethod::PeerCred => "peercred",
    }
}

fn method_from(name: &str) -> AuthMethod {
    match name {
        "local" => AuthMethod::Local,
        "munge" => AuthMethod::Munge,
        "tls" => AuthMethod::MutualTls,
        "peercred" => AuthMethod::PeerCred,
        _ => AuthMethod::Custom("restored"),
    }
}

fn key_bytes(key: Option<SubmitKey>) -> Option<Vec<u8>> {
    key.map(|k| k.0.to_vec())
}

fn key_from(bytes: Option<Vec<u8>>) -> Option<SubmitKey> {
    bytes
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map(SubmitKey)
}

pub(super) fn insert(tx: &Transaction<'_>, job: &StoredJob) -> rusqlite::Result<()> {
    let command = job
        .command
        .as_ref()
        .map(|c| postcard::to_allocvec(c).unwrap_or_default());
    tx.execute(
        "INSERT INTO jobs (id, owner_uid, owner_gid, owner_user, owner_host, auth_method, summary, command, state, accepted_ms, submit_key, owner_principal)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9, ?10, ?11)",
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
            key_bytes(job.key),
            job.owner.principal,
        ],
    )?;
    // The counter only grows: pruning old jobs never frees their ids.
    tx.execute(
        "UPDATE meta SET value = max(value, ?1) WHERE name = 'next_id'",
        params![job.id.0 as i64 + 1],
    )
    .map(drop)
}

pub(super) fn record_start(
    tx: &Transaction<'_>,
    id: JobId,
    at: SystemTime,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE jobs SET state = 'running', started_ms = ?2 WHERE id = ?1",
        params![id.0 as i64, millis(at)],
    )
    .map(drop)
}

pub(super) fn record_requeue(tx: &Transaction<'_>, id: JobId) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE jobs SET state = 'queued', started_ms = NULL, worker = NULL, runner = NULL
         WHERE id = ?1 AND state = 'running'",
        params![id.0 as i64],
    )
    .map(drop)
}

pub(super) fn record_runner(
    tx: &Transaction<'_>,
    id: JobId,
    worker: &str,
    reference: &str,
) -> rusqlite::Result<()> {
    let changed = tx.execute(
        "UPDATE jobs SET worker = ?2, runner = ?3 WHERE id = ?1 AND state = 'running'",
        params![id.0 as i64, worker, reference],
    )?;
    // A claim recorded nowhere (its start was not recorded) must not be answered as durable.
    if changed == 1 {
        Ok(())
    } else {
        Err(rusqlite::Error::QueryReturnedNoRows)
    }
}

pub(super) fn record_finish(
    tx: &Transaction<'_>,
    id: JobId,
    result: &JobResult,
    log_bytes: u64,
    at: SystemTime,
) -> rusqlite::Result<()> {
    let outcome = postcard::to_allocvec(&result.outcome).unwrap_or_default();
    tx.execute(
        "UPDATE jobs SET state = 'finished', finished_ms = ?2, outcome = ?3, outcome_word = ?4, runtime_ms = ?5, log_bytes = ?6, results = ?7
         WHERE id = ?1",
        params![
            id.0 as i64,
            millis(at),
            outcome,
            result.outcome.word(),
            i64::try_from(result.runtime.as_millis()).unwrap_or(i64::MAX),
            i64::try_from(log_bytes).unwrap_or(i64::MAX),
            (!result.results.is_empty())
                .then(|| postcard::to_allocvec(&result.results).unwrap_or_default()),
        ],
    )
    .map(drop)
}

pub(super) fn add_waiter(
    tx: &Transaction<'_>,
    id: JobId,
    waiter: &Identity,
    key: Option<SubmitKey>,
    at: SystemTime,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO waiters (job_id, uid, gid, user, host, auth_method, added_ms, submit_key, principal) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            id.0 as i64,
            waiter.uid,
            waiter.gid,
            waiter.user,
            waiter.host,
            method_name(waiter.method),
            millis(at),
            key_bytes(key),
            waiter.principal
        ],
    )
    .map(drop)
}

pub(super) fn remove_waiter(tx: &Transaction<'_>, id: JobId, uid: u32) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM waiters WHERE job_id = ?1 AND uid = ?2",
        params![id.0 as i64, uid],
    )
    .map(drop)
}

pub(super) fn remember_request(
    tx: &Transaction<'_>,
    digest: &[u8; 32],
    until: SystemTime,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO seen_requests (digest, until_ms) VALUES (?1, ?2)
         ON CONFLICT (digest) DO UPDATE SET until_ms = max(until_ms, excluded.until_ms)",
        params![&digest[..], millis(until)],
    )
    .map(drop)
}

pub(super) fn forget_requests(tx: &Transaction<'_>, before: SystemTime) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM seen_requests WHERE until_ms < ?1",
        params![millis(before)],
    )
    .map(drop)
}

/// The identity in the five columns from `first` (uid, gid, user, host, method); the
/// principal, which not every query needs, is filled in by those that do.
fn identity_at(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Identity> {
    let method: String = row.get(first + 4)?;
    Ok(Identity {
        uid: row.get(first)?,
        gid: row.get(first + 1)?,
        user: row.get(first + 2)?,
        host: row.get(first + 3)?,
        method: method_from(&method),
        principal: None,
    })
}

fn waiters_of(tx: &Transaction<'_>, id: i64) -> rusqlite::Result<Vec<Identity>> {
    tx.prepare_cached(
        "SELECT uid, gid, user, host, auth_method, principal FROM waiters WHERE job_id = ?1 ORDER BY added_ms",
    )?
    .query_map(params![id], |row| {
        let mut waiter = identity_at(row, 0)?;
        waiter.principal = row.get(5)?;
        Ok(waiter)
    })?
    .collect()
}

fn ms_to_u64(ms: Option<i64>) -> Option<u64> {
    ms.map(|ms| u64::try_from(ms).unwrap_or(0))
}

/// Job records for the rows a `WHERE ... [ORDER BY ...] [LIMIT ...]` clause selects.
pub(super) fn records(
    tx: &Transaction<'_>,
    clause: &str,
    args: impl rusqlite::Params,
) -> rusqlite::Result<Vec<JobRecord>> {
    let sql = format!(
        "SELECT id, owner_uid, owner_gid, owner_user, owner_host, auth_method, summary, command, state,
                accepted_ms, started_ms, finished_ms, outcome, runtime_ms,
                (SELECT group_concat(uid) FROM waiters WHERE job_id = jobs.id), results
         FROM jobs {clause}"
    );
    let mut statement = tx.prepare(&sql)?;
    let rows = statement.query_map(args, |row| {
        let owner = identity_at(row, 1)?;
        let summary: String = row.get(6)?;
        let command: Option<CommandJob> = row
            .get::<_, Option<Vec<u8>>>(7)?
            .and_then(|bytes| postcard::from_bytes::<CommandJob>(&bytes).ok());
        let state: String = row.get(8)?;
        let outcome: Option<Vec<u8>> = row.get(12)?;
        let waiter_uids: Vec<u32> = row
            .get::<_, Option<String>>(14)?
            .unwrap_or_default()
            .split(',')
            .filter_map(|uid| uid.parse().ok())
            .collect();
        Ok(JobRecord {
            summary: JobSummary {
                id: JobId(row.get::<_, i64>(0)? as u64),
                owner: owner.to_string(),
                owner_uid: owner.uid,
                command: command
                    .as_ref()
                    .map_or_else(|| vec![summary.clone()], |c| c.argv.clone()),
                env: command.as_ref().map(|c| c.env.clone()).unwrap_or_default(),
                tags: command.as_ref().map(|c| c.tags.clone()).unwrap_or_default(),
                lane: command.as_ref().and_then(|c| c.lane.clone()),
                worker: None,
                waiting: None,
                runner: None,
                cwd: command.and_then(|c| c.cwd),
                phase: match state.as_str() {
                    "queued" => JobPhase::Queued,
                    "running" => JobPhase::Running,
                    _ => JobPhase::Finished,
                },
                accepted_ms: ms_to_u64(Some(row.get(9)?)).unwrap_or(0),
                started_ms: ms_to_u64(row.get(10)?),
                finished_ms: ms_to_u64(row.get(11)?),
                // A row this build cannot read is reported as lost rather than failing the
                // reader.
                outcome: outcome.map(|bytes| postcard::from_bytes(&bytes).unwrap_or(Outcome::Lost)),
                runtime_ms: ms_to_u64(row.get(13)?),
                waiters: u32::try_from(waiter_uids.len()).unwrap_or(u32::MAX),
                results: row
                    .get::<_, Option<Vec<u8>>>(15)?
                    .and_then(|bytes| postcard::from_bytes(&bytes).ok())
                    .unwrap_or_default(),
            },
            waiter_uids,
        })
    })?;
    rows.collect()
}

pub(super) fn load(tx: &Transaction<'_>) -> rusqlite::Result<Recovered> {
    let now = millis(SystemTime::now());
    let mut recovered = Recovered::default();
    let mut statement = tx.prepare(
        "SELECT id, owner_uid, owner_gid, owner_user, owner_host, auth_method, summary, command, accepted_ms, submit_key, owner_principal, worker, runner, started_ms
         FROM jobs WHERE state = 'running' ORDER BY id",
    )?;
    let running = statement.query_map([], |row| {
        let command: Option<Vec<u8>> = row.get(7)?;
        let mut owner = identity_at(row, 1)?;
        owner.principal = row.get(10)?;
        let worker: Option<String> = row.get(11)?;
        let reference: Option<String> = row.get(12)?;
        Ok(RunningJob {
            job: StoredJob {
                id: JobId(row.get::<_, i64>(0)? as u64),
                owner,
                summary: row.get(6)?,
                command: command.and_then(|bytes| postcard::from_bytes::<CommandJob>(&bytes).ok()),
                key: key_from(row.get(9)?),
                accepted_at: from_millis(row.get(8)?),
                waiters: Vec::new(),
            },
            started_at: from_millis(row.get::<_, Option<i64>>(13)?.unwrap_or(0)),
            runner: worker
                .zip(reference)
                .map(|(worker, reference)| RecordedRunner { worker, reference }),
        })
    })?;
    recovered.running = running.collect::<rusqlite::Result<_>>()?;
    drop(statement);
    for running in &mut recovered.running {
        running.job.waiters = waiters_of(tx, running.job.id.0 as i64)?;
    }
    let mut statement = tx.prepare(
        "SELECT id, owner_uid, owner_gid, owner_user, owner_host, auth_method, summary, command, accepted_ms, submit_key, owner_principal
         FROM jobs WHERE state = 'queued' ORDER BY id",
    )?;
    let rows = statement.query_map([], |row| {
        let command: Option<Vec<u8>> = row.get(7)?;
        let mut owner = identity_at(row, 1)?;
        owner.principal = row.get(10)?;
        Ok(StoredJob {
            id: JobId(row.get::<_, i64>(0)? as u64),
            owner,
            summary: row.get(6)?,
            command: command.and_then(|bytes| postcard::from_bytes::<CommandJob>(&bytes).ok()),
            key: key_from(row.get(9)?),
            accepted_at: from_millis(row.get(8)?),
            waiters: Vec::new(),
        })
    })?;
    recovered.queued = rows.collect::<rusqlite::Result<_>>()?;
    for job in &mut recovered.queued {
        job.waiters = waiters_of(tx, job.id.0 as i64)?;
    }
    recovered.keys = tx
        .prepare(
            "SELECT owner_uid, submit_key, id, 0 FROM jobs WHERE submit_key IS NOT NULL
             UNION ALL
             SELECT uid, submit_key, job_id, 1 FROM waiters WHERE submit_key IS NOT NULL",
        )?
        .query_map([], |row| {
            let uid: u32 = row.get(0)?;
            let job = JobId(row.get::<_, i64>(2)? as u64);
            let merged: bool = row.get(3)?;
            Ok(key_from(row.get(1)?).map(|key| KnownKey {
                uid,
                key,
                job,
                merged,
            }))
        })?
        .filter_map(Result::transpose)
        .collect::<rusqlite::Result<_>>()?;
    recovered.requests = tx
        .prepare("SELECT digest, until_ms FROM seen_requests WHERE until_ms >= ?1")?
        .query_map(params![now], |row| {
            let digest: Vec<u8> = row.get(0)?;
            let until = from_millis(row.get(1)?);
            Ok(<[u8; 32]>::try_from(digest).ok().map(|d| (d, until)))
        })?
        .filter_map(Result::transpose)
        .collect::<rusqlite::Result<_>>()?;
    recovered.log_bytes = tx
        .prepare("SELECT owner_uid, sum(log_bytes) FROM jobs GROUP BY owner_uid HAVING sum(log_bytes) > 0")?
        .query_map([], |row| {
            Ok((row.get(0)?, u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0)))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let counter: Option<i64> = tx
        .query_row("SELECT value FROM meta WHERE name = 'next_id'", [], |row| {
            row.get(0)
        })
        .optional()?;
    let max: Option<i64> = tx.query_row("SELECT max(id) FROM jobs", [], |row| row.get(0))?;
    recovered.next_id = counter
        .unwrap_or(1)
        .max(max.map_or(1, |m| m + 1))
        .try_into()
        .unwrap_or(1);
    Ok(recovered)
}

pub(super) fn prune(tx: &Transaction<'_>, before: SystemTime) -> rusqlite::Result<Vec<PrunedJob>> {
    tx.prepare(
        "DELETE FROM jobs WHERE state = 'finished' AND finished_ms < ?1 RETURNING id, owner_uid, log_bytes",
    )?
    .query_map(params![millis(before)], |row| {
        Ok(PrunedJob {
            id: JobId(row.get::<_, i64>(0)? as u64),
            owner_uid: row.get(1)?,
            log_bytes: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
        })
    })?
    .collect()
}
