//! Identities from the kernel, for connections over a Unix socket (`SO_PEERCRED`): on one
//! host the kernel already knows who connected, so no credential service is needed.
//!
//! Server side, [`PeerCredAuthenticator`] takes the peer's uid (and its account's name) as
//! the requester; [`PeerCredOr`] does that for Unix-socket connections and leaves the others
//! to another authenticator (MUNGE, TLS), for a server that listens on both. Client side,
//! [`PeerCredServerAuthenticator`] believes replies only from a server process running as one
//! of the expected uids (as `--server-uid` does for MUNGE), so a socket some other user put in
//! the way cannot answer for the server.

use async_trait::async_trait;
use cq_core::auth::AuthMethod;
use cq_core::{AuthError, Authenticator, Credential, Identity, PeerInfo};

/// Server side: the requester is the process at the other end of the Unix socket.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerCredAuthenticator;

#[async_trait]
impl Authenticator for PeerCredAuthenticator {
    async fn verify(
        &self,
        _message: &[u8],
        _: &Credential,
        peer: &PeerInfo,
    ) -> Result<Identity, AuthError> {
        let unix = peer.unix.ok_or_else(|| {
            AuthError::Invalid("not a Unix-socket connection: no peer credentials".into())
        })?;
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(unix.uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        Ok(Identity {
            uid: unix.uid,
            gid: unix.gid,
            user,
            host: None,
            method: AuthMethod::PeerCred,
            principal: None,
        })
    }
}

/// Server side: [`PeerCredAuthenticator`] for Unix-socket connections, `other` for the rest.
#[derive(Clone, Debug)]
pub struct PeerCredOr<A> {
    other: A,
}

impl<A> PeerCredOr<A> {
    /// Unix-socket peers by their kernel credentials, everybody else by `other`.
    pub fn new(other: A) -> Self {
        Self { other }
    }

    /// The authenticator for connections that are not over a Unix socket.
    pub fn other(&self) -> &A {
        &self.other
    }
}

#[async_trait]
impl<A: Authenticator> Authenticator for PeerCredOr<A> {
    async fn verify(
        &self,
        message: &[u8],
        credential: &Credential,
        peer: &PeerInfo,
    ) -> Result<Identity, AuthError> {
        if peer.unix.is_some() {
            PeerCredAuthenticator
                .verify(message, credential, peer)
                .await
        } else {
            self.other.verify(message, credential, peer).await
        }
    }

    async fn verify_request(
        &self,
        message: &[u8],
        credential: &Credential,
        peer: &PeerInfo,
    ) -> Result<cq_core::auth::Verified, AuthError> {
        if peer.unix.is_some() {
            PeerCredAuthenticator
                .verify_request(message, credential, peer)
                .await
        } else {
            self.other.verify_request(message, credential, peer).await
        }
    }

    fn still_valid(&self, identity: &Identity) -> Result<(), String> {
        match identity.method {
            AuthMethod::PeerCred => Ok(()),
            _ => self.other.still_valid(identity),
        }
    }
}

/// Client side: replies on a Unix-socket connection are the server's when the process at the
/// other end runs as one of `uids`.
#[derive(Clone, Debug)]
pub struct PeerCredServerAuthenticator {
    uids: Vec<u32>,
}

impl PeerCredServerAuthenticator {
    /// Believes a server running as one of `uids`.
    pub fn new(uids: Vec<u32>) -> Self {
        Self { uids }
    }
}

#[async_trait]
impl Authenticator for PeerCredServerAuthenticator {
    async fn verify(
        &self,
        _message: &[u8],
        _: &Credential,
        peer: &PeerInfo,
    ) -> Result<Identity, AuthError> {
        let unix = peer.unix.ok_or_else(|| {
            AuthError::Invalid("not a Unix-socket connection: no peer credentials".into())
        })?;
        if !self.uids.contains(&unix.uid) {
            return Err(AuthError::Unauthorized(format!(
                "the process answering on the socket runs as uid {}, not as the server's (expected {:?}; see --server-uid)",
                unix.uid, self.uids
            )));
        }
        Ok(Identity {
            uid: unix.uid,
            gid: unix.gid,
            user: None,
            host: None,
            method: AuthMethod::PeerCred,
            principal: None,
        })
    }
}
