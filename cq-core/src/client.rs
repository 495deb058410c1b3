//! The network client: submit a job or re-attach to one, and follow it to its end.

use std::io;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_util::codec::Framed;

use crate::auth::{
    AuthError, Authenticator, Credential, CredentialSource, REPLY_TAG_LEN, ReplyKey,
};
use crate::engine::JobResult;
use crate::job::{CommandJob, JobId, JobSummary};
use crate::protocol::{
    Action, Envelope, ErrorCode, Event, FrameCodec, FrameError, HELLO_LEN, Hello, HelloError,
    Nonce, PROTOCOL_VERSION, Reply, Request, Role, SERVER_UID_LEN,
};
use crate::transport::{Connector, PeerInfo, Stream, TransportError};

/// How long the client waits for the server's hello and for the acceptance of a request.
/// Waiting for the job itself has no limit.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Talks to one server.
#[derive(Debug)]
pub struct Client<C, S, A> {
    connector: C,
    signer: S,
    verifier: A,
}

impl<C: Connector, S: CredentialSource, A: Authenticator> Client<C, S, A> {
    /// A client that reaches the server through `connector`, signs requests with `signer`
    /// and checks the server's replies with `verifier`.
    pub fn new(connector: C, signer: S, verifier: A) -> Self {
        Self {
            connector,
            signer,
            verifier,
        }
    }

    /// The server as the user named it.
    pub fn server_name(&self) -> String {
        self.connector.server_name()
    }

    /// Submits `job`; returns once the server has accepted it.
    ///
    /// # Errors
    ///
    /// Any [`ClientError`]: connection, protocol, credential, or the server's refusal.
    pub async fn submit(
        &self,
        job: CommandJob,
    ) -> Result<Submission<'_, C::Stream, A>, ClientError> {
        self.request(Action::Submit { job }).await
    }

    /// Re-attaches to job `id` (queued, running or recently finished).
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit); [`ErrorCode::UNKNOWN_JOB`] when the server does not know it.
    pub async fn watch(&self, id: JobId) -> Result<Submission<'_, C::Stream, A>, ClientError> {
        self.request(Action::Watch { job: id }).await
    }

    /// Follows job `id` to its end, starting with `submission` if there is one, and
    /// re-attaching (with growing delays) whenever the connection is lost, e.g. while the
    /// server restarts. `on_retry` hears about each failed attempt and the delay before the
    /// next one. Gives up when the server has been unreachable for `policy.give_up_after`.
    ///
    /// # Errors
    ///
    /// The last error when giving up, or the first error that retrying cannot mend (refused
    /// credential, unknown job, ...).
    pub async fn follow(
        &self,
        id: JobId,
        submission: Option<Submission<'_, C::Stream, A>>,
        policy: &Reconnect,
        mut on_retry: impl FnMut(&ClientError, Duration),
    ) -> Result<JobResult, ClientError> {
        let mut current = submission;
        let mut delay = policy.first_delay;
        let mut unreachable_since: Option<tokio::time::Instant> = None;
        loop {
            let attempt = match current.take() {
                Some(submission) => submission.wait().await,
                None => match self.watch(id).await {
                    Ok(submission) => {
                        unreachable_since = None;
                        delay = policy.first_delay;
                        submission.wait().await
                    }
                    Err(e) => Err(e),
                },
            };
            match attempt {
                Ok(result) => return Ok(result),
                Err(e) if e.is_transient() => {
                    let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= policy.give_up_after {
                        return Err(e);
                    }
                    on_retry(&e, delay);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(policy.max_delay);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The running job, the queued ones in order, and the most recently finished ones.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub async fn list(&self) -> Result<Vec<JobSummary>, ClientError> {
        self.query(Action::List).await
    }

    /// One job, as the server knows it.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit); [`ErrorCode::UNKNOWN_JOB`] when the server does not know it.
    pub async fn status(&self, id: JobId) -> Result<JobSummary, ClientError> {
        self.query(Action::Status { job: id })
            .await?
            .pop()
            .ok_or(ClientError::Protocol("empty status".into()))
    }

    /// Cancels job `id` (its owners and root may); returns the job as it is afterwards (a
    /// running job shows `running` until its processes are gone).
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit); [`ErrorCode::NOT_PERMITTED`] for someone else's job.
    pub async fn cancel(&self, id: JobId) -> Result<JobSummary, ClientError> {
        self.query(Action::Cancel { job: id })
            .await?
            .pop()
            .ok_or(ClientError::Protocol("empty answer".into()))
    }

    /// Job `id`'s output from the start, handed to `output` piece by piece. With `follow` it
    /// goes on live until the job ends and returns how it ended; without, it returns `None`
    /// after what is logged so far.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit); [`ErrorCode::NOT_PERMITTED`] for someone else's job.
    pub async fn log(
        &self,
        id: JobId,
        follow: bool,
        mut output: impl FnMut(&[u8]),
    ) -> Result<Option<JobResult>, ClientError> {
        let mut channel = self.open(Action::Log { job: id, follow }).await?;
        let result = loop {
            match channel.next_reply().await? {
                Event::Output { data, .. } => output(&data),
                Event::LogEnd { .. } => break None,
                Event::Finished {
                    outcome,
                    runtime_ms,
                    ..
                } => {
                    break Some(JobResult {
                        outcome,
                        runtime: Duration::from_millis(runtime_ms),
                    });
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected reply to a log request: {other:?}"
                    )));
                }
            }
        };
        channel.close().await;
        Ok(result)
    }

    async fn query(&self, action: Action) -> Result<Vec<JobSummary>, ClientError> {
        let mut channel = self.open(action).await?;
        let answer = match timeout(REPLY_TIMEOUT, channel.next_reply()).await {
            Err(_) => Err(ClientError::Timeout {
                during: "the answer",
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Event::Jobs { jobs })) => Ok(jobs),
            Ok(Ok(other)) => Err(ClientError::Protocol(format!(
                "expected a job list, got {other:?}"
            ))),
        };
        channel.close().await;
        answer
    }

    async fn request(&self, action: Action) -> Result<Submission<'_, C::Stream, A>, ClientError> {
        let mut submission = self.open(action).await?;
        match timeout(REPLY_TIMEOUT, submission.next_reply()).await {
            Err(_) => Err(ClientError::Timeout {
                during: "the acceptance of the request",
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Event::Accepted { job, ahead, merged })) => {
                submission.job = job;
                submission.ahead = ahead;
                submission.merged = merged;
                Ok(submission)
            }
            Ok(Ok(other)) => Err(ClientError::Protocol(format!(
                "expected an acceptance, got {other:?}"
            ))),
        }
    }

    /// Connects, exchanges hellos and sends `action`; the replies are the caller's to read.
    async fn open(&self, action: Action) -> Result<Submission<'_, C::Stream, A>, ClientError> {
        let (mut stream, peer) = self.connector.connect().await?;
        stream
            .write_all(&Hello::new(Role::Client).encode())
            .await
            .map_err(|source| ClientError::Io {
                during: "the hello",
                source,
            })?;
        let mut greeting = [0; HELLO_LEN + SERVER_UID_LEN];
        read_greeting(&mut stream, &mut greeting[..HELLO_LEN]).await?;
        let hello = Hello::decode(&greeting[..HELLO_LEN].try_into().unwrap_or_default())
            .map_err(ClientError::NotCq)?;
        if hello.version != PROTOCOL_VERSION {
            return Err(ClientError::VersionMismatch {
                server: hello.version,
                client: PROTOCOL_VERSION,
            });
        }
        read_greeting(&mut stream, &mut greeting[HELLO_LEN..]).await?;
        let server_uid = u32::from_be_bytes(greeting[HELLO_LEN..].try_into().unwrap_or_default());
        let nonce = Nonce::random();
        let request = Request {
            destination: peer.addr,
            nonce,
            action,
        };
        let body =
            postcard::to_allocvec(&request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        // A reply key spares a credential per reply, if the source can seal it for the uid the
        // server names (a lie there only makes the server unable to read the request).
        let key = ReplyKey::random();
        let (credential, reply_key) = match self
            .signer
            .credential_with_key(&body, &key, server_uid)
            .await
            .map_err(ClientError::Credential)?
        {
            Some(credential) => (credential, Some(key)),
            None => (
                self.signer
                    .credential_for(&body)
                    .await
                    .map_err(ClientError::Credential)?,
                None,
            ),
        };
        let mut framed = Framed::new(stream, FrameCodec::<Envelope, Envelope>::new());
        framed
            .send(Envelope {
                body,
                credential: credential.0,
            })
            .await
            .map_err(ClientError::Frame)?;
        Ok(Submission {
            framed,
            nonce,
            peer,
            reply_key,
            next_seq: 0,
            verifier: &self.verifier,
            job: JobId(0),
            ahead: 0,
            merged: false,
        })
    }
}

/// Reads the next part of the server's greeting, bounded by the reply timeout.
async fn read_greeting<St: Stream>(stream: &mut St, into: &mut [u8]) -> Result<(), ClientError> {
    match timeout(REPLY_TIMEOUT, stream.read_exact(into)).await {
        Err(_) => Err(ClientError::Timeout {
            during: "the hello",
        }),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ClientError::Closed {
            during: "the hello",
        }),
        Ok(Err(source)) => Err(ClientError::Io {
            during: "the hello",
            source,
        }),
        Ok(Ok(_)) => Ok(()),
    }
}

/// How a client re-attaches to its job after losing the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconnect {
    /// Delay before the first retry; it doubles up to `max_delay`.
    pub first_delay: Duration,
    /// Longest delay between retries.
    pub max_delay: Duration,
    /// Give up when the server has been unreachable this long.
    pub give_up_after: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            give_up_after: Duration::from_secs(3600),
        }
    }
}

/// A job the server has accepted for this client, and the connection its events come on.
#[derive(Debug)]
pub struct Submission<'a, St, A> {
    framed: Framed<St, FrameCodec<Envelope, Envelope>>,
    nonce: Nonce,
    peer: PeerInfo,
    /// The key the request's credential carried: replies tagged with it need no credential.
    reply_key: Option<ReplyKey>,
    /// Position of the next tagged reply.
    next_seq: u64,
    verifier: &'a A,
    /// The job's id on the server.
    pub job: JobId,
    /// Jobs ahead of it when it was accepted, including the running one.
    pub ahead: u32,
    /// Whether the request was merged into an existing equal job.
    pub merged: bool,
}

/// Something that happened to a submitted job.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobEvent {
    /// It started.
    Started,
    /// It ended.
    Finished(JobResult),
}

impl<St: crate::transport::Stream, A: Authenticator> Submission<'_, St, A> {
    /// The next event of the job.
    ///
    /// # Errors
    ///
    /// A [`ClientError`] when the connection breaks, a reply is not authentic, or the server
    /// reports an error.
    pub async fn next_event(&mut self) -> Result<JobEvent, ClientError> {
        match self.next_reply().await? {
            Event::Started { .. } => Ok(JobEvent::Started),
            Event::Finished {
                outcome,
                runtime_ms,
                ..
            } => Ok(JobEvent::Finished(JobResult {
                outcome,
                runtime: Duration::from_millis(runtime_ms),
            })),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Waits for the job to end.
    ///
    /// # Errors
    ///
    /// As [`next_event`](Self::next_event).
    pub async fn wait(mut self) -> Result<JobResult, ClientError> {
        loop {
            if let JobEvent::Finished(result) = self.next_event().await? {
                let _ = self.framed.close().await;
                return Ok(result);
            }
        }
    }

    /// Closes the connection cleanly (over TLS: with close_notify), so that the server sees
    /// an orderly end rather than a cut connection.
    pub async fn close(mut self) {
        let _ = self.framed.close().await;
    }

    /// Reads one reply, checks that the server made it for this request, and turns error
    /// replies into errors.
    async fn next_reply(&mut self) -> Result<Event, ClientError> {
        let envelope = match self.framed.next().await {
            None => {
                return Err(ClientError::Closed {
                    during: "the wait for the job",
                });
            }
            Some(Err(e)) => return Err(ClientError::Frame(e)),
            Some(Ok(envelope)) => envelope,
        };
        let verified = match &self.reply_key {
            // A credential is far longer than a tag: a tag-sized one must be the tag.
            Some(key) if envelope.credential.len() == REPLY_TAG_LEN => {
                if key.check(self.next_seq, &envelope.body, &envelope.credential) {
                    self.next_seq += 1;
                    Ok(())
                } else {
                    Err(AuthError::Mismatch(
                        "the reply's tag is not the one the request's key makes".to_owned(),
                    ))
                }
            }
            _ => self
                .verifier
                .verify(&envelope.body, &Credential(envelope.credential), &self.peer)
                .await
                .map(drop),
        };
        let reply = match (verified, postcard::from_bytes::<Reply>(&envelope.body)) {
            (Ok(_), Ok(reply)) => reply,
            (Ok(_), Err(e)) => return Err(ClientError::Protocol(e.to_string())),
            // An error reply triggers nothing, so its text is worth showing even unverified:
            // it usually says why (e.g. the server refused our credential for the same reason).
            (
                Err(why),
                Ok(Reply {
                    event: Event::Error { code, message },
                    ..
                }),
            ) => {
                let message = format!("{message}; the reply itself is unverified: {why}");
                return Err(ClientError::Server { code, message });
            }
            (Err(why), _) => return Err(ClientError::ReplyNotAuthentic(why)),
        };
        let for_us = reply.nonce == self.nonce
            || (reply.nonce == Nonce::NONE && matches!(reply.event, Event::Error { .. }));
        if !for_us {
            return Err(ClientError::ReplyNotAuthentic(AuthError::Mismatch(
                "the reply answers another request".to_owned(),
            )));
        }
        match reply.event {
            Event::Error { code, message } => Err(ClientError::Server { code, message }),
            event => Ok(event),
        }
    }
}

/// Why the client could not get its answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server closed the connection.
    #[error("the server closed the connection during {during}")]
    Closed {
        /// What the client was waiting for.
        during: &'static str,
    },
    /// The client could not make its credential.
    #[error("cannot make a credential: {0}")]
    Credential(#[source] AuthError),
    /// Reading or writing a frame failed.
    #[error("{0}")]
    Frame(#[source] FrameError),
    /// A connection error outside frames.
    #[error("connection error during {during}: {source}")]
    Io {
        /// What the client was doing.
        during: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The peer is not a cq server.
    #[error("{0}")]
    NotCq(#[source] HelloError),
    /// The server sent something the protocol does not allow here.
    #[error("unexpected reply from the server: {0}")]
    Protocol(String),
    /// A reply did not come from the server, or not for this request.
    #[error("the server's reply could not be authenticated: {0}")]
    ReplyNotAuthentic(#[source] AuthError),
    /// The server refused the request or failed.
    #[error("{message} [{code}]")]
    Server {
        /// The stable error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server did not answer in time.
    #[error("the server did not answer in time during {during}")]
    Timeout {
        /// What the client was waiting for.
        during: &'static str,
    },
    /// No connection could be made.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Client and server speak different protocol versions.
    #[error("the server speaks cq protocol {server}, this client speaks {client}: upgrade the {}", if server > client { "client (cq_client)" } else { "server (cq_server)" })]
    VersionMismatch {
        /// The server's version.
        server: u16,
        /// Ours.
        client: u16,
    },
}

impl ClientError {
    /// Whether trying again later may succeed: the connection was lost or refused, or the
    /// server was shutting down. Refusals and authentication failures are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Closed { .. }
            | Self::Timeout { .. }
            | Self::Frame(FrameError::Truncated { .. }) => true,
            Self::Transport(TransportError::Connect { .. }) => true,
            // A refused TLS certificate also shows as an I/O error (invalid data): only a lost
            // connection is worth retrying.
            Self::Io { source, .. } | Self::Frame(FrameError::Io(source)) => matches!(
                source.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::TimedOut
            ),
            Self::Server { code, .. } => *code == ErrorCode::SHUTTING_DOWN,
            _ => false,
        }
    }

    /// A hint for the user on what to do, when there is a typical fix.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Transport(TransportError::Connect { .. }) => {
                Some("is cq_server running there, and are host and port right?")
            }
            Self::Io {
                during: "the hello",
                source,
            } if source.to_string().contains("alert") => Some(
                "the server refused this client's TLS certificate: it must be signed by the server's CA, \
                 unexpired, and given with --tls-cert/--tls-key",
            ),
            Self::NotCq(HelloError::NotCq { looks_like }) if looks_like.contains("TLS") => {
                Some("the server expects TLS: use the same --auth as the server")
            }
            Self::NotCq(_) => {
                Some("check host and port: something other than cq_server answers there")
            }
            Self::Closed {
                during: "the hello",
            } => Some(
                "the server may be at its connection limit, or expect another transport (--auth)",
            ),
            Self::ReplyNotAuthentic(_) => Some(
                "something other than the expected cq_server answered; do not trust this result",
            ),
            _ => None,
        }
    }
}
