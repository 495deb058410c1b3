//! MUNGE authentication.
//!
//! MUNGE hosts share one secret key; munged on the sending host makes a credential that names
//! the sender's uid and gid and carries a payload, and munged on any host with the same key
//! can check it. cq puts a SHA-256 digest of the exact message bytes in the payload, and the
//! message names its destination and carries a fresh nonce, so a credential is good for one
//! message to one server only. Each credential is decoded once, on receipt, which keeps
//! munged's replay detection effective.
//!
//! Both directions use it: clients sign requests, the server signs replies, and each side
//! checks the other's with a [`MungeAuthenticator`] (the client's accepts only the uids the
//! server may run as).

mod credential;
mod ffi;
mod private;

pub use credential::{MungeAuthenticator, MungeCredentialSource, MungeSocket};
pub use ffi::{MungeError, MungeErrorKind};
pub use private::PrivateMunged;
