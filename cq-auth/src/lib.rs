//! Authenticators for cq.
//!
//! cq-core defines the `CredentialSource` and `Authenticator` traits; this crate
//! implements them.
//!
//! # Layout
//!
//! - `munge/` (cargo feature `munge`): MUNGE credentials. `ffi.rs` is the only place with
//!   `unsafe` code: a small safe wrapper over libmunge. `credential.rs` binds credentials to
//!   messages and maps libmunge's errors to [`cq_core::AuthError`].
//! - `mtls.rs`: identities from mutual-TLS certificates, with an optional map from
//!   certificate names to local users.
//! - `peercred.rs`: identities from the kernel over a Unix socket (`SO_PEERCRED`).

#![warn(missing_docs, unreachable_pub)]

pub mod mtls;
#[cfg(feature = "munge")]
pub mod munge;
pub mod peercred;

use async_trait::async_trait;
use cq_core::{AuthError, Credential, CredentialSource};

/// Messages over a channel that authenticates its ends (mutual TLS, a Unix socket) need no
/// credential of their own: the channel says who sent them.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChannelCredentials;

#[async_trait]
impl CredentialSource for ChannelCredentials {
    async fn credential_for(&self, _message: &[u8]) -> Result<Credential, AuthError> {
        Ok(Credential::default())
    }
}
