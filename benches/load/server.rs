//! A private munged and a release cq_server for the measurements.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};
use cq_auth::munge::PrivateMunged;

pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    /// What it logged so far.
    pub(crate) log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub(crate) client: PathBuf,
    pub(crate) munge_socket: PathBuf,
    /// The Unix socket it serves too (identities from the kernel, no munged).
    pub(crate) socket: PathBuf,
    child: Child,
    // Dropped after the server: munged outlives its last client.
    _munged: PrivateMunged,
}

impl Server {
    pub(crate) fn start(bin_dir: &Path, work: &Path) -> anyhow::Result<Self> {
        Self::start_with(bin_dir, work, &[])
    }

    /// [`start`](Self::start) with more options.
    pub(crate) fn start_with(bin_dir: &Path, work: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let munge_dir = work.join("munge");
        std::fs::create_dir(&munge_dir)?;
        let munged = PrivateMunged::start_in(&munge_dir).context("start a private munged")?;
        let server_bin = bin_dir.join("cq_server");
        let mut child = Command::new(&server_bin)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                "0",
                "--max-connections",
                "20000",
                // One user from one address submits everything: no per-user or per-address
                // limits here.
                "--max-connections-per-host",
                "20000",
                "--max-queued-jobs",
                "0",
                "--max-queued-bytes",
                "0",
                "--max-log-bytes",
                "0",
                // The harness runs as whoever starts it, root included.
                "--allow-root",
                "--state-dir",
            ])
            .arg(work.join("state"))
            .arg("--munge-socket")
            .arg(munged.socket_path())
            .arg("--socket")
            .arg(work.join("cq.sock"))
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", server_bin.display()))?;
        let mut lines = BufReader::new(child.stderr.take().context("server stderr")?).lines();
        let addr = loop {
            let Some(line) = lines.next() else {
                bail!("cq_server exited before listening")
            };
            let line = line?;
            if line.contains("Unix socket") {
                continue;
            }
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().context("address")?.parse()?;
            }
        };
        // Keep draining the log so that the server never blocks on a full pipe.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Ok(Self {
            addr,
            log,
            client: bin_dir.join("cq_client"),
            munge_socket: munged.socket_path(),
            socket: work.join("cq.sock"),
            child,
            _munged: munged,
        })
    }

    /// A cq_client command aimed at this server.
    pub(crate) fn client(&self) -> Command {
        let mut cmd = Command::new(&self.client);
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.addr.port().to_string(),
            "--munge-socket",
        ])
        .arg(&self.munge_socket)
        .stdin(Stdio::null());
        cmd
    }

    /// A cq_client command aimed at this server's Unix socket.
    pub(crate) fn client_unix(&self) -> Command {
        let mut cmd = Command::new(&self.client);
        cmd.args(["--auth", "local", "--socket"])
            .arg(&self.socket)
            .stdin(Stdio::null());
        cmd
    }

    /// A cq_client command over `transport`.
    pub(crate) fn client_over(&self, transport: Transport) -> Command {
        match transport {
            Transport::Munge => self.client(),
            Transport::Unix => self.client_unix(),
        }
    }

    /// Waits (at most a minute) until it logged a line holding every one of `needles`.
    pub(crate) fn wait_for_log(&self, needles: &[&str]) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let found = self
                .log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|line| needles.iter().all(|n| line.contains(n)));
            if found {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("cq_server never logged {needles:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The pid of its private munged.
    pub(crate) fn munged_pid(&self) -> anyhow::Result<u32> {
        let file = self.munge_socket.with_file_name("munged.pid");
        Ok(std::fs::read_to_string(&file)
            .with_context(|| format!("read {}", file.display()))?
            .trim()
            .parse()?)
    }
}

/// How the harness's clients reach the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// TCP on loopback, MUNGE credentials.
    Munge,
    /// The Unix socket, the kernel's word (no munged).
    Unix,
}

impl Transport {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Munge => "MUNGE over TCP, durable",
            Self::Unix => "Unix socket, durable",
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A memory figure of a process from /proc, in KiB (`VmRSS` from status, `Pss` from
/// smaps_rollup).
pub(crate) fn memory_kib(pid: u32, file: &str, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("{field} in /proc/{pid}/{file}"))?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}
