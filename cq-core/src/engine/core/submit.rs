//! Admission of a submission: a known idempotency key re-attaches, then the hooks decide
//! (accept, merge, reject), merges across users are refused unless allowed, and the owner's
//! limits are checked. A job is acknowledged only once it is on record.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{oneshot, watch};

use super::{Core, Deferred, Durability, Live, Lookup, Now, Record, Reply, TicketTo};
use crate::auth::Identity;
use crate::engine::EngineEvent;
use crate::engine::handle::{JobState, JobTicket, SubmitError, SubmitOptions};
use crate::job::{JobId, SubmitKey, Work};
use crate::scheduler::{Decision, JobInfo, Scheduler};
use crate::store::StoredJob;

impl<S: Scheduler> Core<S> {
    pub(super) fn submit(
        &mut self,
        job: Work,
        owner: Identity,
        options: SubmitOptions,
        reply: TicketTo,
        now: Now,
    ) {
        // A command gets its time limit here, before anything compares it: the default
        // when it asks for none, never more than the most allowed.
        let job = match job {
            Work::Command(command) => {
                let limit = self
                    .config
                    .time_limit(command.timeout())
                    .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
                if limit == command.timeout_ms {
                    Work::Command(command)
                } else {
                    let mut limited = (*command).clone();
                    limited.timeout_ms = limit;
                    Work::Command(std::sync::Arc::new(limited))
                }
            }
            other => other,
        };
        if self.stopping.is_some() {
            return self.reply(Reply::Ticket(reply, Err(SubmitError::ShuttingDown)));
        }
        if let Some(key) = options.key
            && let Some(&(id, merged)) = self.keys.get(&(owner.uid, key))
        {
            tracing::info!(job = %id, owner = %owner, "a submission came again (a retry): re-attached");
            return self.reattach(id, merged, owner.uid, reply, now);
        }
        let id = JobId(self.next_id);
        let size = job.size();
        let command = job.command().cloned();
        let info = Arc::new(JobInfo {
            id,
            owner,
            summary: job.summary(),
            tags: command.as_ref().map(|c| c.tags.clone()).unwrap_or_default(),
            lane: command.as_ref().and_then(|c| c.lane.clone()),
            command,
        });
        // The hooks run here, once; a verdict reached outside the engine (the server's
        // hook program) stands in for them.
        let decision = match options.verdict.clone() {
            Some(Decision::Accept) | None => self.hook.review(&info, &self.scheduler.view()),
            Some(decided) => decided,
        };
        match decision {
            // A hook naming a job that has already ended (or never existed) cannot merge into
            // it; queueing the newcomer is the answer that loses nothing.
            Decision::Merge(into) if self.scheduler.view().holds(into) => {
                self.merge(info, into, &options, reply, now);
            }
            Decision::Accept | Decision::Merge(_) => {
                if let Err(reason) = self.within_limits(info.owner.uid, Some(size)) {
                    tracing::info!(owner = %info.owner, command = %info.summary, %reason, "over quota");
                    self.refused(&info.owner, &reason);
                    return self
                        .reply(Reply::Ticket(reply, Err(SubmitError::OverQuota { reason })));
                }
                let view = self.scheduler.view();
                let ahead = view.queued_len() + view.running().count();
                self.scheduler.enqueue(info.clone());
                self.accept(job, info, size, ahead, options.key, reply, now);
            }
            Decision::Reject(reason) => {
                tracing::info!(owner = %info.owner, command = %info.summary, %reason, "rejected");
                self.refused(&info.owner, &reason);
                self.reply(Reply::Ticket(reply, Err(SubmitError::Rejected { reason })));
            }
        }
    }

    fn refused(&mut self, owner: &Identity, reason: &str) {
        self.event(EngineEvent::Refused {
            owner: owner.clone(),
            reason: reason.to_owned(),
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn accept(
        &mut self,
        job: Work,
        info: Arc<JobInfo>,
        size: u64,
        ahead: usize,
        key: Option<SubmitKey>,
        reply: TicketTo,
        now: Now,
    ) {
        let id = info.id;
        self.next_id += 1;
        let accepted_at = now.wall;
        let stored = StoredJob {
            id,
            owner: info.owner.clone(),
            summary: info.summary.clone(),
            command: info.command.as_deref().cloned(),
            key,
            accepted_at,
            waiters: Vec::new(),
        };
        let durable = self.persist(Record::Insert(stored));
        if let Some(key) = key {
            self.keys.insert((info.owner.uid, key), (id, false));
        }
        let usage = self.usage.entry(info.owner.uid).or_default();
        usage.live_jobs += 1;
        usage.live_bytes += size;
        let (state, receiver) = watch::channel(JobState::Queued);
        let ticket = JobTicket {
            id,
            ahead,
            merged: false,
            state: receiver,
            limited: false,
        };
        self.forget_unwatched();
        self.handed_out.push_back(id);
        tracing::info!(job = %id, owner = %info.owner, ahead, command = %info.summary, "accepted");
        let live = Live {
            job: Some(job),
            info,
            state: Some(state),
            durable: Durability::Pending(durable),
            accepted_ms: crate::job::epoch_ms(accepted_at),
            started_ms: None,
            waiters: Box::default(),
            size,
        };
        self.event(EngineEvent::Accepted {
            job: id,
            owner: live.info.owner.clone(),
            summary: live.info.summary.clone(),
        });
        self.jobs.insert(id, Box::new(live));
        self.after([durable], None, Deferred::Durable(id), now);
        // Acknowledge only once the job is on disk; meanwhile keep serving others.
        self.after([durable], None, Deferred::Ticket { to: reply, ticket }, now);
    }

    fn merge(
        &mut self,
        info: Arc<JobInfo>,
        into: JobId,
        options: &SubmitOptions,
        reply: TicketTo,
        now: Now,
    ) {
        let Some(live) = self.jobs.get_mut(&into) else {
            return self.reply(Reply::Ticket(reply, Err(SubmitError::UnknownJob(into))));
        };
        if live.info.owner.uid != info.owner.uid && !options.merge_across_users {
            // A waiter learns the outcome of a job built with someone else's environment:
            // only where the policy says users may share builds.
            let reason = format!(
                "the submit hook would merge this job into job {into} of another user, and the server's policy does not allow merges across users"
            );
            tracing::info!(owner = %info.owner, command = %info.summary, %reason, "rejected");
            self.refused(&info.owner, &reason);
            return self.reply(Reply::Ticket(reply, Err(SubmitError::Rejected { reason })));
        }
        // A wait costs a record like a job does, so it counts as one of the waiter's jobs.
        if let Err(reason) = self.within_limits(info.owner.uid, None) {
            tracing::info!(owner = %info.owner, command = %info.summary, %reason, "over quota");
            self.refused(&info.owner, &reason);
            return self.reply(Reply::Ticket(reply, Err(SubmitError::OverQuota { reason })));
        }
        let Some(live) = self.jobs.get_mut(&into) else {
            return self.reply(Reply::Ticket(reply, Err(SubmitError::UnknownJob(into))));
        };
        tracing::info!(job = %into, owner = %info.owner, command = %info.summary, "merged into an equal job");
        let mut waiters = std::mem::take(&mut live.waiters).into_vec();
        waiters.push(info.owner.clone());
        live.waiters = waiters.into_boxed_slice();
        self.usage.entry(info.owner.uid).or_default().live_jobs += 1;
        let added = self.persist(Record::AddWaiter {
            job: into,
            waiter: info.owner.clone(),
            key: options.key,
            at: now.wall,
        });
        if let Some(key) = options.key {
            self.keys.insert((info.owner.uid, key), (into, true));
        }
        let target = &self.jobs[&into];
        let full = target.info.owner.uid == info.owner.uid;
        let mut ticket = self.ticket(into, full);
        ticket.merged = true;
        self.event(EngineEvent::Merged {
            into,
            owner: info.owner.clone(),
        });
        // The waiter is acknowledged once it is on disk too: it survives a restart.
        let (durable, failed) = self.durability(into);
        self.after(
            durable.into_iter().chain([added]),
            failed,
            Deferred::Ticket { to: reply, ticket },
            now,
        );
    }

    /// Re-attaches a retried submission to the job its key made, if the key is known.
    pub(super) fn reattach_by_key(
        &mut self,
        uid: u32,
        key: SubmitKey,
        reply: oneshot::Sender<Result<Option<JobTicket>, SubmitError>>,
        now: Now,
    ) {
        let Some(&(id, merged)) = self.keys.get(&(uid, key)) else {
            let value = Ok(None);
            return self.reply(Reply::Retry(super::Answer { to: reply, value }));
        };
        tracing::info!(job = %id, uid, "a submission came again (a retry): re-attached");
        self.reattach(id, merged, uid, TicketTo::Retry(reply), now);
    }

    /// Answers a submission that came again (same uid, same key) with the job it made.
    fn reattach(&mut self, id: JobId, merged: bool, uid: u32, reply: TicketTo, now: Now) {
        if let Some(live) = self.jobs.get(&id) {
            let full = live.info.owner.uid == uid;
            let mut ticket = self.ticket(id, full);
            ticket.merged = merged;
            let (durable, failed) = self.durability(id);
            return self.after(durable, failed, Deferred::Ticket { to: reply, ticket }, now);
        }
        self.look_up(
            id,
            Lookup::Retry {
                merged,
                uid,
                to: reply,
            },
            now,
        );
    }

    /// Whether `uid` may have one more job of `size` bytes (`None`: one more wait for
    /// someone's job, which holds neither a command nor a log of its own).
    fn within_limits(&self, uid: u32, size: Option<u64>) -> Result<(), String> {
        let limits = &self.config.limits;
        let usage = self.usage.get(&uid).copied().unwrap_or_default();
        if let Some(max) = limits.queued_jobs
            && usage.live_jobs >= max
        {
            return Err(format!(
                "you have {} jobs queued, running or waited for here, the most the server allows per user; wait for some to finish",
                usage.live_jobs
            ));
        }
        let Some(size) = size else {
            return Ok(());
        };
        if let Some(max) = limits.queued_bytes
            && usage.live_bytes + size > max
        {
            return Err(format!(
                "your queued jobs would hold {} bytes of arguments and environment, more than the {max} the server allows per user; wait for some to finish",
                usage.live_bytes + size
            ));
        }
        if let Some(max) = limits.log_bytes
            && usage.log_bytes >= max
        {
            return Err(format!(
                "the logs of your jobs kept here hold {} bytes, the most the server allows per user; they are freed as finished jobs pass their retention",
                usage.log_bytes
            ));
        }
        Ok(())
    }

    /// A ticket for live job `id`; `full` for its owner or an admin, else its outcome comes
    /// limited.
    pub(super) fn ticket(&mut self, id: JobId, full: bool) -> JobTicket {
        let ahead = self
            .scheduler
            .view()
            .all()
            .position(|j| j.id == id)
            .unwrap_or(0);
        let stopping = self.stopping.is_some();
        let state = match self.jobs.get_mut(&id) {
            // A queued job does not start before the restart: a closed channel says so.
            Some(live) if stopping && live.job.is_some() && !self.running.contains_key(&id) => {
                watch::channel(JobState::Queued).1
            }
            Some(live) => {
                let (state, made) = live.subscribe();
                if made {
                    self.handed_out.push_back(id);
                }
                state
            }
            // (Not live: a closed channel, as for a job the engine gave up.)
            None => watch::channel(JobState::Queued).1,
        };
        JobTicket {
            id,
            ahead,
            merged: false,
            state,
            limited: !full,
        }
    }

    /// Forgets the state channels of a few jobs whose tickets were handed out and dropped
    /// since (a client that did not wait): a queued job costs no channel until somebody
    /// watches it. A few per submission, so that the cost is spread and bounded.
    fn forget_unwatched(&mut self) {
        for _ in 0..2 {
            let Some(id) = self.handed_out.pop_front() else {
                return;
            };
            let Some(live) = self.jobs.get_mut(&id) else {
                continue;
            };
            match &live.state {
                Some(state) if state.receiver_count() == 0 => live.state = None,
                Some(_) => self.handed_out.push_back(id),
                None => {}
            }
        }
    }

    /// Records a request's digest; refuses one seen before that has not expired.
    pub(super) fn remember_request(
        &mut self,
        digest: [u8; 32],
        until: SystemTime,
        now: Now,
    ) -> Result<(), SubmitError> {
        if self.seen.holds(&digest, now.wall) {
            return Err(SubmitError::Replayed);
        }
        self.seen.insert(&digest, until);
        // Not waited for: whatever the request changes is written after this, in order, so
        // it is never on record without its digest.
        self.persist_unwatched(Record::RememberRequest { digest, until });
        Ok(())
    }

    /// Forgets digests of requests whose credentials have expired.
    pub(super) fn forget_requests(&mut self, now: Now) {
        self.seen.forget_expired(now.wall);
        self.persist_unwatched(Record::ForgetRequests(now.wall));
    }
}
