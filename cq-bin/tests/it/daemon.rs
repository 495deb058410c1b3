//! `--daemon`, `--pid-file`, `--log file:PATH` and its reopening on SIGHUP.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{LIMIT, Munged, client_for, output, stderr};

/// Kills the daemon if the test ends early.
struct Daemon(Pid);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGKILL);
    }
}

fn server(munged: &Munged, state: &Path, log: &Path, pid_file: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_server"));
    cmd.args(["--daemon", "-h", "127.0.0.1", "-p", "0", "--allow-root"])
        .arg("--munge-socket")
        .arg(munged.socket())
        .arg("--state-dir")
        .arg(state)
        .arg("--pid-file")
        .arg(pid_file)
        .arg(format!("--log=file:{}", log.display()))
        .stdin(std::process::Stdio::null());
    cmd
}

/// Waits (on inotify, bounded) until `file` contains `needle`.
async fn wait_for_text(file: PathBuf, needle: &'static str) -> String {
    let dir = file.parent().unwrap().to_owned();
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).unwrap();
    inotify
        .add_watch(&dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MODIFY)
        .unwrap();
    let waiting = tokio::task::spawn_blocking(move || {
        loop {
            // Checked after the watch exists, so no write can slip between check and wait.
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            inotify.read_events().unwrap();
        }
    });
    tokio::time::timeout(LIMIT, waiting)
        .await
        .unwrap_or_else(|_| panic!("{needle:?} never appeared"))
        .unwrap()
}

#[tokio::test]
async fn daemon_mode_writes_its_pid_serves_and_reopens_its_log() {
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    let (state, log, pid_file) = (
        dir.path().join("state"),
        dir.path().join("cq.log"),
        dir.path().join("cq_server.pid"),
    );
    let started = output(&mut server(&munged, &state, &log, &pid_file)).await;
    assert!(started.status.success(), "{}", stderr(&started));
    let said = String::from_utf8_lossy(&started.stdout).into_owned();
    let pid: i32 = said
        .trim()
        .strip_prefix("cq_server: running in the background, pid ")
        .unwrap_or_else(|| panic!("{said}"))
        .parse()
        .unwrap();
    let _daemon = Daemon(Pid::from_raw(pid));
    for file in [&pid_file, &state.join("cq_server.pid")] {
        assert_eq!(
            std::fs::read_to_string(file).unwrap().trim(),
            pid.to_string()
        );
    }
    // The log already says where it listens: it was written before the parent returned.
    let text = std::fs::read_to_string(&log).unwrap();
    let addr = text
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{text}"))
        .parse()
        .unwrap();
    let job = output(client_for(addr, &munged.socket()).args(["--", "true"])).await;
    assert!(job.status.success(), "{}", stderr(&job));

    let second = output(&mut server(
        &munged,
        &state,
        &dir.path().join("2.log"),
        &dir.path().join("2.pid"),
    ))
    .await;
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains(&format!(
            "another cq_server (pid {pid}) uses the state directory"
        )),
        "{}",
        stderr(&second)
    );

    // logrotate: move the file, SIGHUP, and the server writes to a new one.
    std::fs::rename(&log, dir.path().join("cq.log.1")).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGHUP).unwrap();
    let fresh = wait_for_text(log.clone(), "log reopened").await;
    assert!(!fresh.contains("listening on"), "{fresh}");
    let rotated = std::fs::read_to_string(dir.path().join("cq.log.1")).unwrap();
    assert!(rotated.contains("finished"), "{rotated}");

    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    // The daemon holds its pid file locked until it has stopped.
    let file = File::open(&pid_file).unwrap();
    let released = tokio::task::spawn_blocking(move || {
        Flock::lock(file, FlockArg::LockExclusive).map(drop).is_ok()
    });
    assert!(
        tokio::time::timeout(LIMIT, released)
            .await
            .unwrap()
            .unwrap()
    );
}

#[tokio::test]
async fn daemon_start_up_errors_reach_the_caller() {
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state-is-a-file");
    std::fs::write(&state, "").unwrap();
    let out = output(&mut server(
        &munged,
        &state,
        &dir.path().join("cq.log"),
        &dir.path().join("pid"),
    ))
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("state directory"), "{}", stderr(&out));
}

#[tokio::test]
async fn a_daemon_logs_to_syslog_as_the_daemon_facility() {
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("log");
    let syslog = tokio::net::UnixDatagram::bind(&socket).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_server"));
    cmd.args(["--daemon", "-h", "127.0.0.1", "-p", "0", "--allow-root"])
        .arg("--munge-socket")
        .arg(munged.socket())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg(format!("--log=syslog:{}", socket.display()))
        .stdin(std::process::Stdio::null());
    let started = output(&mut cmd).await;
    assert!(started.status.success(), "{}", stderr(&started));
    let pid: i32 = String::from_utf8_lossy(&started.stdout)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let _daemon = Daemon(Pid::from_raw(pid));
    // Written before the daemon said it was ready, so it is already in the socket's queue.
    let mut buf = vec![0; 4096];
    let listening = tokio::time::timeout(LIMIT, async {
        loop {
            let n = syslog.recv(&mut buf).await.unwrap();
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            if message.contains("listening on") {
                return message;
            }
        }
    })
    .await
    .expect("the daemon logs where it listens to syslog");
    // RFC 3164: facility daemon (3), severity info (6) = priority 30, then the process tag.
    assert!(listening.starts_with("<30>"), "{listening}");
    assert!(
        listening.contains(&format!("cq_server[{pid}]: ")),
        "{listening}"
    );
}

/// `--daemon` with no syslog reachable failed; it logs to a file in its state directory
/// now, and says so. (Run in a mount namespace where the usual syslog sockets are masked.)
#[tokio::test]
async fn a_daemon_without_syslog_logs_to_its_state_directory_and_says_so() {
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let not_a_socket = dir.path().join("not-a-socket");
    std::fs::write(&not_a_socket, "").unwrap();
    let mask = format!(
        "for s in /dev/log /var/run/syslog; do [ -e $s ] && mount --bind {} $s; done; exec \"$@\"",
        not_a_socket.display()
    );
    let out = output(
        tokio::process::Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &mask,
                "sh",
            ])
            .arg(env!("CARGO_BIN_EXE_cq_server"))
            .args(["--daemon", "-h", "127.0.0.1", "-p", "0", "--allow-root"])
            .arg("--munge-socket")
            .arg(munged.socket())
            .arg("--state-dir")
            .arg(&state)
            .stdin(std::process::Stdio::null()),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let pid: i32 = String::from_utf8_lossy(&out.stdout)
        .rsplit("pid ")
        .next()
        .and_then(|p| p.trim().parse().ok())
        .expect("the daemon's pid");
    let _daemon = Daemon(Pid::from_raw(pid));
    let log = state.canonicalize().unwrap().join("cq_server.log");
    assert!(
        stderr(&out).contains(&format!("logging to {} instead", log.display())),
        "{}",
        stderr(&out)
    );
    wait_for_text(log, "listening on").await;
}
