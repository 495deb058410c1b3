//! The executor the engine runs a remote worker's jobs with: it hands the job to the
//! worker's slot, then waits for the worker's end (or its silence), and finds a job again
//! after a restart from the claim the store kept.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

use super::{Asker, REPOLL_GRACE, RemoteJob, RemoteWorkers};
use crate::engine::EngineHandle;
use crate::executor::Executor;
use crate::job::{CommandJob, GiveBack, JobContext, JobId};
use crate::outcome::{Outcome, SpawnFailure};
use crate::protocol::{Event, Reply, RequestDigest, RunAs};

/// Largest encoded dispatch (a reply may take half a frame; the rest is for its
/// authentication).
const MAX_DISPATCH: usize = crate::protocol::MAX_FRAME / 2 - 4096;

/// How often a remote job's executor checks that its worker is still around.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// Runs a job on a remote worker: hands it over, then waits for the worker's `Ended`.
pub(super) struct RemoteExecutor {
    pub(super) workers: Arc<RemoteWorkers>,
    pub(super) engine: EngineHandle,
    pub(super) name: String,
}

#[async_trait]
impl Executor for RemoteExecutor {
    async fn run(&self, job: &CommandJob, ctx: JobContext) -> Outcome {
        let (run_as, commands) = match cleared(&ctx.clearance) {
            Ok(cleared) => cleared,
            Err(message) => {
                return Outcome::SpawnFailed {
                    reason: SpawnFailure::Other,
                    message,
                };
            }
        };
        // A dispatch the server could not send would be handed out again and again.
        let probe = Reply {
            request: RequestDigest::NONE,
            event: Event::Dispatch {
                job: ctx.id,
                command: job.clone(),
                run_as: run_as.clone(),
                commands: commands.clone(),
                lease: u64::MAX,
            },
        };
        let size = postcard::experimental::serialized_size(&probe).unwrap_or(usize::MAX);
        if size > MAX_DISPATCH {
            return Outcome::SpawnFailed {
                reason: SpawnFailure::Other,
                message: format!(
                    "the job takes {size} bytes to send to a worker, more than the {MAX_DISPATCH} a dispatch may take"
                ),
            };
        }
        // Found again after a restart: the worker that claimed it runs it.
        let claimed = match ctx.resume.as_deref().map(parse_runner_reference) {
            None => None,
            Some(Some(claim)) => Some(claim),
            Some(None) => return Outcome::Lost,
        };
        let received = if claimed.is_some() { ctx.log.len() } else { 0 };
        let (done, mut ended) = oneshot::channel();
        {
            let mut slots = self.workers.slots();
            let Some(slot) = slots.get_mut(&self.name) else {
                if claimed.is_some() {
                    return Outcome::Lost;
                }
                // The worker left just as the engine chose it: another one may run the job.
                ctx.give_back.give_back();
                return Outcome::Lost;
            };
            if let Some(mut old) = slot.job.take() {
                // The engine gives a worker one job at a time: only a bug gets here.
                tracing::error!(job = %old.id, worker = %self.name, "a worker was given a second job");
                old.end(Outcome::Lost);
            }
            slot.job = Some(RemoteJob {
                id: ctx.id,
                command: job.clone(),
                run_as,
                commands,
                handed: Vec::new(),
                claimed,
                received,
                log: ctx.log,
                results: ctx.results,
                cancel: ctx.cancel.clone(),
                give_back: ctx.give_back.clone(),
                runner: ctx.runner.clone(),
                done: Some(done),
            });
            slot.dispatched.notify_waiters();
        }
        let mut check = tokio::time::interval(LIVENESS_CHECK);
        let mut cancelled = false;
        loop {
            tokio::select! {
                outcome = &mut ended => return outcome.unwrap_or(Outcome::Lost),
                () = ctx.cancel.cancelled(), if !cancelled => {
                    // Not taken yet: it never ran, and never will.
                    let never_taken = {
                        let mut slots = self.workers.slots();
                        match slots.get_mut(&self.name) {
                            Some(slot)
                                if slot.job.as_ref().is_some_and(|j| j.id == ctx.id && j.claimed.is_none()) =>
                            {
                                slot.job = None;
                                true
                            }
                            _ => false,
                        }
                    };
                    if never_taken {
                        return Outcome::Cancelled;
                    }
                    // Taken: the worker hears it with the answer to its next report, and
                    // reports the end; a silent one loses the job as always.
                    cancelled = true;
                }
                _ = check.tick() => {
                    let (away, waits_untaken) = {
                        let slots = self.workers.slots();
                        match slots.get(&self.name) {
                            Some(slot) => (
                                Some(slot.last_seen.elapsed()),
                                slot.polling == 0
                                    && slot.job.as_ref().is_some_and(|j| j.id == ctx.id && j.claimed.is_none()),
                            ),
                            None => (None, false),
                        }
                    };
                    if away.is_none_or(|away| away > self.workers.timeout) {
                        let outcome = self.lose(ctx.id, &ctx.give_back, ctx.cancel.is_cancelled());
                        // Gone: it gets no job (not this one again) until it comes back.
                        self.workers
                            .detach_if_gone(&self.engine, &self.name, Instant::now())
                            .await;
                        return outcome;
                    }
                    // Handed to a worker that stopped asking for work (it went away after
                    // its last report): it leaves, and the job goes back to the queue.
                    if waits_untaken && away.is_some_and(|away| away > REPOLL_GRACE) {
                        self.workers
                            .detach_if_gone(&self.engine, &self.name, Instant::now())
                            .await;
                    }
                }
            }
        }
    }
}

impl RemoteExecutor {
    /// The worker stayed away too long: its job is lost (or, if it never took it, failed to
    /// start).
    fn lose(&self, id: JobId, give_back: &GiveBack, cancelled: bool) -> Outcome {
        let mut slots = self.workers.slots();
        let taken = match slots.get_mut(&self.name) {
            Some(slot) if slot.job.as_ref().is_some_and(|j| j.id == id) => {
                slot.job.take().is_some_and(|j| j.claimed.is_some())
            }
            _ => true,
        };
        tracing::warn!(job = %id, worker = %self.name, timeout_s = self.workers.timeout.as_secs(), "the worker was away longer than the worker timeout");
        if !taken {
            // It never ran: another worker may run it.
            give_back.give_back();
        } else if self.workers.requeue_lost && !cancelled {
            tracing::warn!(job = %id, worker = %self.name, "queued again (requeue lost jobs): it may still run where it was, if only the network was lost");
            give_back.give_back();
        }
        Outcome::Lost
    }
}

/// How a claimed dispatch is recorded (see [`crate::job::RunnerRecord`]):
/// `LEASE:INSTANCE:SEQUENCE`.
pub(super) fn runner_reference((lease, asker): (u64, Asker)) -> String {
    format!("{lease}:{}:{}", asker.instance, asker.sequence)
}

/// The claim a [`runner_reference`] names.
fn parse_runner_reference(reference: &str) -> Option<(u64, Asker)> {
    let mut parts = reference.split(':').map(str::parse::<u64>);
    let (Some(Ok(lease)), Some(Ok(instance)), Some(Ok(sequence)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some((lease, Asker { instance, sequence }))
}

/// Whose rights the job gets, and which programs it may run, as the dispatch says them.
type Cleared = (Option<RunAs>, Option<Vec<String>>);

/// What the coordinator's policy clears a job for, in the dispatch's terms.
fn cleared(clearance: &crate::job::Clearance) -> Result<Cleared, String> {
    let commands = match &clearance.commands {
        None => None,
        Some(paths) => Some(
            paths
                .iter()
                .map(|p| {
                    p.to_str()
                        .map(str::to_owned)
                        .ok_or_else(|| format!("the allowed command {} is not UTF-8", p.display()))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let run_as = clearance.run_as.as_ref().map(|a| RunAs {
        user: a.name.clone(),
        uid: a.uid,
    });
    Ok((run_as, commands))
}
