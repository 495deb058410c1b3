//! Job containment with cgroup v2: each job runs in a cgroup of its own, so that everything
//! it started (even a daemon that left its session) can be found, killed and waited for.
//!
//! The executor makes one directory below its own cgroup (`cq-PID-N`) and one cgroup per job
//! inside it (`job-ID`). Both unified (`/sys/fs/cgroup`) and hybrid (`/sys/fs/cgroup/unified`)
//! mounts work, as with systemd and Slurm's `proctrack/cgroup`. No controller is enabled:
//! the cgroup is used for grouping, `cgroup.kill` and the `populated` event only. Under
//! systemd the service needs `Delegate=yes` (the unit in `dist/` has it).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::Signal;

use crate::job::JobId;

/// The longest interval between two looks at a cgroup that is emptying, in milliseconds:
/// the kernel's own interval between two reports.
const EMPTIED_POLL_MAX_MS: u8 = 10;

/// Sets its flag when dropped.
struct GiveUpOnDrop(Arc<AtomicBool>);

impl Drop for GiveUpOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Distinguishes several executors in one process (tests run many).
static NEXT_TREE: AtomicU64 = AtomicU64::new(0);

/// The executor's own directory of job cgroups, removed when the last handle goes.
#[derive(Debug)]
pub struct CgroupTree {
    dir: PathBuf,
}

/// Why cgroups cannot be used here; the executor then falls back to process groups.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Unavailable(String);

impl CgroupTree {
    /// Finds this process's cgroup v2 directory and makes the executor's own directory in it.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] saying why (no cgroup v2 mount, no permission, no `cgroup.kill`).
    pub(crate) fn create() -> Result<Self, Unavailable> {
        let mount = cgroup2_mount()
            .ok_or_else(|| Unavailable("no cgroup v2 file system is mounted".into()))?;
        let own = own_cgroup().ok_or_else(|| {
            Unavailable("this process is not in a cgroup v2 hierarchy (/proc/self/cgroup)".into())
        })?;
        let parent = mount.join(own.trim_start_matches('/'));
        remove_stale(&parent);
        let n = NEXT_TREE.fetch_add(1, Ordering::Relaxed);
        // The process's start time too: a later process given this pid is not this one.
        let me = std::process::id();
        let started = process_stat(me).map_or(0, |(_, started)| started);
        let dir = parent.join(format!("cq-{me}-{n}-{started}"));
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Unavailable(format!("cannot create {}: {e}", dir.display())));
            }
        }
        if !dir.join("cgroup.kill").exists() {
            let _ = fs::remove_dir(&dir);
            return Err(Unavailable(
                "the kernel has no cgroup.kill (Linux 5.14 or newer needed)".into(),
            ));
        }
        Ok(Self { dir })
    }

    /// The directory, for messages.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Makes job `id`'s cgroup (a stale one of the same name is emptied and reused).
    ///
    /// # Errors
    ///
    /// When the directory or its `cgroup.procs` cannot be made or opened.
    pub(crate) fn job(&self, id: JobId) -> io::Result<JobCgroup> {
        let dir = self.dir.join(format!("job-{id}"));
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(JobCgroup { dir })
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        // Only succeeds once every job cgroup is gone, which is when nothing runs.
        let _ = fs::remove_dir(&self.dir);
    }
}

/// One job's cgroup.
#[derive(Debug)]
pub(crate) struct JobCgroup {
    dir: PathBuf,
}

impl JobCgroup {
    /// The cgroup's directory, open for the child to be created in.
    pub(crate) fn dir_for_child(&self) -> io::Result<OwnedFd> {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&self.dir)
            .map(OwnedFd::from)
    }

    /// Sends `signal` to every process in the cgroup now.
    pub(crate) fn signal(&self, signal: Signal) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Kills every process in the cgroup, and those that fork meanwhile (`cgroup.kill`).
    pub(crate) fn kill(&self) {
        if let Err(e) = fs::write(self.dir.join("cgroup.kill"), b"1") {
            tracing::warn!(cgroup = %self.dir.display(), error = %e, "cannot kill a job's cgroup");
            self.signal(Signal::SIGKILL);
        }
    }

    /// Waits until no process is left. The kernel reports changes of `cgroup.events` to
    /// inotify, but at most one per 10 ms (`cgroup_file_notify`): a cgroup that empties
    /// just after its "populated" report is reported up to 10 ms late, which was most of a
    /// short job's cost. So the file is also read again at short intervals. A blocking
    /// thread does the waiting (tokio cannot watch inotify safely); most jobs need none.
    ///
    /// # Errors
    ///
    /// When the events cannot be watched or read.
    pub(crate) async fn emptied(&self) -> io::Result<()> {
        let events = self.dir.join("cgroup.events");
        if !populated(&events)? {
            return Ok(());
        }
        // The waiting thread stops when this future is dropped (its caller gave up): a cgroup
        // that never empties must not keep a thread looking at it for good.
        let given_up = Arc::new(AtomicBool::new(false));
        let _on_drop = GiveUpOnDrop(given_up.clone());
        tokio::task::spawn_blocking(move || {
            use std::os::fd::AsFd;

            use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
            let inotify = Inotify::init(InitFlags::IN_CLOEXEC)?;
            inotify.add_watch(&events, AddWatchFlags::IN_MODIFY)?;
            let mut interval_ms: u8 = 1;
            // Checked after the watch is in place, so that no change goes unseen.
            while populated(&events)? {
                if given_up.load(Ordering::Relaxed) {
                    return Err(io::Error::other("no longer waited for"));
                }
                let mut ready = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
                if poll(&mut ready, PollTimeout::from(interval_ms))? > 0 {
                    inotify.read_events()?;
                }
                interval_ms = (interval_ms * 2).min(EMPTIED_POLL_MAX_MS);
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Whether processes remain in it (an unreadable cgroup counts as empty: it is gone).
    pub(crate) fn is_populated(&self) -> bool {
        populated(&self.dir.join("cgroup.events")).unwrap_or(false)
    }

    fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir(&self.dir) {
            tracing::warn!(cgroup = %self.dir.display(), error = %e, "cannot remove a job's cgroup");
        }
    }
}

/// Removes what executors of processes that are gone left in `parent` (after a crash, e.g.
/// `kill -9` of the server): their job cgroups and directories. A job that outlived its
/// server is killed first (with everything it started) and waited for: it must not run on
/// beside the jobs this executor starts, nor beside its own re-queued run.
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let own = own_cgroup();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        // cq-PID-N-STARTED (cq-PID-N before the start time was added).
        let Some(mut parts) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cq-"))
            .map(|rest| rest.split('-'))
        else {
            continue;
        };
        let Some(pid) = parts.next().and_then(|pid| pid.parse::<u32>().ok()) else {
            continue;
        };
        let started = parts.nth(1).and_then(|s| s.parse::<u64>().ok());
        // Our own pid too: a dead server's, reused, is told from ours by the start time.
        if is_live_executor(pid, started, own.as_deref()) {
            continue;
        }
        let dir = entry.path();
        if populated(&dir.join("cgroup.events")).unwrap_or(false) {
            tracing::warn!(cgroup = %dir.display(), "jobs of a server that is gone still run: killing them");
            let _ = fs::write(dir.join("cgroup.kill"), "1");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while populated(&dir.join("cgroup.events")).unwrap_or(false) {
                if std::time::Instant::now() > deadline {
                    tracing::error!(cgroup = %dir.display(), "processes of a job of a server that is gone cannot be killed (uninterruptible sleep?); they may run beside new jobs");
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        for job in fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            if job.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = fs::remove_dir(job.path());
            }
        }
        let _ = fs::remove_dir(&dir);
    }
}

/// Whether `pid` is a live process in the same cgroup as this one (where another server's
/// executor would be), and not some other process that got a dead server's pid: not a
/// zombie (a killed server not yet reaped), and started when the executor's did (`started`,
/// when its cgroup's name says).
fn is_live_executor(pid: u32, started: Option<u64>, own: Option<&str>) -> bool {
    match process_stat(pid) {
        None | Some(('Z' | 'X' | 'x', _)) => return false,
        Some((_, theirs)) if started.is_some_and(|started| started != theirs) => return false,
        Some(_) => {}
    }
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    let theirs = text.lines().find_map(|line| line.strip_prefix("0::"));
    match (theirs, own) {
        (Some(theirs), Some(own)) => theirs == own,
        // Cannot tell: leave it alone.
        _ => true,
    }
}

/// The state letter and start time (clock ticks after boot) of process `pid`, from
/// `/proc/PID/stat` (fields 3 and 22; the name before them may hold spaces and parentheses).
fn process_stat(pid: u32) -> Option<(char, u64)> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(text: &str) -> Option<(char, u64)> {
    let mut fields = text.get(text.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let started = fields.nth(18)?.parse().ok()?;
    Some((state, started))
}

/// Whether processes remain in the cgroup whose `cgroup.events` is `events`.
fn populated(events: &Path) -> io::Result<bool> {
    let mut text = String::new();
    File::open(events)?.read_to_string(&mut text)?;
    Ok(text.lines().any(|line| line == "populated 1"))
}

/// Where the cgroup v2 hierarchy is mounted (unified or hybrid).
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - FSTYPE SOURCE SUPER"
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// This process's cgroup v2 path (`0::/path` in `/proc/self/cgroup`).
fn own_cgroup() -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Red team: a server killed with kill -9 and not yet reaped (a zombie, as under a slow
    /// init) was taken for a live one, so its jobs were left running beside their re-queued
    /// runs. A zombie, or a process started later under the same pid, is not an executor.
    #[test]
    fn a_zombie_or_a_later_process_with_the_pid_is_not_a_live_executor() {
        let own = own_cgroup();
        let me = std::process::id();
        let (_, started) = process_stat(me).expect("this process has a stat");
        assert!(is_live_executor(me, Some(started), own.as_deref()));
        assert!(
            is_live_executor(me, None, own.as_deref()),
            "an old cgroup name"
        );
        assert!(
            !is_live_executor(me, Some(started + 1), own.as_deref()),
            "a process that started later under the pid"
        );
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while process_stat(pid).is_some_and(|(state, _)| state != 'Z') {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never exited"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            !is_live_executor(pid, None, own.as_deref()),
            "a zombie in our own cgroup"
        );
        child.wait().unwrap();
    }

    #[test]
    fn a_process_name_with_spaces_and_parentheses_does_not_confuse_the_stat_reader() {
        let text = "4242 (a b) (c)) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 19";
        assert_eq!(parse_stat(text), Some(('S', 777)));
        assert_eq!(parse_stat("4242 (x) Z"), None);
    }
}
