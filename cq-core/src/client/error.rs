//! Why a client request failed, and whether trying again may help.

use std::io;

use crate::auth::AuthError;
use crate::protocol::{ErrorCode, FrameError, HelloError};
use crate::transport::TransportError;

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
    #[error("{} [{code}]", crate::printable::printable(message))]
    Server {
        /// The stable error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// Whether the reply was authenticated as the server's answer to this request.
        /// Errors sent before a request could be authenticated never are: anybody on the
        /// way could have sent them, so they are worth showing but not acting on.
        verified: bool,
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
            // A peer silent in the hello is not cq_server (which greets at once): no retry.
            Self::Timeout {
                during: "the hello",
            } => false,
            Self::Closed { .. }
            | Self::Timeout { .. }
            | Self::Frame(FrameError::Truncated { .. }) => true,
            // Not allowed to reach the server (a socket's permissions) will not mend by itself.
            Self::Transport(TransportError::Connect { source, .. }) => {
                source.kind() != io::ErrorKind::PermissionDenied
            }
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
            Self::Server { code, .. } => {
                *code == ErrorCode::SHUTTING_DOWN || *code == ErrorCode::BUSY
            }
            _ => false,
        }
    }

    /// A hint for the user on what to do, when there is a typical fix.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Transport(TransportError::Connect { .. }) => {
                Some("is cq_server running there, and are host and port right?")
            }
            Self::Transport(TransportError::Resolve { .. }) => {
                Some("check the host name (-h), or give the server's address")
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
            Self::Timeout {
                during: "the hello",
            } => Some(
                "something accepts connections there but says nothing: check host and port (cq_server greets at once)",
            ),
            Self::ReplyNotAuthentic(_) => Some(
                "something other than the expected cq_server answered; do not trust this result",
            ),
            _ => None,
        }
    }
}
