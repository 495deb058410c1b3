//! Requests of workers on other hosts: `Work` (the next job, or `Idle`) and `Report`.
//!
//! Both are requests like any other (authenticated, replay-checked, their answers bound to
//! them), from an identity the policy names as a worker, from the address it names.

use std::ops::ControlFlow;

use super::{Connection, watch_client};
use crate::account::Account;
use crate::auth::{Authenticator, CredentialSource, Identity};
use crate::job::JobId;
use crate::protocol::{ErrorCode, Event, WorkReport};
use crate::scheduler::WorkerInfo;
use crate::server::Refusal;
use crate::server::workers::{Poll, WorkerRefusal};
use crate::transport::Stream;

/// Longest worker name, and longest tag, in bytes; most tags a worker may offer.
const MAX_NAME: usize = 64;
const MAX_TAG: usize = crate::job::MAX_TAG_BYTES;
const MAX_TAGS: usize = crate::job::MAX_TAGS;

impl<S, A, C> Connection<'_, S, A, C>
where
    S: Stream,
    A: Authenticator,
    C: CredentialSource,
{
    /// A worker asks for its next job.
    pub(super) async fn work(
        &mut self,
        worker: String,
        tags: Vec<String>,
        asker: (u64, u64),
        identity: Identity,
    ) -> ControlFlow<()> {
        let Some(identity) = self.admit_worker(identity).await else {
            return ControlFlow::Break(());
        };
        if let Err(why) = check_worker_info(&worker, &tags) {
            self.fail(ErrorCode::MALFORMED, &why).await;
            return ControlFlow::Break(());
        }
        let shared = self.shared;
        let Some(framed) = self.framed.as_mut() else {
            return ControlFlow::Break(());
        };
        let info = WorkerInfo::new(worker, tags);
        // A worker that hangs up while it waits ends the wait (and, unless it comes back,
        // its place in the queue's reach).
        let polled = watch_client(
            framed,
            shared.workers.work(
                &shared.engine,
                info,
                &identity,
                self.peer.addr.map(|a| a.ip()),
                asker,
                shared.config.worker_poll,
            ),
        )
        .await;
        match polled {
            ControlFlow::Break(()) => ControlFlow::Break(()),
            ControlFlow::Continue(Ok(Poll::Dispatch(dispatch))) => self.send(*dispatch).await,
            ControlFlow::Continue(Ok(Poll::Idle)) => self.send(Event::Idle).await,
            ControlFlow::Continue(Err(refusal)) => {
                tracing::warn!(who = %identity, reason = %refusal, "refused a worker");
                self.fail(refusal.code(), &refusal.to_string()).await;
                ControlFlow::Break(())
            }
        }
    }

    /// A worker reports on the job it was given.
    pub(super) async fn report(
        &mut self,
        worker: String,
        job: JobId,
        lease: u64,
        report: WorkReport,
        identity: Identity,
    ) -> ControlFlow<()> {
        let Some(identity) = self.admit_worker(identity).await else {
            return ControlFlow::Break(());
        };
        if let Err(why) = check_worker_info(&worker, &[]) {
            self.fail(ErrorCode::MALFORMED, &why).await;
            return ControlFlow::Break(());
        }
        let address = self.peer.addr.map(|a| a.ip());
        let workers = &self.shared.workers;
        let mut answer = workers.report(&worker, &identity, address, job, lease, &report);
        if matches!(answer, Err(WorkerRefusal::UnknownWorker(_)))
            && workers
                .rejoin(&self.shared.engine, &worker, &identity, address, job)
                .await
        {
            answer = workers.report(&worker, &identity, address, job, lease, &report);
        }
        match answer {
            Ok((cancel, durable)) => {
                // A claim is answered once it is durable: the worker starts the job only then.
                if let Some(durable) = durable
                    && let Err(e) = durable.await
                {
                    tracing::error!(%job, error = %e, "the claim of a job could not be recorded");
                    self.fail(
                        ErrorCode::INTERNAL,
                        "the coordinator could not record the claim",
                    )
                    .await;
                    return ControlFlow::Break(());
                }
                self.send(Event::Noted { cancel }).await
            }
            Err(refusal) => {
                tracing::warn!(who = %identity, %worker, %job, reason = %refusal, "refused a worker's report");
                self.fail(refusal.code(), &refusal.to_string()).await;
                ControlFlow::Break(())
            }
        }
    }

    /// The identity, named from the account database, if the policy admits it as a worker
    /// from where it connects; otherwise answers the refusal.
    async fn admit_worker(&mut self, identity: Identity) -> Option<Identity> {
        let Some(policy) = &self.shared.policy else {
            self.shared.stats.refuse(Refusal::Policy);
            self.fail(
                ErrorCode::NOT_PERMITTED,
                "this server admits no workers: it has no policy naming them ([policy] workers)",
            )
            .await;
            return None;
        };
        let policy = policy.current();
        let from = self.peer.addr.map(|a| a.ip());
        let who = identity.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let account = Account::lookup(who.uid).ok();
            policy
                .check_worker(&who, account.as_ref(), from)
                .map(|()| account)
        })
        .await;
        match checked {
            Ok(Ok(account)) => Some(crate::policy::with_account(identity, account.as_ref())),
            Ok(Err(refusal)) => {
                tracing::warn!(who = %identity, reason = %refusal, "refused a worker");
                self.shared.stats.refuse(Refusal::Policy);
                self.fail(ErrorCode::NOT_PERMITTED, &refusal.to_string())
                    .await;
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "the worker check failed");
                self.fail(ErrorCode::INTERNAL, "the server could not check its policy")
                    .await;
                None
            }
        }
    }
}

/// A worker's name is short and plain (it appears in logs and listings); its tags are
/// bounded.
fn check_worker_info(name: &str, tags: &[String]) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(plain) {
        return Err(format!(
            "a worker name is 1 to {MAX_NAME} letters, digits, '.', '-' or '_'"
        ));
    }
    if tags.len() > MAX_TAGS
        || tags
            .iter()
            .any(|t| t.is_empty() || t.len() > MAX_TAG || t.chars().any(char::is_control))
    {
        return Err(format!(
            "a worker offers at most {MAX_TAGS} tags of 1 to {MAX_TAG} printable bytes"
        ));
    }
    Ok(())
}
