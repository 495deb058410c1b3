//! A job's life after admission: start (after the start check), finish (waiters hear the
//! outcome only once it is committed), cancel or withdraw, and pruning once it is old.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Actor, Internal, Relation, Running};
use crate::engine::handle::{Caller, Cancelled, JobResult, JobState, ShutdownMode, SubmitError};
use crate::executor::{Executor, LogSink};
use crate::job::{Clearance, GiveBack, JobContext, JobId, JobPhase, JobSummary, Work, epoch_ms};
use crate::outcome::{Outcome, SpawnFailure};
use crate::scheduler::{Scheduler, WorkerInfo};
use crate::store::{Pending, PrunedJob};

/// How [`Actor::launch`] sets a running job going.
pub(super) enum Launch {
    /// For the first time, once its start record (this) is committed.
    Start(Pending<()>),
    /// Found again where it runs, by the reference its executor recorded.
    Resume(String),
}

impl<S: Scheduler> Actor<S> {
    pub(super) fn begin_shutdown(&mut self, mode: ShutdownMode, done: Option<oneshot::Sender<()>>) {
        let first = self.stopping.is_none();
        let waiters = self.stopping.get_or_insert_with(Vec::new);
        waiters.extend(done);
        if first {
            // Queued jobs do not start before the restart: their waiters hear it now (their
            // channel closes) and come back later, instead of waiting for the running job.
            for live in self.jobs.values_mut().filter(|live| live.job.is_some()) {
                live.state = tokio::sync::watch::channel(JobState::Queued).0;
            }
        }
        if mode == ShutdownMode::CancelRunning {
            for running in self.running.values() {
                tracing::info!(job = %running.id, "cancelling the running job for shutdown");
                running.cancel.cancel();
            }
        }
    }

    /// Starts a job on every free worker that has one to run.
    pub(super) fn start_next(&mut self) {
        if self.stopping.is_some() || self.paused {
            return;
        }
        for worker in 0..self.workers.len() {
            if self.workers[worker].attached && self.running.values().all(|r| r.worker != worker) {
                self.start_on(worker);
            }
        }
    }

    /// A worker joins, or comes back under its name, or changes its tags and executor.
    pub(super) fn attach_worker(
        &mut self,
        info: WorkerInfo,
        executor: Arc<dyn Executor>,
    ) -> Result<(), SubmitError> {
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
                worker.executor = Some(executor);
                worker.attached = true;
            }
            None => self.workers.push(super::Worker {
                info: info.clone(),
                executor: Some(executor),
                attached: true,
                local: false,
            }),
        }
        // A job it ran when the server stopped: found again where it runs.
        if let Some((id, job, reference)) = self.awaiting.remove(&info.name) {
            self.launch(id, job, Launch::Resume(reference));
        }
        Ok(())
    }

    /// The worker a job found running elsewhere at start waits for did not come back.
    pub(super) fn unclaimed(&mut self, id: JobId) {
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
        self.finish(id, Outcome::Lost, 0, Vec::new());
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
        self.workers.remove(index);
        for running in self.running.values_mut() {
            if running.worker > index {
                running.worker -= 1;
            }
        }
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

    /// A running job's task ended.
    pub(super) fn ended(
        &mut self,
        id: JobId,
        ended: Result<(Outcome, u64), tokio::task::JoinError>,
    ) {
        let (outcome, log_bytes) = ended.unwrap_or_else(|e| {
            tracing::error!(job = %id, error = %e, "the job's task failed");
            let message = if e.is_panic() {
                let panic = e.into_panic();
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".to_owned());
                format!("the job panicked: {what}")
            } else {
                "the job's task was stopped".to_owned()
            };
            (Outcome::Failed { message }, 0)
        });
        if self
            .running
            .get(&id)
            .is_some_and(|r| r.give_back.given_back() && !r.cancel.is_cancelled())
        {
            // (A job its owner cancelled is not queued again, whatever its executor says.)
            return self.queue_again(id);
        }
        let results = self
            .running
            .get(&id)
            .map(|r| r.results.get())
            .unwrap_or_default();
        self.finish(id, outcome, log_bytes, results);
    }

    /// Queues job `id` again, in its old place: its executor gave it back without starting
    /// it (a worker that went away before it took the job).
    fn queue_again(&mut self, id: JobId) {
        let Some(running) = self.running.remove(&id) else {
            return;
        };
        self.forget_if_idle(running.worker);
        let command = self
            .jobs
            .get(&id)
            .and_then(|live| live.info.command.clone());
        let (Some(command), true) = (command, self.scheduler.requeue(id)) else {
            tracing::error!(job = %id, "a job given back cannot be queued again");
            return self.finish(id, Outcome::Lost, 0, Vec::new());
        };
        if let Some(live) = self.jobs.get_mut(&id) {
            live.job = Some(Work::Command(command));
            live.started_at = None;
            live.state.send_replace(JobState::Queued);
        }
        self.store
            .record_requeue(id)
            .log_failure("record a job queued again");
        if let Some(dir) = &self.config.log_dir {
            let _ = std::fs::remove_file(dir.join(format!("{id}.log")));
        }
        tracing::info!(job = %id, "the job's worker went away before it took the job: queued again");
    }

    fn start_on(&mut self, worker: usize) {
        let Some(id) = self.scheduler.next_for(&self.workers[worker].info) else {
            return;
        };
        let Some(live) = self.jobs.get_mut(&id) else {
            tracing::error!(job = %id, "scheduler chose a job the engine does not hold");
            self.scheduler.finished(id, &Outcome::Lost);
            return;
        };
        let Some(job) = live.job.take() else {
            // Cannot happen: a job is taken only here, once. End it rather than leave the
            // scheduler believing it runs.
            tracing::error!(job = %id, "the job to start was already started");
            self.finish(id, Outcome::Lost, 0, Vec::new());
            return;
        };
        live.started_at = Some(SystemTime::now());
        // The job runs only once this is on disk (and only then is it announced): a server
        // killed before would otherwise find it queued after its restart and run it again.
        let start_recorded = self.store.record_start(id, SystemTime::now());
        self.running.insert(
            id,
            Running {
                id,
                worker,
                live: LogSink::discard().live(),
                started: Instant::now(),
                cancel: CancellationToken::new(),
                results: crate::job::ResultSink::default(),
                give_back: GiveBack::default(),
                runner: None,
            },
        );
        self.launch(id, job, Launch::Start(start_recorded));
    }

    /// Job `id`'s start is on record: it is announced (it runs meanwhile).
    pub(super) fn start_recorded(&mut self, id: JobId) {
        let (Some(running), Some(live)) = (self.running.get(&id), self.jobs.get(&id)) else {
            return;
        };
        let worker = self.workers[running.worker].info.name.clone();
        tracing::info!(job = %id, owner = %live.info.owner, command = %live.info.summary, worker = %worker, "started");
        live.state.send_replace(JobState::Running);
        let _ = self
            .events
            .send(crate::engine::EngineEvent::Started { job: id, worker });
    }

    /// Runs running job `id` on its worker once its start is committed, or finds it again
    /// where it already runs (after a restart); the task reports its end.
    pub(super) fn launch(&mut self, id: JobId, job: Work, how: Launch) {
        let (start_recorded, resume, announce) = match how {
            Launch::Start(recorded) => (recorded, None, Some(self.internal.clone())),
            Launch::Resume(reference) => (Pending::ready(Ok(())), Some(reference), None),
        };
        let (Some(running), Some(live)) = (self.running.get(&id), self.jobs.get(&id)) else {
            return;
        };
        let worker = running.worker;
        let durable = live.durable.clone();
        let log_path = self
            .config
            .log_dir
            .as_ref()
            .map(|dir| dir.join(format!("{id}.log")));
        let log = match (&log_path, &resume) {
            (Some(path), None) => LogSink::create(path, self.config.log_limit),
            // Its output so far is there, and the rest goes on after it.
            (Some(path), Some(_)) => LogSink::reopen(path, self.config.log_limit),
            (None, _) => LogSink::discard(),
        }
        .feeding(running.live.clone());
        let ctx_cancel = running.cancel.clone();
        let ctx_results = running.results.clone();
        let ctx_give_back = running.give_back.clone();
        let owner = live.info.owner.clone();
        // A job found again was cleared when it started.
        let check = if resume.is_none() {
            self.start_check.clone()
        } else {
            None
        };
        let command = live.info.command.clone();
        let executor = self.workers[worker].executor.clone();
        let runner = crate::job::RunnerRecord::new(
            self.store.clone(),
            id,
            self.workers[worker].info.name.clone(),
        );
        if let Some(running) = self.running.get_mut(&id) {
            running.runner = Some(runner.clone());
        }
        let task = tokio::spawn(async move {
            // A job runs only once it and its start are on disk (the job usually long since:
            // it waited its turn). A cancel meanwhile ends it before it runs.
            let recorded = async {
                durable
                    .await
                    .map_err(|e| format!("the job could not be recorded: {e}"))?;
                start_recorded
                    .await
                    .map_err(|e| format!("the job's start could not be recorded: {e}"))
            };
            let recorded = tokio::select! {
                biased;
                () = ctx_cancel.cancelled() => return (Outcome::Cancelled, 0),
                recorded = recorded => recorded,
            };
            if let Err(message) = recorded {
                return (spawn_failure(SpawnFailure::Other, message), 0);
            }
            if let Some(internal) = announce {
                let _ = internal.send(super::Internal::Started(id));
            }
            let clearance = match (check, command) {
                (Some(check), Some(command)) => {
                    let who = owner.clone();
                    match tokio::task::spawn_blocking(move || check.clear(&who, &command)).await {
                        Ok(Ok(clearance)) => clearance,
                        Ok(Err(refusal)) => {
                            tracing::info!(job = %id, %owner, reason = %refusal, "refused at start");
                            return (
                                spawn_failure(SpawnFailure::NotPermitted, refusal.to_string()),
                                0,
                            );
                        }
                        Err(e) => {
                            return (
                                spawn_failure(
                                    SpawnFailure::Other,
                                    format!("the start check failed: {e}"),
                                ),
                                0,
                            );
                        }
                    }
                }
                _ => Clearance::default(),
            };
            let ctx = JobContext {
                id,
                owner,
                clearance,
                log,
                cancel: ctx_cancel,
                results: ctx_results,
                give_back: ctx_give_back,
                runner,
                resume,
            };
            // Cancelled while the start check ran: it never runs.
            if ctx.cancel.is_cancelled() {
                return (Outcome::Cancelled, 0);
            }
            let outcome = match (job, executor) {
                (Work::Command(command), Some(executor)) => executor.run(&command, ctx).await,
                (Work::Command(_), None) => spawn_failure(
                    SpawnFailure::Other,
                    "this engine runs no commands (it has no executor)".to_owned(),
                ),
                (Work::Local(job), _) => job.run(ctx).await,
            };
            let log_bytes = match log_path {
                Some(path) => std::fs::metadata(path).map_or(0, |m| m.len()),
                None => 0,
            };
            (outcome, log_bytes)
        });
        let internal = self.internal.clone();
        tokio::spawn(async move {
            let _ = internal.send(super::Internal::Ended {
                id,
                ended: task.await,
            });
        });
    }

    /// Records how job `id` ended; its waiters hear of it once that is committed, so that
    /// nobody acts on an outcome a crash could still turn into `lost`.
    pub(super) fn finish(
        &mut self,
        id: JobId,
        outcome: Outcome,
        log_bytes: u64,
        results: Vec<(String, String)>,
    ) {
        // Only the running job has a run time (a cancelled queued job has none); whole
        // milliseconds, as the store and the wire keep it, so every reader sees the same.
        let runtime = match self.running.remove(&id) {
            Some(running) => {
                self.forget_if_idle(running.worker);
                Duration::from_millis(
                    u64::try_from(running.started.elapsed().as_millis()).unwrap_or(u64::MAX),
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
        // The first attempt goes to the store now, in order with what follows (the next
        // job's start); further attempts only if it fails.
        let at = SystemTime::now();
        let first = self.store.record_finish(id, result.clone(), log_bytes, at);
        let committed =
            commit_outcome(self.store.clone(), first, id, result.clone(), log_bytes, at)
                .boxed()
                .shared();
        // Until it is committed, questions about the job wait for it (the store's queries
        // see only what is committed).
        self.finishing.retain(|_, done| done.peek().is_none());
        self.finishing.insert(id, committed.clone());
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
        summary.finished_ms = Some(epoch_ms(SystemTime::now()));
        summary.outcome = Some(result.outcome.clone());
        summary.runtime_ms = Some(u64::try_from(runtime.as_millis()).unwrap_or(u64::MAX));
        summary.results = result.results.clone();
        let state = live.state;
        let events = self.events.clone();
        self.publishing.spawn(async move {
            match committed.await {
                Ok(()) => {
                    let _ = events.send(crate::engine::EngineEvent::Finished {
                        job: Box::new(summary),
                        result: result.clone(),
                    });
                    state.send_replace(JobState::Finished(result));
                }
                // The waiters see the engine give up on the job, re-attach, and read what
                // the store has.
                Err(e) => tracing::error!(job = %id, error = %e, "the outcome could not be recorded; its waiters are not told"),
            }
        });
    }

    pub(super) fn cancel(
        &mut self,
        id: JobId,
        by: &Caller,
        reply: oneshot::Sender<Result<Cancelled, SubmitError>>,
    ) {
        let Some(live) = self.jobs.get_mut(&id) else {
            // Finished, or never existed: the store says which.
            let described = self.committed_record(id);
            tokio::spawn(async move {
                let answer = match described.await {
                    Ok(Some(_)) => Err(SubmitError::AlreadyFinished(id)),
                    Ok(None) => Err(SubmitError::UnknownJob(id)),
                    Err(e) => Err(SubmitError::Store(e)),
                };
                let _ = reply.send(answer);
            });
            return;
        };
        match live.relation(by) {
            Relation::Other => {
                let _ = reply.send(Err(not_permitted(
                    id,
                    &live.info.owner.to_string(),
                    "cancel",
                )));
            }
            Relation::Waiter => {
                let uid = by.identity.uid;
                let before = live.waiters.len();
                live.waiters.retain(|w| w.uid != uid);
                let usage = self.usage.entry(uid).or_default();
                usage.live_jobs = usage.live_jobs.saturating_sub(before - live.waiters.len());
                self.keys.retain(|(key_uid, _), (job, merged)| {
                    !(*key_uid == uid && *job == id && *merged)
                });
                let summary = live.summary().limited();
                tracing::info!(job = %id, by = %by.identity, "a waiter withdrew");
                let removed = self.store.remove_waiter(id, uid);
                tokio::spawn(async move {
                    let _ = reply.send(
                        removed
                            .await
                            .map(|()| Cancelled::Withdrawn(summary))
                            .map_err(SubmitError::Store),
                    );
                });
            }
            Relation::Owner => {
                tracing::info!(job = %id, by = %by.identity, "cancel requested");
                if let Some(running) = self.running.get(&id) {
                    running.cancel.cancel();
                    let _ = reply.send(Ok(Cancelled::Job(live.summary())));
                    return;
                }
                self.scheduler.remove(id);
                let mut summary = live.summary();
                self.finish(id, Outcome::Cancelled, 0, Vec::new());
                summary.phase = JobPhase::Finished;
                summary.outcome = Some(Outcome::Cancelled);
                summary.finished_ms = Some(epoch_ms(SystemTime::now()));
                let _ = reply.send(Ok(Cancelled::Job(summary)));
            }
        }
    }

    /// Forgets finished jobs past their retention, and deletes their logs.
    pub(super) fn prune(&self) {
        let Some(before) = SystemTime::now().checked_sub(self.config.retention) else {
            return;
        };
        let pruned = self.store.prune(before);
        let log_dir = self.config.log_dir.clone();
        let internal = self.internal.clone();
        tokio::spawn(async move {
            match pruned.await {
                Ok(jobs) if !jobs.is_empty() => {
                    tracing::info!(
                        jobs = jobs.len(),
                        "pruned finished jobs past their retention"
                    );
                    if let Some(dir) = log_dir {
                        let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
                        let _ = tokio::task::spawn_blocking(move || {
                            for id in ids {
                                let _ = std::fs::remove_file(dir.join(format!("{id}.log")));
                            }
                        })
                        .await;
                    }
                    let _ = internal.send(Internal::Pruned(jobs));
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "cannot prune old jobs"),
            }
        });
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

fn spawn_failure(reason: SpawnFailure, message: String) -> Outcome {
    Outcome::SpawnFailed { reason, message }
}

/// How long the engine tries to record an outcome before it gives up on it (each attempt may
/// wait up to the store's own 5 s for a locked database): short enough that a stopping
/// server still ends within its service manager's patience.
const OUTCOME_PATIENCE: Duration = Duration::from_secs(20);

/// Records job `id`'s outcome, trying again while the store fails (a full disk, the database
/// locked by another process beyond the store's patience): its waiters hear it only once it
/// is on record, and a job whose end was never recorded would be found running, or queued,
/// after a restart.
async fn commit_outcome(
    store: Arc<dyn crate::store::Store>,
    first: crate::store::Pending<()>,
    id: JobId,
    result: JobResult,
    log_bytes: u64,
    at: SystemTime,
) -> Result<(), crate::store::StoreError> {
    let until = tokio::time::Instant::now() + OUTCOME_PATIENCE;
    let mut pause = Duration::from_millis(100);
    let mut attempt = first;
    loop {
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() + pause < until => {
                tracing::warn!(job = %id, error = %e, retry_in_ms = pause.as_millis() as u64, "the outcome could not be recorded yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                attempt = store.record_finish(id, result.clone(), log_bytes, at);
            }
            Err(e) => return Err(e),
        }
    }
}
