//! One client connection: greeting, then requests, each answered with authenticated replies
//! bound to it (tagged with the request's reply key, or signed by the server).
//!
//! - `request.rs`: authentication, the replay record and dispatch of one request;
//! - `submit.rs`: a submission, handed to the engine (which admits it) and followed;
//! - `follow.rs`: a job's events until it ends;
//! - `query.rs`: listings, status and cancel, in pages;
//! - `log_stream.rs`: a job's output.
//!
//! Until a request is authenticated, the peer costs no MUNGE work (errors go out unsigned:
//! they trigger nothing), a bounded share of memory (see [`ReadBudget`]) and one deadline
//! for transport set-up, hello and request together.
//!
//! [`ReadBudget`]: crate::protocol::ReadBudget

use std::ops::ControlFlow;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::serve::Shared;
use crate::auth::{AuthError, Authenticator, Credential, CredentialSource, ReplyKey};
use crate::engine::SubmitError;
use crate::protocol::{
    Envelope, ErrorCode, Event, FrameCodec, FrameError, HELLO_LEN, Hello, MAX_FRAME,
    PROTOCOL_VERSION, Reply, RequestDigest, Role, server_greeting,
};
use crate::transport::{PeerInfo, PendingConnection, Stream};

mod follow;
mod log_stream;
mod query;
mod request;
mod submit;
mod work;

/// Initial read buffer of a connection.
const READ_BUFFER: usize = 1024;

/// First and last pause before signing a reply again when the credential service is busy.
const SIGN_RETRY_FIRST: Duration = Duration::from_millis(20);
const SIGN_RETRY_LAST: Duration = Duration::from_millis(320);

type ServerFramed<S> = Framed<S, FrameCodec<Envelope, Envelope>>;

/// Serves one connection to its end. Never panics on peer input; every fault is answered
/// with an error frame where the stream still allows it, then the connection is closed.
pub(super) async fn serve<P, A, C>(pending: P, shared: &Shared<A, C>, token: &CancellationToken)
where
    P: PendingConnection,
    A: Authenticator,
    C: CredentialSource,
{
    // One deadline for everything before the first request is in: a slow peer gets the
    // handshake timeout once, not once per phase.
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let (stream, peer) = match timeout_at(deadline, pending.establish()).await {
        Ok(Ok(established)) => established,
        Ok(Err(e)) => {
            if shared.garbage_log.allow() {
                tracing::info!(error = %e, "connection set-up failed");
            }
            return;
        }
        Err(_) => {
            if shared.garbage_log.allow() {
                tracing::info!("connection set-up timed out");
            }
            return;
        }
    };
    let mut conn = Connection {
        framed: None,
        peer,
        shared,
        request: RequestDigest::NONE,
        signing: Signing::Unsigned,
    };
    // At shutdown, a connection between requests closes at once; one answering a request
    // finishes it (a waiter hears the outcome the engine published as it stopped). The
    // server's shutdown deadline bounds both.
    conn.serve(stream, deadline, token).await;
    if !token.is_cancelled() {
        conn.linger().await;
    }
}

/// How a closing connection still reads so that the peer sees our last frame: closing a
/// socket with unread input makes the kernel send a reset, which can destroy the error frame
/// before the peer reads it.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: u64 = 64 * 1024;

/// How the replies to the current request are authenticated.
enum Signing {
    /// Not at all: the request is not authenticated (yet). Such replies are errors only,
    /// which a client shows but never acts on.
    Unsigned,
    /// With the request's reply key, and the position of the next reply.
    Tagged(ReplyKey, u64),
    /// With the server's own credential, one per reply.
    Credential,
}

struct Connection<'a, S, A, C> {
    framed: Option<ServerFramed<S>>,
    peer: PeerInfo,
    shared: &'a Shared<A, C>,
    /// The request being answered.
    request: RequestDigest,
    signing: Signing,
}

impl<S, A, C> Connection<'_, S, A, C>
where
    S: Stream,
    A: Authenticator,
    C: CredentialSource,
{
    async fn serve(&mut self, mut stream: S, deadline: Instant, stopping: &CancellationToken) {
        if stream.write_all(&server_greeting()).await.is_err() {
            return;
        }
        let mut hello = [0; HELLO_LEN];
        let read = tokio::select! {
            read = timeout_at(deadline, stream.read_exact(&mut hello)) => read,
            () = stopping.cancelled() => return,
        };
        // Requests are small and a waiting client costs its buffers for hours: start small
        // (the buffer grows for a larger frame, within the read budget). The write buffer
        // too starts empty: a waiting client is sent a few small frames in hours. (Set after
        // the Framed is made: tokio-util gives each buffer 8 KiB when it is made, even from
        // parts with smaller ones, which cost a waiting client 15 KiB.)
        let codec = FrameCodec::new().with_budget(self.shared.budget.clone());
        let mut framed = Framed::new(stream, codec);
        *framed.read_buffer_mut() = bytes::BytesMut::with_capacity(READ_BUFFER);
        *framed.write_buffer_mut() = bytes::BytesMut::new();
        self.framed = Some(framed);
        match read {
            Err(_) => {
                return self
                    .fail(ErrorCode::TIMEOUT, "no hello received in time")
                    .await;
            }
            Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
        match Hello::decode(&hello) {
            Ok(hello) if hello.version == PROTOCOL_VERSION && hello.role == Role::Client => {}
            Ok(hello) if hello.role != Role::Client => {
                return self
                    .fail(ErrorCode::BAD_HELLO, "the peer is not a cq client")
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
                return self.fail(ErrorCode::VERSION_MISMATCH, &message).await;
            }
            Err(e) => return self.fail(ErrorCode::BAD_HELLO, &e.to_string()).await,
        }

        let mut wait_until = deadline;
        loop {
            let Some(framed) = self.framed.as_mut() else {
                return;
            };
            let next = tokio::select! {
                next = timeout_at(wait_until, framed.next()) => next,
                () = stopping.cancelled() => return,
            };
            let envelope = match next {
                Err(_) => {
                    return self
                        .fail(ErrorCode::TIMEOUT, "no request received in time")
                        .await;
                }
                Ok(None) => return,
                Ok(Some(Ok(envelope))) => envelope,
                Ok(Some(Err(e))) => return self.frame_error(e).await,
            };
            if self.request(envelope).await.is_break() {
                return;
            }
            wait_until = Instant::now() + self.shared.config.idle_timeout;
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

    /// Answers with the engine's refusal; the connection stays open for more requests.
    async fn refuse(&mut self, e: &SubmitError) -> ControlFlow<()> {
        self.send(Event::Error {
            code: error_code(e),
            message: e.to_string(),
        })
        .await
    }

    async fn frame_error(&mut self, e: FrameError) {
        if let FrameError::Io(io) = &e
            && io.kind() == std::io::ErrorKind::UnexpectedEof
        {
            // A TLS peer that hung up without close_notify: as good as a close.
            tracing::debug!(peer = %self.peer.describe(), "connection cut between frames");
            return;
        }
        if self.shared.garbage_log.allow() {
            tracing::info!(peer = %self.peer.describe(), error = %e, "bad frame");
        }
        let code = match e {
            FrameError::TooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            FrameError::Malformed(_) => ErrorCode::MALFORMED,
            FrameError::Busy => ErrorCode::BUSY,
            // The stream is gone or cut: nobody to tell.
            _ => return,
        };
        self.signing = Signing::Unsigned;
        self.request = RequestDigest::NONE;
        self.fail(code, &e.to_string()).await;
    }

    async fn fail(&mut self, code: ErrorCode, message: &str) {
        let _ = self
            .send(Event::Error {
                code,
                message: message.to_owned(),
            })
            .await;
    }

    /// Sends one reply to the current request, authenticated as the request allows.
    async fn send(&mut self, event: Event) -> ControlFlow<()> {
        let mut body = match postcard::to_allocvec(&Reply {
            request: self.request,
            event,
        }) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a reply");
                return ControlFlow::Break(());
            }
        };
        if body.len() > MAX_FRAME / 2 {
            // Pages are cut well below this: only a bug gets here. Say so rather than let
            // the frame codec close the connection without a word.
            tracing::error!(bytes = body.len(), "a reply is too large to send");
            body = postcard::to_allocvec(&Reply {
                request: self.request,
                event: Event::Error {
                    code: ErrorCode::INTERNAL,
                    message: "the server's answer was too large to send; its log says more"
                        .to_owned(),
                },
            })
            .unwrap_or_default();
        }
        let credential = match &mut self.signing {
            Signing::Tagged(key, seq) => {
                let tag = key.tag(*seq, &body);
                *seq += 1;
                Credential(tag.to_vec())
            }
            Signing::Credential => sign(self.shared, &body).await,
            Signing::Unsigned => Credential::default(),
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
async fn sign<A, C: CredentialSource>(shared: &Shared<A, C>, body: &[u8]) -> Credential {
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
    // A client may wait for hours: it keeps no buffer meanwhile (one grows again if it
    // speaks, or when it is sent something).
    if framed.read_buffer().is_empty() {
        *framed.read_buffer_mut() = bytes::BytesMut::new();
    }
    if framed.write_buffer().is_empty() {
        *framed.write_buffer_mut() = bytes::BytesMut::new();
    }
    // Whatever it sends now ends the wait: it may not hold a share of the read budget
    // meanwhile by announcing a large frame and sending nothing more.
    framed.codec_mut().free_frames_only(true);
    tokio::pin!(event);
    let waited = tokio::select! {
        value = &mut event => ControlFlow::Continue(value),
        _ = framed.next() => ControlFlow::Break(()),
    };
    framed.codec_mut().free_frames_only(false);
    waited
}

fn error_code(e: &SubmitError) -> ErrorCode {
    match e {
        SubmitError::AlreadyFinished(_)
        | SubmitError::NotQueued(_)
        | SubmitError::Rejected { .. } => ErrorCode::REJECTED,
        SubmitError::NotPermitted { .. } | SubmitError::Refused(_) => ErrorCode::NOT_PERMITTED,
        SubmitError::CheckFailed => ErrorCode::INTERNAL,
        SubmitError::Invalid(_) => ErrorCode::INVALID_JOB,
        SubmitError::UnknownJob(_) => ErrorCode::UNKNOWN_JOB,
        SubmitError::Store(_) => ErrorCode::INTERNAL,
        SubmitError::OverQuota { .. } => ErrorCode::OVER_QUOTA,
        SubmitError::Replayed => ErrorCode::REPLAYED,
        _ => ErrorCode::SHUTTING_DOWN,
    }
}
