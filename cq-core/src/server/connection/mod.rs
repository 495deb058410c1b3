//! One client connection: greeting, then requests, each answered with authenticated replies
//! (tagged with the request's reply key, or signed by the server).

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::serve::Shared;
use crate::auth::{AuthError, Authenticator, Credential, CredentialSource, ReplyKey};
use crate::engine::{JobState, JobTicket, SubmitError};
use crate::executor::{CommandRun, Executor};
use crate::job::JobSummary;
use crate::protocol::{
    Action, Envelope, ErrorCode, Event, FrameCodec, FrameError, HELLO_LEN, Hello, Nonce,
    PROTOCOL_VERSION, Reply, Request, Role, server_greeting,
};
use crate::transport::{PeerInfo, PendingConnection, Stream};

mod log_stream;

/// Initial read buffer of a connection.
const READ_BUFFER: usize = 1024;

/// First and last pause before signing a reply again when the credential service is busy.
const SIGN_RETRY_FIRST: Duration = Duration::from_millis(20);
const SIGN_RETRY_LAST: Duration = Duration::from_millis(320);

/// Rejected credentials are answered no sooner than this after they arrived, so that the
/// time to answer does not tell which check failed.
const AUTH_REJECT_FLOOR: Duration = Duration::from_millis(50);

type ServerFramed<S> = Framed<S, FrameCodec<Envelope, Envelope>>;

/// Serves one connection to its end. Never panics on peer input; every fault is answered
/// with an error frame where the stream still allows it, then the connection is closed.
pub(super) async fn serve<P, A, C, E>(
    pending: P,
    shared: &Shared<A, C, E>,
    token: &CancellationToken,
) where
    P: PendingConnection,
    A: Authenticator,
    C: CredentialSource,
    E: Executor,
{
    let limit = shared.config.handshake_timeout;
    let (stream, peer) = match timeout(limit, pending.establish()).await {
        Ok(Ok(established)) => established,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "connection set-up failed");
            return;
        }
        Err(_) => {
            tracing::info!("connection set-up timed out");
            return;
        }
    };
    let mut conn = Connection {
        framed: None,
        peer,
        shared,
        reply_key: None,
    };
    tokio::select! {
        () = conn.serve(stream) => conn.linger().await,
        () = token.cancelled() => {}
    }
}

/// How long, and how much, a closing connection still reads so that the peer sees our last
/// frame: closing a socket with unread input makes the kernel send a reset, which can
/// destroy the error frame before the peer reads it.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: u64 = 64 * 1024;

struct Connection<'a, S, A, C, E> {
    framed: Option<ServerFramed<S>>,
    peer: PeerInfo,
    shared: &'a Shared<A, C, E>,
    /// The current request's reply key and the position of the next tagged reply.
    reply_key: Option<(ReplyKey, u64)>,
}

impl<S, A, C, E> Connection<'_, S, A, C, E>
where
    S: Stream,
    A: Authenticator,
    C: CredentialSource,
    E: Executor,
{
    async fn serve(&mut self, mut stream: S) {
        let limit = self.shared.config.handshake_timeout;
        if stream.write_all(&server_greeting()).await.is_err() {
            return;
        }
        let mut hello = [0; HELLO_LEN];
        let read = timeout(limit, stream.read_exact(&mut hello)).await;
        // Requests are small and a waiting client costs its buffers for hours: start small
        // (the buffer grows for a larger frame, up to the frame limit).
        self.framed = Some(Framed::with_capacity(
            stream,
            FrameCodec::new(),
            READ_BUFFER,
        ));
        match read {
            Err(_) => {
                return self
                    .fail(Nonce::NONE, ErrorCode::TIMEOUT, "no hello received in time")
                    .await;
            }
            Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
        match Hello::decode(&hello) {
            Ok(hello) if hello.version == PROTOCOL_VERSION && hello.role == Role::Client => {}
            Ok(hello) if hello.role != Role::Client => {
                return self
                    .fail(
                        Nonce::NONE,
                        ErrorCode::BAD_HELLO,
                        "the peer is not a cq client",
                    )
                    .await;
            }
            Ok(hello) => {
                let message = format!(
                    "client speaks cq protocol {}, this server speaks {PROTOCOL_VERSION}: upgrade the {}",
                    hello.version,
                    if hello.version < PROTOCOL_VERSION {
                        "client (cq_client)"
                    } else {
                        "server (cq_server)"
                    }
                );
                return self
                    .fail(Nonce::NONE, ErrorCode::VERSION_MISMATCH, &message)
                    .await;
            }
            Err(e) => {
                return self
                    .fail(Nonce::NONE, ErrorCode::BAD_HELLO, &e.to_string())
                    .await;
            }
        }

        let mut wait = limit;
        loop {
            let Some(framed) = self.framed.as_mut() else {
                return;
            };
            let envelope = match timeout(wait, framed.next()).await {
                Err(_) => {
                    return self
                        .fail(
                            Nonce::NONE,
                            ErrorCode::TIMEOUT,
                            "no request received in time",
                        )
                        .await;
                }
                Ok(None) => return,
                Ok(Some(Ok(envelope))) => envelope,
                Ok(Some(Err(e))) => return self.frame_error(e).await,
            };
            if self.request(envelope).await.is_break() {
                return;
            }
            wait = self.shared.config.idle_timeout;
        }
    }

    /// Sends FIN, then reads and drops the peer's remaining input (bounded) until it closes.
    async fn linger(&mut self) {
        let Some(framed) = self.framed.as_mut() else {
            return;
        };
        let stream = framed.get_mut();
        if stream.shutdown().await.is_err() {
            return;
        }
        let mut sink = tokio::io::sink();
        let mut rest = stream.take(LINGER_BYTES);
        let _ = timeout(LINGER_TIME, tokio::io::copy(&mut rest, &mut sink)).await;
    }

    async fn request(&mut self, envelope: Envelope) -> ControlFlow<()> {
        let arrived = Instant::now();
        let credential = Credential(envelope.credential);
        // Replies to what follows are for a new request: none may use the last one's key.
        self.reply_key = None;
        // Verify before decoding: unauthenticated peers never reach the request decoder.
        let identity = match self
            .shared
            .authenticator
            .verify_with_key(&envelope.body, &credential, &self.peer)
            .await
        {
            Ok((identity, key)) => {
                self.reply_key = key.map(|key| (key, 0));
                identity
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer.describe(), reason = %e, "rejected a request");
                tokio::time::sleep_until(arrived + AUTH_REJECT_FLOOR).await;
                self.fail(Nonce::NONE, ErrorCode::AUTH_FAILED, &e.to_string())
                    .await;
                return ControlFlow::Break(());
            }
        };
        let request: Request = match postcard::from_bytes(&envelope.body) {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(peer = %self.peer.describe(), error = %e, "malformed request");
                self.fail(
                    Nonce::NONE,
                    ErrorCode::MALFORMED,
                    &format!("malformed request: {e}"),
                )
                .await;
                return ControlFlow::Break(());
            }
        };
        let nonce = request.nonce;
        let dialled = request.destination.map(canonical);
        let reached = self.peer.local_addr.map(canonical);
        if dialled != reached {
            tracing::warn!(peer = %self.peer.describe(), ?dialled, ?reached, "request addressed to another server");
            let message = format!(
                "the request was made for server {} but reached {}: connect to the server directly",
                describe(dialled),
                describe(reached)
            );
            self.fail(nonce, ErrorCode::WRONG_SERVER, &message).await;
            return ControlFlow::Break(());
        }
        let ticket = match request.action {
            Action::Submit { mut job } => {
                if let Err(e) = job.validate() {
                    self.fail(nonce, ErrorCode::INVALID_JOB, &e.to_string())
                        .await;
                    return ControlFlow::Break(());
                }
                job.timeout_ms = self
                    .shared
                    .config
                    .time_limit(job.timeout())
                    .map(|t| t.as_millis() as u64);
                if let Some(policy) = &self.shared.policy
                    && let Err(refusal) = policy.current().review(&identity, &mut job)
                {
                    tracing::info!(who = %identity, command = %job.summary(), reason = %refusal, "refused by policy");
                    self.fail(nonce, ErrorCode::NOT_PERMITTED, &refusal.to_string())
                        .await;
                    return ControlFlow::Break(());
                }
                let verdict = match &self.shared.hook_program {
                    Some(hook) => {
                        // The hook sees the queue as it is now; a merge into a job that has
                        // ended meanwhile becomes a plain submission.
                        let queue = self.shared.engine.list().await.unwrap_or_default();
                        Some(hook.review(&job, &identity, &queue).await)
                    }
                    None => None,
                };
                let run = CommandRun::new(job, self.shared.executor.clone());
                self.shared
                    .engine
                    .submit_reviewed(Box::new(run), identity, verdict)
                    .await
            }
            Action::Watch { job } => {
                tracing::info!(%job, who = %identity, "watching");
                self.shared.engine.watch(job).await
            }
            Action::List => return self.answer(nonce, self.shared.engine.list().await).await,
            Action::Status { job } => {
                return self
                    .answer(nonce, self.shared.engine.status(job).await.map(|j| vec![j]))
                    .await;
            }
            Action::Cancel { job } => {
                let cancelled = self
                    .shared
                    .engine
                    .cancel(job, identity)
                    .await
                    .map(|j| vec![j]);
                return self.answer(nonce, cancelled).await;
            }
            Action::Log { job, follow } => {
                return self.stream_log(nonce, job, follow, identity).await;
            }
        };
        match ticket {
            Ok(ticket) => self.follow(nonce, ticket).await,
            Err(e) => {
                self.fail(nonce, error_code(&e), &e.to_string()).await;
                ControlFlow::Break(())
            }
        }
    }

    /// Answers with the engine's refusal; the connection stays open for more requests.
    async fn refuse(&mut self, nonce: Nonce, e: &SubmitError) -> ControlFlow<()> {
        self.send(
            nonce,
            Event::Error {
                code: error_code(e),
                message: e.to_string(),
            },
        )
        .await
    }

    /// Answers a query with the jobs, or the error; the connection stays open for more.
    async fn answer(
        &mut self,
        nonce: Nonce,
        jobs: Result<Vec<JobSummary>, SubmitError>,
    ) -> ControlFlow<()> {
        match jobs {
            Ok(jobs) => self.send(nonce, Event::Jobs { jobs }).await,
            Err(e) => self.refuse(nonce, &e).await,
        }
    }

    /// Reports the job's events to the client until it ends. The client may go away at any
    /// time; the job is not affected.
    async fn follow(&mut self, nonce: Nonce, mut ticket: JobTicket) -> ControlFlow<()> {
        let job = ticket.id;
        let ahead = u32::try_from(ticket.ahead).unwrap_or(u32::MAX);
        self.send(
            nonce,
            Event::Accepted {
                job,
                ahead,
                merged: ticket.merged,
            },
        )
        .await?;
        let stopped =
            format!("the server stopped before job {job} ended; ask again later with its id");
        if ticket.state() == JobState::Queued {
            let Some(framed) = self.framed.as_mut() else {
                return ControlFlow::Break(());
            };
            if watch_client(framed, ticket.started()).await?.is_err() {
                self.fail(nonce, ErrorCode::SHUTTING_DOWN, &stopped).await;
                return ControlFlow::Break(());
            }
        }
        self.send(nonce, Event::Started { job }).await?;
        let Some(framed) = self.framed.as_mut() else {
            return ControlFlow::Break(());
        };
        match watch_client(framed, ticket.finished()).await? {
            Ok(result) => {
                let runtime_ms = u64::try_from(result.runtime.as_millis()).unwrap_or(u64::MAX);
                self.send(
                    nonce,
                    Event::Finished {
                        job,
                        outcome: result.outcome,
                        runtime_ms,
                    },
                )
                .await
            }
            Err(_) => {
                self.fail(nonce, ErrorCode::SHUTTING_DOWN, &stopped).await;
                ControlFlow::Break(())
            }
        }
    }

    async fn frame_error(&mut self, e: FrameError) {
        if let FrameError::Io(io) = &e
            && io.kind() == std::io::ErrorKind::UnexpectedEof
        {
            // A TLS peer that hung up without close_notify: as good as a close.
            tracing::debug!(peer = %self.peer.describe(), "connection cut between frames");
            return;
        }
        tracing::info!(peer = %self.peer.describe(), error = %e, "bad frame");
        let code = match e {
            FrameError::TooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            FrameError::Malformed(_) => ErrorCode::MALFORMED,
            // The stream is gone or cut: nobody to tell.
            _ => return,
        };
        self.fail(Nonce::NONE, code, &e.to_string()).await;
    }

    async fn fail(&mut self, nonce: Nonce, code: ErrorCode, message: &str) {
        let _ = self
            .send(
                nonce,
                Event::Error {
                    code,
                    message: message.to_owned(),
                },
            )
            .await;
    }

    async fn send(&mut self, nonce: Nonce, event: Event) -> ControlFlow<()> {
        let body = match postcard::to_allocvec(&Reply { nonce, event }) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a reply");
                return ControlFlow::Break(());
            }
        };
        let credential = match &mut self.reply_key {
            Some((key, seq)) => {
                let tag = key.tag(*seq, &body);
                *seq += 1;
                Credential(tag.to_vec())
            }
            None => sign(self.shared, &body).await,
        };
        let Some(framed) = self.framed.as_mut() else {
            return ControlFlow::Break(());
        };
        match framed
            .send(Envelope {
                body,
                credential: credential.0,
            })
            .await
        {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }
}

/// The server's credential for a reply. A credential service that is briefly
/// overloaded (a thousand clients arriving at once fill munged's backlog) gets a few more
/// tries before the reply goes out unsigned, which its client refuses.
async fn sign<A, C: CredentialSource, E>(shared: &Shared<A, C, E>, body: &[u8]) -> Credential {
    let mut delay = SIGN_RETRY_FIRST;
    loop {
        match shared.signer.credential_for(body).await {
            Ok(credential) => return credential,
            Err(AuthError::Unavailable(why)) if delay <= SIGN_RETRY_LAST => {
                tracing::debug!(%why, retry_in_ms = delay.as_millis() as u64, "cannot sign a reply yet");
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
            Err(e) => {
                // The client will refuse the reply, and say why; there is no better answer.
                tracing::error!(error = %e, "cannot sign a reply");
                return Credential::default();
            }
        }
    }
}

/// Awaits `event` while watching the connection: a client that hangs up (or talks out of
/// turn) ends the wait, never the job.
async fn watch_client<S: Stream, T>(
    framed: &mut ServerFramed<S>,
    event: impl std::future::Future<Output = T>,
) -> ControlFlow<(), T> {
    tokio::pin!(event);
    tokio::select! {
        value = &mut event => ControlFlow::Continue(value),
        _ = framed.next() => ControlFlow::Break(()),
    }
}

fn error_code(e: &SubmitError) -> ErrorCode {
    match e {
        SubmitError::AlreadyFinished(_) | SubmitError::Rejected { .. } => ErrorCode::REJECTED,
        SubmitError::NotPermitted { .. } => ErrorCode::NOT_PERMITTED,
        SubmitError::UnknownJob(_) => ErrorCode::UNKNOWN_JOB,
        SubmitError::Store(_) => ErrorCode::INTERNAL,
        _ => ErrorCode::SHUTTING_DOWN,
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn describe(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "(no address)".to_owned(), |a| a.to_string())
}
