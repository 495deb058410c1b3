//! cq transport over mutual TLS (rustls, TLS 1.3 preferred, 1.2 allowed).
//!
//! The server requires a client certificate signed by the configured CA; the client checks the
//! server's certificate against the same CA and the server's name. The verified peer chain
//! reaches the auth layer through [`cq_core::PeerInfo::tls`], where cq-auth turns the client
//! certificate into an identity. TLS wraps the TCP transport and adds to its peer info.
//!
//! The crypto provider is *ring*: it builds on a fresh Debian machine with just a C compiler
//! (aws-lc-rs wants cmake and takes longer to build), and cq needs nothing ring lacks.
//!
//! # Layout
//!
//! - `config.rs`: loading PEM files into rustls server and client configurations.
//! - `server.rs`: [`TlsListener`], whose pending connections do their handshake in the
//!   connection's own task.
//! - `client.rs`: [`TlsConnector`].
//! - `certs.rs`: certificate tooling (a CA, server and client certificates, revocation) with
//!   rcgen, writing keys only as new files in private directories.

#![warn(missing_docs, unreachable_pub)]

mod certs;
mod client;
mod config;
mod server;

pub use certs::{
    CRL_FILE, CertError, ClientFiles, Existing, ServerFiles, check_name, init_ca_and_server,
    issue_client, revoke_client, revoked_serials,
};
pub use client::TlsConnector;
pub use config::{ClientTls, ServerTls, TlsConfigError};
pub use server::{TlsListener, TlsPending, TlsReloader};

/// The verified certificate chain of the other end, as cq-core wants it.
fn peer_chain(connection: &rustls::CommonState) -> cq_core::TlsPeer {
    let chain = connection
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect())
        .unwrap_or_default();
    cq_core::TlsPeer::new(chain)
}
