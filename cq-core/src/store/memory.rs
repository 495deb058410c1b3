//! A store that keeps everything in memory: for tests and for embedders without durability.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::pending::Pending;
use super::record::{Recovered, Store, StoredJob};
use crate::auth::Identity;
use crate::engine::JobResult;
use crate::job::{JobId, JobPhase, JobSummary, epoch_ms};
use crate::outcome::Outcome;

#[derive(Debug)]
struct Row {
    job: StoredJob,
    started: Option<SystemTime>,
    finished: Option<(JobResult, SystemTime)>,
}

impl Row {
    fn phase(&self) -> JobPhase {
        match (&self.finished, self.started) {
            (Some(_), _) => JobPhase::Finished,
            (None, Some(_)) => JobPhase::Running,
            (None, None) => JobPhase::Queued,
        }
    }

    fn summary(&self) -> JobSummary {
        let job = &self.job;
        JobSummary {
            id: job.id,
            owner: job.owner.to_string(),
            owner_uid: job.owner.uid,
            command: job
                .command
                .as_ref()
                .map_or_else(|| vec![job.summary.clone()], |c| c.argv.clone()),
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
        }
    }
}

/// Keeps jobs and results in memory; nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    rows: Mutex<BTreeMap<JobId, Row>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<JobId, Row>) -> T) -> Pending<T> {
        // Every change below is complete or absent, so a poisoned lock holds consistent data.
        let mut rows = self
            .rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Pending::ready(Ok(f(&mut rows)))
    }
}

impl Store for MemoryStore {
    fn recover(&self, requeue_running: bool) -> Pending<Recovered> {
        self.with(|rows| {
            let mut recovered = Recovered {
                next_id: rows.keys().next_back().map_or(1, |id| id.0 + 1),
                ..Recovered::default()
            };
            for (id, row) in rows.iter_mut() {
                match row.phase() {
                    JobPhase::Running if requeue_running && row.job.command.is_some() => {
                        row.started = None;
                        recovered.requeued.push(*id);
                        recovered.queued.push(row.job.clone());
                    }
                    JobPhase::Running => {
                        let lost = JobResult {
                            outcome: Outcome::Lost,
                            runtime: Duration::ZERO,
                        };
                        row.finished = Some((lost, SystemTime::now()));
                        recovered.lost.push(*id);
                    }
                    JobPhase::Queued => recovered.queued.push(row.job.clone()),
                    _ => {}
                }
            }
            recovered
        })
    }

    fn insert(&self, job: StoredJob) -> Pending<()> {
        self.with(|rows| {
            drop(rows.insert(
                job.id,
                Row {
                    job,
                    started: None,
                    finished: None,
                },
            ))
        })
    }

    fn record_start(&self, id: JobId, at: SystemTime) -> Pending<()> {
        self.with(|rows| {
            rows.get_mut(&id)
                .into_iter()
                .for_each(|row| row.started = Some(at))
        })
    }

    fn record_finish(&self, id: JobId, result: JobResult, at: SystemTime) -> Pending<()> {
        self.with(|rows| {
            if let Some(row) = rows.get_mut(&id) {
                row.finished = Some((result, at));
            }
        })
    }

    fn add_waiter(&self, id: JobId, waiter: Identity, _at: SystemTime) -> Pending<()> {
        self.with(|rows| {
            if let Some(row) = rows.get_mut(&id) {
                row.job.waiters.push(waiter);
            }
        })
    }

    fn describe(&self, id: JobId) -> Pending<Option<JobSummary>> {
        self.with(|rows| rows.get(&id).map(Row::summary))
    }

    fn recent(&self, limit: usize) -> Pending<Vec<JobSummary>> {
        self.with(|rows| {
            let mut finished: Vec<&Row> = rows.values().filter(|r| r.finished.is_some()).collect();
            finished.sort_by_key(|r| std::cmp::Reverse(r.finished.as_ref().map(|(_, at)| *at)));
            finished.into_iter().take(limit).map(Row::summary).collect()
        })
    }

    fn prune(&self, before: SystemTime) -> Pending<Vec<JobId>> {
        self.with(|rows| {
            let old: Vec<JobId> = rows
                .iter()
                .filter(|(_, row)| row.finished.as_ref().is_some_and(|(_, at)| *at < before))
                .map(|(id, _)| *id)
                .collect();
            for id in &old {
                rows.remove(id);
            }
            old
        })
    }

    fn flush(&self) -> Pending<()> {
        Pending::ready(Ok(()))
    }
}
