//! What the engine answers without changing anything: watching a job, listings, one job's
//! status, access to its log, each as the caller may see it. Live jobs are answered from
//! memory, others from the store, once the outcomes being recorded are committed.

use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::lifecycle::not_permitted;
use super::{
    Answer, Core, Deferred, LogGrant, Lookup, Now, Relation, Reply, TicketTo, relation_to,
};
use crate::engine::handle::{Caller, JobResult, JobState, JobTicket, LogAccess, SubmitError};
use crate::job::{JobId, JobPhase, JobSummary};
use crate::scheduler::Scheduler;
use crate::store::{JobRecord, StoreError};

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

impl Lookup {
    /// Answers with what the store holds about finished job `id` (`log`: where its log
    /// is kept, if logs are).
    pub(in crate::engine) fn answer(
        self,
        id: JobId,
        found: Result<Option<JobRecord>, StoreError>,
        log: Option<std::path::PathBuf>,
    ) {
        let found = found.map_err(SubmitError::Store);
        match self {
            Self::Watch { by, to } => to.send(found.and_then(|record| match record {
                Some(record) if relation_to(&record, &by) == Relation::Other => {
                    Err(not_permitted(id, &record.summary.owner, "wait for"))
                }
                Some(record) => {
                    let full = relation_to(&record, &by) == Relation::Owner;
                    finished_ticket(id, &record.summary, full).ok_or(SubmitError::UnknownJob(id))
                }
                None => Err(SubmitError::UnknownJob(id)),
            })),
            Self::Retry { merged, uid, to } => to.send(found.and_then(|record| {
                let record = record.ok_or(SubmitError::UnknownJob(id))?;
                let mut ticket =
                    finished_ticket(id, &record.summary, record.summary.owner_uid == uid)
                        .ok_or(SubmitError::UnknownJob(id))?;
                ticket.merged = merged;
                Ok(ticket)
            })),
            Self::Status { by, to } => {
                let _ = to.send(found.and_then(|record| match record {
                    Some(record) => Ok(vec![relation_to(&record, &by).view(record.summary)]),
                    None => Err(SubmitError::UnknownJob(id)),
                }));
            }
            Self::Cancel { to } => {
                let _ = to.send(found.and_then(|record| match record {
                    Some(_) => Err(SubmitError::AlreadyFinished(id)),
                    None => Err(SubmitError::UnknownJob(id)),
                }));
            }
            Self::OpenLog { by, to } => {
                let _ = to.send(found.and_then(|record| match record {
                    Some(record) if relation_to(&record, &by) == Relation::Owner => Ok(LogAccess {
                        path: log,
                        live: None,
                        ticket: None,
                    }),
                    Some(record) => {
                        Err(not_permitted(id, &record.summary.owner, "read the log of"))
                    }
                    None => Err(SubmitError::UnknownJob(id)),
                }));
            }
        }
    }
}

/// Answers a listing: the live jobs, then the most recently finished ones as `by` may see
/// them.
pub(in crate::engine) fn answer_recent(
    mut live: Vec<JobSummary>,
    by: &Caller,
    recent: Result<Vec<JobRecord>, StoreError>,
    to: oneshot::Sender<Result<Vec<JobSummary>, SubmitError>>,
) {
    let listed = recent.map_err(SubmitError::Store).map(|finished| {
        live.extend(
            finished
                .into_iter()
                .map(|record| relation_to(&record, by).view(record.summary)),
        );
        live
    });
    let _ = to.send(listed);
}

impl<S: Scheduler> Core<S> {
    /// Has the driver answer `lookup` from the store's record of job `id`, once its end
    /// (if it is ending) is committed.
    pub(super) fn look_up(&mut self, id: JobId, lookup: Lookup, now: Now) {
        let ending = self.finishing.get(&id).copied();
        self.after(ending, None, Deferred::Lookup { id, lookup }, now);
    }

    pub(super) fn watch(&mut self, id: JobId, by: &Caller, reply: TicketTo, now: Now) {
        let Some(live) = self.jobs.get(&id) else {
            let by = by.clone();
            return self.look_up(id, Lookup::Watch { by, to: reply }, now);
        };
        if live.relation(by) == Relation::Other {
            let refusal = not_permitted(id, &live.info.owner.to_string(), "wait for");
            return self.reply(Reply::Ticket(reply, Err(refusal)));
        }
        let full = live.relation(by) == Relation::Owner;
        let ticket = self.ticket(id, full);
        let (durable, failed) = self.durability(id);
        self.after(durable, failed, Deferred::Ticket { to: reply, ticket }, now);
    }

    /// A live job's summary, with the worker it runs on, or why it waits.
    fn describe(&self, live: &super::Live) -> JobSummary {
        let mut summary = live.summary();
        if let Some(running) = self.running.get(&live.info.id) {
            summary.worker = Some(self.workers[running.worker].info.name.clone());
            summary.runner = running.shown.get();
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

    /// The running jobs, then the queued ones in order, as `by` may see them.
    fn live_summaries(&self, by: &Caller) -> Vec<JobSummary> {
        let view = self.scheduler.view();
        view.all()
            .filter_map(|info| self.jobs.get(&info.id))
            .map(|live| live.relation(by).view(self.describe(live)))
            .collect()
    }

    pub(super) fn list(
        &mut self,
        by: &Caller,
        finished: bool,
        reply: oneshot::Sender<Result<Vec<JobSummary>, SubmitError>>,
        now: Now,
    ) {
        let live = self.live_summaries(by);
        if !finished {
            let value = Ok(live);
            return self.reply(Reply::Summaries(Answer { to: reply, value }));
        }
        // Read once the outcomes being recorded now are committed.
        let ending: Vec<_> = self.finishing.values().copied().collect();
        let by = by.clone();
        self.after(
            ending,
            None,
            Deferred::Recent {
                live,
                by,
                to: reply,
            },
            now,
        );
    }

    pub(super) fn status(
        &mut self,
        id: JobId,
        by: &Caller,
        reply: oneshot::Sender<Result<Vec<JobSummary>, SubmitError>>,
        now: Now,
    ) {
        let Some(live) = self.jobs.get(&id) else {
            let by = by.clone();
            return self.look_up(id, Lookup::Status { by, to: reply }, now);
        };
        let value = Ok(vec![live.relation(by).view(self.describe(live))]);
        self.reply(Reply::Summaries(Answer { to: reply, value }));
    }

    pub(super) fn open_log(
        &mut self,
        id: JobId,
        by: &Caller,
        reply: oneshot::Sender<Result<LogAccess, SubmitError>>,
        now: Now,
    ) {
        let Some(live) = self.jobs.get(&id) else {
            let by = by.clone();
            return self.look_up(id, Lookup::OpenLog { by, to: reply }, now);
        };
        if live.relation(by) != Relation::Owner {
            let refusal = not_permitted(id, &live.info.owner.to_string(), "read the log of");
            return self.reply(Reply::Log(reply, Err(refusal)));
        }
        let grant = LogGrant {
            id,
            ticket: Some(self.ticket(id, true)),
            running: self.running.contains_key(&id),
        };
        self.reply(Reply::Log(reply, Ok(grant)));
    }
}
