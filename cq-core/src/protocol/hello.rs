//! The fixed-layout first message of every connection.

/// The first four bytes every cq peer sends.
pub const MAGIC: [u8; 4] = *b"CQUE";

/// The protocol version this build speaks.
///
/// 2: `List`, `Status`, `Cancel`, `Log` and the `Jobs`, `Output`, `LogEnd` events; job time
/// limits in milliseconds.
/// 3: the server's hello is followed by its uid; a request's credential may carry a
/// [`ReplyKey`](crate::auth::ReplyKey), and the replies are then tagged with it.
/// 4: replies name the [`RequestDigest`](super::RequestDigest) of the request they answer
/// (not a nonce the client chose); `Submit` carries an idempotency key; `Jobs` comes in
/// pages; `Withdrawn`; error codes `over-quota` and `replayed`.
/// 5: job summaries carry the job's `-E` variables and working directory (owners only);
/// `Finished` and summaries carry the results a job reported back; `Pause` and `Resume`,
/// answered with `Queue`; `Promote`; `QueueState`; workers: `Work`, `Report`, `Dispatch`,
/// `Idle`, `Noted`, and `Workers` to list them.
pub const PROTOCOL_VERSION: u16 = 5;

/// Length of an encoded [`Hello`].
pub const HELLO_LEN: usize = 8;

/// Length of the uid (u32, big endian) a server sends right after its hello, so that a
/// client can make a credential only that uid can read.
pub const SERVER_UID_LEN: usize = 4;

/// Which end of the connection a peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Submits requests.
    Client,
    /// Answers requests.
    Server,
}

impl Role {
    fn to_byte(self) -> u8 {
        match self {
            Self::Client => 1,
            Self::Server => 2,
        }
    }
}

/// The first message of each side: who speaks, in which protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's protocol version.
    pub version: u16,
    /// The sender's role.
    pub role: Role,
}

impl Hello {
    /// This build's hello for `role`.
    pub fn new(role: Role) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            role,
        }
    }

    /// The 8 bytes on the wire.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let v = self.version.to_be_bytes();
        [
            MAGIC[0],
            MAGIC[1],
            MAGIC[2],
            MAGIC[3],
            v[0],
            v[1],
            self.role.to_byte(),
            0,
        ]
    }

    /// Reads a hello, recognising common non-cq peers.
    ///
    /// A version other than ours is not an error here: the caller decides what to say.
    ///
    /// # Errors
    ///
    /// [`HelloError::NotCq`] when the bytes are not a cq hello, [`HelloError::BadRole`]
    /// when the role byte is unknown.
    pub fn decode(bytes: &[u8; HELLO_LEN]) -> Result<Self, HelloError> {
        if bytes[..4] != MAGIC {
            return Err(HelloError::NotCq {
                looks_like: guess_protocol(bytes),
            });
        }
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        let role = match bytes[6] {
            1 => Role::Client,
            2 => Role::Server,
            other => return Err(HelloError::BadRole(other)),
        };
        Ok(Self { version, role })
    }
}

/// What a server sends first: its hello, then the uid it runs as (the effective uid of this
/// process).
pub fn server_greeting() -> [u8; HELLO_LEN + SERVER_UID_LEN] {
    let mut out = [0; HELLO_LEN + SERVER_UID_LEN];
    out[..HELLO_LEN].copy_from_slice(&Hello::new(Role::Server).encode());
    out[HELLO_LEN..].copy_from_slice(&nix::unistd::geteuid().as_raw().to_be_bytes());
    out
}

/// Names the protocol a non-cq peer seems to speak, so that the error can say what to fix.
fn guess_protocol(bytes: &[u8]) -> &'static str {
    match bytes {
        // TLS handshake record (client hello) or alert, any version.
        [0x16, 0x03, ..] => "a TLS handshake",
        [0x15, 0x03, ..] => "a TLS alert",
        [b'G', b'E', b'T', b' ', ..]
        | [b'P', b'O', b'S', b'T', ..]
        | [b'H', b'T', b'T', b'P', ..] => "HTTP",
        [b'S', b'S', b'H', b'-', ..] => "SSH",
        _ => "unknown bytes",
    }
}

/// Why a hello was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// The peer is not speaking the cq protocol.
    #[error("the peer does not speak the cq protocol (it sent {looks_like})")]
    NotCq {
        /// What the bytes look like.
        looks_like: &'static str,
    },
    /// The role byte is unknown.
    #[error("the peer sent an unknown role {0} in its hello")]
    BadRole(u8),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips() {
        for role in [Role::Client, Role::Server] {
            let hello = Hello::new(role);
            assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
        }
    }

    #[test]
    fn other_protocols_are_named() {
        let tls = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01];
        assert_eq!(
            Hello::decode(&tls),
            Err(HelloError::NotCq {
                looks_like: "a TLS handshake"
            })
        );
        assert_eq!(
            Hello::decode(b"GET / HT"),
            Err(HelloError::NotCq { looks_like: "HTTP" })
        );
        let mut bad_role = Hello::new(Role::Client).encode();
        bad_role[6] = 9;
        assert_eq!(Hello::decode(&bad_role), Err(HelloError::BadRole(9)));
    }

    #[test]
    fn other_versions_decode_so_the_caller_can_explain() {
        let mut newer = Hello::new(Role::Server).encode();
        newer[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(Hello::decode(&newer).map(|h| h.version), Ok(7));
    }
}
