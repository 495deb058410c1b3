//! Micro benchmarks of cq-core: framing of each message, and the scheduler's cost per
//! operation as the queue grows (it must not grow with the queue).
//!
//! Run with `cargo bench -p cq-benches`.

use std::hint::black_box;

use bytes::BytesMut;
use cq_core::protocol::{Action, Envelope, Event, FrameCodec, Nonce, Reply, Request};
use cq_core::{
    CommandJob, Identity, JobId, JobInfo, Outcome, Scheduler, SerialScheduler, WorkerInfo,
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tokio_util::codec::{Decoder, Encoder};

fn emerge() -> CommandJob {
    CommandJob::new([
        "emerge",
        "--buildpkgonly",
        "--oneshot",
        "=www-client/firefox-140.0",
    ])
    .with_env("USE", "X wayland -gtk pulseaudio")
    .with_env("ABI_X86", "64")
    .with_env("FEATURES", "buildpkg binpkg-multi-instance")
}

fn frames(c: &mut Criterion) {
    let request = Request {
        destination: Some("192.0.2.10:48005".parse().unwrap()),
        nonce: Nonce::random(),
        action: Action::Submit {
            job: emerge(),
            key: cq_core::SubmitKey::random(),
        },
    };
    let replies = [
        (
            "accepted",
            Event::Accepted {
                job: JobId(42),
                ahead: 3,
                merged: false,
            },
        ),
        ("started", Event::Started { job: JobId(42) }),
        (
            "finished",
            Event::Finished {
                job: JobId(42),
                outcome: Outcome::Exited { code: 0 },
                runtime_ms: 912,
                results: Vec::new(),
            },
        ),
    ];
    // A MUNGE credential is about 200 bytes of base64.
    let credential = vec![b'A'; 200];
    let mut messages = vec![("submit", postcard::to_allocvec(&request).unwrap())];
    for (name, event) in replies {
        messages.push((
            name,
            postcard::to_allocvec(&Reply {
                request: cq_core::protocol::RequestDigest::of(b"request", &credential),
                event,
            })
            .unwrap(),
        ));
    }
    let mut group = c.benchmark_group("frame");
    for (name, body) in messages {
        let envelope = Envelope {
            body,
            credential: credential.clone(),
        };
        group.bench_function(BenchmarkId::new("encode+decode", name), |b| {
            let mut codec = FrameCodec::<Envelope, Envelope>::new();
            let mut buf = BytesMut::with_capacity(1024);
            b.iter(|| {
                codec.encode(black_box(envelope.clone()), &mut buf).unwrap();
                black_box(codec.decode(&mut buf).unwrap().unwrap())
            });
        });
    }
    group.finish();
}

fn scheduler(c: &mut Criterion) {
    let owner = Identity::local();
    let info = |id: u64| JobInfo {
        id: JobId(id),
        owner: owner.clone(),
        summary: String::new(),
        command: None,
        tags: Vec::new(),
        lane: None,
    };
    let local = WorkerInfo::new("local", Vec::<String>::new());
    let mut group = c.benchmark_group("serial-scheduler");
    for queued in [10u64, 10_000, 100_000] {
        group.bench_function(BenchmarkId::new("enqueue+next+finished", queued), |b| {
            let mut scheduler = SerialScheduler::new();
            for id in 0..queued {
                scheduler.enqueue(std::sync::Arc::new(info(id)));
            }
            let mut id = queued;
            b.iter(|| {
                // One job in at the back, the front one run and finished: the queue length stays.
                scheduler.enqueue(std::sync::Arc::new(info(id)));
                id += 1;
                let next = scheduler.next_for(&local).unwrap();
                scheduler.finished(next, &Outcome::Exited { code: 0 });
                black_box(next)
            });
        });
    }
    group.finish();
}

/// A MUNGE credential made and verified through cq's wrapper, against a private munged.
fn munge(c: &mut Criterion) {
    use cq_auth::munge::{MungeAuthenticator, MungeCredentialSource, PrivateMunged};
    use cq_core::{Authenticator, CredentialSource, PeerInfo};
    let dir = tempfile::tempdir().unwrap();
    let munged = PrivateMunged::start_in(dir.path()).expect("munged is installed");
    let source = MungeCredentialSource::new(munged.socket());
    let verifier = MungeAuthenticator::new(munged.socket());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let peer = PeerInfo::default();
    c.bench_function("munge/make+verify", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let credential = source.credential_for(b"a request").await.unwrap();
                black_box(
                    verifier
                        .verify(b"a request", &credential, &peer)
                        .await
                        .unwrap(),
                )
            })
        });
    });
}

/// Store commits: one insert at a time (one fsync each), and 100 inserts sharing commits.
fn store(c: &mut Criterion) {
    use cq_core::store::{SqliteStore, Store, StoredJob};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("cq.db")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let owner = Identity::local();
    let mut next = 0u64;
    let mut job = move || {
        next += 1;
        StoredJob {
            id: JobId(next),
            owner: owner.clone(),
            summary: "emerge".into(),
            command: Some(emerge()),
            key: None,
            accepted_at: std::time::SystemTime::now(),
            waiters: Vec::new(),
        }
    };
    let mut group = c.benchmark_group("store");
    group.bench_function("insert, alone", |b| {
        b.iter(|| runtime.block_on(store.insert(job())).unwrap())
    });
    group.bench_function("100 inserts, grouped", |b| {
        b.iter(|| {
            let pending: Vec<_> = (0..100).map(|_| store.insert(job())).collect();
            runtime.block_on(async {
                for p in pending {
                    p.await.unwrap();
                }
            });
        });
    });
    group.finish();
}

criterion_group!(benches, frames, scheduler, munge, store);
criterion_main!(benches);
