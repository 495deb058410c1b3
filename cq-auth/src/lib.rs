//! Authenticators for cq.
//!
//! cq-core defines the [`CredentialSource`](cq_core::CredentialSource) and
//! [`Authenticator`](cq_core::Authenticator) traits; this crate implements them.
//!
//! # Layout
//!
//! - `munge/` (cargo feature `munge`): MUNGE credentials. `ffi.rs` is the only place with
//!   `unsafe` code: a small safe wrapper over libmunge. `credential.rs` binds credentials to
//!   messages and maps libmunge's errors to [`cq_core::AuthError`].
//! - `mtls.rs`: identities from mutual-TLS certificates, with an optional map from
//!   certificate names to local users.

#![warn(missing_docs, unreachable_pub)]

pub mod mtls;
#[cfg(feature = "munge")]
pub mod munge;
