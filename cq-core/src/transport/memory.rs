//! An in-memory transport over `tokio::io::duplex`, for tests and for embedding without
//! sockets.

use std::io;
use std::net::SocketAddr;

use async_trait::async_trait;
use tokio::io::DuplexStream;
use tokio::sync::{Mutex, mpsc};

use super::{Connector, Listener, PeerInfo, PendingConnection, TransportError};

const BUFFER: usize = 64 * 1024;

/// Creates a connected listener / connector pair.
pub fn memory_transport() -> (MemoryListener, MemoryConnector) {
    let (tx, rx) = mpsc::channel(64);
    (
        MemoryListener {
            incoming: Mutex::new(rx),
        },
        MemoryConnector { outgoing: tx },
    )
}

/// Server side of [`memory_transport`].
#[derive(Debug)]
pub struct MemoryListener {
    incoming: Mutex<mpsc::Receiver<DuplexStream>>,
}

/// Client side of [`memory_transport`].
#[derive(Clone, Debug)]
pub struct MemoryConnector {
    outgoing: mpsc::Sender<DuplexStream>,
}

/// A connection accepted by a [`MemoryListener`].
#[derive(Debug)]
pub struct MemoryPending(DuplexStream);

#[async_trait]
impl Listener for MemoryListener {
    type Pending = MemoryPending;

    async fn accept(&self) -> io::Result<MemoryPending> {
        let mut incoming = self.incoming.lock().await;
        match incoming.recv().await {
            Some(stream) => Ok(MemoryPending(stream)),
            // Every connector is gone: no connection will ever come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }
}

#[async_trait]
impl PendingConnection for MemoryPending {
    type Stream = DuplexStream;

    async fn establish(self) -> Result<(DuplexStream, PeerInfo), TransportError> {
        Ok((self.0, PeerInfo::default()))
    }
}

#[async_trait]
impl Connector for MemoryConnector {
    type Stream = DuplexStream;

    async fn connect(&self) -> Result<(DuplexStream, PeerInfo), TransportError> {
        let (client, server) = tokio::io::duplex(BUFFER);
        self.outgoing
            .send(server)
            .await
            .map_err(|_| TransportError::Connect {
                server: self.server_name(),
                source: io::Error::new(io::ErrorKind::ConnectionRefused, "memory listener is gone"),
            })?;
        Ok((client, PeerInfo::default()))
    }

    fn server_name(&self) -> String {
        "memory".to_owned()
    }
}
