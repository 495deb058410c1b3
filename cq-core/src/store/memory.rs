//! A store that keeps everything in memory: for tests and for embedders without durability.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::pending::Pending;
use super::record::{Recovered, Store, StoredJob};
use crate::engine::JobResult;
use crate::job::JobId;
use crate::outcome::Outcome;

#[derive(Debug)]
enum Row {
    Queued(StoredJob),
    Running(StoredJob),
    Finished(JobResult, SystemTime),
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

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<JobId, Row>) -> T) -> T {
        // A panic while holding the lock cannot leave the map half-updated: every change is
        // a single insert or remove.
        let mut rows = self
            .rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut rows)
    }
}

impl Store for MemoryStore {
    fn recover(&self, requeue_running: bool) -> Pending<Recovered> {
        Pending::ready(Ok(self.with(|rows| {
            let mut recovered = Recovered {
                next_id: rows.keys().next_back().map_or(1, |id| id.0 + 1),
                ..Recovered::default()
            };
            let ids: Vec<JobId> = rows.keys().copied().collect();
            for id in ids {
                match rows.remove(&id) {
                    Some(Row::Running(job)) if requeue_running && job.command.is_some() => {
                        recovered.requeued.push(id);
                        recovered.queued.push(job.clone());
                        rows.insert(id, Row::Queued(job));
                    }
                    Some(Row::Running(_)) => {
                        recovered.lost.push(id);
                        let lost = JobResult {
                            outcome: Outcome::Lost,
                            runtime: Default::default(),
                        };
                        rows.insert(id, Row::Finished(lost, SystemTime::now()));
                    }
                    Some(Row::Queued(job)) => {
                        recovered.queued.push(job.clone());
                        rows.insert(id, Row::Queued(job));
                    }
                    Some(row) => {
                        rows.insert(id, row);
                    }
                    None => {}
                }
            }
            recovered
        })))
    }

    fn insert(&self, job: StoredJob) -> Pending<()> {
        self.with(|rows| rows.insert(job.id, Row::Queued(job)));
        Pending::ready(Ok(()))
    }

    fn record_start(&self, id: JobId, _at: SystemTime) -> Pending<()> {
        self.with(|rows| {
            if let Some(Row::Queued(job)) = rows.remove(&id) {
                rows.insert(id, Row::Running(job));
            }
        });
        Pending::ready(Ok(()))
    }

    fn record_finish(&self, id: JobId, result: JobResult, at: SystemTime) -> Pending<()> {
        self.with(|rows| rows.insert(id, Row::Finished(result, at)));
        Pending::ready(Ok(()))
    }

    fn result(&self, id: JobId) -> Pending<Option<JobResult>> {
        Pending::ready(Ok(self.with(|rows| match rows.get(&id) {
            Some(Row::Finished(result, _)) => Some(result.clone()),
            _ => None,
        })))
    }

    fn prune(&self, before: SystemTime) -> Pending<Vec<JobId>> {
        Pending::ready(Ok(self.with(|rows| {
            let old: Vec<JobId> = rows
                .iter()
                .filter(|(_, row)| matches!(row, Row::Finished(_, at) if *at < before))
                .map(|(id, _)| *id)
                .collect();
            for id in &old {
                rows.remove(id);
            }
            old
        })))
    }

    fn flush(&self) -> Pending<()> {
        Pending::ready(Ok(()))
    }
}
