//! What the engine answers without changing anything: watching a job, listings, one job's
//! status, access to its log, each as the caller may see it. Live jobs are answered from
//! memory, others from the store.

use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::lifecycle::not_permitted;
use super::{Actor, Relation};
use crate::engine::handle::{Caller, JobResult, JobState, JobTicket, LogAccess, SubmitError};
use crate::job::{JobId, JobPhase, JobSummary};
use crate::scheduler::Scheduler;
use crate::store::{JobRecord, StoreError};

/// How many finished jobs a listing shows after the live ones.
const RECENT_IN_LISTS: usize = 20;

/// A ticket for a job that finished, from what the store describes.
pub(super) fn finished_ticket(id: JobId, summary: &JobSummary, full: bool) -> Option<JobTicket> {
    let (JobPhase::Finished, Some(outcome)) = (summary.phase, &summary.outcome) else {
        return None;
    };
    let runtime = Duration::from_millis(summary.runtime_ms.unwrap_or(0));
    // A closed watch channel still yields its last value.
    let (_, state) = watch::channel(JobState::Finished(JobResult {
        outcome: outcome.clone(),
        runtime,
        results: summary.results.clone(),
    }));
    Some(JobTicket {
        id,
        ahead: 0,
        merged: false,
        state,
        limited: !full,
    })
}

fn relation_to(record: &JobRecord, by: &Caller) -> Relation {
    Relation::of(
        by,
        record.summary.owner_uid,
        record.waiter_uids.iter().copied(),
    )
}

impl<S: Scheduler> Actor<S> {
    /// What the store holds about job `id`, read once the engine's record of its end (if
    /// it is ending) is committed.
    pub(super) fn committed_record(
        &self,
        id: JobId,
    ) -> impl Future<Output = Result<Option<JobRecord>, StoreError>> + Send + 'static {
        let ending = self.finishing.get(&id).cloned();
        let store = self.store.clone();
        async move {
            if let Some(ending) = ending {
                let _ = ending.await;
            }
            store.describe(id).await
        }
    }

    /// The `limit` most recently finished jobs, read once the outcomes being recorded now
    /// are committed.
    pub(super) fn committed_recent(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send + 'static {
        let ending: Vec<_> = self
            .finishing
            .values()
            .filter(|done| done.peek().is_none())
            .cloned()
            .collect();
        let store = self.store.clone();
        async move {
            futures_util::future::join_all(ending).await;
            store.recent(limit).await
        }
    }

    pub(super) fn watch(
        &self,
        id: JobId,
        by: &Caller,
        reply: oneshot::Sender<Result<JobTicket, SubmitError>>,
    ) {
        if let Some(live) = self.jobs.get(&id) {
            if live.relation(by) == Relation::Other {
                let _ = reply.send(Err(not_permitted(
                    id,
                    &live.info.owner.to_string(),
                    "wait for",
                )));
                return;
            }
            let ticket = self.ticket(id, live, live.relation(by) == Relation::Owner);
            let durable = live.durable.clone();
            tokio::spawn(async move {
                let _ = reply.send(durable.await.map(|()| ticket).map_err(SubmitError::Store));
            });
            return;
        }
        // Enqueued now, so it is answered after any outcome recorded before this moment.
        let described = self.committed_record(id);
        let by = by.clone();
        tokio::spawn(async move {
            let ticket = match described.await {
                Ok(Some(record)) if relation_to(&record, &by) == Relation::Other => {
                    Err(not_permitted(id, &record.summary.owner, "wait for"))
                }
                Ok(Some(record)) => {
                    let full = relation_to(&record, &by) == Relation::Owner;
                    finished_ticket(id, &record.summary, full).ok_or(SubmitError::UnknownJob(id))
                }
                Ok(None) => Err(SubmitError::UnknownJob(id)),
                Err(e) => Err(SubmitError::Store(e)),
            };
            let _ = reply.send(ticket);
        });
    }

    /// A live job's summary, with the worker it runs on, or why it waits.
    fn describe(&self, live: &super::Live) -> JobSummary {
        let mut summary = live.summary();
        if let Some(running) = self.running.get(&live.info.id) {
            summary.worker = Some(self.workers[running.worker].info.name.clone());
            summary.runner = running.runner.as_ref().and_then(|r| r.shown());
        } else if self.paused {
            summary.waiting = Some("the queue is paused".to_owned());
        } else if let Some(lane) = &live.info.lane
            && let Some(holder) = self.running.keys().find(|id| {
                self.jobs
                    .get(id)
                    .is_some_and(|j| j.info.lane.as_ref() == Some(lane))
            })
        {
            summary.waiting = Some(format!("job {holder} runs in its lane {lane}"));
        } else if !self
            .workers
            .iter()
            .any(|w| w.attached && w.info.can_run(&live.info))
        {
            summary.waiting = Some(if live.info.tags.is_empty() {
                "no worker is connected".to_owned()
            } else {
                format!("no connected worker offers {}", live.info.tags.join(" "))
            });
        }
        summary
    }

    /// The running job, then the queued ones in order, as `by` may see them.
    fn live_summaries(&self, by: &Caller) -> Vec<JobSummary> {
        let view = self.scheduler.view();
        view.all()
            .filter_map(|info| self.jobs.get(&info.id))
            .map(|live| live.relation(by).view(self.describe(live)))
            .collect()
    }

    pub(super) fn list(
        &self,
        by: &Caller,
        finished: bool,
        reply: oneshot::Sender<Result<Vec<JobSummary>, SubmitError>>,
    ) {
        let mut jobs = self.live_summaries(by);
        if !finished {
            let _ = reply.send(Ok(jobs));
            return;
        }
        let recent = self.committed_recent(RECENT_IN_LISTS);
        let by = by.clone();
        tokio::spawn(async move {
            let listed = recent.await.map_err(SubmitError::Store).map(|finished| {
                jobs.extend(
                    finished
                        .into_iter()
                        .map(|record| relation_to(&record, &by).view(record.summary)),
                );
                jobs
            });
            let _ = reply.send(listed);
        });
    }

    pub(super) fn status(
        &self,
        id: JobId,
        by: &Caller,
        reply: oneshot::Sender<Result<Vec<JobSummary>, SubmitError>>,
    ) {
        if let Some(live) = self.jobs.get(&id) {
            let _ = reply.send(Ok(vec![live.relation(by).view(self.describe(live))]));
            return;
        }
        let described = self.committed_record(id);
        let by = by.clone();
        tokio::spawn(async move {
            let found = match described.await {
                Ok(Some(record)) => Ok(vec![relation_to(&record, &by).view(record.summary)]),
                Ok(None) => Err(SubmitError::UnknownJob(id)),
                Err(e) => Err(SubmitError::Store(e)),
            };
            let _ = reply.send(found);
        });
    }

    pub(super) fn open_log(
        &self,
        id: JobId,
        by: &Caller,
        reply: oneshot::Sender<Result<LogAccess, SubmitError>>,
    ) {
        let path = self
            .config
            .log_dir
            .as_ref()
            .map(|dir| dir.join(format!("{id}.log")));
        if let Some(live) = self.jobs.get(&id) {
            if live.relation(by) != Relation::Owner {
                let _ = reply.send(Err(not_permitted(
                    id,
                    &live.info.owner.to_string(),
                    "read the log of",
                )));
                return;
            }
            let feed = self.running.get(&id).map(|r| r.live.subscribe());
            let ticket = self.ticket(id, live, true);
            let _ = reply.send(Ok(LogAccess {
                path,
                live: feed,
                ticket: Some(ticket),
            }));
            return;
        }
        let described = self.committed_record(id);
        let by = by.clone();
        tokio::spawn(async move {
            let access = match described.await {
                Ok(Some(record)) if relation_to(&record, &by) == Relation::Owner => Ok(LogAccess {
                    path,
                    live: None,
                    ticket: None,
                }),
                Ok(Some(record)) => {
                    Err(not_permitted(id, &record.summary.owner, "read the log of"))
                }
                Ok(None) => Err(SubmitError::UnknownJob(id)),
                Err(e) => Err(SubmitError::Store(e)),
            };
            let _ = reply.send(access);
        });
    }
}
