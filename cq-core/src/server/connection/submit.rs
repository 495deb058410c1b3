//! A submission: the engine admits the job (validity, policy with the requester's account,
//! the hook program; see `engine::admission`), and the connection follows it.

use std::ops::ControlFlow;

use super::Connection;
use crate::auth::{Authenticator, CredentialSource, Identity};
use crate::engine::{SubmitError, SubmitOptions};
use crate::job::{CommandJob, SubmitKey};
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
        let options = SubmitOptions::new().with_key(key);
        match self
            .shared
            .engine
            .submit_command(job, identity, options)
            .await
        {
            Ok(ticket) => self.follow(ticket).await,
            Err(e) => {
                match &e {
                    SubmitError::Refused(_) => {
                        self.shared.stats.refuse(crate::server::Refusal::Policy);
                    }
                    SubmitError::CheckFailed(why) => {
                        tracing::error!(error = %why, "the policy check failed");
                    }
                    _ => {}
                }
                let _ = self.refuse(&e).await;
                ControlFlow::Break(())
            }
        }
    }
}
