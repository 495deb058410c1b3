//! `Log` requests: a job's output from its file, then live while the job runs.

use std::ops::ControlFlow;

use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use super::{Connection, watch_client};
use crate::auth::{Authenticator, CredentialSource};
use crate::engine::Caller;
use crate::job::JobId;
use crate::protocol::Event;
use crate::transport::Stream;

/// Log bytes per `Output` frame: well below the frame limit.
const LOG_CHUNK: usize = 64 * 1024;

impl<S, A, C> Connection<'_, S, A, C>
where
    S: Stream,
    A: Authenticator,
    C: CredentialSource,
{
    /// Sends job `id`'s output from the start; with `follow`, goes on live until the job ends
    /// and then reports how it ended. The file is the authority: live chunks only say that
    /// there is more, and where.
    pub(super) async fn stream_log(
        &mut self,
        id: JobId,
        follow: bool,
        who: Caller,
    ) -> ControlFlow<()> {
        let mut access = match self.shared.engine.open_log(id, who.clone()).await {
            Ok(access) => access,
            Err(e) => {
                return self.refuse(&e).await;
            }
        };
        // A queued job has no output yet: when following, wait for it to start.
        if follow
            && access.live.is_none()
            && let Some(mut ticket) = access.ticket.take()
        {
            let Some(framed) = self.framed.as_mut() else {
                return ControlFlow::Break(());
            };
            let _ = watch_client(framed, ticket.started()).await?;
            access = match self.shared.engine.open_log(id, who).await {
                Ok(access) => access,
                Err(e) => {
                    return self.refuse(&e).await;
                }
            };
        }
        let path = access.path.clone();
        let mut sent = self.send_file(id, path.as_deref(), 0).await?;
        let (Some(mut ticket), true) = (access.ticket, follow) else {
            return self.send(Event::LogEnd { job: id }).await;
        };
        let mut live = access.live;
        loop {
            let Some(framed) = self.framed.as_mut() else {
                return ControlFlow::Break(());
            };
            let more = async {
                match live.as_mut() {
                    Some(feed) => feed
                        .recv()
                        .await
                        .map(|chunk| chunk.offset + chunk.data.len() as u64)
                        .ok(),
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                end = more => end.map(Ok),
                result = ticket.finished() => Some(Err(result)),
                _ = framed.next() => return ControlFlow::Break(()),
            };
            match event {
                Some(Ok(end)) if end > sent => {
                    sent = self.send_file(id, path.as_deref(), sent).await?
                }
                Some(Ok(_)) => {}
                // The feed lagged or closed: the file has it all.
                None => {
                    live = None;
                    sent = self.send_file(id, path.as_deref(), sent).await?;
                }
                Some(Err(result)) => {
                    self.send_file(id, path.as_deref(), sent).await?;
                    return match result {
                        Ok(result) => {
                            let runtime_ms =
                                u64::try_from(result.runtime.as_millis()).unwrap_or(u64::MAX);
                            self.send(Event::Finished {
                                job: id,
                                outcome: result.outcome,
                                runtime_ms,
                                results: result.results,
                            })
                            .await
                        }
                        Err(_) => self.send(Event::LogEnd { job: id }).await,
                    };
                }
            }
        }
    }

    /// Sends the log file from byte `from` to its current end; returns the new end.
    async fn send_file(
        &mut self,
        id: JobId,
        path: Option<&std::path::Path>,
        from: u64,
    ) -> ControlFlow<(), u64> {
        use tokio::io::AsyncSeekExt;
        let Some(path) = path else {
            return ControlFlow::Continue(from);
        };
        // The log directory is the server's own, but a link there is never followed.
        let Ok(mut file) = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .await
        else {
            return ControlFlow::Continue(from);
        };
        if file.seek(std::io::SeekFrom::Start(from)).await.is_err() {
            return ControlFlow::Continue(from);
        }
        let mut at = from;
        let mut buf = vec![0; LOG_CHUNK];
        loop {
            match file.read(&mut buf).await {
                Ok(0) | Err(_) => return ControlFlow::Continue(at),
                Ok(n) => {
                    self.send(Event::Output {
                        job: id,
                        data: buf[..n].to_vec(),
                    })
                    .await?;
                    at += n as u64;
                }
            }
        }
    }
}
