//! How a job ended, and how that maps to the numbers scripts see.
//!
//! | outcome        | internal status | exit status                         |
//! |----------------|-----------------|-------------------------------------|
//! | `exited`       | 0               | the command's exit code             |
//! | `spawn-failed` | 1               | 127 not found, 126 any other reason |
//! | `signaled`     | 2               | 128 + signal number                 |
//! | `timed-out`    | 3               | 124                                 |
//! | `cancelled`    | 4               | 125                                 |
//! | `lost`         | 5               | 125                                 |
//! | `failed`       | 6               | 1                                   |

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a job ended.
///
/// Variants are part of the wire format: new ones are only ever appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Outcome {
    /// Stopped on request before or while running.
    Cancelled,
    /// The command ran and exited with this code.
    Exited {
        /// The exit code, 0 to 255.
        code: i32,
    },
    /// The server stopped or crashed while the job ran, so its end is unknown.
    Lost,
    /// The command was killed by a signal.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
    /// The command could not be started.
    SpawnFailed {
        /// Why, as a kind scripts can tell apart.
        reason: SpawnFailure,
        /// The operating system's explanation.
        message: String,
    },
    /// The job ran past its time limit and its process group was killed.
    TimedOut,
    /// An in-process job (a task) returned an error, or panicked.
    Failed {
        /// The error, or the panic's message.
        message: String,
    },
}

/// Why a command could not be started.
///
/// Serialised by position (on the wire and in the store): variants are only ever appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SpawnFailure {
    /// No such program (or working directory).
    NotFound,
    /// Anything else: a log that cannot be written, too many processes, ...
    Other,
    /// The program exists but may not be executed.
    PermissionDenied,
    /// The server's policy refused the job when it came to start (the program is not an
    /// allowed command, the requester's account changed, was locked or expired, or its
    /// credential was revoked).
    NotPermitted,
}

impl Outcome {
    /// What others than the job's owner learn of its end: all but the message of a failed
    /// start, which names the owner's paths.
    #[must_use]
    pub fn limited(self) -> Self {
        match self {
            Self::SpawnFailed { reason, .. } => Self::SpawnFailed {
                reason,
                message: "(the details are for its owner)".to_owned(),
            },
            Self::Failed { .. } => Self::Failed {
                message: "(the details are for its owner)".to_owned(),
            },
            other => other,
        }
    }

    /// The word scripts see in `CQ_OUTCOME`.
    pub fn word(&self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::Exited { .. } => "exited",
            Self::Lost => "lost",
            Self::Signaled { .. } => "signaled",
            Self::SpawnFailed { .. } => "spawn-failed",
            Self::TimedOut => "timed-out",
            Self::Failed { .. } => "failed",
        }
    }

    /// The post script's first argument: 0 when the command ran and exited, so that the
    /// second argument is its exit code; non-zero when cq could not run it or it ended
    /// abnormally (see the module table).
    pub fn internal_status(&self) -> u8 {
        match self {
            Self::Exited { .. } => 0,
            Self::SpawnFailed { .. } => 1,
            Self::Signaled { .. } => 2,
            Self::TimedOut => 3,
            Self::Cancelled => 4,
            Self::Lost => 5,
            Self::Failed { .. } => 6,
        }
    }

    /// The status a shell would report for the job: the post script's second argument and
    /// `cq_client`'s own exit status.
    pub fn exit_status(&self) -> u8 {
        match self {
            // Exit codes are 0..=255 on Unix; anything else is masked like the kernel does.
            Self::Exited { code } => (*code & 0xff) as u8,
            Self::Signaled { signal, .. } => 128u8.saturating_add((*signal & 0x7f) as u8),
            Self::SpawnFailed {
                reason: SpawnFailure::NotFound,
                ..
            } => 127,
            Self::SpawnFailed { .. } => 126,
            Self::TimedOut => 124,
            Self::Cancelled | Self::Lost => 125,
            Self::Failed { .. } => 1,
        }
    }

    /// The signal that killed the command, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self {
            Self::Signaled { signal, .. } => Some(*signal),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cancelled => f.write_str("cancelled"),
            Self::Exited { code } => write!(f, "exited with status {code}"),
            Self::Lost => f.write_str("lost: the server stopped while it ran"),
            Self::Signaled {
                signal,
                core_dumped,
            } => {
                let name = nix::sys::signal::Signal::try_from(*signal)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                write!(f, "killed by signal {signal} ({name})")?;
                if *core_dumped {
                    f.write_str(", core dumped")?;
                }
                Ok(())
            }
            Self::SpawnFailed { message, .. } => write!(
                f,
                "could not be started: {}",
                crate::printable::printable(message)
            ),
            Self::TimedOut => f.write_str("timed out and was killed"),
            Self::Failed { message } => {
                write!(f, "failed: {}", crate::printable::printable(message))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_shell_conventions() {
        assert_eq!(Outcome::Exited { code: 3 }.exit_status(), 3);
        assert_eq!(Outcome::Exited { code: 3 }.internal_status(), 0);
        let killed = Outcome::Signaled {
            signal: 9,
            core_dumped: false,
        };
        assert_eq!(killed.exit_status(), 137);
        assert_eq!(killed.internal_status(), 2);
        assert_eq!(killed.to_string(), "killed by signal 9 (SIGKILL)");
        let missing = Outcome::SpawnFailed {
            reason: SpawnFailure::NotFound,
            message: "x".into(),
        };
        assert_eq!((missing.internal_status(), missing.exit_status()), (1, 127));
        assert_eq!(missing.word(), "spawn-failed");
    }

    /// Outcomes are stored (SQLite) and sent (wire) as postcard, which encodes variants by
    /// position: these bytes must never change.
    #[test]
    fn the_stored_and_wire_form_is_pinned() {
        let cases = [
            (Outcome::Cancelled, vec![0]),
            (Outcome::Exited { code: 3 }, vec![1, 6]),
            (Outcome::Lost, vec![2]),
            (
                Outcome::Signaled {
                    signal: 9,
                    core_dumped: true,
                },
                vec![3, 18, 1],
            ),
            (
                Outcome::SpawnFailed {
                    reason: SpawnFailure::NotPermitted,
                    message: "m".into(),
                },
                vec![4, 3, 1, b'm'],
            ),
            (Outcome::TimedOut, vec![5]),
        ];
        for (outcome, bytes) in cases {
            assert_eq!(
                postcard::to_allocvec(&outcome).unwrap(),
                bytes,
                "{outcome:?}"
            );
            assert_eq!(postcard::from_bytes::<Outcome>(&bytes).unwrap(), outcome);
        }
        for (reason, byte) in [
            (SpawnFailure::NotFound, 0),
            (SpawnFailure::Other, 1),
            (SpawnFailure::PermissionDenied, 2),
            (SpawnFailure::NotPermitted, 3),
        ] {
            assert_eq!(postcard::to_allocvec(&reason).unwrap(), vec![byte]);
        }
    }
}

/// How a job ended and how long it ran: what the engine tells its waiters and the store
/// keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobResult {
    /// How it ended.
    pub outcome: Outcome,
    /// Time from start to reaping (zero if it never started).
    pub runtime: std::time::Duration,
    /// What the job reported back ([`ResultSink`](crate::ResultSink)).
    pub results: Vec<(String, String)>,
}
