//! Serial means serial: concurrent submitters, one job at a time, in acceptance order.

use crate::support::{Munged, TestServer, output, stderr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_never_overlap_and_start_in_acceptance_order() {
    const CLIENTS: usize = 40;
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("lock");
    let record = dir.path().join("record");
    // mkdir is atomic: it fails if another job holds the lock, i.e. if two jobs overlap.
    let job = format!(
        "mkdir {lock} || {{ echo overlap >> {record}; exit 1; }}; echo start $CQ_JOB_ID >> {record}; \
         sleep 0.02; echo end $CQ_JOB_ID >> {record}; rmdir {lock}",
        lock = lock.display(),
        record = record.display()
    );
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let mut cmd = server.client();
            // A distinct $0 per client: equal commands would be merged (--dedup).
            cmd.args(["--", "sh", "-c", &job, &format!("client-{n}")]);
            tokio::spawn(async move { output(&mut cmd).await })
        })
        .collect();
    for client in clients {
        let out = client.await.unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }

    let text = std::fs::read_to_string(&record).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 * CLIENTS, "{text}");
    let mut started = Vec::new();
    for pair in lines.chunks(2) {
        let start = pair[0]
            .strip_prefix("start ")
            .unwrap_or_else(|| panic!("overlap: {text}"));
        assert_eq!(
            pair[1],
            format!("end {start}"),
            "a job started before the previous ended:\n{text}"
        );
        started.push(start.parse::<u64>().unwrap());
    }
    let expected: Vec<u64> = (1..=CLIENTS as u64).collect();
    assert_eq!(
        started, expected,
        "jobs start in the order they were accepted (ids are handed out in that order)"
    );
}
