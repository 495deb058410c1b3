//! Several build hosts: a coordinator (cq_server --no-local-worker) and cq_worker processes
//! that join it over MUNGE on loopback, run jobs as their requesters, and survive a restart.

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::support::{LIMIT, Munged, TestServer, output, stderr};
use crate::users::{PublicBinaries, as_user, shared_dir, users};

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

/// A coordinator that runs nothing itself, admits root from loopback as a worker, and gives
/// up on a silent worker after `timeout` seconds.
pub(crate) async fn coordinator(munged: &Munged, dir: &Path, timeout: &str) -> TestServer {
    let config = dir.join("cq.toml");
    std::fs::write(&config, "[policy]\nworkers = [\"root@127.0.0.1\"]\n").unwrap();
    TestServer::start_with(
        munged,
        &[
            "--config",
            config.to_str().unwrap(),
            "--no-local-worker",
            "--worker-timeout",
            timeout,
        ],
    )
    .await
}

/// cq_worker `name` offering `tags`, started through `prefix` (empty: as root).
fn worker(
    server: &TestServer,
    munged: &Munged,
    prefix: &[OsString],
    program: &Path,
    name: &str,
    tags: &[&str],
    spool: &Path,
) -> Child {
    let mut cmd = match prefix.split_first() {
        Some((exe, rest)) => {
            let mut cmd = Command::new(exe);
            cmd.args(rest);
            cmd
        }
        None => Command::new(program),
    };
    cmd.args(["-h", "127.0.0.1", "-p", &server.addr.port().to_string()])
        .arg("--munge-socket")
        .arg(munged.socket())
        .args(["--name", name, "--heartbeat", "1s", "--kill-grace", "1"])
        .arg("--spool")
        .arg(spool.join(name))
        .args(tags.iter().flat_map(|t| ["--tag", t]))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.spawn().expect("start cq_worker")
}

pub(crate) async fn joined(server: &TestServer, name: &str) {
    let name = format!("worker={name} ");
    server
        .wait_for_log_matching(|l| l.contains("a worker joined") && l.contains(&name))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_as_their_requester_on_the_worker_their_tags_name_and_say_why_they_wait() {
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    let server = coordinator(&munged, dir.path(), "30").await;
    let bins = PublicBinaries::new();
    let alice = &users().alice;

    // Before any worker joined, a job says why it waits.
    let queued = output(server.client_as(&bins, alice).args([
        "--detach",
        "--tag",
        "arch=arm64",
        "--",
        "sh",
        "-c",
        "id -un; exit 3",
    ]))
    .await;
    assert!(queued.status.success(), "{}", stderr(&queued));
    let id = String::from_utf8_lossy(&queued.stdout).trim().to_owned();
    let status = json(
        &output(
            server
                .client_as(&bins, alice)
                .args(["--status", &id, "--json"]),
        )
        .await,
    );
    assert_eq!(status["state"], "queued");
    assert_eq!(
        status["waiting"], "no connected worker offers arch=arm64",
        "{status}"
    );

    let _amd = worker(
        &server,
        &munged,
        &[],
        &bins.worker(),
        "amd",
        &["arch=amd64"],
        dir.path(),
    );
    let _arm = worker(
        &server,
        &munged,
        &[],
        &bins.worker(),
        "arm",
        &["arch=arm64"],
        dir.path(),
    );
    joined(&server, "amd").await;
    joined(&server, "arm").await;
    // Anybody admitted sees who joined and what each offers; the addresses are for admins.
    let listed = output(server.client_as(&bins, alice).args(["--workers", "--json"])).await;
    let listed = json(&listed);
    let names: Vec<(&str, &str, bool)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap(),
                w["tags"][0].as_str().unwrap(),
                w["address"].is_null(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [("amd", "arch=amd64", true), ("arm", "arch=arm64", true)],
        "{listed}"
    );

    // The waiting job ran on arm, as alice, and its output came back.
    let waited = output(server.client_as(&bins, alice).args(["--wait", &id])).await;
    assert_eq!(waited.status.code(), Some(3), "{}", stderr(&waited));
    let started = server
        .wait_for_log_matching(|l| l.contains("started") && l.contains(&format!("job={id} ")))
        .await;
    assert!(started.contains("worker=arm"), "{started}");
    let log = output(server.client_as(&bins, alice).args(["--log", &id])).await;
    assert_eq!(
        String::from_utf8_lossy(&log.stdout),
        format!("{}\n", alice.name)
    );

    // An amd64 job goes to amd, and the client waits for it like for any job.
    let amd = output(server.client_as(&bins, alice).args([
        "--tag",
        "arch=amd64",
        "--",
        "sh",
        "-c",
        "echo on amd",
    ]))
    .await;
    assert!(amd.status.success(), "{}", stderr(&amd));
    server
        .wait_for_log_matching(|l| l.contains("started") && l.contains("worker=amd"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_serve_as_a_worker() {
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let server = coordinator(&munged, dir.path(), "30").await;
    let bins = PublicBinaries::new();
    let alice = &users().alice;
    let mut impostor = worker(
        &server,
        &munged,
        &as_user(alice, &bins.worker()),
        &bins.worker(),
        "amd",
        &[],
        dir.path(),
    );
    let status = tokio::time::timeout(LIMIT, impostor.wait())
        .await
        .expect("the refused worker exits")
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let mut said = String::new();
    tokio::io::AsyncReadExt::read_to_string(impostor.stderr.as_mut().unwrap(), &mut said)
        .await
        .unwrap();
    assert!(said.contains("may not serve as a worker"), "{said}");
    // And it got no job: alice's job still waits.
    let queued = output(
        server
            .client_as(&bins, alice)
            .args(["--detach", "--", "true"]),
    )
    .await;
    let id = String::from_utf8_lossy(&queued.stdout).trim().to_owned();
    let status = json(
        &output(
            server
                .client_as(&bins, alice)
                .args(["--status", &id, "--json"]),
        )
        .await,
    );
    assert_eq!(status["state"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_and_restarted_reports_the_job_lost_and_takes_the_next() {
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    let server = coordinator(&munged, dir.path(), "30").await;
    let bins = PublicBinaries::new();
    let alice = &users().alice;
    let mut first = worker(&server, &munged, &[], &bins.worker(), "w", &[], dir.path());
    joined(&server, "w").await;
    let long = output(
        server
            .client_as(&bins, alice)
            .args(["--detach", "--", "sleep", "60"]),
    )
    .await;
    let long = String::from_utf8_lossy(&long.stdout).trim().to_owned();
    server
        .wait_for_log_matching(|l| l.contains("started") && l.contains(&format!("job={long} ")))
        .await;
    let next = output(
        server
            .client_as(&bins, alice)
            .args(["--detach", "--", "echo", "next"]),
    )
    .await;
    let next = String::from_utf8_lossy(&next.stdout).trim().to_owned();

    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let _second = worker(&server, &munged, &[], &bins.worker(), "w", &[], dir.path());

    let lost = output(
        server
            .client_as(&bins, alice)
            .args(["--wait", &long, "--json"]),
    )
    .await;
    let lost: serde_json::Value = serde_json::from_slice(&lost.stdout).expect("JSON");
    assert_eq!(lost["outcome"], "lost", "{lost}");
    let ran = output(server.client_as(&bins, alice).args(["--wait", &next])).await;
    assert!(ran.status.success(), "{}", stderr(&ran));
    let log = output(server.client_as(&bins, alice).args(["--log", &next])).await;
    assert_eq!(String::from_utf8_lossy(&log.stdout), "next\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_while_a_worker_runs_a_job_hears_its_real_end_after_a_restart() {
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    let server = coordinator(&munged, dir.path(), "60").await;
    let bins = PublicBinaries::new();
    let alice = &users().alice;
    let _worker = worker(&server, &munged, &[], &bins.worker(), "w", &[], dir.path());
    joined(&server, "w").await;
    let shared = shared_dir();
    let gate = shared.path().join("gate");
    let runs = shared.path().join("runs");
    let script = format!(
        "echo run >> {runs}; echo before; while [ ! -e {gate} ]; do sleep 0.05; done; echo after; exit 5",
        runs = runs.display(),
        gate = gate.display()
    );
    let queued = output(
        server
            .client_as(&bins, alice)
            .args(["--detach", "--", "sh", "-c", &script]),
    )
    .await;
    assert!(queued.status.success(), "{}", stderr(&queued));
    let id = String::from_utf8_lossy(&queued.stdout).trim().to_owned();
    // Its first output is on the coordinator: the worker's claim of the job was recorded
    // before that (the worker starts a job only once its claim is durable). Nothing tells a
    // client when output arrives short of following to the end: polled, bounded.
    tokio::time::timeout(LIMIT, async {
        loop {
            let log = output(server.client_as(&bins, alice).args(["--log", &id])).await;
            if String::from_utf8_lossy(&log.stdout).contains("before") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the job's output reaches the coordinator");

    // The coordinator dies; the job ends meanwhile; the coordinator comes back.
    let mut server = server;
    server.kill9().await;
    std::fs::write(&gate, b"").unwrap();
    let server = server.restart().await;
    let waited = output(server.client_as(&bins, alice).args(["--wait", &id])).await;
    assert_eq!(waited.status.code(), Some(5), "{}", stderr(&waited));
    let log = output(server.client_as(&bins, alice).args(["--log", &id])).await;
    assert_eq!(String::from_utf8_lossy(&log.stdout), "before\nafter\n");
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap(),
        "run\n",
        "the job ran once"
    );
}

/// A build host that is another host: the coordinator on host a, a worker on host b (network
/// namespaces on one link), admitted by its address only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_another_host_is_admitted_by_its_address_and_runs_the_jobs() {
    use crate::netns::HostPair;
    let munged = Munged::start();
    let hosts = HostPair::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cq.toml");
    std::fs::write(
        &config,
        format!("[policy]\nworkers = [\"root@{}\"]\n", HostPair::B_ADDR),
    )
    .unwrap();
    let mut program = HostPair::on(&hosts.a);
    program.push(env!("CARGO_BIN_EXE_cq_server").into());
    let server = TestServer::launch_with_stdin(
        program,
        tempfile::tempdir().unwrap(),
        0,
        [
            OsString::from("-h"),
            "0.0.0.0".into(),
            "--config".into(),
            config.into(),
            "--no-local-worker".into(),
            "--munge-socket".into(),
            munged.socket().into(),
        ]
        .to_vec(),
        vec!["--munge-socket".into(), munged.socket().into()],
        Stdio::null(),
    )
    .await;
    let port = server.addr.port().to_string();
    let cq_worker = |host: &str, on: &str, name: &str| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", on, env!("CARGO_BIN_EXE_cq_worker")])
            .args(["-h", host, "-p", &port, "--name", name, "--heartbeat", "1s"])
            .arg("--munge-socket")
            .arg(munged.socket())
            .arg("--spool")
            .arg(dir.path().join(name))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    };
    // Root on the coordinator's own host is root too, but not from the address named.
    let mut local = cq_worker("127.0.0.1", &hosts.a, "a1").spawn().unwrap();
    let status = tokio::time::timeout(LIMIT, local.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "a worker from an address not named is refused"
    );
    let _remote = cq_worker(&HostPair::A_ADDR.to_string(), &hosts.b, "b1")
        .spawn()
        .unwrap();
    joined(&server, "b1").await;

    let bins = PublicBinaries::new();
    let alice = &users().alice;
    let mut prefix = HostPair::on(&hosts.a);
    prefix.extend(as_user(alice, &bins.client()));
    let ran = output(
        server
            .client_via(&prefix)
            .args(["--", "sh", "-c", "id -un; exit 4"]),
    )
    .await;
    assert_eq!(ran.status.code(), Some(4), "{}", stderr(&ran));
    let started = server
        .wait_for_log_matching(|l| l.contains("started") && l.contains("worker=b1"))
        .await;
    assert!(started.contains("job=1 "), "{started}");
    let log = output(server.client_via(&prefix).args(["--log", "1"])).await;
    assert_eq!(
        String::from_utf8_lossy(&log.stdout),
        format!("{}\n", alice.name)
    );
}

/// Four hosts on one bridge, each with its own munged (one key): the coordinator on host 1,
/// workers on hosts 2 (amd64), 3 and 4 (arm64). Jobs go where their tags say, each worker
/// runs one at a time, and the two arm64 workers share the arm64 jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_on_three_hosts_run_jobs_where_their_tags_say_one_at_a_time() {
    use crate::netns::Lan;
    let lan = Lan::new(4);
    let key = [42u8; 1024];
    let munged: Vec<Munged> = (0..4).map(|_| Munged::with_key(&key)).collect();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cq.toml");
    std::fs::write(
        &config,
        format!(
            "[policy]\nworkers = [\"root@{}\", \"root@{}\", \"root@{}\"]\n",
            Lan::addr(2),
            Lan::addr(3),
            Lan::addr(4)
        ),
    )
    .unwrap();
    let mut program = crate::netns::HostPair::on(lan.host(1));
    program.push(env!("CARGO_BIN_EXE_cq_server").into());
    let server = TestServer::launch_with_stdin(
        program,
        tempfile::tempdir().unwrap(),
        0,
        [
            OsString::from("-h"),
            "0.0.0.0".into(),
            "--config".into(),
            config.into(),
            "--no-local-worker".into(),
            "--munge-socket".into(),
            munged[0].socket().into(),
        ]
        .to_vec(),
        vec!["--munge-socket".into(), munged[0].socket().into()],
        Stdio::null(),
    )
    .await;
    let port = server.addr.port().to_string();
    let mut workers = Vec::new();
    for (host, tag) in [(2, "arch=amd64"), (3, "arch=arm64"), (4, "arch=arm64")] {
        let name = format!("h{host}");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            lan.host(host),
            env!("CARGO_BIN_EXE_cq_worker"),
        ])
        .args(["-h", &Lan::addr(1).to_string(), "-p", &port])
        .args(["--name", &name, "--tag", tag, "--heartbeat", "1s"])
        .arg("--munge-socket")
        .arg(munged[host - 1].socket())
        .arg("--spool")
        .arg(dir.path().join(&name))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
        workers.push(cmd.spawn().unwrap());
        joined(&server, &name).await;
    }

    // Each job notes where it ran (its host's address) and when it started and ended.
    let bins = PublicBinaries::new();
    let alice = &users().alice;
    let shared = shared_dir();
    let notes = shared.path().join("notes");
    let script = format!(
        "a=$(ip -4 -o addr show dev eth0 | awk '{{print $4}}'); s=$(date +%s%N); sleep 1; echo \"$1 $a $s $(date +%s%N)\" >> {}",
        notes.display()
    );
    let mut prefix = crate::netns::HostPair::on(lan.host(1));
    prefix.extend(as_user(alice, &bins.client()));
    let jobs: Vec<_> = (0..6)
        .map(|n| {
            let tag = if n < 2 { "arch=amd64" } else { "arch=arm64" };
            let mut cmd = server.client_via(&prefix);
            cmd.args(["--tag", tag, "--", "sh", "-c", &script, "job"])
                .arg(format!("{tag}-{n}"));
            tokio::spawn(async move { output(&mut cmd).await })
        })
        .collect();
    for job in jobs {
        let out = job.await.unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let text = std::fs::read_to_string(&notes).unwrap();
    let mut ran: Vec<(String, String, u128, u128)> = text
        .lines()
        .map(|line| {
            let w: Vec<&str> = line.split_whitespace().collect();
            (
                w[0].to_owned(),
                w[1].to_owned(),
                w[2].parse().unwrap(),
                w[3].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(ran.len(), 6, "{text}");
    let on = |i: usize| format!("{}/24", Lan::addr(i));
    for (tag, addr, _, _) in &ran {
        if tag.starts_with("arch=amd64") {
            assert_eq!(*addr, on(2), "{text}");
        } else {
            assert!(*addr == on(3) || *addr == on(4), "{text}");
        }
    }
    // Both arm64 workers took some of the arm64 jobs.
    assert!(
        ran.iter().any(|r| r.1 == on(3)) && ran.iter().any(|r| r.1 == on(4)),
        "{text}"
    );
    // No worker ran two jobs at once.
    ran.sort_by(|a, b| (&a.1, a.2).cmp(&(&b.1, b.2)));
    for pair in ran.windows(2) {
        if pair[0].1 == pair[1].1 {
            assert!(
                pair[0].3 <= pair[1].2,
                "two jobs at once on {}: {text}",
                pair[0].1
            );
        }
    }
    drop(workers);
}
