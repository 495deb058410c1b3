//! Workers on other hosts (`cq_worker`), as the coordinator sees them: one slot per worker
//! name (held by the identity and address that first used it, until the worker leaves with
//! nothing running), holding the job handed to it; and the executor the engine runs that
//! worker's jobs with (`remote_executor.rs`).
//!
//! A job's life on a remote worker: the engine starts it on the worker's executor, which puts
//! it in the slot; each request for work gets a dispatch of it with a lease of its own; the
//! first `Started` claims the job for that lease (durably, before it is answered), and every
//! later report must name the lease; the worker streams its output by offset, says `Alive`
//! now and then, and `Ended`, which is never refused. A worker away longer than the worker
//! timeout has lost its job; one whose later request for work (or another process's) comes
//! while it ran a job gave it up; a job never started goes back to the queue. After a
//! restart, the engine adopts claimed jobs, and the worker's next report finds its job again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::engine::EngineHandle;
use crate::executor::LogSink;
use crate::job::{CommandJob, GiveBack, JobId, ResultSink};
use crate::outcome::{Outcome, SpawnFailure};
use crate::protocol::{ErrorCode, Event, RunAs, WorkReport};
use crate::scheduler::WorkerInfo;

mod remote_executor;

use remote_executor::{RemoteExecutor, runner_reference};

/// The coordinator's workers, by name.
pub(crate) struct RemoteWorkers {
    slots: Mutex<HashMap<String, Slot>>,
    /// Held while a worker joins or leaves the engine, so that the engine and the slots
    /// agree on who is attached whatever the order requests arrive in.
    membership: tokio::sync::Mutex<()>,
    /// Away longer than this, a worker has lost its job.
    timeout: Duration,
    /// A lost job is queued again rather than recorded lost.
    requeue_lost: bool,
}

struct Slot {
    /// Who holds the name, and from where: nobody else may ask for work or report under
    /// it. The name is free again once its worker has left with nothing running.
    identity: Identity,
    address: Option<IpAddr>,
    /// The tags the engine knows it by, once attached.
    tags: Vec<String>,
    /// Whether the engine offers it jobs.
    attached: bool,
    /// `Work` requests waiting now.
    polling: usize,
    last_seen: Instant,
    job: Option<RemoteJob>,
    /// Wakes the worker's waiting `Work` request when a job is put in the slot.
    dispatched: Arc<Notify>,
}

impl Slot {
    /// A new worker's place, held by `identity` from `address`.
    fn new(identity: &Identity, address: Option<IpAddr>) -> Self {
        Self {
            identity: identity.clone(),
            address,
            tags: Vec::new(),
            attached: false,
            polling: 0,
            last_seen: Instant::now(),
            job: None,
            dispatched: Arc::new(Notify::new()),
        }
    }

    fn held_by(&self, identity: &Identity, address: Option<IpAddr>) -> bool {
        self.identity.uid == identity.uid
            && self.identity.user == identity.user
            && self.address.map(|a| a.to_canonical()) == address.map(|a| a.to_canonical())
    }
}

/// Which request for work a dispatch answered: the worker process, and the request's place
/// among that process's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Asker {
    instance: u64,
    sequence: u64,
}

struct RemoteJob {
    id: JobId,
    command: CommandJob,
    run_as: Option<RunAs>,
    commands: Option<Vec<String>>,
    /// The dispatches handed out (lease, request) until one is started: each request
    /// for work gets one of its own, and only the first to say `Started` runs the job.
    handed: Vec<(u64, Asker)>,
    /// The dispatch (lease, worker process) the job was started by: every report names it.
    claimed: Option<(u64, Asker)>,
    /// Bytes of output received.
    received: u64,
    log: LogSink,
    results: ResultSink,
    cancel: CancellationToken,
    give_back: GiveBack,
    /// Makes the claim durable, so that a restarted coordinator finds the job again.
    runner: crate::job::RunnerRecord,
    done: Option<oneshot::Sender<Outcome>>,
}

impl RemoteJob {
    fn end(&mut self, outcome: Outcome) {
        if let Some(done) = self.done.take() {
            let _ = done.send(outcome);
        }
    }

    fn dispatch(&self, lease: u64) -> Event {
        Event::Dispatch {
            job: self.id,
            command: self.command.clone(),
            run_as: self.run_as.clone(),
            commands: self.commands.clone(),
            lease,
        }
    }
}

/// A random 64-bit value (a lease, a worker process's instance).
pub(crate) fn fresh_lease() -> u64 {
    let mut bytes = [0; 8];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    u64::from_ne_bytes(bytes)
}

/// Why a worker's request is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerRefusal {
    #[error("the worker name {0} is held by another identity or address")]
    NameTaken(String),
    #[error("no worker called {0} has joined")]
    UnknownWorker(String),
    #[error("job {job} does not run on worker {worker} (or another dispatch of it does)")]
    NotItsJob { worker: String, job: JobId },
    #[error("{0}")]
    Engine(String),
    #[error("a report on a job before it was started")]
    NotStarted,
}

impl WorkerRefusal {
    /// The code the worker gets: [`ErrorCode::NOT_ASSIGNED`] when the job is not (or no
    /// longer) the worker's, which makes it stop the job; otherwise a refusal it waits out.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            Self::NameTaken(_) | Self::Engine(_) => ErrorCode::NOT_PERMITTED,
            Self::UnknownWorker(_) | Self::NotItsJob { .. } | Self::NotStarted => {
                ErrorCode::NOT_ASSIGNED
            }
        }
    }
}

/// What a `Work` request gets.
pub(crate) enum Poll {
    /// Run this.
    Dispatch(Box<Event>),
    /// Nothing within the poll time.
    Idle,
}

impl RemoteWorkers {
    pub(crate) fn new(timeout: Duration, requeue_lost: bool) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            membership: tokio::sync::Mutex::new(()),
            timeout,
            requeue_lost,
        }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // A panic while holding the lock leaves consistent data: every change is one step.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A worker asks for work: joins (the first time, or with new tags), learns that a job it
    /// took is lost (it runs nothing now), and waits up to `poll` for a dispatch.
    pub(crate) async fn work(
        self: &Arc<Self>,
        engine: &EngineHandle,
        info: WorkerInfo,
        identity: &Identity,
        address: Option<IpAddr>,
        asker: (u64, u64),
        poll: Duration,
    ) -> Result<Poll, WorkerRefusal> {
        let asker = Asker {
            instance: asker.0,
            sequence: asker.1,
        };
        let name = info.name.clone();
        let (late, notify) = {
            let mut slots = self.slots();
            let slot = slots
                .entry(name.clone())
                .or_insert_with(|| Slot::new(identity, address));
            if !slot.held_by(identity, address) {
                return Err(WorkerRefusal::NameTaken(name));
            }
            let late = match slot
                .job
                .as_mut()
                .and_then(|job| job.claimed.map(|(_, by)| (job, by)))
            {
                // Made before the request the job was handed to: it arrives late, and says
                // nothing about the job.
                Some((_, by)) if by.instance == asker.instance && asker.sequence <= by.sequence => {
                    true
                }
                // A later request, or one of another process: whoever ran the job runs
                // nothing now (it was restarted, or gave the job up).
                Some((job, _)) => {
                    tracing::warn!(job = %job.id, worker = %name, "the worker asks for work again while its job ran: the job is lost (the worker was restarted, or gave it up)");
                    // It runs nowhere now: queued again, if lost jobs are.
                    if self.requeue_lost && !job.cancel.is_cancelled() {
                        job.give_back.give_back();
                    }
                    job.end(Outcome::Lost);
                    slot.job = None;
                    false
                }
                None => false,
            };
            // A late request is no sign of life: only what the worker says now is.
            if !late {
                slot.last_seen = Instant::now();
                slot.polling += 1;
            }
            (late, slot.dispatched.clone())
        };
        if late {
            tokio::time::sleep(poll).await;
            return Ok(Poll::Idle);
        }
        // From here on the slot stays (it is polled), and the guard counts the poll out.
        let mut polling = PollGuard {
            workers: self.clone(),
            engine: engine.clone(),
            name: name.clone(),
            answered: false,
        };
        self.join(engine, info, identity).await?;
        let until = Instant::now() + poll;
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(dispatch) = self.hand_out(&name, asker) {
                polling.answered = true;
                return Ok(Poll::Dispatch(Box::new(dispatch)));
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                polling.answered = true;
                return Ok(Poll::Idle);
            }
        }
    }

    /// A dispatch of the job waiting in `name`'s slot, for request `asker`, if one
    /// waits. A job handed out [`MAX_HANDOUTS`] times and never started fails.
    fn hand_out(&self, name: &str, asker: Asker) -> Option<Event> {
        let mut slots = self.slots();
        let slot = slots.get_mut(name)?;
        slot.last_seen = Instant::now();
        // A job cancelled meanwhile is not handed out: its executor takes it back.
        let job = slot
            .job
            .as_mut()
            .filter(|job| job.claimed.is_none() && !job.cancel.is_cancelled())?;
        if job.handed.len() >= MAX_HANDOUTS {
            tracing::warn!(job = %job.id, worker = %name, "the worker took the job {MAX_HANDOUTS} times and never started it");
            job.end(Outcome::SpawnFailed {
                reason: SpawnFailure::Other,
                message: format!(
                    "worker {name} was given the job {MAX_HANDOUTS} times and never started it"
                ),
            });
            slot.job = None;
            return None;
        }
        let lease = fresh_lease();
        job.handed.push((lease, asker));
        Some(job.dispatch(lease))
    }

    /// The workers that have joined, by name; their addresses only for an admin.
    pub(crate) fn list(&self, admin: bool) -> Vec<crate::protocol::WorkerSummary> {
        let slots = self.slots();
        let mut listed: Vec<_> = slots
            .iter()
            .filter(|(_, slot)| slot.attached || slot.job.is_some())
            .map(|(name, slot)| crate::protocol::WorkerSummary {
                name: name.clone(),
                tags: slot.tags.clone(),
                address: admin
                    .then(|| slot.address.map(|a| a.to_canonical().to_string()))
                    .flatten(),
                job: slot.job.as_ref().map(|job| job.id),
                seen_ms_ago: u64::try_from(slot.last_seen.elapsed().as_millis())
                    .unwrap_or(u64::MAX),
            })
            .collect();
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        listed
    }

    /// Makes the engine offer jobs to the polled worker `info.name`, with these tags.
    async fn join(
        self: &Arc<Self>,
        engine: &EngineHandle,
        info: WorkerInfo,
        identity: &Identity,
    ) -> Result<(), WorkerRefusal> {
        let _membership = self.membership.lock().await;
        let current = {
            let slots = self.slots();
            slots
                .get(&info.name)
                .is_some_and(|slot| slot.attached && slot.tags == info.tags)
        };
        if current {
            return Ok(());
        }
        let executor = Arc::new(RemoteExecutor {
            workers: self.clone(),
            engine: engine.clone(),
            name: info.name.clone(),
        });
        engine
            .attach_worker(info.clone(), executor)
            .await
            .map_err(|e| WorkerRefusal::Engine(e.to_string()))?;
        if let Some(slot) = self.slots().get_mut(&info.name) {
            slot.attached = true;
            slot.tags.clone_from(&info.tags);
        }
        tracing::info!(worker = %info.name, tags = ?info.tags, who = %identity, "a worker joined");
        Ok(())
    }

    /// A worker reports on its job; answers whether the job is to be stopped.
    pub(crate) fn report(
        &self,
        worker: &str,
        identity: &Identity,
        address: Option<IpAddr>,
        id: JobId,
        lease: u64,
        report: &WorkReport,
    ) -> Result<(bool, Option<crate::store::Pending<()>>), WorkerRefusal> {
        let mut slots = self.slots();
        let slot = slots
            .get_mut(worker)
            .ok_or_else(|| WorkerRefusal::UnknownWorker(worker.to_owned()))?;
        let mut durable = None;
        if !slot.held_by(identity, address) {
            return Err(WorkerRefusal::NameTaken(worker.to_owned()));
        }
        let not_its_job = || WorkerRefusal::NotItsJob {
            worker: worker.to_owned(),
            job: id,
        };
        let job = slot
            .job
            .as_mut()
            .filter(|j| j.id == id)
            .ok_or_else(not_its_job)?;
        match (job.claimed, report) {
            (Some((held, _)), _) if held != lease => return Err(not_its_job()),
            (None, WorkReport::Started) => {
                let by = job
                    .handed
                    .iter()
                    .find(|(handed, _)| *handed == lease)
                    .ok_or_else(not_its_job)?;
                job.claimed = Some(*by);
                durable = Some(job.runner.record(runner_reference(*by)));
            }
            (None, _) => return Err(WorkerRefusal::NotStarted),
            // Started again (its answer was lost, or the record failed): recorded again, so
            // that the answer always means the claim is durable.
            (Some(claim), WorkReport::Started) => {
                durable = Some(job.runner.record(runner_reference(claim)));
            }
            _ => {}
        }
        let cancel = job.cancel.is_cancelled();
        match report {
            WorkReport::Started | WorkReport::Alive => {}
            WorkReport::Runner { shown } => job.runner.show(shown_text(shown)),
            WorkReport::Output { offset, data } => {
                let offset = *offset;
                if offset > job.received {
                    // Output the coordinator had not kept when it stopped (found again
                    // after a restart): say so where it is missing, and go on.
                    let marker = format!(
                        "\n[cq: {} bytes of output were lost while the coordinator restarted]\n",
                        offset - job.received
                    );
                    job.log.append(marker.as_bytes());
                    job.received = offset;
                }
                let end = offset.saturating_add(data.len() as u64);
                let skip = usize::try_from(job.received - offset).unwrap_or(usize::MAX);
                if let Some(new) = data.get(skip..) {
                    job.log.append(new);
                    job.received = job.received.max(end);
                }
            }
            WorkReport::Ended { outcome, results } => {
                let outcome = sanitized_outcome(outcome.clone());
                for (key, value) in results {
                    if let Err(e) = job.results.set(key, value) {
                        tracing::info!(job = %id, %worker, error = %e, "a result was refused");
                    }
                }
                job.end(outcome);
                slot.job = None;
            }
        }
        slot.last_seen = Instant::now();
        Ok((cancel, durable))
    }

    /// A worker reports on job `id` while the coordinator has no place for it (it restarted
    /// since): it joins (with no tags until it asks for work), so that the job, if it was
    /// found running elsewhere at start, is handed back to it. Whether the job is its now.
    pub(crate) async fn rejoin(
        self: &Arc<Self>,
        engine: &EngineHandle,
        name: &str,
        identity: &Identity,
        address: Option<IpAddr>,
        id: JobId,
    ) -> bool {
        // Only a worker a job waits for: any other gets no place (and no job) this way.
        if !engine.awaits_worker(name).await.unwrap_or(false) {
            return false;
        }
        let notify = {
            let mut slots = self.slots();
            let slot = slots
                .entry(name.to_owned())
                .or_insert_with(|| Slot::new(identity, address));
            if !slot.held_by(identity, address) {
                return false;
            }
            slot.dispatched.clone()
        };
        let info = WorkerInfo::new(name, Vec::<String>::new());
        if self.join(engine, info, identity).await.is_err() {
            self.detach_if_gone(engine, name, Instant::now()).await;
            return false;
        }
        // The engine hands the job to the worker's executor in a task of its own.
        let deadline = Instant::now() + REJOIN_WAIT;
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let found = self
                .slots()
                .get(name)
                .is_some_and(|slot| slot.job.as_ref().is_some_and(|job| job.id == id));
            if found {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        // Nothing of it here: it gets no job until it asks for work.
        self.detach_if_gone(engine, name, Instant::now()).await;
        false
    }

    /// Takes worker `name` out of the engine's reach if it is idle and has not asked for work
    /// since `since`; its name is free again.
    async fn detach_if_gone(&self, engine: &EngineHandle, name: &str, since: Instant) {
        let _membership = self.membership.lock().await;
        // A job handed to it that it never started goes back to the queue.
        let gone = |slot: &Slot| {
            slot.polling == 0
                && slot.last_seen <= since
                && slot.job.as_ref().is_none_or(|job| job.claimed.is_none())
        };
        let attached = match self.slots().get(name) {
            Some(slot) if gone(slot) => slot.attached,
            _ => return,
        };
        if attached {
            tracing::info!(worker = %name, "a worker left");
            let _ = engine.detach_worker(name).await;
        }
        let mut slots = self.slots();
        match slots.get_mut(name) {
            // Still gone: it did not come back meanwhile.
            Some(slot) if gone(slot) => {
                if let Some(mut job) = slot.job.take() {
                    tracing::info!(job = %job.id, worker = %name, "the worker left before it took the job: it goes back to the queue");
                    job.give_back.give_back();
                    job.end(Outcome::Lost);
                }
                slots.remove(name);
            }
            // It came back: it joins again.
            Some(slot) => slot.attached = false,
            None => {}
        }
    }
}

/// Counts a waiting `Work` request; when the last one ends, checks a moment later whether
/// the worker came back (it asks again at once after `Idle` or a dispatch), and takes it out
/// of the engine's reach if not.
struct PollGuard {
    workers: Arc<RemoteWorkers>,
    engine: EngineHandle,
    name: String,
    /// The request was answered; otherwise the worker hung up while it waited (it stopped):
    /// it leaves at once, so that no job is given to it meanwhile.
    answered: bool,
}

/// How long a report waits for the job it is about, when the coordinator restarted since.
const REJOIN_WAIT: Duration = Duration::from_secs(2);

/// How long a worker may take between two `Work` requests before it counts as gone.
const REPOLL_GRACE: Duration = Duration::from_secs(3);

/// How often one job may be handed out without being started (a worker that cannot take
/// it, e.g. one that cannot read the dispatch) before it fails.
const MAX_HANDOUTS: usize = 16;

impl Drop for PollGuard {
    fn drop(&mut self) {
        let idle = {
            let mut slots = self.workers.slots();
            let Some(slot) = slots.get_mut(&self.name) else {
                return;
            };
            slot.polling = slot.polling.saturating_sub(1);
            slot.polling == 0
        };
        if idle && let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let workers = self.workers.clone();
            let engine = self.engine.clone();
            let name = std::mem::take(&mut self.name);
            let since = Instant::now();
            let grace = if self.answered {
                REPOLL_GRACE
            } else {
                Duration::ZERO
            };
            runtime.spawn(async move {
                tokio::time::sleep(grace).await;
                workers.detach_if_gone(&engine, &name, since).await;
            });
        }
    }
}

/// Longest message a worker may give with an outcome.
const MAX_OUTCOME_MESSAGE: usize = 4096;

/// The outcome a worker reports, made one a job can have: an exit code is 0 to 255 and a
/// signal one the kernel has (else a listing and the requester's exit status would
/// disagree), a message is bounded. The end of a worker's own job is never refused: a job
/// whose end cannot be taken would run forever.
/// What a worker says of where its job runs, as users may be shown it: printable, short.
fn shown_text(shown: &str) -> String {
    shown
        .chars()
        .filter(|c| !crate::printable::is_unsafe(*c))
        .scan(0, |bytes, c| {
            *bytes += c.len_utf8();
            (*bytes <= crate::protocol::MAX_RUNNER_SHOWN).then_some(c)
        })
        .collect()
}

fn sanitized_outcome(outcome: Outcome) -> Outcome {
    let cut = |message: String| match message.char_indices().nth(MAX_OUTCOME_MESSAGE) {
        Some((at, _)) => format!("{}...", &message[..at]),
        None => message,
    };
    match outcome {
        Outcome::Exited { code } if !(0..=255).contains(&code) => Outcome::Failed {
            message: format!("the worker reported exit code {code}, which no process has"),
        },
        Outcome::Signaled { signal, .. } if !(1..=64).contains(&signal) => Outcome::Failed {
            message: format!("the worker reported signal {signal}, which does not exist"),
        },
        Outcome::SpawnFailed { reason, message } => Outcome::SpawnFailed {
            reason,
            message: cut(message),
        },
        Outcome::Failed { message } => Outcome::Failed {
            message: cut(message),
        },
        other => other,
    }
}
