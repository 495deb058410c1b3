//! Identities from mutual TLS.
//!
//! With TLS the transport authenticates both ends: rustls has already checked the client's
//! certificate against the CA (and the server's against the CA and its name) before any cq
//! message is read. What is left is to say *who* a certificate is: its subject common name
//! (or, without one, its first DNS subject alternative name) is a local user name, or is
//! looked up in a [`UserMap`]. A certificate whose name maps to no local user is refused.
//! Messages carry no credential of their own ([`ChannelCredentials`](crate::ChannelCredentials)).
//!
//! What the server trusts can change while it runs (SIGHUP): the user map, and the serial
//! numbers its revocation list revokes. Each identity remembers its certificate's name and
//! serial, so that a job queued with a certificate revoked since, or a name mapped elsewhere
//! since, is refused when it comes to start ([`Authenticator::still_valid`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use cq_core::{AuthError, AuthMethod, Authenticator, Credential, Identity, PeerInfo};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// uid and gid in the identity of a TLS *server*, which a certificate names as a host, not as a
/// user (the kernel's overflow id, "nobody").
pub const SERVER_UID: u32 = 65534;

/// The name a certificate gives its subject: the common name, else the first DNS name.
///
/// # Errors
///
/// [`AuthError::Invalid`] when the certificate cannot be parsed or names nobody.
pub fn certificate_name(der: &[u8]) -> Result<String, AuthError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| AuthError::Invalid(format!("cannot parse the peer certificate: {e}")))?;
    if let Some(cn) = cert.subject().iter_common_name().next() {
        return cn.as_str().map(str::to_owned).map_err(|e| {
            AuthError::Invalid(format!("the certificate's common name is not text: {e}"))
        });
    }
    let dns = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|name| match name {
                GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                _ => None,
            })
        });
    dns.ok_or_else(|| {
        AuthError::Invalid("the certificate has neither a common name nor a DNS name".to_owned())
    })
}

/// The certificate's serial number (its bytes, as a revocation list names it).
///
/// # Errors
///
/// [`AuthError::Invalid`] when the certificate cannot be parsed.
pub fn certificate_serial(der: &[u8]) -> Result<Vec<u8>, AuthError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| AuthError::Invalid(format!("cannot parse the peer certificate: {e}")))?;
    Ok(cert.raw_serial().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn leaf(peer: &PeerInfo) -> Result<&[u8], AuthError> {
    let tls = peer.tls.as_ref().ok_or_else(|| {
        AuthError::Unauthorized(
            "the connection is not TLS, so there is no certificate to identify".to_owned(),
        )
    })?;
    tls.chain
        .first()
        .map(Vec::as_slice)
        .ok_or_else(|| AuthError::Unauthorized("the peer presented no certificate".to_owned()))
}

/// Maps certificate names to local user names.
///
/// The file has one `CERT_NAME LOCAL_USER` pair per line; blank lines and lines starting with
/// `#` are ignored. When a map is in use, only the names it lists are accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserMap {
    path: PathBuf,
    names: HashMap<String, String>,
}

/// Why a user map could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserMapError {
    /// The file could not be read.
    #[error("cannot read the TLS user map {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `CERT_NAME LOCAL_USER`.
    #[error("{path}:{line}: expected `CERT_NAME LOCAL_USER`, found {text:?}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// The line.
        text: String,
    },
    /// A certificate name is listed twice: which line would win is a guess nobody should
    /// have to make.
    #[error("{path}:{line}: {name:?} is already mapped on line {first}")]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The line number of the second entry, from 1.
        line: usize,
        /// The line number of the first.
        first: usize,
        /// The certificate name.
        name: String,
    },
}

impl UserMap {
    /// Reads a map file.
    ///
    /// # Errors
    ///
    /// [`UserMapError`] naming the file (and line).
    pub fn load(path: &Path) -> Result<Self, UserMapError> {
        let text = std::fs::read_to_string(path).map_err(|source| UserMapError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses map text; `path` is only used in messages.
    ///
    /// # Errors
    ///
    /// [`UserMapError::Syntax`] for the first bad line.
    pub fn parse(text: &str, path: &Path) -> Result<Self, UserMapError> {
        let mut names = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut words = trimmed.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(cert), Some(user), None) => {
                    if let Some(first) = first_line.get(cert) {
                        return Err(UserMapError::Duplicate {
                            path: path.to_owned(),
                            line: number + 1,
                            first: *first,
                            name: cert.to_owned(),
                        });
                    }
                    first_line.insert(cert.to_owned(), number + 1);
                    names.insert(cert.to_owned(), user.to_owned());
                }
                _ => {
                    return Err(UserMapError::Syntax {
                        path: path.to_owned(),
                        line: number + 1,
                        text: line.to_owned(),
                    });
                }
            }
        }
        Ok(Self {
            path: path.to_owned(),
            names,
        })
    }
}

/// What the server trusts now: the user map (if any) and the revoked serial numbers.
#[derive(Clone, Debug, Default)]
struct Trust {
    users: Option<UserMap>,
    revoked: HashSet<Vec<u8>>,
}

impl Trust {
    /// The local user `name` maps to.
    fn user_for(&self, name: &str) -> Result<String, String> {
        match &self.users {
            Some(map) => map.names.get(name).cloned().ok_or_else(|| {
                format!(
                    "certificate name {name:?} is not in the TLS user map {}",
                    map.path.display()
                )
            }),
            None => Ok(name.to_owned()),
        }
    }
}

/// Server side: identifies clients by their verified certificate. Clones share what they
/// trust, so that [`reload`](Self::reload) reaches every one.
#[derive(Clone, Debug, Default)]
pub struct TlsClientAuthenticator {
    trust: Arc<RwLock<Trust>>,
}

impl TlsClientAuthenticator {
    /// Certificate names are local user names.
    pub fn new() -> Self {
        Self::default()
    }

    /// Certificate names are looked up in `users`.
    pub fn with_user_map(users: UserMap) -> Self {
        let auth = Self::new();
        auth.reload(Some(users), Vec::new());
        auth
    }

    /// Puts a new user map and list of revoked serial numbers in force (e.g. on SIGHUP).
    pub fn reload(&self, users: Option<UserMap>, revoked: Vec<Vec<u8>>) {
        *self.trust.write().unwrap_or_else(|e| e.into_inner()) = Trust {
            users,
            revoked: revoked.into_iter().collect(),
        };
    }

    fn trust(&self) -> Trust {
        self.trust.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait]
impl Authenticator for TlsClientAuthenticator {
    async fn verify(
        &self,
        _message: &[u8],
        _: &Credential,
        peer: &PeerInfo,
    ) -> Result<Identity, AuthError> {
        let der = leaf(peer)?;
        let name = certificate_name(der)?;
        let serial = certificate_serial(der)?;
        let trust = self.trust();
        if trust.revoked.contains(&serial) {
            return Err(AuthError::Unauthorized(format!(
                "the certificate {name:?} (serial {}) has been revoked",
                hex(&serial)
            )));
        }
        let user = trust.user_for(&name).map_err(AuthError::Unauthorized)?;
        let account = nix::unistd::User::from_name(&user).ok().flatten().ok_or_else(|| {
            AuthError::Unauthorized(format!(
                "certificate name {name:?} maps to no local user ({user:?} does not exist on the server)"
            ))
        })?;
        Ok(Identity {
            uid: account.uid.as_raw(),
            gid: account.gid.as_raw(),
            user: Some(account.name),
            host: peer.host(),
            method: AuthMethod::MutualTls,
            principal: Some(format!("{name}#{}", hex(&serial))),
        })
    }

    fn still_valid(&self, identity: &Identity) -> Result<(), String> {
        let Some((name, serial)) = identity
            .principal
            .as_deref()
            .and_then(|p| p.rsplit_once('#'))
        else {
            return Ok(());
        };
        let trust = self.trust();
        if trust.revoked.iter().any(|revoked| hex(revoked) == serial) {
            return Err(format!(
                "the certificate {name:?} (serial {serial}) has been revoked"
            ));
        }
        let user = trust.user_for(name)?;
        if identity.user.as_deref() != Some(user.as_str()) {
            return Err(format!(
                "certificate name {name:?} now maps to {user:?}, not to the job's user"
            ));
        }
        Ok(())
    }
}

/// Client side: the server's certificate was verified during the TLS handshake (CA and server
/// name), so every reply on the connection is the server's. The identity names the server
/// certificate; its uid and gid are [`SERVER_UID`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsServerAuthenticator;

#[async_trait]
impl Authenticator for TlsServerAuthenticator {
    async fn verify(
        &self,
        _message: &[u8],
        _: &Credential,
        peer: &PeerInfo,
    ) -> Result<Identity, AuthError> {
        let name = certificate_name(leaf(peer)?)?;
        Ok(Identity {
            uid: SERVER_UID,
            gid: SERVER_UID,
            user: Some(name),
            host: peer.host(),
            method: AuthMethod::MutualTls,
            principal: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_map_lines() {
        let map = UserMap::parse(
            "# VMs\nvm-desktop portage\n\n  vm-server   root  \n",
            Path::new("m"),
        )
        .unwrap();
        assert_eq!(
            map.names.get("vm-desktop").map(String::as_str),
            Some("portage")
        );
        assert_eq!(map.names.get("vm-server").map(String::as_str), Some("root"));
        let err =
            UserMap::parse("ok root\nthree words here\n", Path::new("/etc/cq/users")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/cq/users:2: expected `CERT_NAME LOCAL_USER`, found \"three words here\""
        );
        let twice =
            UserMap::parse("vm1 portage\n# x\nvm1 root\n", Path::new("/etc/cq/users")).unwrap_err();
        assert_eq!(
            twice.to_string(),
            "/etc/cq/users:3: \"vm1\" is already mapped on line 1"
        );
    }
}
