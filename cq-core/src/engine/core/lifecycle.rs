//! A job's life after admission: start (once it and its start are on record), finish
//! (waiters hear the outcome only once it is committed), cancel or withdraw, workers joining
//! and leaving, and pruning once it is old.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{
    Answer, Core, Deferred, Effect, LaunchSpec, Lookup, Now, Record, Relation, Reply, Running,
    Worker,
};
use crate::engine::EngineEvent;
use crate::engine::handle::{Caller, Cancelled, JobResult, JobState, ShutdownMode, SubmitError};
use crate::executor::Executor;
use crate::job::{JobId, JobPhase, JobSummary, Work, epoch_ms};
use crate::outcome::{Outcome, SpawnFailure};
use crate::scheduler::{Scheduler, WorkerInfo};
use crate::store::{PrunedJob, StoreError};

impl<S: Scheduler> Core<S> {
    pub(super) fn begin_shutdown(&mut self, mode: ShutdownMode, done: Option<oneshot::Sender<()>>) {
        let first = self.stopping.is_none();
        let waiters = self.stopping.get_or_insert_with(Vec::new);
        waiters.extend(done);
        if first {
            // Queued jobs do not start before the restart: their waiters hear it now (their
            // channel closes) and come back later, instead of waiting for the running job.
            // (A job whose start is being recorded runs: its waiters hear its end.)
            let running = &self.running;
            for (_, live) in self
                .jobs
                .iter_mut()
                .filter(|(id, live)| live.job.is_some() && !running.contains_key(id))
            {
                live.state = None;
            }
        }
        if mode == ShutdownMode::CancelRunning {
            let ids: Vec<JobId> = self.running.keys().copied().collect();
            for id in ids {
                tracing::info!(job = %id, "cancelling the running job for shutdown");
                self.cancel_running(id);
            }
        }
    }

    /// Asks running job `id` to stop: at once if it was launched, else instead of launching
    /// it once its start is on record.
    fn cancel_running(&mut self, id: JobId) {
        if let Some(running) = self.running.get_mut(&id) {
            running.cancelled = true;
            if running.launched {
                self.emit(Effect::Cancel(id));
            }
        }
    }

    /// Starts a job on every free worker that has one to run.
    pub(in crate::engine) fn start_next(&mut self, now: Now) {
        if self.stopping.is_some() || self.paused {
            return;
        }
        for worker in 0..self.workers.len() {
            if self.workers[worker].attached && self.running.values().all(|r| r.worker != worker) {
                self.start_on(worker, now);
            }
        }
    }

    /// A worker joins, or comes back under its name, or changes its tags and executor
    /// (which the driver keeps).
    pub(super) fn attach_worker(
        &mut self,
        info: WorkerInfo,
        executor: Arc<dyn Executor>,
    ) -> Result<(), SubmitError> {
        let runs_commands = true;
        if self
            .workers
            .iter()
            .any(|w| w.local && w.info.name == info.name)
        {
            return Err(SubmitError::Rejected {
                reason: format!(
                    "{} is the name of one of the engine's own workers",
                    info.name
                ),
            });
        }
        match self
            .workers
            .iter_mut()
            .skip(1)
            .find(|w| w.info.name == info.name)
        {
            // Joined again (perhaps with other tags): the job it runs goes on.
            Some(worker) => {
                worker.info = info.clone();
                worker.runs_commands = runs_commands;
                worker.attached = true;
            }
            None => self.workers.push(Worker {
                info: info.clone(),
                runs_commands,
                attached: true,
                local: false,
            }),
        }
        self.emit(Effect::Equip {
            worker: info.name.clone(),
            executor,
        });
        // A job it ran when the server stopped: found again where it runs.
        if let Some((id, job, reference)) = self.awaiting.remove(&info.name) {
            self.launch(id, job, Some(reference));
        }
        Ok(())
    }

    /// The worker a job found running elsewhere at start waits for did not come back.
    pub(super) fn unclaimed(&mut self, id: JobId, now: Now) {
        let Some(name) = self
            .awaiting
            .iter()
            .find(|(_, (job, _, _))| *job == id)
            .map(|(name, _)| name.clone())
        else {
            return;
        };
        self.awaiting.remove(&name);
        // Never queued again, whatever `requeue_running` says: its executor recorded that it
        // runs there (on a host that may only be cut off, or in a Slurm job of a lane this
        // engine no longer has), and it may run on.
        tracing::warn!(job = %id, worker = %name, "the worker the job ran on did not come back in time: recorded as lost (it may still run there)");
        self.finish(id, Outcome::Lost, 0, Vec::new(), now);
    }

    /// A worker leaves: it gets no new job (the one it runs goes on).
    pub(super) fn detach_worker(&mut self, name: &str) -> Result<(), SubmitError> {
        // The engine's own workers stay: they are not ones that joined.
        let Some(index) = self
            .workers
            .iter()
            .position(|w| !w.local && w.info.name == name)
        else {
            return Err(SubmitError::Rejected {
                reason: format!("no worker called {name} joined"),
            });
        };
        self.workers[index].attached = false;
        self.forget_if_idle(index);
        Ok(())
    }

    /// Forgets detached worker `index` once it runs nothing: workers that come and go under
    /// new names must not pile up.
    fn forget_if_idle(&mut self, index: usize) {
        if index == 0
            || self.workers[index].attached
            || self.running.values().any(|r| r.worker == index)
        {
            return;
        }
        let gone = self.workers.remove(index);
        for running in self.running.values_mut() {
            if running.worker > index {
                running.worker -= 1;
            }
        }
        self.emit(Effect::WorkerGone(gone.info.name));
    }

    /// Pauses or resumes the queue, for an admin.
    pub(super) fn set_paused(
        &mut self,
        paused: bool,
        by: &Caller,
    ) -> Result<crate::engine::QueueState, SubmitError> {
        if !by.admin {
            return Err(SubmitError::NotPermitted {
                reason: format!(
                    "only the server's admins may {} the queue ([policy] admins)",
                    if paused { "pause" } else { "resume" }
                ),
            });
        }
        if self.paused != paused {
            self.paused = paused;
            tracing::info!(by = %by.identity, running = self.running.len(), "{}", if paused {
                "queue paused: running jobs finish, nothing new starts"
            } else {
                "queue resumed"
            });
        }
        Ok(self.queue_state())
    }

    /// Moves queued job `id` to the front, for an admin.
    pub(super) fn promote(&mut self, id: JobId, by: &Caller) -> Result<JobSummary, SubmitError> {
        if !by.admin {
            return Err(SubmitError::NotPermitted {
                reason: "only the server's admins may move jobs in the queue ([policy] admins)"
                    .to_owned(),
            });
        }
        let Some(live) = self.jobs.get(&id) else {
            // Ids are handed out in order: one below the next was a job here once.
            return Err(if id.0 < self.next_id {
                SubmitError::NotQueued(id)
            } else {
                SubmitError::UnknownJob(id)
            });
        };
        if !self.scheduler.promote(id) {
            return Err(SubmitError::NotQueued(id));
        }
        tracing::info!(job = %id, by = %by.identity, "moved to the front of the queue");
        Ok(live.summary())
    }

    pub(super) fn queue_state(&self) -> crate::engine::QueueState {
        crate::engine::QueueState {
            paused: self.paused,
            running: self.running.len(),
            queued: self.scheduler.view().queued_len(),
            waiters: self.jobs.values().map(|live| live.waiters.len()).sum(),
        }
    }

    /// A launched job ended.
    pub(super) fn ended(
        &mut self,
        id: JobId,
        outcome: Outcome,
        log_bytes: u64,
        given_back: bool,
        results: Vec<(String, String)>,
        now: Now,
    ) {
        if given_back && self.running.get(&id).is_some_and(|r| !r.cancelled) {
            // (A job its owner cancelled is not queued again, whatever its executor says.)
            return self.queue_again(id, now);
        }
        self.finish(id, outcome, log_bytes, results, now);
    }

    /// Queues job `id` again, in its old place: its executor gave it back without starting
    /// it (a worker that went away before it took the job).
    fn queue_again(&mut self, id: JobId, now: Now) {
        let Some(running) = self.running.remove(&id) else {
            return;
        };
        self.emit(Effect::Released(id));
        self.forget_if_idle(running.worker);
        let command = self
            .jobs
            .get(&id)
            .and_then(|live| live.info.command.clone());
        let (Some(command), true) = (command, self.scheduler.requeue(id)) else {
            tracing::error!(job = %id, "a job given back cannot be queued again");
            return self.finish(id, Outcome::Lost, 0, Vec::new(), now);
        };
        if let Some(live) = self.jobs.get_mut(&id) {
            live.job = Some(Work::Command(command));
            live.started_ms = None;
            if self.stopping.is_some() {
                // It does not run again before the restart: its waiters hear it now.
                live.state = None;
            } else {
                live.publish(JobState::Queued);
            }
        }
        self.persist_unwatched(Record::Requeue(id));
        self.emit(Effect::RemoveLog(id));
        tracing::info!(job = %id, "the job's worker went away before it took the job: queued again");
    }

    fn start_on(&mut self, worker: usize, now: Now) {
        let Some(id) = self.scheduler.next_for(&self.workers[worker].info) else {
            return;
        };
        let Some(live) = self.jobs.get_mut(&id) else {
            tracing::error!(job = %id, "scheduler chose a job the engine does not hold");
            self.scheduler.finished(id, &Outcome::Lost);
            return;
        };
        if live.job.is_none() {
            // Cannot happen: a job is taken only when it starts, once. End it rather than
            // leave the scheduler believing it runs.
            tracing::error!(job = %id, "the job to start was already started");
            self.finish(id, Outcome::Lost, 0, Vec::new(), now);
            return;
        }
        live.started_ms = Some(super::started_ms(now.wall));
        self.running.insert(
            id,
            Running {
                worker,
                started: now.mono,
                launched: false,
                cancelled: false,
                shown: crate::job::RunnerShown::default(),
            },
        );
        // The job runs only once it and its start are on disk (and only then is it
        // announced): a server killed before would otherwise find it queued after its
        // restart and run it again.
        let recorded = self.persist(Record::Start {
            job: id,
            at: now.wall,
        });
        let check = self.jobs.get(&id).and_then(|live| {
            let command = live.info.command.clone()?;
            Some(Effect::CheckStart {
                id,
                owner: live.info.owner.clone(),
                command,
            })
        });
        if let Some(check) = check {
            self.emit(check);
        }
        let (durable, failed) = self.durability(id);
        self.after(
            durable.into_iter().chain([recorded]),
            failed,
            Deferred::Start(id),
            now,
        );
    }

    /// Job `id` and its start are on record (or could not be): it is announced and
    /// launched, unless it was cancelled meanwhile.
    pub(super) fn start_recorded(&mut self, id: JobId, failed: Option<StoreError>, now: Now) {
        let Some(running) = self.running.get(&id) else {
            return;
        };
        if running.cancelled {
            return self.finish(id, Outcome::Cancelled, 0, Vec::new(), now);
        }
        if let Some(e) = failed {
            let message = match self.jobs.get(&id).map(|live| &live.durable) {
                Some(super::Durability::Failed(_)) => {
                    format!("the job could not be recorded: {e}")
                }
                _ => format!("the job's start could not be recorded: {e}"),
            };
            return self.finish(
                id,
                spawn_failure(SpawnFailure::Other, message),
                0,
                Vec::new(),
                now,
            );
        }
        let worker = self.workers[running.worker].info.name.clone();
        let Some(job) = self.jobs.get_mut(&id).and_then(|live| live.job.take()) else {
            tracing::error!(job = %id, "the job to start was already started");
            return self.finish(id, Outcome::Lost, 0, Vec::new(), now);
        };
        if let Some(live) = self.jobs.get(&id) {
            tracing::info!(job = %id, owner = %live.info.owner, command = %live.info.summary, worker = %worker, "started");
            live.publish(JobState::Running);
        }
        self.event(EngineEvent::Started {
            job: id,
            worker: worker.clone(),
        });
        self.launch(id, job, None);
    }

    /// Has the driver run job `id` on its worker, or find it again where it already runs
    /// (`resume`, after a restart); a job cancelled meanwhile (while its worker was away)
    /// is stopped at once.
    pub(super) fn launch(&mut self, id: JobId, job: Work, resume: Option<String>) {
        let (Some(running), Some(live)) = (self.running.get_mut(&id), self.jobs.get(&id)) else {
            return;
        };
        running.launched = true;
        let cancelled = running.cancelled;
        let spec = LaunchSpec {
            id,
            worker: self.workers[running.worker].info.name.clone(),
            job,
            owner: live.info.owner.clone(),
            command: live.info.command.clone(),
            resume,
            shown: running.shown.clone(),
        };
        self.emit(Effect::Launch(spec));
        if cancelled {
            self.emit(Effect::Cancel(id));
        }
    }

    /// Records how job `id` ended; its waiters hear of it once that is committed, so that
    /// nobody acts on an outcome a crash could still turn into `lost`.
    pub(super) fn finish(
        &mut self,
        id: JobId,
        outcome: Outcome,
        log_bytes: u64,
        results: Vec<(String, String)>,
        now: Now,
    ) {
        // Only a running job has a run time (a cancelled queued job has none); whole
        // milliseconds, as the store and the wire keep it, so every reader sees the same.
        let runtime = match self.running.remove(&id) {
            Some(running) => {
                self.emit(Effect::Released(id));
                self.forget_if_idle(running.worker);
                Duration::from_millis(
                    u64::try_from(
                        now.mono
                            .saturating_duration_since(running.started)
                            .as_millis(),
                    )
                    .unwrap_or(u64::MAX),
                )
            }
            None => Duration::ZERO,
        };
        self.scheduler.finished(id, &outcome);
        let result = JobResult {
            outcome,
            runtime,
            results,
        };
        // In order with what follows (the next job's start); the driver tries again if it
        // fails.
        let committed = self.persist(Record::Finish {
            job: id,
            result: result.clone(),
            log_bytes,
            at: now.wall,
        });
        // Until it is committed, questions about the job wait for it (the store's queries
        // see only what is committed).
        let commits = &self.commits;
        self.finishing.retain(|_, commit| commits.is_open(*commit));
        self.finishing.insert(id, committed);
        let Some(live) = self.jobs.remove(&id) else {
            return;
        };
        let usage = self.usage.entry(live.info.owner.uid).or_default();
        usage.live_jobs = usage.live_jobs.saturating_sub(1);
        usage.live_bytes = usage.live_bytes.saturating_sub(live.size);
        usage.log_bytes += log_bytes;
        for waiter in &live.waiters {
            let usage = self.usage.entry(waiter.uid).or_default();
            usage.live_jobs = usage.live_jobs.saturating_sub(1);
        }
        tracing::info!(
            job = %id,
            owner = %live.info.owner,
            command = %live.info.summary,
            outcome = %result.outcome,
            runtime_ms = runtime.as_millis() as u64,
            "finished"
        );
        let mut summary = live.summary();
        summary.phase = JobPhase::Finished;
        summary.finished_ms = Some(epoch_ms(now.wall));
        summary.outcome = Some(result.outcome.clone());
        summary.runtime_ms = Some(u64::try_from(runtime.as_millis()).unwrap_or(u64::MAX));
        summary.results = result.results.clone();
        self.after(
            [committed],
            None,
            Deferred::Publish {
                result,
                summary: Box::new(summary),
                state: live.state,
            },
            now,
        );
    }

    pub(super) fn cancel(
        &mut self,
        id: JobId,
        by: &Caller,
        reply: oneshot::Sender<Result<Cancelled, SubmitError>>,
        now: Now,
    ) {
        let Some(live) = self.jobs.get_mut(&id) else {
            // Finished, or never existed: the store says which.
            return self.look_up(id, Lookup::Cancel { to: reply }, now);
        };
        match live.relation(by) {
            Relation::Other => {
                let value = Err(not_permitted(id, &live.info.owner.to_string(), "cancel"));
                self.reply(Reply::Cancelled(Answer { to: reply, value }));
            }
            Relation::Waiter => {
                let uid = by.identity.uid;
                let before = live.waiters.len();
                live.waiters = live
                    .waiters
                    .iter()
                    .filter(|w| w.uid != uid)
                    .cloned()
                    .collect();
                let withdrawn = before - live.waiters.len();
                let summary = Box::new(live.summary().limited());
                let usage = self.usage.entry(uid).or_default();
                usage.live_jobs = usage.live_jobs.saturating_sub(withdrawn);
                self.keys.retain(|(key_uid, _), (job, merged)| {
                    !(*key_uid == uid && *job == id && *merged)
                });
                tracing::info!(job = %id, by = %by.identity, "a waiter withdrew");
                let removed = self.persist(Record::RemoveWaiter { job: id, uid });
                self.after(
                    [removed],
                    None,
                    Deferred::Withdrawn { to: reply, summary },
                    now,
                );
            }
            Relation::Owner => {
                tracing::info!(job = %id, by = %by.identity, "cancel requested");
                let summary = live.summary();
                if self.running.contains_key(&id) {
                    self.cancel_running(id);
                    let value = Ok(Cancelled::Job(summary));
                    return self.reply(Reply::Cancelled(Answer { to: reply, value }));
                }
                self.scheduler.remove(id);
                let mut summary = summary;
                self.finish(id, Outcome::Cancelled, 0, Vec::new(), now);
                summary.phase = JobPhase::Finished;
                summary.outcome = Some(Outcome::Cancelled);
                summary.finished_ms = Some(epoch_ms(now.wall));
                let value = Ok(Cancelled::Job(summary));
                self.reply(Reply::Cancelled(Answer { to: reply, value }));
            }
        }
    }

    /// Has the driver forget finished jobs past their retention, and delete their logs.
    pub(super) fn prune(&mut self, now: Now) {
        let Some(before) = now.wall.checked_sub(self.config.retention) else {
            return;
        };
        self.emit(Effect::Prune { before });
    }

    /// Drops what the engine kept about pruned jobs: their keys and log bytes.
    pub(super) fn forget_pruned(&mut self, jobs: &[PrunedJob]) {
        let ids: std::collections::HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
        self.keys.retain(|_, (job, _)| !ids.contains(job));
        for job in jobs {
            let usage = self.usage.entry(job.owner_uid).or_default();
            usage.log_bytes = usage.log_bytes.saturating_sub(job.log_bytes);
        }
    }
}

pub(super) fn not_permitted(id: JobId, owner: &str, what: &str) -> SubmitError {
    SubmitError::NotPermitted {
        reason: format!(
            "job {id} belongs to {owner}; only its owner and the server's admins may {what} it"
        ),
    }
}

pub(in crate::engine) fn spawn_failure(reason: SpawnFailure, message: String) -> Outcome {
    Outcome::SpawnFailed { reason, message }
}
