//! A submission: the job is checked (validity, policy with the requester's account),
//! reviewed by the hook program if there is one, and handed to the engine (which sets its
//! time limit) with its idempotency key.

use std::ops::ControlFlow;

use super::Connection;
use super::request::with_account;
use crate::account::Account;
use crate::auth::{Authenticator, CredentialSource, Identity};
use crate::engine::{Caller, SubmitOptions};
use crate::job::{CommandJob, SubmitKey};
use crate::policy::PolicyRefusal;
use crate::protocol::ErrorCode;
use crate::transport::Stream;

impl<S, A, C> Connection<'_, S, A, C>
where
    S: Stream,
    A: Authenticator,
    C: CredentialSource,
{
    pub(super) async fn submit(
        &mut self,
        job: CommandJob,
        key: SubmitKey,
        identity: Identity,
    ) -> ControlFlow<()> {
        // The engine checks it too, for every caller; the policy below needs a well-formed
        // job, so it is checked first here.
        if let Err(e) = job.validate() {
            self.fail(ErrorCode::INVALID_JOB, &e.to_string()).await;
            return ControlFlow::Break(());
        }
        let mut options = SubmitOptions::new().with_key(key);
        let identity = match &self.shared.policy {
            Some(policy) => {
                let policy = policy.current();
                options = options.merging_across_users(policy.merge_across_users);
                let (who, checked_job) = (identity.clone(), job.clone());
                // The account database may be remote (LDAP): off the async workers.
                let reviewed = tokio::task::spawn_blocking(move || {
                    let account = Account::lookup(who.uid);
                    policy.check_requester(&who, account.as_ref())?;
                    policy.check_job(&who, &checked_job)?;
                    Ok::<_, PolicyRefusal>(account.ok())
                })
                .await;
                match reviewed {
                    Ok(Ok(account)) => with_account(identity, account.as_ref()),
                    Ok(Err(refusal)) => {
                        tracing::info!(who = %identity, command = %job.summary(), reason = %refusal, "refused by policy");
                        self.shared.stats.refuse(crate::server::Refusal::Policy);
                        self.fail(ErrorCode::NOT_PERMITTED, &refusal.to_string())
                            .await;
                        return ControlFlow::Break(());
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the policy check failed");
                        self.fail(ErrorCode::INTERNAL, "the server could not check its policy")
                            .await;
                        return ControlFlow::Break(());
                    }
                }
            }
            None => identity,
        };
        if let Some(hook) = &self.shared.hook_program {
            // The hook sees the queue as it is now, in full: it is the admin's program.
            let queue = self
                .shared
                .engine
                .list(Caller::admin(Identity::local()))
                .await
                .unwrap_or_default();
            options = options.with_verdict(hook.review(&job, &identity, &queue).await);
        }
        match self
            .shared
            .engine
            .submit_command(job, identity, options)
            .await
        {
            Ok(ticket) => self.follow(ticket).await,
            Err(e) => {
                let _ = self.refuse(&e).await;
                ControlFlow::Break(())
            }
        }
    }
}
