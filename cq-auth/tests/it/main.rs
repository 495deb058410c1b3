//! MUNGE authenticator against private munged daemons.

#![cfg(feature = "munge")]

mod munge;
