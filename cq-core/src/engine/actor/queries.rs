//! What the engine answers without changing anything: watching a job, listings, one job's
//! status, access to its log. Live jobs are answered from memory, others from the store.

use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::{Actor, Live, not_permitted};
use crate::auth::Identity;
use crate::engine::handle::{JobResult, JobState, JobTicket, LogAccess, SubmitError};
use crate::job::{JobId, JobPhase, JobSummary};
use crate::scheduler::Scheduler;

/// How many finished jobs a listing shows after the live ones.
const RECENT_IN_LISTS: usize = 20;

impl<S: Scheduler> Actor<S> {
    pub(super) fn watch(&self, id: JobId, reply: oneshot::Sender<Result<JobTicket, SubmitError>>) {
        if let Some(live) = self.jobs.get(&id) {
            let ticket = self.ticket(id, live);
            let durable = live.durable.clone();
            tokio::spawn(async move {
                let _ = reply.send(durable.await.map(|()| ticket).map_err(SubmitError::Store));
            });
            return;
        }
        // Enqueued now, so it is answered after any outcome recorded before this moment.
        let described = self.store.describe(id);
        tokio::spawn(async move {
            let ticket = match described.await {
                Ok(Some(JobSummary {
                    phase: JobPhase::Finished,
                    outcome: Some(outcome),
                    runtime_ms,
                    ..
                })) => {
                    let runtime = Duration::from_millis(runtime_ms.unwrap_or(0));
                    // A closed watch channel still yields its last value.
                    let (_, state) =
                        watch::channel(JobState::Finished(JobResult { outcome, runtime }));
                    Ok(JobTicket {
                        id,
                        ahead: 0,
                        merged: false,
                        state,
                    })
                }
                Ok(_) => Err(SubmitError::UnknownJob(id)),
                Err(e) => Err(SubmitError::Store(e)),
            };
            let _ = reply.send(ticket);
        });
    }

    /// The running job, then the queued ones in order.
    fn live_summaries(&self) -> Vec<JobSummary> {
        let view = self.scheduler.view();
        view.all()
            .filter_map(|info| self.jobs.get(&info.id))
            .map(Live::summary)
            .collect()
    }

    pub(super) fn list(&self, reply: oneshot::Sender<Result<Vec<JobSummary>, SubmitError>>) {
        let mut jobs = self.live_summaries();
        let recent = self.store.recent(RECENT_IN_LISTS);
        tokio::spawn(async move {
            let listed = recent.await.map_err(SubmitError::Store).map(|finished| {
                jobs.extend(finished);
                jobs
            });
            let _ = reply.send(listed);
        });
    }

    pub(super) fn status(
        &self,
        id: JobId,
        reply: oneshot::Sender<Result<Vec<JobSummary>, SubmitError>>,
    ) {
        if let Some(live) = self.jobs.get(&id) {
            let _ = reply.send(Ok(vec![live.summary()]));
            return;
        }
        let described = self.store.describe(id);
        tokio::spawn(async move {
            let found = match described.await {
                Ok(Some(summary)) => Ok(vec![summary]),
                Ok(None) => Err(SubmitError::UnknownJob(id)),
                Err(e) => Err(SubmitError::Store(e)),
            };
            let _ = reply.send(found);
        });
    }

    pub(super) fn open_log(
        &self,
        id: JobId,
        by: &Identity,
        reply: oneshot::Sender<Result<LogAccess, SubmitError>>,
    ) {
        let path = self
            .config
            .log_dir
            .as_ref()
            .map(|dir| dir.join(format!("{id}.log")));
        if let Some(live) = self.jobs.get(&id) {
            if !live.permits(by) {
                let _ = reply.send(Err(not_permitted(id, &live.info.owner, "read the log of")));
                return;
            }
            let feed = self
                .running
                .as_ref()
                .filter(|r| r.id == id)
                .map(|r| r.live.subscribe());
            let ticket = self.ticket(id, live);
            let _ = reply.send(Ok(LogAccess {
                path,
                live: feed,
                ticket: Some(ticket),
            }));
            return;
        }
        let described = self.store.describe(id);
        let by = by.clone();
        tokio::spawn(async move {
            let access = match described.await {
                Ok(Some(job)) if by.uid == 0 || by.uid == job.owner_uid => Ok(LogAccess {
                    path,
                    live: None,
                    ticket: None,
                }),
                Ok(Some(job)) => Err(SubmitError::NotPermitted {
                    reason: format!(
                        "job {id} belongs to {}; only its owners and root may read the log of it",
                        job.owner
                    ),
                }),
                Ok(None) => Err(SubmitError::UnknownJob(id)),
                Err(e) => Err(SubmitError::Store(e)),
            };
            let _ = reply.send(access);
        });
    }
}
