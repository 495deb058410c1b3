//! The network server: accepts connections, authenticates requests and feeds an engine.
//!
//! [`Server::run`] takes any [`Listener`](crate::Listener) and a shutdown future, in the
//! manner of mini-redis' `server::run`: the library never installs signal handlers.

mod connection;
mod hook_program;
mod log_limit;
mod notice_program;
mod serve;
mod stats;
mod workers;

pub use hook_program::{DEFAULT_HOOK_CONCURRENCY, HookProgram};
pub use notice_program::{NOTICE_BACKLOG, NOTICE_LIMIT, NoticeProgram};
pub use serve::{Server, ServerConfig};
pub use stats::{Refusal, ServerStats};
