//! Admission of a command, for every caller of
//! [`EngineHandle::submit_command`](super::EngineHandle::submit_command): validity, then the
//! [`AccessCheck`] (who the requester is in the account database, and what the policy lets
//! them queue), then the [`Reviewer`] (an admin's program) on a snapshot of the live queue.
//! The engine's own [`SubmitHook`](crate::SubmitHook) and the requester's limits come after,
//! in the engine task.
//!
//! This runs in the submitter's task, never in the engine's: an account lookup may block on
//! NSS (LDAP) and is taken to a blocking thread, and a reviewer may take seconds; meanwhile
//! the engine goes on serving everybody else.

use std::sync::Arc;

use async_trait::async_trait;

use super::handle::{Caller, EngineHandle, JobTicket, SubmitError, SubmitOptions};
use crate::auth::Identity;
use crate::job::{CommandJob, JobSummary};
use crate::policy::AccessCheck;
use crate::scheduler::Decision;

/// Reviews each command before it is queued and decides: accept (the engine's own hooks then
/// decide), merge into a job that waits, or reject. An async counterpart of
/// [`SubmitHook`](crate::SubmitHook) for reviewers that take time, such as an external program
/// ([`HookProgram`](crate::server::HookProgram)).
#[async_trait]
pub trait Reviewer: Send + Sync + 'static {
    /// Decides about `job` of `owner` (as the [`AccessCheck`] named them), given the jobs
    /// that wait or run now, in full (`queue`).
    async fn review(&self, job: &CommandJob, owner: &Identity, queue: &[JobSummary]) -> Decision;
}

/// What a command passes through before the engine task takes it.
#[derive(Clone, Default)]
pub(crate) struct Admission {
    pub(crate) access: Option<Arc<dyn AccessCheck>>,
    pub(crate) reviewer: Option<Arc<dyn Reviewer>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("access", &self.access.is_some())
            .field("reviewer", &self.reviewer.is_some())
            .finish()
    }
}

impl Admission {
    /// Admits `command` of `requester`: the owner it is queued under and the options it is
    /// queued with, or why not.
    pub(crate) async fn admit(
        &self,
        engine: &EngineHandle,
        command: &Arc<CommandJob>,
        requester: Identity,
        mut options: SubmitOptions,
    ) -> Result<Admit, SubmitError> {
        // What exec cannot take is never queued, and the checks below need a well-formed job.
        command.validate().map_err(SubmitError::Invalid)?;
        let owner = match &self.access {
            Some(access) => {
                let (access, who, job) = (access.clone(), requester.clone(), command.clone());
                let admitted = tokio::task::spawn_blocking(move || access.admit(&who, &job))
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, "the access check failed");
                        SubmitError::CheckFailed
                    })?;
                match admitted {
                    Ok(admitted) => {
                        options.merge_across_users = admitted.merge_across_users;
                        admitted.owner
                    }
                    Err(refusal) => {
                        tracing::info!(who = %requester, command = %command.summary(), reason = %refusal, "refused by policy");
                        let _ = engine.events.send(super::EngineEvent::Refused {
                            owner: requester,
                            reason: refusal.to_string(),
                        });
                        return Err(SubmitError::Refused(refusal));
                    }
                }
            }
            None => requester,
        };
        // A retry re-attaches to the job it made, without another review: a storm of retries
        // must not take every reviewer's turn. (Looked up and re-attached in one step: a key
        // forgotten meanwhile makes a new job, which is reviewed.)
        if let (Some(key), Some(_)) = (options.key, &self.reviewer)
            && let Some(ticket) = engine.reattach(owner.uid, key).await?
        {
            return Ok(Admit::Reattached(ticket));
        }
        // A verdict the caller reached itself stands; the reviewer decides the rest.
        if let (Some(reviewer), None | Some(Decision::Accept)) = (&self.reviewer, &options.verdict)
        {
            // Live jobs only: the reviewer never waits for the store.
            let queue = engine.live(Caller::admin(Identity::local())).await?;
            options.verdict = Some(reviewer.review(command, &owner, &queue).await);
        }
        Ok(Admit::Queue(owner, options))
    }
}

/// What admission decided about a command.
pub(crate) enum Admit {
    /// Queue it for this owner, with these options.
    Queue(Identity, SubmitOptions),
    /// It is a retry, re-attached to the job it made.
    Reattached(JobTicket),
}
