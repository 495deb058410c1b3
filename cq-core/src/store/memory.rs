//! A store that keeps everything in memory: for tests and for embedders without durability.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::SystemTime;

use super::pending::Pending;
use super::record::{JobRecord, KnownKey, PrunedJob, Recovered, RunningJob, Store, StoredJob};
use crate::auth::Identity;
use crate::job::{JobId, JobPhase, JobSummary, SubmitKey, epoch_ms};
use crate::outcome::JobResult;

#[derive(Debug)]
struct Row {
    job: StoredJob,
    waiter_keys: Vec<Option<SubmitKey>>,
    started: Option<SystemTime>,
    finished: Option<(JobResult, SystemTime)>,
    log_bytes: u64,
}

impl Row {
    fn phase(&self) -> JobPhase {
        match (&self.finished, self.started) {
            (Some(_), _) => JobPhase::Finished,
            (None, Some(_)) => JobPhase::Running,
            (None, None) => JobPhase::Queued,
        }
    }

    fn record(&self) -> JobRecord {
        let job = &self.job;
        JobRecord {
            summary: JobSummary {
                id: job.id,
                owner: job.owner.to_string(),
                owner_uid: job.owner.uid,
                command: job
                    .command
                    .as_ref()
                    .map_or_else(|| vec![job.summary.clone()], |c| c.argv.clone()),
                env: job
                    .command
                    .as_ref()
                    .map(|c| c.env.clone())
                    .unwrap_or_default(),
                cwd: job.command.as_ref().and_then(|c| c.cwd.clone()),
                tags: job
                    .command
                    .as_ref()
                    .map(|c| c.tags.clone())
                    .unwrap_or_default(),
                lane: job.command.as_ref().and_then(|c| c.lane.clone()),
                worker: None,
                waiting: None,
                runner: None,
                phase: self.phase(),
                accepted_ms: epoch_ms(job.accepted_at),
                started_ms: self.started.map(epoch_ms),
                finished_ms: self.finished.as_ref().map(|(_, at)| epoch_ms(*at)),
                outcome: self.finished.as_ref().map(|(r, _)| r.outcome.clone()),
                runtime_ms: self
                    .finished
                    .as_ref()
                    .map(|(r, _)| u64::try_from(r.runtime.as_millis()).unwrap_or(u64::MAX)),
                waiters: u32::try_from(job.waiters.len()).unwrap_or(u32::MAX),
                results: self
                    .finished
                    .as_ref()
                    .map(|(r, _)| r.results.clone())
                    .unwrap_or_default(),
            },
            waiter_uids: job.waiters.iter().map(|w| w.uid).collect(),
        }
    }
}

#[derive(Debug, Default)]
struct Rows {
    jobs: BTreeMap<JobId, Row>,
    next_id: u64,
    requests: HashMap<[u8; 32], SystemTime>,
}

/// Keeps jobs and results in memory; nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    rows: Mutex<Rows>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Rows) -> T) -> Pending<T> {
        // Every change below is complete or absent, so a poisoned lock holds consistent data.
        let mut rows = self
            .rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Pending::ready(Ok(f(&mut rows)))
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Pending<Recovered> {
        self.with(|rows| {
            let mut recovered = Recovered {
                next_id: rows.next_id.max(1),
                ..Recovered::default()
            };
            let mut log_bytes: BTreeMap<u32, u64> = BTreeMap::new();
            for (id, row) in &mut rows.jobs {
                match (row.phase(), row.started) {
                    // Nothing of where it runs is kept here: nothing of it would survive a
                    // restart of the process.
                    (JobPhase::Running, Some(started_at)) => recovered.running.push(RunningJob {
                        job: row.job.clone(),
                        started_at,
                        runner: None,
                    }),
                    (JobPhase::Queued, _) => recovered.queued.push(row.job.clone()),
                    _ => {}
                }
                if let Some(key) = row.job.key {
                    recovered.keys.push(KnownKey {
                        uid: row.job.owner.uid,
                        key,
                        job: *id,
                        merged: false,
                    });
                }
                for (waiter, key) in row.job.waiters.iter().zip(&row.waiter_keys) {
                    if let Some(key) = key {
                        recovered.keys.push(KnownKey {
                            uid: waiter.uid,
                            key: *key,
                            job: *id,
                            merged: true,
                        });
                    }
                }
                *log_bytes.entry(row.job.owner.uid).or_default() += row.log_bytes;
            }
            recovered.log_bytes = log_bytes.into_iter().filter(|(_, b)| *b > 0).collect();
            let now = SystemTime::now();
            recovered.requests = rows
                .requests
                .iter()
                .filter(|(_, until)| **until >= now)
                .map(|(d, u)| (*d, *u))
                .collect();
            recovered
        })
    }

    fn insert(&self, job: StoredJob) -> Pending<()> {
        self.with(|rows| {
            rows.next_id = rows.next_id.max(job.id.0 + 1);
            let waiter_keys = vec![None; job.waiters.len()];
            rows.jobs.insert(
                job.id,
                Row {
                    job,
                    waiter_keys,
                    started: None,
                    finished: None,
                    log_bytes: 0,
                },
            );
        })
    }

    fn record_start(&self, id: JobId, at: SystemTime) -> Pending<()> {
        self.with(|rows| {
            if let Some(row) = rows.jobs.get_mut(&id) {
                row.started = Some(at);
            }
        })
    }

    fn record_runner(&self, _: JobId, _: String, _: String) -> Pending<()> {
        // Nothing of it survives a restart, where a runner would matter.
        Pending::ready(Ok(()))
    }

    fn record_requeue(&self, id: JobId) -> Pending<()> {
        self.with(|rows| {
            if let Some(row) = rows.jobs.get_mut(&id) {
                row.started = None;
            }
        })
    }

    fn record_finish(
        &self,
        id: JobId,
        result: JobResult,
        log_bytes: u64,
        at: SystemTime,
    ) -> Pending<()> {
        self.with(|rows| {
            if let Some(row) = rows.jobs.get_mut(&id) {
                row.finished = Some((result, at));
                row.log_bytes = log_bytes;
            }
        })
    }

    fn add_waiter(
        &self,
        id: JobId,
        waiter: Identity,
        key: Option<SubmitKey>,
        _at: SystemTime,
    ) -> Pending<()> {
        self.with(|rows| {
            if let Some(row) = rows.jobs.get_mut(&id) {
                row.job.waiters.push(waiter);
                row.waiter_keys.push(key);
            }
        })
    }

    fn remove_waiter(&self, id: JobId, uid: u32) -> Pending<()> {
        self.with(|rows| {
            if let Some(row) = rows.jobs.get_mut(&id) {
                let keep: Vec<bool> = row.job.waiters.iter().map(|w| w.uid != uid).collect();
                let mut flags = keep.iter();
                row.job.waiters.retain(|_| *flags.next().unwrap_or(&true));
                let mut flags = keep.iter();
                row.waiter_keys.retain(|_| *flags.next().unwrap_or(&true));
            }
        })
    }

    fn describe(&self, id: JobId) -> Pending<Option<JobRecord>> {
        self.with(|rows| rows.jobs.get(&id).map(Row::record))
    }

    fn recent(&self, limit: usize) -> Pending<Vec<JobRecord>> {
        self.with(|rows| {
            let mut finished: Vec<&Row> = rows
                .jobs
                .values()
                .filter(|r| r.finished.is_some())
                .collect();
            finished.sort_by_key(|r| std::cmp::Reverse(r.finished.as_ref().map(|(_, at)| *at)));
            finished.into_iter().take(limit).map(Row::record).collect()
        })
    }

    fn prune(&self, before: SystemTime) -> Pending<Vec<PrunedJob>> {
        self.with(|rows| {
            let old: Vec<PrunedJob> = rows
                .jobs
                .values()
                .filter(|row| row.finished.as_ref().is_some_and(|(_, at)| *at < before))
                .map(|row| PrunedJob {
                    id: row.job.id,
                    owner_uid: row.job.owner.uid,
                    log_bytes: row.log_bytes,
                })
                .collect();
            for job in &old {
                rows.jobs.remove(&job.id);
            }
            old
        })
    }

    fn remember_request(&self, digest: [u8; 32], until: SystemTime) -> Pending<()> {
        self.with(|rows| {
            let kept = rows.requests.entry(digest).or_insert(until);
            *kept = (*kept).max(until);
        })
    }

    fn forget_requests(&self, before: SystemTime) -> Pending<()> {
        self.with(|rows| rows.requests.retain(|_, until| *until >= before))
    }

    fn flush(&self) -> Pending<()> {
        Pending::ready(Ok(()))
    }
}
