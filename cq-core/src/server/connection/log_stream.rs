//! `Log` requests: a job's output as the engine serves it, piece by piece, while the client
//! is there.

use std::ops::ControlFlow;

use super::{Connection, watch_client};
use crate::auth::{Authenticator, CredentialSource};
use crate::engine::{Caller, OutputPiece};
use crate::job::JobId;
use crate::protocol::Event;
use crate::transport::Stream;

impl<S, A, C> Connection<'_, S, A, C>
where
    S: Stream,
    A: Authenticator,
    C: CredentialSource,
{
    /// Sends job `id`'s output from the start; with `follow`, goes on live until the job ends
    /// and then reports how it ended.
    pub(super) async fn stream_log(
        &mut self,
        id: JobId,
        follow: bool,
        who: Caller,
    ) -> ControlFlow<()> {
        let mut output = match self.shared.engine.output(id, who, follow).await {
            Ok(output) => output,
            Err(e) => return self.refuse(&e).await,
        };
        loop {
            let Some(framed) = self.framed.as_mut() else {
                return ControlFlow::Break(());
            };
            // A client that goes away while the job is quiet ends the stream.
            match watch_client(framed, output.next()).await? {
                Some(Err(e)) => return self.refuse(&e).await,
                Some(Ok(OutputPiece::Data(data))) => {
                    self.send(Event::Output { job: id, data }).await?;
                }
                Some(Ok(OutputPiece::Finished(result))) => {
                    let runtime_ms = u64::try_from(result.runtime.as_millis()).unwrap_or(u64::MAX);
                    return self
                        .send(Event::Finished {
                            job: id,
                            outcome: result.outcome,
                            runtime_ms,
                            results: result.results,
                        })
                        .await;
                }
                Some(Ok(OutputPiece::End)) | None => {
                    return self.send(Event::LogEnd { job: id }).await;
                }
            }
        }
    }
}
