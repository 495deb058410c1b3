//! Transport boundary: listeners that yield authenticated-ready streams, and connectors.
//!
//! Accepting happens in two phases so that one slow peer (a TLS handshake that never ends)
//! cannot stall the accept loop: [`Listener::accept`] is cheap, and
//! [`PendingConnection::establish`] runs inside the connection's own task under a timeout.

mod either;
mod memory;

use std::io;
use std::net::SocketAddr;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

pub use either::{EitherListener, EitherPending};
pub use memory::{MemoryConnector, MemoryListener, memory_transport};

/// A byte stream a transport yields.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// What the transport knows about the other end of a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The peer's address.
    pub addr: Option<SocketAddr>,
    /// This end's address of the connection: on a server, the address the client dialled.
    pub local_addr: Option<SocketAddr>,
    /// The verified TLS identity, when the transport is TLS.
    pub tls: Option<TlsPeer>,
    /// The process at the other end, as the kernel says, when the transport is a Unix
    /// socket.
    pub unix: Option<UnixPeer>,
}

/// The process at the other end of a Unix socket, as the kernel recorded it when the
/// connection was made (`SO_PEERCRED`): it cannot be forged by the peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnixPeer {
    /// Its effective user id.
    pub uid: u32,
    /// Its effective group id.
    pub gid: u32,
    /// Its process id, when known.
    pub pid: Option<i32>,
}

impl UnixPeer {
    /// A peer with these ids.
    pub fn new(uid: u32, gid: u32, pid: Option<i32>) -> Self {
        Self { uid, gid, pid }
    }
}

impl PeerInfo {
    /// Info for a connection between two socket addresses.
    pub fn socket(addr: SocketAddr, local_addr: SocketAddr) -> Self {
        Self {
            addr: Some(addr),
            local_addr: Some(local_addr),
            tls: None,
            unix: None,
        }
    }

    /// Info for a connection over a Unix socket with the process `peer`.
    pub fn unix(peer: UnixPeer) -> Self {
        Self {
            unix: Some(peer),
            ..Self::default()
        }
    }

    /// Adds the verified TLS identity, as a TLS transport does on top of TCP's info.
    #[must_use]
    pub fn with_tls(mut self, tls: TlsPeer) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The peer's host as text (its IP address, IPv4-mapped addresses shown as IPv4), for
    /// [`Identity::host`](crate::Identity::host).
    pub fn host(&self) -> Option<String> {
        self.addr.map(|a| a.ip().to_canonical().to_string())
    }

    /// The peer as text for logs: its address, or "local" (with its uid and pid over a
    /// Unix socket).
    pub fn describe(&self) -> String {
        match (self.addr, self.unix) {
            (Some(addr), _) => addr.to_string(),
            (None, Some(unix)) => match unix.pid {
                Some(pid) => format!("local (uid {}, pid {pid})", unix.uid),
                None => format!("local (uid {})", unix.uid),
            },
            (None, None) => "local".to_owned(),
        }
    }
}

/// The verified certificate chain of a TLS peer, leaf first, as DER bytes (so that cq-core
/// does not depend on a TLS library).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsPeer {
    /// DER certificates, leaf first.
    pub chain: Vec<Vec<u8>>,
}

impl TlsPeer {
    /// A peer identified by this verified chain.
    pub fn new(chain: Vec<Vec<u8>>) -> Self {
        Self { chain }
    }
}

/// Yields incoming connections.
#[async_trait]
pub trait Listener: Send + 'static {
    /// A connection accepted but not yet set up (e.g. before its TLS handshake).
    type Pending: PendingConnection;

    /// Waits for the next incoming connection. Must be cheap: no handshakes here.
    ///
    /// # Errors
    ///
    /// The operating system's accept error; the server logs it and carries on.
    async fn accept(&self) -> io::Result<Self::Pending>;

    /// The address the listener is bound to, if it has one.
    fn local_addr(&self) -> Option<SocketAddr>;
}

/// An accepted connection that still has to be set up.
#[async_trait]
pub trait PendingConnection: Send + 'static {
    /// The established stream.
    type Stream: Stream;

    /// Finishes setting up the connection (TCP options, TLS handshake).
    ///
    /// # Errors
    ///
    /// [`TransportError::Handshake`] when the peer fails the transport's own checks.
    async fn establish(self) -> Result<(Self::Stream, PeerInfo), TransportError>;

    /// The peer's address, known before any set-up: the server limits connections per
    /// address with it. `None` when the transport has no addresses.
    fn peer_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// The peer's uid, when the transport knows it before any set-up (a Unix socket): the
    /// server limits connections per local user with it, as it does per address.
    fn peer_uid(&self) -> Option<u32> {
        None
    }
}

/// Opens connections to one server.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// The connected stream.
    type Stream: Stream;

    /// Connects and sets up the stream.
    ///
    /// # Errors
    ///
    /// [`TransportError::Connect`] when no address of the server answers.
    async fn connect(&self) -> Result<(Self::Stream, PeerInfo), TransportError>;

    /// The server as the user named it (e.g. `buildhost:48005`), for messages and scripts.
    fn server_name(&self) -> String;
}

/// A failure below the cq protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The server's name has no address (a typo, or no name service).
    #[error("cannot find the address of {server}: {source}")]
    Resolve {
        /// The server as named by the user.
        server: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// No connection could be made.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// The server as named by the user.
        server: String,
        /// The last connection error.
        #[source]
        source: io::Error,
    },
    /// The connection was made but its set-up failed.
    #[error("connection set-up with {peer} failed: {reason}")]
    Handshake {
        /// The peer.
        peer: String,
        /// What went wrong and what to check.
        reason: String,
    },
}
