//! One server on two listeners (TCP for other hosts and a Unix socket for this one, say).

use std::io;
use std::net::SocketAddr;

use async_trait::async_trait;

use super::{Listener, PeerInfo, PendingConnection, Stream, TransportError};

/// Accepts connections from both `A` and `B`; each connection keeps what its own transport
/// says about its peer.
#[derive(Debug)]
pub struct EitherListener<A, B> {
    a: A,
    b: B,
}

impl<A, B> EitherListener<A, B> {
    /// Serves `a` and `b`.
    pub fn new(a: A, b: B) -> Self {
        Self { a, b }
    }
}

/// A connection accepted by one of the two listeners.
#[derive(Debug)]
pub enum EitherPending<A, B> {
    /// From the first.
    A(A),
    /// From the second.
    B(B),
}

#[async_trait]
impl<A: Listener + Sync, B: Listener + Sync> Listener for EitherListener<A, B> {
    type Pending = EitherPending<A::Pending, B::Pending>;

    async fn accept(&self) -> io::Result<Self::Pending> {
        tokio::select! {
            accepted = self.a.accept() => accepted.map(EitherPending::A),
            accepted = self.b.accept() => accepted.map(EitherPending::B),
        }
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.a.local_addr().or_else(|| self.b.local_addr())
    }
}

#[async_trait]
impl<A: PendingConnection, B: PendingConnection> PendingConnection for EitherPending<A, B> {
    type Stream = Box<dyn Stream>;

    async fn establish(self) -> Result<(Box<dyn Stream>, PeerInfo), TransportError> {
        match self {
            Self::A(pending) => {
                let (stream, peer) = pending.establish().await?;
                Ok((Box::new(stream), peer))
            }
            Self::B(pending) => {
                let (stream, peer) = pending.establish().await?;
                Ok((Box::new(stream), peer))
            }
        }
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::A(pending) => pending.peer_addr(),
            Self::B(pending) => pending.peer_addr(),
        }
    }

    fn peer_uid(&self) -> Option<u32> {
        match self {
            Self::A(pending) => pending.peer_uid(),
            Self::B(pending) => pending.peer_uid(),
        }
    }
}
