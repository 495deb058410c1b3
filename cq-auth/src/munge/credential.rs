//! MUNGE credentials bound to cq messages.

use std::ffi::{CString, c_int};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use cq_core::{
    AuthError, AuthMethod, Authenticator, Credential, CredentialSource, Identity, PeerInfo,
    ReplyKey, Verified,
};
use sha2::{Digest, Sha256};

use super::ffi::{Cipher, Context, Decoded, MungeError, MungeErrorKind, socket_cstring};

/// Separates cq's payloads from anything else signed with the same key.
const PAYLOAD_DOMAIN: &[u8] = b"cq-munge-payload-v1\0";

/// Which munged to talk to: a socket path, or libmunge's compiled-in default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MungeSocket {
    path: Option<PathBuf>,
}

impl MungeSocket {
    /// libmunge's default socket (usually `/run/munge/munge.socket.2`).
    pub fn default_socket() -> Self {
        Self { path: None }
    }

    /// The socket at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: Some(path.into()),
        }
    }

    /// The socket path that will be used, for messages.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => Context::new()
                .ok()
                .and_then(|ctx| ctx.socket())
                .unwrap_or_else(|| "libmunge's default socket".to_owned()),
        }
    }

    fn context(&self) -> Result<Context, AuthError> {
        let mut ctx = Context::new().map_err(|e| self.auth_error(e))?;
        if let Some(path) = &self.path {
            let c_path = socket_cstring(path).ok_or_else(|| {
                AuthError::Unavailable(format!(
                    "munge socket path {} holds a NUL byte",
                    path.display()
                ))
            })?;
            ctx.set_socket(&c_path).map_err(|e| self.auth_error(e))?;
        }
        Ok(ctx)
    }

    fn auth_error(&self, e: MungeError) -> AuthError {
        match e.kind {
            MungeErrorKind::Socket | MungeErrorKind::Timeout => {
                AuthError::Unavailable(format!("cannot use munged at {}: {e}", self.describe()))
            }
            MungeErrorKind::Expired => AuthError::Expired(e.to_string()),
            MungeErrorKind::Rewound => AuthError::Expired(format!(
                "{e}: the clocks of the two hosts disagree (synchronise them, e.g. with NTP)"
            )),
            MungeErrorKind::Replayed => AuthError::Replayed(e.to_string()),
            MungeErrorKind::InvalidKey => AuthError::Invalid(format!(
                "{e}: it was made with another MUNGE key (every host needs the same /etc/munge/munge.key: copy the build host's and restart munged)"
            )),
            MungeErrorKind::Unauthorized => AuthError::Unauthorized(e.to_string()),
            _ => AuthError::Invalid(e.to_string()),
        }
    }
}

/// Runs a libmunge call, which blocks on munged's socket: on tokio's blocking pool so that the
/// async workers stay free, or in place when `inline` (a one-connection program such as
/// cq_client has nothing else to run meanwhile, and saves a thread and two hand-overs).
async fn blocking<T: Send + 'static>(
    inline: bool,
    call: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
) -> Result<T, AuthError> {
    if inline {
        return call();
    }
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| AuthError::Unavailable(format!("the MUNGE worker failed: {e}")))?
}

/// The payload: the message's digest, then the reply key if one is sealed in. The payload is
/// encrypted in the credential, and the credential's integrity covers both.
fn payload_for(message: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(PAYLOAD_DOMAIN);
    hasher.update(message);
    hasher.finalize().to_vec()
}

const DIGEST_LEN: usize = 32;

/// Makes MUNGE credentials whose payload is a digest of the message.
#[derive(Clone, Debug, Default)]
pub struct MungeCredentialSource {
    socket: MungeSocket,
    ttl: Option<u32>,
    inline: bool,
    seal_for: Vec<u32>,
}

impl MungeCredentialSource {
    /// Uses munged at `socket`, with munged's default time to live.
    pub fn new(socket: MungeSocket) -> Self {
        Self {
            socket,
            ttl: None,
            inline: false,
            seal_for: Vec::new(),
        }
    }

    /// Seals reply keys into credentials for servers running as one of `uids` (the uids whose
    /// replies the client believes anyway): the credential is then decodable only by that uid
    /// (MUNGE's uid restriction), and the server tags its replies with the key instead of
    /// making a credential for each. Without this, no key is sealed.
    #[must_use]
    pub fn seal_keys_for(mut self, uids: Vec<u32>) -> Self {
        self.seal_for = uids;
        self
    }

    /// Calls munged in place, blocking the calling async task's thread: only for programs
    /// with a single connection and nothing else to do meanwhile (cq_client).
    #[must_use]
    pub fn inline(mut self) -> Self {
        self.inline = true;
        self
    }

    /// Sets the credentials' time to live in seconds (munged clamps it to its maximum).
    #[must_use]
    pub fn with_ttl(mut self, seconds: u32) -> Self {
        self.ttl = Some(seconds);
        self
    }

    /// The munged socket in use.
    pub fn socket(&self) -> &MungeSocket {
        &self.socket
    }

    /// Makes one credential, to find out early whether munged works.
    ///
    /// # Errors
    ///
    /// [`AuthError::Unavailable`] naming the socket when munged cannot be used.
    pub async fn probe(&self) -> Result<(), AuthError> {
        self.credential_for(b"cq probe").await.map(drop)
    }
}

#[async_trait]
impl CredentialSource for MungeCredentialSource {
    async fn credential_for(&self, message: &[u8]) -> Result<Credential, AuthError> {
        self.encode(payload_for(message), None).await
    }

    async fn credential_with_key(
        &self,
        message: &[u8],
        key: &ReplyKey,
        server_uid: u32,
    ) -> Result<Option<Credential>, AuthError> {
        if !self.seal_for.contains(&server_uid) {
            return Ok(None);
        }
        let mut payload = payload_for(message);
        payload.extend_from_slice(key.as_bytes());
        self.encode(payload, Some(server_uid)).await.map(Some)
    }
}

impl MungeCredentialSource {
    async fn encode(
        &self,
        payload: Vec<u8>,
        only_uid: Option<u32>,
    ) -> Result<Credential, AuthError> {
        let socket = self.socket.clone();
        let ttl = self.ttl;
        blocking(self.inline, move || {
            let mut ctx = socket.context()?;
            if let Some(ttl) = ttl {
                let ttl = c_int::try_from(ttl).unwrap_or(c_int::MAX);
                ctx.set_ttl(ttl).map_err(|e| socket.auth_error(e))?;
            }
            if let Some(uid) = only_uid {
                // The payload then holds a reply key: readable by that uid alone, never in
                // the clear (a munged may be set up without encryption by default).
                ctx.set_uid_restriction(uid)
                    .map_err(|e| socket.auth_error(e))?;
                ctx.set_cipher(Cipher::Aes128)
                    .map_err(|e| socket.auth_error(e))?;
            }
            ctx.encode(&payload)
                .map(Credential)
                .map_err(|e| socket.auth_error(e))
        })
        .await
    }
}

/// Checks MUNGE credentials: genuine, fresh, not replayed, made for exactly this message, and
/// (optionally) made by one of the allowed uids.
#[derive(Clone, Debug, Default)]
pub struct MungeAuthenticator {
    socket: MungeSocket,
    allowed_uids: Option<Vec<u32>>,
    inline: bool,
    user_names: bool,
}

impl MungeAuthenticator {
    /// Uses munged at `socket`; any uid is accepted.
    pub fn new(socket: MungeSocket) -> Self {
        Self {
            socket,
            allowed_uids: None,
            inline: false,
            user_names: true,
        }
    }

    /// Calls munged in place (see [`MungeCredentialSource::inline`]).
    #[must_use]
    pub fn inline(mut self) -> Self {
        self.inline = true;
        self
    }

    /// Leaves [`Identity::user`] empty instead of looking the uid up in the user database:
    /// for a client checking its server's replies, which needs only the uid.
    #[must_use]
    pub fn without_user_names(mut self) -> Self {
        self.user_names = false;
        self
    }

    /// Accepts only credentials made by one of `uids` (e.g. the uid cq_server runs as).
    #[must_use]
    pub fn allow_only_uids(mut self, uids: Vec<u32>) -> Self {
        self.allowed_uids = Some(uids);
        self
    }

    /// The munged socket in use.
    pub fn socket(&self) -> &MungeSocket {
        &self.socket
    }

    fn decode_blocking(socket: &MungeSocket, credential: &[u8]) -> Result<Decoded, AuthError> {
        let credential = CString::new(credential)
            .map_err(|_| AuthError::Invalid("the credential holds a NUL byte".to_owned()))?;
        socket
            .context()?
            .decode(&credential)
            .map_err(|e| socket.auth_error(e))
    }
}

#[async_trait]
impl Authenticator for MungeAuthenticator {
    async fn verify(
        &self,
        message: &[u8],
        credential: &Credential,
        peer: &PeerInfo,
    ) -> Result<Identity, AuthError> {
        self.verify_request(message, credential, peer)
            .await
            .map(|verified| verified.identity)
    }

    async fn verify_request(
        &self,
        message: &[u8],
        credential: &Credential,
        peer: &PeerInfo,
    ) -> Result<Verified, AuthError> {
        if credential.0.is_empty() {
            return Err(AuthError::Invalid(
                "no MUNGE credential came with the message (is the peer set up for MUNGE?)"
                    .to_owned(),
            ));
        }
        // Garbage costs munged nothing: only what looks like a credential is decoded.
        if !looks_like_a_credential(&credential.0) {
            return Err(AuthError::Invalid(
                "what came as a MUNGE credential is not one".to_owned(),
            ));
        }
        let socket = self.socket.clone();
        let bytes = credential.0.clone();
        let user_names = self.user_names;
        // The user database may be remote (LDAP): look the name up off the async workers too.
        let (decoded, user) = blocking(self.inline, move || {
            let decoded = Self::decode_blocking(&socket, &bytes)?;
            let user = user_names
                .then(|| nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(decoded.uid)))
                .and_then(|found| found.ok().flatten())
                .map(|u| u.name);
            Ok((decoded, user))
        })
        .await?;
        let (digest, sealed) = decoded
            .payload
            .split_at_checked(DIGEST_LEN)
            .unwrap_or((&decoded.payload, &[]));
        let key = match <[u8; 32]>::try_from(sealed) {
            // A key that crossed the network in the clear may be known to others: the replies
            // are then signed one by one, as if none had been sent.
            Ok(_) if !decoded.encrypted => None,
            Ok(key) => Some(ReplyKey::from_bytes(key)),
            Err(_) if sealed.is_empty() => None,
            Err(_) => {
                return Err(AuthError::Invalid(
                    "the MUNGE credential's payload has an unknown layout".to_owned(),
                ));
            }
        };
        if digest != payload_for(message) {
            return Err(AuthError::Mismatch(format!(
                "the MUNGE credential of uid {} was made for another message",
                decoded.uid
            )));
        }
        if let Some(allowed) = &self.allowed_uids
            && !allowed.contains(&decoded.uid)
        {
            let expected: Vec<String> = allowed.iter().map(u32::to_string).collect();
            return Err(AuthError::Unauthorized(format!(
                "the credential was made by uid {}, expected uid {}",
                decoded.uid,
                expected.join(" or ")
            )));
        }
        let identity = Identity {
            uid: decoded.uid,
            gid: decoded.gid,
            user,
            host: peer.host(),
            method: AuthMethod::Munge,
            principal: None,
        };
        // munged remembers decoded credentials only until it restarts; the server keeps its
        // own record until the credential expires (or for munged's longest lifetime when
        // libmunge does not say).
        let until = match decoded.lifetime {
            Some((encoded, ttl)) => {
                let secs = u64::try_from(encoded.saturating_add(i64::from(ttl))).unwrap_or(0);
                UNIX_EPOCH + Duration::from_secs(secs) + CLOCK_SLACK
            }
            None => SystemTime::now() + MAX_TTL + CLOCK_SLACK,
        };
        let mut verified = Verified::new(identity);
        verified.reply_key = key;
        verified.replayable_until = Some(until);
        Ok(verified)
    }
}

/// A little more than munged's clock tolerance, so that a credential is remembered for as
/// long as any munged could still accept it.
const CLOCK_SLACK: Duration = Duration::from_secs(5);

/// munged's default `--max-ttl`.
const MAX_TTL: Duration = Duration::from_secs(3600);

/// The longest credential cq accepts: far more than one for a 1 MiB payload.
const MAX_CREDENTIAL: usize = 8192;

/// Whether `bytes` have the form of a MUNGE credential: `MUNGE:`, base64, `:`.
fn looks_like_a_credential(bytes: &[u8]) -> bool {
    let Some(inner) = bytes
        .strip_prefix(b"MUNGE:")
        .and_then(|rest| rest.strip_suffix(b":"))
    else {
        return false;
    };
    bytes.len() <= MAX_CREDENTIAL
        && !inner.is_empty()
        && inner
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::munge::PrivateMunged;

    #[tokio::test]
    async fn a_reply_key_sent_in_the_clear_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let munged = PrivateMunged::start_in(dir.path()).unwrap();
        let socket = MungeSocket::at(munged.socket_path());
        let me = nix::unistd::geteuid().as_raw();
        let key = ReplyKey::random();
        let mut payload = payload_for(b"req");
        payload.extend_from_slice(key.as_bytes());
        let clear = {
            let mut ctx = socket.context().unwrap();
            ctx.set_uid_restriction(me).unwrap();
            ctx.set_cipher(Cipher::None).unwrap();
            Credential(ctx.encode(&payload).unwrap())
        };
        let verifier = MungeAuthenticator::new(socket.clone());
        let found = verifier
            .verify_request(b"req", &clear, &PeerInfo::default())
            .await
            .unwrap()
            .reply_key;
        assert_eq!(found, None, "a key anybody on the wire could read");

        let source = MungeCredentialSource::new(socket).seal_keys_for(vec![me]);
        let sealed = source
            .credential_with_key(b"req", &key, me)
            .await
            .unwrap()
            .unwrap();
        let verified = verifier
            .verify_request(b"req", &sealed, &PeerInfo::default())
            .await
            .unwrap();
        assert_eq!(verified.reply_key, Some(key), "our own sealing encrypts");
        let until = verified
            .replayable_until
            .expect("MUNGE credentials can be replayed");
        let left = until.duration_since(SystemTime::now()).unwrap();
        assert!(
            left > Duration::from_secs(200) && left < Duration::from_secs(400),
            "remembered for the credential's lifetime (munged's default 300 s): {left:?}"
        );
    }

    #[test]
    fn only_what_looks_like_a_credential_goes_to_munged() {
        assert!(looks_like_a_credential(b"MUNGE:AwQDAACm9fq+/=:"));
        for garbage in [
            &b""[..],
            b"MUNGE::",
            b"munge:abc:",
            b"MUNGE:ab c:",
            b"MUNGE:abc",
        ] {
            assert!(!looks_like_a_credential(garbage), "{garbage:?}");
        }
    }
}
