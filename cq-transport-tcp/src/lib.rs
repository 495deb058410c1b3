//! cq transport over plain TCP.
//!
//! TCP carries no identity of its own: pair it with an authenticator that signs every
//! message (MUNGE). `TCP_NODELAY` is set on every connection because cq's messages are small
//! and latency matters more than packet count.
//!
//! # Layout
//!
//! One file: [`TcpListener`] (server side) and [`TcpConnector`] (client side).

#![warn(missing_docs, unreachable_pub)]

use std::io;
use std::net::SocketAddr;

use async_trait::async_trait;
use cq_core::transport::{Connector, Listener, PeerInfo, PendingConnection, TransportError};
use tokio::net::{TcpStream, lookup_host};

/// Accepts TCP connections.
#[derive(Debug)]
pub struct TcpListener {
    inner: tokio::net::TcpListener,
}

impl TcpListener {
    /// Binds to `addr` (port 0 picks a free port; see [`Listener::local_addr`]).
    ///
    /// # Errors
    ///
    /// The operating system's error, e.g. the address is in use.
    pub async fn bind(addr: impl tokio::net::ToSocketAddrs) -> io::Result<Self> {
        Ok(Self {
            inner: tokio::net::TcpListener::bind(addr).await?,
        })
    }

    /// Wraps a listener bound elsewhere.
    pub fn from_tokio(inner: tokio::net::TcpListener) -> Self {
        Self { inner }
    }
}

/// A TCP connection accepted but not yet set up.
#[derive(Debug)]
pub struct TcpPending {
    stream: TcpStream,
    peer: SocketAddr,
}

#[async_trait]
impl Listener for TcpListener {
    type Pending = TcpPending;

    async fn accept(&self) -> io::Result<TcpPending> {
        let (stream, peer) = self.inner.accept().await?;
        Ok(TcpPending { stream, peer })
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr().ok()
    }
}

#[async_trait]
impl PendingConnection for TcpPending {
    type Stream = TcpStream;

    async fn establish(self) -> Result<(TcpStream, PeerInfo), TransportError> {
        let handshake = |e: io::Error| TransportError::Handshake {
            peer: self.peer.to_string(),
            reason: e.to_string(),
        };
        self.stream.set_nodelay(true).map_err(handshake)?;
        let local = self.stream.local_addr().map_err(handshake)?;
        Ok((self.stream, PeerInfo::socket(self.peer, local)))
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }
}

/// Connects to one server by host name (or address) and port.
#[derive(Clone, Debug)]
pub struct TcpConnector {
    host: String,
    port: u16,
}

impl TcpConnector {
    /// A connector for `host:port`; the name is resolved at each connect.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }
}

#[async_trait]
impl Connector for TcpConnector {
    type Stream = TcpStream;

    async fn connect(&self) -> Result<(TcpStream, PeerInfo), TransportError> {
        let failed = |source| TransportError::Connect {
            server: self.server_name(),
            source,
        };
        let addrs = lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|source| TransportError::Resolve {
                server: self.server_name(),
                source,
            })?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name has no address");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    stream.set_nodelay(true).map_err(failed)?;
                    let local = stream.local_addr().map_err(failed)?;
                    let peer = stream.peer_addr().map_err(failed)?;
                    return Ok((stream, PeerInfo::socket(peer, local)));
                }
                Err(e) => last = e,
            }
        }
        Err(failed(last))
    }

    fn server_name(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}
