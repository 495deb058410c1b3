//! The bytes of what cq writes down or sends: outcomes and commands are stored as postcard
//! in the database, and postcard encodes an enum variant by its position. Reordering
//! variants or fields would make stored rows (and older peers) decode as something else, so
//! these pin the encodings; a change here needs a migration or a new protocol version.

use cq_core::protocol::{Action, Event, Request};
use cq_core::{CommandJob, JobId, Outcome, SpawnFailure};

fn bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap()
}

#[test]
fn stored_outcomes_keep_their_bytes() {
    let cases: Vec<(Outcome, Vec<u8>)> = vec![
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
                reason: SpawnFailure::NotFound,
                message: "x".into(),
            },
            vec![4, 0, 1, b'x'],
        ),
        (Outcome::TimedOut, vec![5]),
        (
            Outcome::Failed {
                message: "x".into(),
            },
            vec![6, 1, b'x'],
        ),
    ];
    for (outcome, expected) in cases {
        assert_eq!(bytes(&outcome), expected, "{outcome:?}");
        assert_eq!(postcard::from_bytes::<Outcome>(&expected).unwrap(), outcome);
    }
    let reasons = [
        SpawnFailure::NotFound,
        SpawnFailure::Other,
        SpawnFailure::PermissionDenied,
        SpawnFailure::NotPermitted,
    ];
    for (position, reason) in reasons.into_iter().enumerate() {
        assert_eq!(bytes(&reason), vec![position as u8], "{reason:?}");
    }
}

#[test]
fn stored_commands_keep_their_bytes() {
    let mut job = CommandJob::new(["a"]).with_env("K", "v");
    job.cwd = Some("/".into());
    job.tags = vec!["t".into()];
    job.timeout_ms = Some(1);
    job.lane = Some("l".into());
    // The lane came last (migration 5 gave stored commands its `None`).
    let expected = vec![
        1, 1, b'a', 1, 1, b'K', 1, b'v', 1, 1, b'/', 1, 1, b't', 1, 1, 1, 1, b'l',
    ];
    assert_eq!(bytes(&job), expected);
    assert_eq!(postcard::from_bytes::<CommandJob>(&expected).unwrap(), job);
}

#[test]
fn wire_actions_and_events_keep_their_positions() {
    // The first byte of an action or event is its variant's position.
    let first = |b: Vec<u8>| b[0];
    assert_eq!(first(bytes(&Event::Started { job: JobId(1) })), 3);
    assert_eq!(first(bytes(&Action::Status { job: JobId(1) })), 3);
    // Appended in protocol 5: after every earlier variant.
    assert_eq!(first(bytes(&Action::Pause)), 6);
    assert_eq!(first(bytes(&Action::Resume)), 7);
    assert_eq!(first(bytes(&Action::Promote { job: JobId(1) })), 8);
    assert_eq!(first(bytes(&Action::QueueState)), 9);
    assert_eq!(
        first(bytes(&Event::Queue {
            paused: true,
            running: 0,
            queued: 0,
            waiters: 0
        })),
        8
    );
    // Workers (protocol 5 too).
    let work = Action::Work {
        worker: "w".into(),
        tags: Vec::new(),
        instance: 0,
        sequence: 0,
    };
    assert_eq!(first(bytes(&work)), 10);
    let report = Action::Report {
        worker: "w".into(),
        job: JobId(1),
        lease: 0,
        report: cq_core::protocol::WorkReport::Alive,
    };
    assert_eq!(first(bytes(&report)), 11);
    // A report's own variants, by position too (Runner came last).
    use cq_core::protocol::WorkReport;
    for (report, position) in [
        (WorkReport::Started, 0),
        (WorkReport::Alive, 2),
        (
            WorkReport::Runner {
                shown: "slurm:1".into(),
            },
            4,
        ),
    ] {
        assert_eq!(first(bytes(&report)), position, "{report:?}");
    }
    assert_eq!(first(bytes(&Event::Idle)), 10);
    assert_eq!(first(bytes(&Event::Noted { cancel: false })), 11);
    assert_eq!(first(bytes(&Action::Workers)), 12);
    assert_eq!(
        first(bytes(&Event::Workers {
            workers: Vec::new()
        })),
        12
    );
    let request = Request {
        destination: None,
        nonce: cq_core::protocol::Nonce::NONE,
        action: Action::List,
    };
    assert_eq!(bytes(&request)[0], 0, "no destination first");
}
