//! The durable record of accepted jobs and their outcomes.
//!
//! Every operation is *enqueued* when called, in call order, and returns a [`Pending`] result
//! that resolves once the operation is committed. That lets the engine keep serving while a
//! commit is on disk, and lets the SQLite store commit many operations with one fsync (group
//! commit): a burst of submissions shares commits instead of queueing behind one fsync each.

mod memory;
mod pending;
mod record;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use memory::MemoryStore;
pub use pending::Pending;
pub use record::{
    JobRecord, KnownKey, PrunedJob, RecordedRunner, Recovered, RunningJob, Store, StoreError,
    StoredJob,
};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
