//! A private munged with its own key, socket and pid file, for tests and demos that must not
//! touch (or need) the system's munged.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::credential::MungeSocket;

/// A munged daemon of our own, stopped on drop.
///
/// munged refuses to run from directories that others may write to, so the directory given
/// to [`start_in`](Self::start_in) is made mode 0755 (it and its ancestors must not be
/// group- or world-writable unless sticky, as `/tmp` is).
#[derive(Debug)]
pub struct PrivateMunged {
    dir: PathBuf,
    pid: Pid,
}

impl PrivateMunged {
    /// Starts munged with a fresh random key in `dir`, and returns once it serves requests
    /// (munged's parent exits only after the daemon is ready, so nothing is polled).
    ///
    /// # Errors
    ///
    /// When the key cannot be written, `munged` is not installed, or it fails to start (its
    /// log is quoted).
    pub fn start_in(dir: &Path) -> io::Result<Self> {
        let mut key = vec![0; 1024];
        fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        Self::start_with_key(dir, &key)
    }

    /// Like [`start_in`](Self::start_in) with a given key (at least 32 bytes), so that two
    /// private munged can share one.
    ///
    /// # Errors
    ///
    /// As [`start_in`](Self::start_in).
    pub fn start_with_key(dir: &Path, key: &[u8]) -> io::Result<Self> {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        let key_file = dir.join("munge.key");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_file)?
            .write_all(key)?;
        let log = dir.join("munged.log");
        let status = Command::new("munged")
            .arg(format!("--key-file={}", key_file.display()))
            .arg(format!("--socket={}", dir.join("munge.socket").display()))
            .arg(format!("--pid-file={}", dir.join("munged.pid").display()))
            .arg(format!("--log-file={}", log.display()))
            .arg(format!("--seed-file={}", dir.join("munged.seed").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot run munged ({e}); install the munge package"),
                )
            })?;
        if !status.status.success() {
            let log_text = fs::read_to_string(&log).unwrap_or_default();
            return Err(io::Error::other(format!(
                "munged failed to start ({}): {}{}",
                status.status,
                String::from_utf8_lossy(&status.stderr).trim(),
                log_text
                    .lines()
                    .last()
                    .map(|l| format!("; log: {l}"))
                    .unwrap_or_default()
            )));
        }
        let pid = fs::read_to_string(dir.join("munged.pid"))?
            .trim()
            .parse::<i32>()
            .map_err(|e| io::Error::other(format!("munged wrote a bad pid file: {e}")))?;
        Ok(Self {
            dir: dir.to_owned(),
            pid: Pid::from_raw(pid),
        })
    }

    /// The socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("munge.socket")
    }

    /// The socket, ready for [`MungeCredentialSource`](super::MungeCredentialSource) and
    /// [`MungeAuthenticator`](super::MungeAuthenticator).
    pub fn socket(&self) -> MungeSocket {
        MungeSocket::at(self.socket_path())
    }
}

impl Drop for PrivateMunged {
    /// Stops munged and waits until it is gone: SIGTERM, then SIGKILL if it is still there
    /// after a while (a munged signalled while it starts up may miss its SIGTERM). It is not
    /// our child, so it is polled; its pid cannot be reused before it is gone.
    fn drop(&mut self) {
        // Gone, or a zombie its reaper has not collected yet.
        let gone = |pid: Pid| {
            matches!(kill(pid, None), Err(nix::errno::Errno::ESRCH))
                || fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                    stat.rsplit(')')
                        .next()
                        .and_then(|rest| rest.split_whitespace().next())
                        == Some("Z")
                })
        };
        for signal in [Signal::SIGTERM, Signal::SIGKILL] {
            if kill(self.pid, signal).is_err() {
                return;
            }
            for _ in 0..200 {
                if gone(self.pid) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}
