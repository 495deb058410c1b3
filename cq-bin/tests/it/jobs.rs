//! What one user sees: environment passing, post scripts, exit statuses, early errors.

use std::os::unix::fs::PermissionsExt;

use crate::support::{Munged, TestServer, output, script, stderr};

#[tokio::test]
async fn env_reaches_the_job_and_the_post_script_gets_the_outcome() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = tempfile::tempdir().unwrap();
    let job_out = dir.path().join("job.out");
    let post_out = dir.path().join("post.out");
    let post = script(
        dir.path(),
        "post",
        &format!(
            "echo \"$# $1 $2 $CQ_JOB_ID $CQ_OUTCOME $CQ_EXIT_STATUS [$CQ_SIGNAL] $CQ_SERVER\" > {}\n\
             case \"$CQ_DURATION\" in *.???) ;; *) echo bad duration >> {0};; esac",
            post_out.display()
        ),
    );
    let out = output(
        server
            .client()
            .args(["-E", "USE=X -gtk", "-E", "COPIED", "-E", "EMPTY=", "-P"])
            .arg(&post)
            .env("COPIED", "from-client")
            .args(["--", "sh", "-c"])
            .arg(format!("printf '%s|%s|%s|%s' \"$USE\" \"$COPIED\" \"${{EMPTY-unset}}\" \"$CQ_JOB_ID\" > {}; exit 7", job_out.display())),
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(7),
        "the client exits with the job's status: {}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&job_out).unwrap(),
        "X -gtk|from-client||1"
    );
    let server_name = format!("{}:{}", server.addr.ip(), server.addr.port());
    assert_eq!(
        std::fs::read_to_string(&post_out).unwrap().trim(),
        format!("2 0 7 1 exited 7 [] {server_name}")
    );
    server.wait_for_log("finished").await;
    assert!(server.stop().await.success(), "SIGTERM drains and exits 0");
}

#[tokio::test]
async fn a_signal_and_a_missing_command_are_reported_as_such() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = tempfile::tempdir().unwrap();
    let post_out = dir.path().join("post.out");
    let post = script(
        dir.path(),
        "post",
        &format!(
            "echo \"$1 $2 $CQ_OUTCOME $CQ_SIGNAL\" >> {}",
            post_out.display()
        ),
    );

    let killed =
        output(
            server
                .client()
                .arg("-P")
                .arg(&post)
                .args(["--", "sh", "-c", "kill -TERM $$"]),
        )
        .await;
    assert_eq!(killed.status.code(), Some(128 + 15));
    assert!(
        stderr(&killed).contains("killed by signal 15 (SIGTERM)"),
        "{}",
        stderr(&killed)
    );

    let missing =
        output(
            server
                .client()
                .arg("-P")
                .arg(&post)
                .args(["--", "no-such-command-here", "x"]),
        )
        .await;
    assert_eq!(missing.status.code(), Some(127));
    assert!(
        stderr(&missing).contains("command not found: no-such-command-here"),
        "the client says the command was not found: {}",
        stderr(&missing)
    );
    assert_eq!(
        std::fs::read_to_string(&post_out).unwrap(),
        "2 143 signaled 15\n1 127 spawn-failed \n"
    );
}

#[tokio::test]
async fn the_job_output_goes_to_its_log_in_the_state_dir() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let out = output(server.client().args([
        "-q",
        "--",
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2",
    ]))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        out.stderr.is_empty(),
        "-q prints nothing on success: {}",
        stderr(&out)
    );
    let log = std::fs::read_to_string(server.state_dir.path().join("logs/1.log")).unwrap();
    assert_eq!(log, "to-stdout\nto-stderr\n");
}

#[tokio::test]
async fn bad_client_arguments_fail_before_anything_is_submitted() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = tempfile::tempdir().unwrap();
    let not_exec = dir.path().join("not-exec");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&not_exec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let missing = dir.path().join("missing");

    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (
            vec!["-E".into(), "=value".into()],
            "invalid environment variable name",
        ),
        (
            vec!["-E".into(), "".into()],
            "invalid environment variable name",
        ),
        (
            vec!["-E".into(), "CQ_TEST_SURELY_UNSET".into()],
            "is not set in this environment",
        ),
        (vec!["-P".into(), missing.clone().into()], "no such file"),
        (vec!["-P".into(), not_exec.clone().into()], "not executable"),
        (vec!["-P".into(), dir.path().into()], "not a regular file"),
    ];
    for (args, expected) in cases {
        let out = output(server.client().args(&args).args(["--", "true"])).await;
        assert_eq!(out.status.code(), Some(255), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains(expected) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    // Then a good job: it gets id 1, so none of the bad ones reached the server.
    let out = output(server.client().args(["--", "true"])).await;
    assert!(out.status.success());
    assert!(stderr(&out).contains("job 1 queued"), "{}", stderr(&out));
}

#[tokio::test]
async fn a_failing_post_script_makes_the_client_fail() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = tempfile::tempdir().unwrap();
    let post = script(dir.path(), "post", "exit 4");
    let out = output(server.client().arg("-P").arg(&post).args(["--", "true"])).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr(&out).contains("exit status: 4"), "{}", stderr(&out));
}

#[tokio::test]
async fn dash_h_is_the_host_and_help_and_version_are_long_options() {
    for program in [
        env!("CARGO_BIN_EXE_cq_server"),
        env!("CARGO_BIN_EXE_cq_client"),
    ] {
        let help = output(tokio::process::Command::new(program).arg("--help")).await;
        assert!(help.status.success());
        let text = String::from_utf8_lossy(&help.stdout).into_owned();
        assert!(
            text.contains("-h, --host <HOST>") && text.contains("-p, --port <PORT>"),
            "{text}"
        );
        let version = output(tokio::process::Command::new(program).arg("--version")).await;
        assert!(version.status.success());
        assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
    }
    let usage =
        output(tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_client")).arg("-h")).await;
    assert_eq!(
        usage.status.code(),
        Some(255),
        "-h wants a host, and usage errors are cq failures"
    );
}
