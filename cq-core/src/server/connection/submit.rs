//! A submission: the engine admits the job (validity, policy with the requester's account,
//! the hook program; see `engine::admission`), and the connection follows it.

use std::ops::ControlFlow;

use super::Connection;
use crate::auth::{Authenticator, CredentialSource, Identity};
use crate::engine::{SubmitError, SubmitOptions};
use crate::job::{CommandJob, SubmitKey};
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
        if self.shared.policy.is_some() && !self.shared.engine.checks_access() {
            tracing::error!(
                "a submission refused: this server has a policy, but its engine checks no submissions (build it with Engine::with_access_check)"
            );
            self.fail(
                ErrorCode::INTERNAL,
                "the server is misconfigured and takes no jobs (its engine checks no submissions)",
            )
            .await;
            return ControlFlow::Break(());
        }
        let options = SubmitOptions::new().with_key(key);
        // Boxed: admission (account lookups, the hook program) is over once the client
        // waits, and must not size the future it waits in for hours.
        let admitted = Box::pin(self.shared.engine.submit_command(job, identity, options)).await;
        match admitted {
            Ok(ticket) => self.follow(ticket).await,
            Err(e) => {
                if matches!(e, SubmitError::Refused(_)) {
                    self.shared.stats.refuse(crate::server::Refusal::Policy);
                }
                let _ = self.refuse(&e).await;
                ControlFlow::Break(())
            }
        }
    }
}
