//! What waits for which records to be committed.
//!
//! The core hands records to the driver to persist, each under a [`CommitId`]; the driver
//! reports back when each is committed (in any order). Whatever must not happen before then
//! (a reply, a job's start, an outcome's publication) waits here, on one or more commits.

use std::collections::HashMap;

use crate::store::StoreError;

use super::Deferred;

/// Names a record handed to the driver, whose commit the driver reports.
pub(in crate::engine) type CommitId = u64;

/// Commits not yet reported, and what waits for them.
#[derive(Default)]
pub(super) struct Commits {
    next: CommitId,
    /// Each open commit, with the slots of what waits for it (in the order they came).
    open: HashMap<CommitId, Vec<u64>>,
    waiting: HashMap<u64, Waiting>,
    next_slot: u64,
}

struct Waiting {
    /// Commits still open among those it waits for.
    remaining: usize,
    /// The first failure among them.
    failed: Option<StoreError>,
    action: Deferred,
}

impl Commits {
    /// A new commit, open until [`committed`](Self::committed) reports it.
    pub(super) fn open(&mut self) -> CommitId {
        self.next += 1;
        self.open.insert(self.next, Vec::new());
        self.next
    }

    pub(super) fn is_open(&self, commit: CommitId) -> bool {
        self.open.contains_key(&commit)
    }

    /// Has `action` wait for every open commit among `commits`; gives it back (with
    /// `failed`) when none is open.
    pub(super) fn after(
        &mut self,
        commits: impl IntoIterator<Item = CommitId>,
        failed: Option<StoreError>,
        action: Deferred,
    ) -> Option<(Deferred, Option<StoreError>)> {
        let slot = self.next_slot;
        let mut remaining = 0;
        for commit in commits {
            if let Some(waiters) = self.open.get_mut(&commit)
                && waiters.last() != Some(&slot)
            {
                waiters.push(slot);
                remaining += 1;
            }
        }
        if remaining == 0 {
            return Some((action, failed));
        }
        self.next_slot += 1;
        self.waiting.insert(
            slot,
            Waiting {
                remaining,
                failed,
                action,
            },
        );
        None
    }

    /// Commit `commit` is reported: what no longer waits for anything, in the order it came.
    pub(super) fn committed(
        &mut self,
        commit: CommitId,
        result: Result<(), StoreError>,
    ) -> Vec<(Deferred, Option<StoreError>)> {
        let Some(slots) = self.open.remove(&commit) else {
            return Vec::new();
        };
        let mut ready = Vec::new();
        for slot in slots {
            let Some(waiting) = self.waiting.get_mut(&slot) else {
                continue;
            };
            waiting.remaining -= 1;
            if let Err(e) = &result {
                waiting.failed.get_or_insert_with(|| e.clone());
            }
            if waiting.remaining == 0
                && let Some(done) = self.waiting.remove(&slot)
            {
                ready.push((done.action, done.failed));
            }
        }
        ready
    }

    /// Whether anything still waits for a commit.
    pub(super) fn is_idle(&self) -> bool {
        self.waiting.is_empty()
    }
}
