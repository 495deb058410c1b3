//! Results from a job back to everyone waiting for it (issue "The Portage workflow", item
//! 2): `KEY=VALUE` lines a job writes to `$CQ_RESULT_FILE`.

use std::process::Stdio;

use crate::durable::Gate;
use crate::support::{LIMIT, Munged, TestServer, output, stderr};
use crate::users::{PublicBinaries, shared_dir, users};

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

/// A job's results reach its owner and a merged waiter (post scripts and `--json`), are
/// stored, and are there after a restart; a refused line costs nothing else.
#[tokio::test]
async fn a_jobs_results_reach_every_waiter_and_are_kept() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = shared_dir();
    let gate = Gate::new(dir.path());
    let blocker = output(
        server
            .client()
            .args(["--detach", "--", "sh", "-c", &gate.wait()]),
    )
    .await;
    assert!(blocker.status.success(), "{}", stderr(&blocker));
    let report =
        "printf 'BUILD_ID=7\\nCPV=app-misc/foo-1.0\\nnot a key=1\\n' > \"$CQ_RESULT_FILE\"";
    let build = ["--", "sh", "-c", report];
    let first = output(server.client().arg("--detach").args(build)).await;
    assert!(first.status.success(), "{}", stderr(&first));
    let id = String::from_utf8_lossy(&first.stdout).trim().to_owned();

    let post = |name: &str| {
        let seen = dir.path().join(name);
        let script = crate::support::script(
            dir.path(),
            &format!("{name}.sh"),
            &format!("env | grep '^CQ_RESULT_' | sort > {}", seen.display()),
        );
        (script, seen)
    };
    let (owner_post, owner_seen) = post("owner");
    let (merged_post, merged_seen) = post("merged");
    let owner = server
        .client()
        .args(["--json", "-P"])
        .arg(&owner_post)
        .args(["--wait", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let merged = server
        .client()
        .args(["--json", "-P"])
        .arg(&merged_post)
        .args(build)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both wait for the same queued job before it may run.
    server.wait_for_log_count("merged into", 1).await;
    gate.open().await;
    let owner = tokio::time::timeout(LIMIT, owner.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let merged = tokio::time::timeout(LIMIT, merged.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    for (out, seen) in [(&owner, &owner_seen), (&merged, &merged_seen)] {
        assert!(out.status.success(), "{}", stderr(out));
        let vars = std::fs::read_to_string(seen).unwrap();
        assert_eq!(
            vars, "CQ_RESULT_BUILD_ID=7\nCQ_RESULT_CPV=app-misc/foo-1.0\n",
            "the post script's results"
        );
        let end = json(out);
        assert_eq!(end["id"].to_string(), id);
        assert_eq!(end["outcome"], "exited");
        assert_eq!(end["results"]["BUILD_ID"], "7");
        assert_eq!(end["results"]["CPV"], "app-misc/foo-1.0");
        assert_eq!(end["results"].as_object().unwrap().len(), 2);
    }
    assert_eq!(json(&merged)["merged"], true);
    assert_eq!(json(&owner)["merged"], serde_json::Value::Null);

    let mut server = server;
    server.terminate().await;
    let server = server.restart().await;
    let status = output(server.client().args(["--status", &id, "--json"])).await;
    assert!(status.status.success(), "{}", stderr(&status));
    assert_eq!(json(&status)["results"]["BUILD_ID"], "7");
    let table = output(server.client().args(["--status", &id])).await;
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("BUILD_ID=7"),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );
    let again = output(server.client().args(["--json", "--wait", &id])).await;
    assert_eq!(json(&again)["results"]["CPV"], "app-misc/foo-1.0");
}

/// A hostile job replaces its result file with a link to a file it may not read, builds a
/// deep tree beside it (which a recursive clean-up by root would choke on), or floods it:
/// it can do none of the first two (the directory is the server's), the server keeps only
/// the first 64 KiB of a flood and reads nothing else for it, and goes on. Others' jobs'
/// results are not shown to a user, and their result directories cannot be listed.
#[tokio::test]
async fn a_job_cannot_make_the_server_read_for_it() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let bins = PublicBinaries::new();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "SECRET=hunter2\n").unwrap();
    let secret = secret.path().display().to_string();
    let alice = || server.client_as(&bins, &users().alice);
    let dir = "\"$(dirname \"$CQ_RESULT_FILE\")\"";
    for (attack, expected) in [
        (
            format!("rm -f \"$CQ_RESULT_FILE\"; ln -s {secret} \"$CQ_RESULT_FILE\""),
            0,
        ),
        // Had it made anything beside its FIFO, it would say so.
        (
            format!("mkdir {dir}/d && echo MADE=1 > \"$CQ_RESULT_FILE\""),
            0,
        ),
        (
            format!("touch {dir}/f && echo MADE=1 > \"$CQ_RESULT_FILE\""),
            0,
        ),
        (
            format!("ln {secret} {dir}/other && echo MADE=1 > \"$CQ_RESULT_FILE\""),
            0,
        ),
        // Nothing of the other jobs is listed.
        (
            format!("ls {dir}/.. && echo LISTED=1 > \"$CQ_RESULT_FILE\""),
            0,
        ),
        // A flood does not block the job, and only what fits is kept.
        (
            "yes OK=1 | head -n 200000 > \"$CQ_RESULT_FILE\"; echo LATE=1 > \"$CQ_RESULT_FILE\""
                .to_owned(),
            1,
        ),
    ] {
        let out =
            output(alice().args(["--json", "--", "sh", "-c", &format!("{attack}; true")])).await;
        assert!(out.status.success(), "{attack}: {}", stderr(&out));
        let end = json(&out);
        let results = end["results"].as_object().cloned().unwrap_or_default();
        assert_eq!(results.len(), expected, "{attack}: {end}");
        if expected == 1 {
            assert_eq!(results["OK"], "1", "{end}");
        }
    }
    server.assert_serves().await;
    // Alice's own results are hers: bob sees the job, not what it reported.
    let mine = output(alice().args([
        "--detach",
        "--",
        "sh",
        "-c",
        "echo PKG=/home/alice/pkg > \"$CQ_RESULT_FILE\"",
    ]))
    .await;
    let id = String::from_utf8_lossy(&mine.stdout).trim().to_owned();
    let hers = output(alice().args(["--json", "--wait", &id])).await;
    assert_eq!(json(&hers)["results"]["PKG"], "/home/alice/pkg");
    let bob = output(
        server
            .client_as(&bins, &users().bob)
            .args(["--status", &id, "--json"]),
    )
    .await;
    assert!(bob.status.success(), "{}", stderr(&bob));
    assert_eq!(
        json(&bob)["results"].as_object().map(serde_json::Map::len),
        Some(0)
    );
}

/// What a job wrote just before it exited is never lost (the server's reading once raced
/// the job's end: a few in a hundred came back empty).
#[tokio::test]
async fn results_written_just_before_the_end_arrive_every_time() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let mut ids = Vec::new();
    for n in 0..200 {
        let out = output(server.client().args([
            "--detach",
            "--",
            "sh",
            "-c",
            &format!("printf 'A={n}\\n' > \"$CQ_RESULT_FILE\""),
        ]))
        .await;
        assert!(out.status.success(), "{}", stderr(&out));
        ids.push((n, String::from_utf8_lossy(&out.stdout).trim().to_owned()));
    }
    for (n, id) in ids {
        let out = output(server.client().args(["--json", "--wait", &id])).await;
        assert_eq!(json(&out)["results"]["A"], n.to_string(), "job {id}");
    }
}
