//! cq transport over mutual TLS.
//!
//! Reserved for the mutual-TLS transport (rustls / tokio-rustls), which exposes the verified
//! client certificate chain to the auth layer through `cq_core::PeerInfo`. Nothing is
//! implemented yet; the crate exists so that the workspace has its final shape.
//!
//! # Layout
//!
//! Empty until the TLS transport lands.

#![warn(missing_docs, unreachable_pub)]
