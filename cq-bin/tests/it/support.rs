//! Fixtures: a private munged, a real cq_server on an ephemeral loopback port, and the real
//! cq_client. Every wait is bounded.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cq_auth::munge::PrivateMunged;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use crate::users::{PublicBinaries, as_user};
use nix::unistd::User;

/// The longest any single step of a test may take before it fails.
pub(crate) const LIMIT: Duration = Duration::from_secs(60);

/// A private munged in its own directory.
pub(crate) struct Munged {
    // Dropped first: munged stops before its directory goes.
    pub(crate) daemon: PrivateMunged,
    _dir: TempDir,
}

impl Munged {
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let daemon = PrivateMunged::start_in(dir.path()).expect("start a private munged");
        Self { daemon, _dir: dir }
    }

    /// A munged with the given key: two with one key accept each other's credentials, and
    /// each has its own replay cache (as a restarted munged has an empty one).
    pub(crate) fn with_key(key: &[u8]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let daemon =
            PrivateMunged::start_with_key(dir.path(), key).expect("start a private munged");
        Self { daemon, _dir: dir }
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.daemon.socket_path()
    }
}

/// Lines the server wrote to stderr, with a wake-up for each new one.
#[derive(Default)]
struct ServerLog {
    lines: Mutex<Vec<String>>,
    grew: Notify,
    /// Set when the server closed its stderr (it exited): nothing more will come.
    closed: std::sync::atomic::AtomicBool,
}

/// A running cq_server.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) state_dir: TempDir,
    /// Options every client of this server needs (authentication).
    client_args: Vec<OsString>,
    /// The options it was started with, to restart it alike.
    args: Vec<OsString>,
    /// The program and what comes before the options (e.g. a setpriv prefix).
    program: Vec<OsString>,
    child: Child,
    log: Arc<ServerLog>,
}

impl TestServer {
    pub(crate) async fn start(munged: &Munged) -> Self {
        Self::start_with(munged, &[]).await
    }

    pub(crate) async fn start_with(munged: &Munged, extra: &[&str]) -> Self {
        let auth: Vec<OsString> = vec!["--munge-socket".into(), munged.socket().into()];
        let mut args = auth.clone();
        args.extend(extra.iter().map(OsString::from));
        Self::start_args(&args, auth).await
    }

    /// Starts cq_server with `args` (after host, port and state dir); clients get `client_args`.
    /// The tests run as root, so root's jobs are allowed (`--allow-root`).
    pub(crate) async fn start_args(args: &[OsString], client_args: Vec<OsString>) -> Self {
        let mut all = vec![OsString::from("--allow-root")];
        all.extend(args.iter().cloned());
        Self::start_exact(&all, client_args).await
    }

    /// [`start_args`](Self::start_args) without `--allow-root`.
    pub(crate) async fn start_exact(args: &[OsString], client_args: Vec<OsString>) -> Self {
        let program = vec![OsString::from(env!("CARGO_BIN_EXE_cq_server"))];
        let state_dir = tempfile::tempdir().unwrap();
        Self::launch(program, state_dir, 0, args.to_vec(), client_args).await
    }

    /// Starts `program` (cq_server, perhaps behind a prefix such as setpriv) with `args`,
    /// keeping its state in `state_dir`.
    pub(crate) async fn start_program(
        program: Vec<OsString>,
        state_dir: TempDir,
        args: &[OsString],
        client_args: Vec<OsString>,
    ) -> Self {
        Self::launch(program, state_dir, 0, args.to_vec(), client_args).await
    }

    async fn launch(
        program: Vec<OsString>,
        state_dir: TempDir,
        port: u16,
        args: Vec<OsString>,
        client_args: Vec<OsString>,
    ) -> Self {
        Self::launch_with_stdin(program, state_dir, port, args, client_args, Stdio::null()).await
    }

    /// Starts `program` (cq_server, perhaps behind a prefix) with `stdin` (e.g. a terminal).
    pub(crate) async fn launch_with_stdin(
        program: Vec<OsString>,
        state_dir: TempDir,
        port: u16,
        args: Vec<OsString>,
        client_args: Vec<OsString>,
        stdin: Stdio,
    ) -> Self {
        let (exe, prefix) = program.split_first().expect("a program");
        // Loopback unless the test names an address itself.
        let host = if args.iter().any(|a| a == "-h" || a == "--host") {
            None
        } else {
            Some(["-h", "127.0.0.1"])
        };
        let mut child = Command::new(exe)
            .args(prefix)
            .args(host.iter().flatten())
            .args(["-p", &port.to_string(), "--kill-grace", "5"])
            .arg("--state-dir")
            .arg(state_dir.path())
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(stdin)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn cq_server");
        let log = Arc::new(ServerLog::default());
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lines.lock().unwrap().push(line);
                sink.grew.notify_waiters();
            }
            sink.closed.store(true, std::sync::atomic::Ordering::SeqCst);
            sink.grew.notify_waiters();
        });
        let mut server = Self {
            addr: "0.0.0.0:0".parse().unwrap(),
            state_dir,
            client_args,
            args,
            program,
            child,
            log,
        };
        let local_only = server
            .args
            .windows(2)
            .any(|w| w[0] == "--auth" && w[1] == "local");
        if local_only {
            server
                .wait_for_log("listening on this host's Unix socket")
                .await;
            return server;
        }
        let line = server
            .wait_for_log_matching(|l| l.contains("listening on ") && !l.contains("Unix socket"))
            .await;
        let addr = line
            .split("listening on ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        server.addr = addr.parse().expect("the server logs its address");
        server
    }

    /// Kills the server with SIGKILL (no chance to record anything) and waits for it.
    pub(crate) async fn kill9(&mut self) {
        self.child.start_kill().unwrap();
        tokio::time::timeout(LIMIT, self.child.wait())
            .await
            .expect("cq_server dies")
            .unwrap();
    }

    /// Starts the server again on the same port and state directory, with the same options.
    pub(crate) async fn restart(self) -> Self {
        let Self {
            addr,
            state_dir,
            client_args,
            args,
            program,
            ..
        } = self;
        Self::launch(program, state_dir, addr.port(), args, client_args).await
    }

    /// Waits (bounded) until the server logged a line containing `needle`; returns the line.
    pub(crate) async fn wait_for_log(&self, needle: &str) -> String {
        let found = tokio::time::timeout(LIMIT, async {
            loop {
                let notified = self.log.grew.notified();
                if let Some(line) = self
                    .log
                    .lines
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|l| l.contains(needle))
                {
                    return Some(line.clone());
                }
                if self.log.closed.load(std::sync::atomic::Ordering::SeqCst) {
                    return None;
                }
                notified.await;
            }
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "the server exited without logging {needle:?}; log:\n{}",
                self.log_text()
            ),
            Err(_) => panic!(
                "the server never logged {needle:?}; log:\n{}",
                self.log_text()
            ),
        }
    }

    /// Waits (bounded) until the server logged a line that `matches`; returns it.
    pub(crate) async fn wait_for_log_matching(&self, matches: impl Fn(&str) -> bool) -> String {
        let found = tokio::time::timeout(LIMIT, async {
            loop {
                let notified = self.log.grew.notified();
                if let Some(line) = self.log.lines.lock().unwrap().iter().find(|l| matches(l)) {
                    return line.clone();
                }
                notified.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "the server never logged such a line; log:\n{}",
                self.log_text()
            )
        })
    }

    /// Waits (bounded) until the server logged `count` lines containing `needle`.
    pub(crate) async fn wait_for_log_count(&self, needle: &str, count: usize) {
        let reached = tokio::time::timeout(LIMIT, async {
            loop {
                let notified = self.log.grew.notified();
                if self
                    .log
                    .lines
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|l| l.contains(needle))
                    .count()
                    >= count
                {
                    return;
                }
                notified.await;
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "the server never logged {count} × {needle:?}; log:\n{}",
            self.log_text()
        );
    }

    pub(crate) fn log_text(&self) -> String {
        self.log.lines.lock().unwrap().join("\n")
    }

    /// Runs a trivial job: the server must still serve, whatever happened before.
    pub(crate) async fn assert_serves(&self) {
        let out = output(self.client().args(["--", "true"])).await;
        assert!(
            out.status.success(),
            "the server must keep serving: {}",
            stderr(&out)
        );
    }

    /// A cq_client command for this server, run as `user` (with its groups).
    pub(crate) fn client_as(&self, bins: &PublicBinaries, user: &User) -> Command {
        self.client_via(&as_user(user, &bins.client()))
    }

    /// A cq_client command for this server, started through `prefix` (a program and its
    /// arguments, ending with cq_client's path), from `/`.
    pub(crate) fn client_via(&self, prefix: &[OsString]) -> Command {
        let (exe, rest) = prefix.split_first().expect("a program");
        let mut cmd = Command::new(exe);
        cmd.args(rest)
            .args([
                "-h",
                &self.addr.ip().to_string(),
                "-p",
                &self.addr.port().to_string(),
            ])
            .args(&self.client_args)
            .current_dir("/")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// The server's pid.
    pub(crate) fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id().expect("the server runs") as i32)
    }

    /// Starts the server again on the same port and state directory, with `args` instead
    /// of its old options.
    pub(crate) async fn restart_with(self, args: Vec<OsString>) -> Self {
        let Self {
            addr,
            state_dir,
            client_args,
            program,
            ..
        } = self;
        Self::launch(program, state_dir, addr.port(), args, client_args).await
    }

    /// Starts cq_server (with `--allow-root`) on `port`, which something may already be
    /// dialling.
    pub(crate) async fn start_on_port(munged: &Munged, port: u16) -> Self {
        let auth: Vec<OsString> = vec!["--munge-socket".into(), munged.socket().into()];
        let mut args = vec![OsString::from("--allow-root")];
        args.extend(auth.iter().cloned());
        let program = vec![OsString::from(env!("CARGO_BIN_EXE_cq_server"))];
        Self::launch(program, tempfile::tempdir().unwrap(), port, args, auth).await
    }

    /// A cq_client command aimed at this server.
    pub(crate) fn client(&self) -> Command {
        let mut cmd = bare_client(self.addr);
        cmd.args(&self.client_args);
        cmd
    }

    /// SIGTERM, and the exit status (bounded).
    pub(crate) async fn stop(mut self) -> ExitStatus {
        self.terminate().await
    }

    /// SIGTERM, and the exit status (bounded); the state directory stays for a restart.
    pub(crate) async fn terminate(&mut self) -> ExitStatus {
        self.signal();
        tokio::time::timeout(LIMIT, self.child.wait())
            .await
            .expect("cq_server stops")
            .unwrap()
    }

    /// SIGHUP: reopen logs, reload the policy.
    pub(crate) fn hang_up(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    }

    fn signal(&self) {
        self.signal_term();
    }

    /// SIGTERM, without waiting.
    pub(crate) fn signal_term(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    /// Waits (bounded) for the server to exit, and returns how.
    pub(crate) async fn wait_exit(&mut self) -> ExitStatus {
        tokio::time::timeout(LIMIT, self.child.wait())
            .await
            .expect("cq_server stops")
            .unwrap()
    }
}

/// A cq_client command for `addr` using munged at `socket`.
pub(crate) fn client_for(addr: SocketAddr, socket: &Path) -> Command {
    let mut cmd = bare_client(addr);
    cmd.arg("--munge-socket").arg(socket);
    cmd
}

/// A cq_client command for `addr` with no authentication options.
pub(crate) fn bare_client(addr: SocketAddr) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cq_client"));
    cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs a command to its end (bounded) and collects its output.
pub(crate) async fn output(cmd: &mut Command) -> Output {
    tokio::time::timeout(LIMIT, cmd.output())
        .await
        .expect("the client finishes in time")
        .expect("run cq_client")
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes an executable shell script.
pub(crate) fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Which of a program's outputs is a terminal in [`on_a_terminal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Terminal {
    Stdout,
    Stderr,
}

/// Runs `program` with `which` output on a pseudo-terminal (the other to /dev/null, no
/// input); its exit status and everything it wrote there (the terminal's own translations,
/// such as `\r\n`, included).
pub(crate) async fn on_a_terminal(mut program: Command, which: Terminal) -> (ExitStatus, Vec<u8>) {
    use std::io::Read;
    let pty = nix::pty::openpty(None, None).expect("a pseudo-terminal");
    let mut master = std::fs::File::from(pty.master);
    // Read while it runs: a full terminal buffer would stop it.
    let reading = tokio::task::spawn_blocking(move || {
        let mut printed = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = master.read(&mut chunk) {
            printed.extend_from_slice(&chunk[..n]);
        }
        printed
    });
    let terminal = Stdio::from(pty.slave);
    match which {
        Terminal::Stdout => program.stdout(terminal).stderr(Stdio::null()),
        Terminal::Stderr => program.stderr(terminal).stdout(Stdio::null()),
    };
    let status = tokio::time::timeout(LIMIT, program.stdin(Stdio::null()).status())
        .await
        .expect("the program ended")
        .unwrap();
    // The command holds its copy of the terminal until dropped; the reader sees the end
    // (EIO) only once every copy is closed.
    drop(program);
    let printed = tokio::time::timeout(LIMIT, reading)
        .await
        .expect("the terminal's output ended")
        .unwrap();
    (status, printed)
}
