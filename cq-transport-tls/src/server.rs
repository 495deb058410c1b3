//! Accepting TLS connections.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use cq_core::protocol::{ErrorCode, HELLO_LEN, MAGIC, plain_refusal};
use cq_core::transport::{Listener, PeerInfo, PendingConnection, TransportError};
use cq_transport_tcp::{TcpListener, TcpPending};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::ServerTls;

/// Accepts TCP connections and runs the TLS handshake, requiring a client certificate signed
/// by the configured CA.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: Arc<RwLock<TlsAcceptor>>,
}

/// Puts a new TLS configuration in force for the connections a [`TlsListener`] accepts from
/// then on (e.g. a new revocation list, on SIGHUP).
#[derive(Clone)]
pub struct TlsReloader(Arc<RwLock<TlsAcceptor>>);

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsReloader")
    }
}

impl TlsReloader {
    /// Uses `tls` for every connection accepted from now on.
    pub fn replace(&self, tls: &ServerTls) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = TlsAcceptor::from(tls.config());
    }
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TlsPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPending")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Serves TLS with `tls` on a bound TCP listener.
    pub fn new(tcp: TcpListener, tls: &ServerTls) -> Self {
        Self {
            tcp,
            acceptor: Arc::new(RwLock::new(TlsAcceptor::from(tls.config()))),
        }
    }

    /// A handle that changes the configuration while the listener runs.
    pub fn reloader(&self) -> TlsReloader {
        TlsReloader(self.acceptor.clone())
    }
}

/// A TCP connection whose TLS handshake has not run yet.
pub struct TlsPending {
    tcp: TcpPending,
    acceptor: TlsAcceptor,
}

#[async_trait]
impl Listener for TlsListener {
    type Pending = TlsPending;

    async fn accept(&self) -> io::Result<TlsPending> {
        let tcp = self.tcp.accept().await?;
        let acceptor = self
            .acceptor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(TlsPending { tcp, acceptor })
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.local_addr()
    }
}

#[async_trait]
impl PendingConnection for TlsPending {
    type Stream = TlsStream<TcpStream>;

    async fn establish(self) -> Result<(Self::Stream, PeerInfo), TransportError> {
        let (mut tcp, info) = self.tcp.establish().await?;
        refuse_plain_cq_client(&mut tcp, &info).await?;
        let stream = self
            .acceptor
            .accept(tcp)
            .await
            .map_err(|e| TransportError::Handshake {
                peer: info.describe(),
                reason: format!("TLS handshake failed: {e}"),
            })?;
        let peer = crate::peer_chain(stream.get_ref().1);
        Ok((stream, info.with_tls(peer)))
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        self.tcp.peer_addr()
    }
}

/// A TLS client starts with a handshake record (0x16); a cq client that does not use TLS
/// starts with the cq magic. Tell the latter what is wrong in its own protocol, instead of
/// letting the TLS handshake fail with a message it cannot read.
async fn refuse_plain_cq_client(
    tcp: &mut TcpStream,
    info: &PeerInfo,
) -> Result<(), TransportError> {
    let mut first = [0; 1];
    let handshake = |reason: String| TransportError::Handshake {
        peer: info.describe(),
        reason,
    };
    match tcp.peek(&mut first).await {
        Ok(0) => return Err(handshake("closed before the TLS handshake".to_owned())),
        Ok(_) if first[0] == MAGIC[0] => {}
        _ => return Ok(()),
    }
    // Read the client's hello first: closing with unread input would reset the connection and
    // could destroy the refusal before the client reads it.
    let mut hello = [0; HELLO_LEN];
    let _ = tcp.read_exact(&mut hello).await;
    let refusal = plain_refusal(
        ErrorCode::BAD_HELLO,
        "this server only speaks cq over mutual TLS: use --auth tls with --tls-ca, --tls-cert and --tls-key",
    );
    let _ = tcp.write_all(&refusal).await;
    let _ = tcp.shutdown().await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        (&mut *tcp).take(64 * 1024).read_to_end(&mut rest),
    )
    .await;
    Err(handshake(
        "a cq client without TLS connected; it was told to use --auth tls".to_owned(),
    ))
}
