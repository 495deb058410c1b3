//! Connecting over TLS.

use async_trait::async_trait;
use cq_core::transport::{Connector, PeerInfo, TransportError};
use cq_transport_tcp::TcpConnector;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::ClientTls;

/// Connects to a cq server over TLS, checking its certificate against the CA and its name.
#[derive(Clone)]
pub struct TlsConnector {
    tcp: TcpConnector,
    name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("tcp", &self.tcp)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// Connects to `host:port`; the server's certificate must name `server_name` (a DNS name
    /// or an IP address; usually `host` itself).
    ///
    /// # Errors
    ///
    /// [`TransportError::Handshake`] when `server_name` is neither a DNS name nor an address.
    pub fn new(
        host: &str,
        port: u16,
        server_name: &str,
        tls: &ClientTls,
    ) -> Result<Self, TransportError> {
        let name = ServerName::try_from(server_name.to_owned()).map_err(|e| {
            TransportError::Handshake {
                peer: format!("{host}:{port}"),
                reason: format!("{server_name:?} is not a valid server name: {e}"),
            }
        })?;
        Ok(Self {
            tcp: TcpConnector::new(host, port),
            name,
            connector: tokio_rustls::TlsConnector::from(tls.config()),
        })
    }
}

#[async_trait]
impl Connector for TlsConnector {
    type Stream = TlsStream<TcpStream>;

    async fn connect(&self) -> Result<(Self::Stream, PeerInfo), TransportError> {
        let (tcp, info) = self.tcp.connect().await?;
        let stream = self
            .connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| {
                // Garbage instead of a TLS record: most likely a cq server without TLS.
                let not_tls = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|inner| matches!(inner, rustls::Error::InvalidMessage(_)));
                let advice = if not_tls {
                    "; the server does not seem to use TLS: does it run with --auth tls?"
                } else {
                    ""
                };
                TransportError::Handshake {
                    peer: self.server_name(),
                    reason: format!("TLS handshake failed: {e}{advice}"),
                }
            })?;
        let peer = crate::peer_chain(stream.get_ref().1);
        Ok((stream, info.with_tls(peer)))
    }

    fn server_name(&self) -> String {
        self.tcp.server_name()
    }
}
