//! A job's events, from acceptance to its end, for the client that submitted or watches it.

use std::ops::ControlFlow;

use super::{Connection, watch_client};
use crate::auth::{Authenticator, CredentialSource};
use crate::engine::{JobState, JobTicket};
use crate::protocol::{ErrorCode, Event};
use crate::transport::Stream;

impl<S, A, C> Connection<'_, S, A, C>
where
    S: Stream,
    A: Authenticator,
    C: CredentialSource,
{
    /// Reports the job's events to the client until it ends. The client may go away at any
    /// time; the job is not affected.
    pub(super) async fn follow(&mut self, mut ticket: JobTicket) -> ControlFlow<()> {
        let job = ticket.id;
        let ahead = u32::try_from(ticket.ahead).unwrap_or(u32::MAX);
        self.send(Event::Accepted {
            job,
            ahead,
            merged: ticket.merged,
        })
        .await?;
        let stopped = format!(
            "the server is stopping before job {job} ended; the job stays queued: wait for it again once the server is back"
        );
        if ticket.state() == JobState::Queued {
            let Some(framed) = self.framed.as_mut() else {
                return ControlFlow::Break(());
            };
            if watch_client(framed, ticket.started()).await?.is_err() {
                self.fail(ErrorCode::SHUTTING_DOWN, &stopped).await;
                return ControlFlow::Break(());
            }
        }
        self.send(Event::Started { job }).await?;
        let Some(framed) = self.framed.as_mut() else {
            return ControlFlow::Break(());
        };
        match watch_client(framed, ticket.finished()).await? {
            Ok(result) => {
                let runtime_ms = u64::try_from(result.runtime.as_millis()).unwrap_or(u64::MAX);
                self.send(Event::Finished {
                    job,
                    outcome: result.outcome,
                    runtime_ms,
                    results: result.results,
                })
                .await
            }
            Err(_) => {
                self.fail(ErrorCode::SHUTTING_DOWN, &stopped).await;
                ControlFlow::Break(())
            }
        }
    }
}
