//! Authentication at the boundary: who sent a request, and is a reply really the server's.
//!
//! Both directions use the same two traits. A client signs each request with its
//! [`CredentialSource`] and the server checks it with its [`Authenticator`]; the server signs
//! each reply and the client checks it, so a finished-job notice (which may trigger an install
//! script) cannot be forged by anybody on the network.
//!
//! A credential is always made for the exact bytes of one message, and those bytes carry the
//! destination and a fresh nonce (see [`protocol`](crate::protocol)), so a captured credential
//! cannot be attached to another message or replayed to another server.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use hmac::Mac as _;

use crate::transport::PeerInfo;

/// Opaque proof that some party made a message: a MUNGE credential, or empty when the
/// transport itself authenticates the peer (mutual TLS).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credential(pub Vec<u8>);

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Credentials are bearer tokens for their lifetime: never print them.
        write!(f, "Credential({} bytes)", self.0.len())
    }
}

/// Who made a message, as established by an [`Authenticator`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Numeric user id of the requester (on its host, which shares the uid space).
    pub uid: u32,
    /// Numeric primary group id.
    pub gid: u32,
    /// User name, when the verifying host knows the uid.
    pub user: Option<String>,
    /// The peer's host (address), when known.
    pub host: Option<String>,
    /// How the identity was established.
    pub method: AuthMethod,
    /// What the credential named beyond the uid, for authenticators whose credentials can
    /// be withdrawn later (for a certificate: its name and serial number), so that they can
    /// tell whether it still holds when a job queued with it comes to start
    /// ([`Authenticator::still_valid`]).
    pub principal: Option<String>,
}

impl Identity {
    /// The identity of this process, for jobs an embedding daemon submits itself.
    pub fn local() -> Self {
        let uid = nix::unistd::getuid();
        let user = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name);
        Self {
            uid: uid.as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            user,
            host: None,
            method: AuthMethod::Local,
            principal: None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            // A certificate name is whatever its holder asked for: never raw in a log line.
            Some(user) => write!(f, "{}({})", crate::printable::printable(user), self.uid)?,
            None => write!(f, "uid {}", self.uid)?,
        }
        if let Some(host) = &self.host {
            write!(f, "@{}", crate::printable::printable(host))?;
        }
        Ok(())
    }
}

/// How an [`Identity`] was established.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthMethod {
    /// An authenticator outside this project, named by its author.
    Custom(&'static str),
    /// Submitted in-process by the embedding daemon.
    Local,
    /// A MUNGE credential.
    Munge,
    /// A client certificate verified by mutual TLS.
    MutualTls,
    /// The kernel's word for the process at the other end of a Unix socket (`SO_PEERCRED`).
    PeerCred,
}

/// A secret one request's client hands to the server inside its credential, so that the
/// server's replies to that request are authenticated by a MAC (HMAC-SHA256) instead of one
/// credential each: one round trip to the credential service per request instead of one per
/// reply.
///
/// Only a source that can make the key readable by the server alone may carry it (MUNGE:
/// the credential is encrypted and restricted to the server's uid), so a reply with a valid
/// tag comes from a party the client would have believed anyway.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplyKey([u8; 32]);

/// Length of a reply's tag, and of a [`ReplyKey`].
pub const REPLY_TAG_LEN: usize = 32;

impl ReplyKey {
    /// A fresh random key.
    ///
    /// # Panics
    ///
    /// If the operating system has no randomness to give, which leaves nothing safe to do.
    pub fn random() -> Self {
        let mut key = [0; 32];
        getrandom::fill(&mut key).expect("the operating system's random source failed");
        Self(key)
    }

    /// The key in `bytes`, as a verifier recovers it from a credential.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key's bytes, for a source to seal into its credential.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The tag of the `seq`-th reply (from 0) to the request, whose bytes are `body`.
    pub fn tag(&self, seq: u64, body: &[u8]) -> [u8; REPLY_TAG_LEN] {
        self.mac(seq, body).finalize().into_bytes().into()
    }

    /// Whether `tag` is the tag of the `seq`-th reply `body` (in constant time).
    pub fn check(&self, seq: u64, body: &[u8], tag: &[u8]) -> bool {
        self.mac(seq, body).verify_slice(tag).is_ok()
    }

    fn mac(&self, seq: u64, body: &[u8]) -> hmac::Hmac<sha2::Sha256> {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0)
            .expect("HMAC takes keys of any length");
        // The sequence number makes each tag good for one position: a replayed or reordered
        // reply does not verify.
        mac.update(b"cq-reply-v1\0");
        mac.update(&seq.to_be_bytes());
        mac.update(body);
        mac
    }
}

impl fmt::Debug for ReplyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplyKey(..)")
    }
}

/// What a verified request credential tells the server.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    /// Who made the request.
    pub identity: Identity,
    /// The key the credential carries for authenticating the replies, if any.
    pub reply_key: Option<ReplyKey>,
    /// Until when the same credential would pass this authenticator again (a credential
    /// service's own replay check may not survive its restart): the server refuses the same
    /// request as a replay until then. `None` when replay is impossible anyway (the transport
    /// authenticates each connection, as mutual TLS does).
    pub replayable_until: Option<SystemTime>,
}

impl Verified {
    /// A verified `identity` with no reply key, whose credential cannot be replayed.
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            reply_key: None,
            replayable_until: None,
        }
    }
}

/// Makes credentials for outgoing messages.
#[async_trait]
pub trait CredentialSource: Send + Sync + 'static {
    /// Makes a credential bound to exactly `message`.
    ///
    /// # Errors
    ///
    /// [`AuthError::Unavailable`] when the credential service cannot be reached.
    async fn credential_for(&self, message: &[u8]) -> Result<Credential, AuthError>;

    /// Makes a credential bound to exactly `message` that also carries `key`, readable only
    /// by a server running as `server_uid`; `None` when this source cannot (or will not, for
    /// that uid) seal a key, and the replies are then checked one credential each.
    ///
    /// # Errors
    ///
    /// As [`credential_for`](Self::credential_for).
    async fn credential_with_key(
        &self,
        message: &[u8],
        key: &ReplyKey,
        server_uid: u32,
    ) -> Result<Option<Credential>, AuthError> {
        let _ = (message, key, server_uid);
        Ok(None)
    }
}

/// Verifies credentials on incoming messages.
///
/// Replay protection is the implementer's part of the bargain: a credential that could be
/// captured and presented again (a token, a signature over the message) must either be
/// refused the second time by the authenticator itself, or say until when it could pass
/// ([`Verified::replayable_until`]), and the server then refuses the same request until
/// that time. Credentials bound to the connection (mutual TLS, a Unix socket's peer
/// credentials, [`PeerInfo::unix`](crate::PeerInfo::unix)) cannot be replayed.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// Checks that `credential` was made for exactly `message` by a party this side trusts,
    /// and says who that party is.
    ///
    /// # Errors
    ///
    /// An [`AuthError`] naming why the credential is refused.
    async fn verify(
        &self,
        message: &[u8],
        credential: &Credential,
        peer: &PeerInfo,
    ) -> Result<Identity, AuthError>;

    /// [`verify`](Self::verify) for a request, also returning the [`ReplyKey`] the credential
    /// carries and how long it could be replayed. The default (no key, no replay) suits
    /// authenticators whose credentials cannot be presented twice; one whose credentials
    /// can must say until when, or implement its own replay protection.
    ///
    /// # Errors
    ///
    /// As [`verify`](Self::verify).
    async fn verify_request(
        &self,
        message: &[u8],
        credential: &Credential,
        peer: &PeerInfo,
    ) -> Result<Verified, AuthError> {
        self.verify(message, credential, peer)
            .await
            .map(Verified::new)
    }

    /// Whether the credential behind `identity`, accepted earlier, still holds now (e.g. its
    /// certificate was not revoked since): the server asks before it starts a job queued with
    /// it. The default says yes, for credentials that cannot be withdrawn.
    ///
    /// # Errors
    ///
    /// Why it no longer holds.
    fn still_valid(&self, identity: &Identity) -> Result<(), String> {
        let _ = identity;
        Ok(())
    }
}

#[async_trait]
impl<T: CredentialSource + ?Sized> CredentialSource for Arc<T> {
    async fn credential_for(&self, message: &[u8]) -> Result<Credential, AuthError> {
        (**self).credential_for(message).await
    }

    async fn credential_with_key(
        &self,
        message: &[u8],
        key: &ReplyKey,
        server_uid: u32,
    ) -> Result<Option<Credential>, AuthError> {
        (**self).credential_with_key(message, key, server_uid).await
    }
}

#[async_trait]
impl<T: CredentialSource + ?Sized> CredentialSource for Box<T> {
    async fn credential_for(&self, message: &[u8]) -> Result<Credential, AuthError> {
        (**self).credential_for(message).await
    }

    async fn credential_with_key(
        &self,
        message: &[u8],
        key: &ReplyKey,
        server_uid: u32,
    ) -> Result<Option<Credential>, AuthError> {
        (**self).credential_with_key(message, key, server_uid).await
    }
}

#[async_trait]
impl<T: Authenticator + ?Sized> Authenticator for Arc<T> {
    async fn verify(
        &self,
        message: &[u8],
        credential: &Credential,
        peer: &PeerInfo,
    ) -> Result<Identity, AuthError> {
        (**self).verify(message, credential, peer).await
    }

    async fn verify_request(
        &self,
        message: &[u8],
        credential: &Credential,
        peer: &PeerInfo,
    ) -> Result<Verified, AuthError> {
        (**self).verify_request(message, credential, peer).await
    }

    fn still_valid(&self, identity: &Identity) -> Result<(), String> {
        (**self).still_valid(identity)
    }
}

#[async_trait]
impl<T: Authenticator + ?Sized> Authenticator for Box<T> {
    async fn verify(
        &self,
        message: &[u8],
        credential: &Credential,
        peer: &PeerInfo,
    ) -> Result<Identity, AuthError> {
        (**self).verify(message, credential, peer).await
    }

    async fn verify_request(
        &self,
        message: &[u8],
        credential: &Credential,
        peer: &PeerInfo,
    ) -> Result<Verified, AuthError> {
        (**self).verify_request(message, credential, peer).await
    }

    fn still_valid(&self, identity: &Identity) -> Result<(), String> {
        (**self).still_valid(identity)
    }
}

/// Why a credential could not be made or was refused.
///
/// The kinds let the server and client react without matching on strings; the text says
/// what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The credential is older than its time to live (or the clocks disagree).
    #[error("credential expired: {0}")]
    Expired(String),
    /// The credential is not well formed, or was made with another key.
    #[error("credential invalid: {0}")]
    Invalid(String),
    /// The credential is genuine but was made for another message.
    #[error("credential does not match the message it came with: {0}")]
    Mismatch(String),
    /// The credential was already used once.
    #[error("credential replayed: {0}")]
    Replayed(String),
    /// The credential is genuine but its maker is not allowed.
    #[error("not authorised: {0}")]
    Unauthorized(String),
    /// The credential service (e.g. munged) cannot be used.
    #[error("authentication service unavailable: {0}")]
    Unavailable(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_fits_one_body_at_one_position_under_one_key() {
        let key = ReplyKey::random();
        let tag = key.tag(3, b"finished");
        assert!(key.check(3, b"finished", &tag));
        assert!(!key.check(3, b"finishes", &tag), "another body");
        assert!(
            !key.check(2, b"finished", &tag),
            "another position: a replay"
        );
        assert!(
            !ReplyKey::random().check(3, b"finished", &tag),
            "another key"
        );
        assert!(!key.check(3, b"finished", &tag[..31]), "a cut tag");
        assert_eq!(format!("{key:?}"), "ReplyKey(..)");
    }
}
