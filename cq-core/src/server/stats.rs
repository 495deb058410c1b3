//! What the server counts about its connections and the requests it turned away, for
//! metrics ([`Server::stats`](super::Server::stats)).

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a request or connection was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Refusal {
    /// The credential did not verify (bad, for another service or server, forged).
    AuthInvalid,
    /// The credential had expired.
    AuthExpired,
    /// The credential was used before (a replay).
    AuthReplayed,
    /// The credential service (munged) could not be asked.
    AuthUnavailable,
    /// Authenticated, but refused by the policy (the requester, or what it asked to run).
    Policy,
    /// The request could not be decoded, or was meant for another server.
    Malformed,
    /// Too many connections (in all, or from one host).
    TooManyConnections,
}

impl Refusal {
    /// Every kind, for listing them all.
    pub const ALL: [Refusal; 7] = [
        Refusal::AuthInvalid,
        Refusal::AuthExpired,
        Refusal::AuthReplayed,
        Refusal::AuthUnavailable,
        Refusal::Policy,
        Refusal::Malformed,
        Refusal::TooManyConnections,
    ];

    /// A short stable name (`auth-invalid`, ...).
    pub fn word(self) -> &'static str {
        match self {
            Self::AuthInvalid => "auth-invalid",
            Self::AuthExpired => "auth-expired",
            Self::AuthReplayed => "auth-replayed",
            Self::AuthUnavailable => "auth-unavailable",
            Self::Policy => "policy",
            Self::Malformed => "malformed",
            Self::TooManyConnections => "too-many-connections",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// Counters of one server, cheap to bump from every connection.
#[derive(Debug, Default)]
pub struct ServerStats {
    accepted: AtomicU64,
    closed: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl ServerStats {
    /// Connections taken since the server started.
    pub fn connections_accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections being served now.
    pub fn connections_open(&self) -> u64 {
        self.accepted
            .load(Ordering::Relaxed)
            .saturating_sub(self.closed.load(Ordering::Relaxed))
    }

    /// Requests and connections turned away for `why` since the server started.
    pub fn refused(&self, why: Refusal) -> u64 {
        self.refused[why.index()].load(Ordering::Relaxed)
    }

    pub(super) fn opened(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn closed(&self) {
        self.closed.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn refuse(&self, why: Refusal) {
        self.refused[why.index()].fetch_add(1, Ordering::Relaxed);
    }
}
