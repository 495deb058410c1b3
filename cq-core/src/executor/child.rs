//! The one place where a forked child is prepared for its job before `exec`.
//!
//! Everything the child does between `fork` and `exec` runs in a copy of a multi-threaded
//! process, where only async-signal-safe calls are allowed: no allocation, no locks, no
//! formatting. So the parent prepares everything ([`ChildSpec::into_command`] turns strings
//! into C strings and pointer arrays), and the child only makes system calls, in this order:
//!
//! 1. reset the signal mask, start a new session (no controlling terminal, its own process
//!    group), join the job's cgroup;
//! 2. mark every descriptor but 0, 1 and 2 close-on-exec, so that nothing the server holds
//!    crosses into the job;
//! 3. switch to the requester: supplementary groups, then group, then user (real, effective
//!    and saved), and set the umask;
//! 4. with the requester's rights only: enter the working directory, look the program up
//!    (and, with an allow list, check that the file found is one of the allowed files, by
//!    device and inode), and `execve` it.
//!
//! A failure is returned to the parent as an OS error whose number says which step failed
//! ([`ChildFailure::from_spawn_error`]), so that the client hears "working directory not
//! found" rather than an errno.

use std::ffi::{CString, c_char, c_int};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A user to switch to: ids and supplementary groups, all from the account database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UserSwitch {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) groups: Vec<u32>,
}

/// A file the allow list admits, identified by device and inode, and the path that is run
/// when the requester's lookup finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AllowedFile {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) path: PathBuf,
}

/// Everything a child needs, as the parent knows it.
#[derive(Debug)]
pub(crate) struct ChildSpec {
    /// The arguments; `argv[0]` is the name the requester gave.
    pub(crate) argv: Vec<String>,
    /// The complete environment.
    pub(crate) env: Vec<(String, String)>,
    /// Where to look for the program, in order (as `execvp` would try them).
    pub(crate) candidates: Vec<PathBuf>,
    /// With an allow list: the only files that may run.
    pub(crate) allowed: Option<Vec<AllowedFile>>,
    /// The working directory, entered after the switch.
    pub(crate) cwd: PathBuf,
    /// The user to become; `None` keeps this process's.
    pub(crate) user: Option<UserSwitch>,
    /// The job's `cgroup.procs`, open for writing; the child moves itself there.
    pub(crate) cgroup_procs: Option<OwnedFd>,
    /// The job's file mode creation mask.
    pub(crate) umask: u32,
}

/// Which step of the child's set-up failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Step {
    /// Resetting signals or starting a session.
    Session = 1,
    /// Joining the job's cgroup.
    Cgroup = 2,
    /// Closing inherited descriptors.
    Descriptors = 3,
    /// Switching groups or user.
    User = 4,
    /// Entering the working directory.
    WorkingDirectory = 5,
    /// Finding the program.
    Lookup = 6,
    /// The program found is not on the allow list.
    NotAllowed = 7,
    /// `execve` itself.
    Exec = 8,
}

/// A child's failure, decoded in the parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChildFailure {
    pub(crate) step: Step,
    pub(crate) errno: i32,
}

/// Marks our encoded failures among the OS errors a spawn can return ('C' for cq).
const FAILURE_TAG: i32 = 0x43 << 24;

/// `close_range` flag: mark close-on-exec instead of closing (Linux 5.11); the standard
/// library's own error pipe must stay open until `exec`.
const CLOSE_RANGE_CLOEXEC: c_int = 4;

/// Highest descriptor marked one by one when `close_range` is unavailable.
const FD_SWEEP_LIMIT: libc::rlim_t = 65536;

impl ChildFailure {
    fn encode(step: Step, errno: i32) -> io::Error {
        io::Error::from_raw_os_error(FAILURE_TAG | (i32::from(step as u8) << 16) | (errno & 0xffff))
    }

    /// The failure a spawn error carries, if it came from this module's set-up.
    pub(crate) fn from_spawn_error(e: &io::Error) -> Option<Self> {
        let raw = e.raw_os_error()?;
        if raw & (0xff << 24) != FAILURE_TAG {
            return None;
        }
        let step = match (raw >> 16) & 0xff {
            1 => Step::Session,
            2 => Step::Cgroup,
            3 => Step::Descriptors,
            4 => Step::User,
            5 => Step::WorkingDirectory,
            6 => Step::Lookup,
            7 => Step::NotAllowed,
            8 => Step::Exec,
            _ => return None,
        };
        Some(Self {
            step,
            errno: raw & 0xffff,
        })
    }

    /// The OS error the step failed with.
    pub(crate) fn error(self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }
}

/// Owned C strings and the null-terminated pointer array `execve` wants.
struct CStringArray {
    _strings: Vec<CString>,
    pointers: Vec<*const c_char>,
}

// SAFETY: the pointers point into `_strings`, which this value owns and never changes after
// construction; sharing or sending the whole is as safe as sharing the `CString`s.
#[expect(unsafe_code, reason = "raw pointers into owned C strings, read-only")]
unsafe impl Send for CStringArray {}
// SAFETY: as above; nothing mutates through the pointers.
#[expect(unsafe_code, reason = "raw pointers into owned C strings, read-only")]
unsafe impl Sync for CStringArray {}

impl CStringArray {
    fn new(strings: Vec<CString>) -> Self {
        let mut pointers: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        pointers.push(std::ptr::null());
        Self {
            _strings: strings,
            pointers,
        }
    }

    fn as_ptr(&self) -> *const *const c_char {
        self.pointers.as_ptr()
    }

    /// The C strings (without the terminating null).
    fn entries(&self) -> &[*const c_char] {
        &self.pointers[..self.pointers.len() - 1]
    }
}

fn c_string(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

fn c_path(path: &Path, what: &str) -> io::Result<CString> {
    c_string(path.as_os_str().as_bytes(), what)
}

/// What the child holds: only C data, ready for system calls.
struct Prepared {
    argv: CStringArray,
    envp: CStringArray,
    candidates: CStringArray,
    allowed: Option<Vec<(u64, u64, CString)>>,
    cwd: CString,
    user: Option<UserSwitch>,
    cgroup_procs: Option<OwnedFd>,
    umask: libc::mode_t,
}

impl ChildSpec {
    /// A command that runs this spec: its `pre_exec` does all the work described in the
    /// module docs and `exec`s the program itself, so the program given to `Command::new` is
    /// only a name for error messages. Standard input, output and error are the caller's to
    /// set.
    ///
    /// # Errors
    ///
    /// A string that cannot become a C string (it holds a NUL byte).
    pub(crate) fn into_command(self) -> io::Result<tokio::process::Command> {
        let argv = self
            .argv
            .iter()
            .map(|a| c_string(a.as_bytes(), "an argument"))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = self
            .env
            .iter()
            .map(|(k, v)| c_string(format!("{k}={v}").as_bytes(), "the environment"))
            .collect::<io::Result<Vec<_>>>()?;
        let candidates = self
            .candidates
            .iter()
            .map(|p| c_path(p, "the program path"))
            .collect::<io::Result<Vec<_>>>()?;
        let allowed = match self.allowed {
            Some(list) => Some(
                list.into_iter()
                    .map(|a| Ok((a.dev, a.ino, c_path(&a.path, "an allowed command")?)))
                    .collect::<io::Result<Vec<_>>>()?,
            ),
            None => None,
        };
        let prepared = Prepared {
            argv: CStringArray::new(argv),
            envp: CStringArray::new(envp),
            candidates: CStringArray::new(candidates),
            allowed,
            cwd: c_path(&self.cwd, "the working directory")?,
            user: self.user,
            cgroup_procs: self.cgroup_procs,
            umask: self.umask as libc::mode_t,
        };
        let name = self.argv.first().cloned().unwrap_or_default();
        let mut command = tokio::process::Command::new(name);
        // SAFETY: the closure only makes async-signal-safe system calls on data prepared
        // above (no allocation, no locks; see `Prepared::run`), which is what `pre_exec`
        // requires of code running in the forked child of a multi-threaded process.
        #[expect(unsafe_code, reason = "the user switch between fork and exec")]
        unsafe {
            command.pre_exec(move || Err(prepared.run()));
        }
        Ok(command)
    }
}

impl Prepared {
    /// Runs in the child. Returns only on failure (success is `execve` not returning).
    #[expect(unsafe_code, reason = "raw system calls between fork and exec")]
    fn run(&self) -> io::Error {
        // SAFETY (for every block below): each call is a system call (or a libc wrapper
        // documented as async-signal-safe) on pointers to data owned by `self`, which lives
        // in the child's copy of the parent's memory until `execve` replaces it; nothing
        // allocates or takes a lock.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return ChildFailure::encode(Step::Session, errno());
            }
            if libc::setsid() < 0 {
                return ChildFailure::encode(Step::Session, errno());
            }
            if let Some(procs) = &self.cgroup_procs {
                // Writing "0" moves the writing process itself.
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return ChildFailure::encode(Step::Cgroup, errno());
                }
            }
            if let Err(e) = mark_inherited_cloexec() {
                return ChildFailure::encode(Step::Descriptors, e);
            }
            if let Some(user) = &self.user {
                // Raw system calls: they change this (only) thread, with no library state.
                let groups: *const libc::gid_t = user.groups.as_ptr();
                if libc::syscall(libc::SYS_setgroups, user.groups.len(), groups) != 0
                    || libc::syscall(libc::SYS_setresgid, user.gid, user.gid, user.gid) != 0
                    || libc::syscall(libc::SYS_setresuid, user.uid, user.uid, user.uid) != 0
                {
                    return ChildFailure::encode(Step::User, errno());
                }
            }
            libc::umask(self.umask);
            if libc::chdir(self.cwd.as_ptr()) != 0 {
                return ChildFailure::encode(Step::WorkingDirectory, errno());
            }
            match &self.allowed {
                Some(allowed) => self.exec_allowed(allowed),
                None => self.exec_first(),
            }
        }
    }

    /// Tries each candidate in turn, as `execvp` does.
    #[expect(unsafe_code, reason = "execve between fork and exec")]
    fn exec_first(&self) -> io::Error {
        let mut denied = false;
        for &candidate in self.candidates.entries() {
            // SAFETY: see `run`.
            unsafe {
                libc::execve(candidate, self.argv.as_ptr(), self.envp.as_ptr());
            }
            match errno() {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => denied = true,
                other => return ChildFailure::encode(Step::Exec, other),
            }
        }
        let errno = if denied { libc::EACCES } else { libc::ENOENT };
        ChildFailure::encode(Step::Lookup, errno)
    }

    /// Finds the first candidate that is an executable file, checks it is one of the allowed
    /// files, and runs the allowed file's own path: what runs is what was checked, whatever
    /// happens meanwhile to the (requester-controlled) path that led to it.
    #[expect(unsafe_code, reason = "stat, access and execve between fork and exec")]
    fn exec_allowed(&self, allowed: &[(u64, u64, CString)]) -> io::Error {
        let mut denied = false;
        for &candidate in self.candidates.entries() {
            // SAFETY: see `run`; `found` is plain old data filled by the kernel.
            let found = unsafe {
                let mut found: libc::stat = std::mem::zeroed();
                if libc::stat(candidate, &mut found) != 0 {
                    match errno() {
                        libc::ENOENT | libc::ENOTDIR => continue,
                        libc::EACCES => {
                            denied = true;
                            continue;
                        }
                        other => return ChildFailure::encode(Step::Lookup, other),
                    }
                }
                if found.st_mode & libc::S_IFMT != libc::S_IFREG
                    || libc::access(candidate, libc::X_OK) != 0
                {
                    denied = true;
                    continue;
                }
                found
            };
            let Some((_, _, path)) = allowed
                .iter()
                .find(|(dev, ino, _)| *dev == found.st_dev && *ino == found.st_ino)
            else {
                return ChildFailure::encode(Step::NotAllowed, libc::EPERM);
            };
            // SAFETY: see `run`.
            unsafe {
                libc::execve(path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
            }
            return ChildFailure::encode(Step::Exec, errno());
        }
        let errno = if denied { libc::EACCES } else { libc::ENOENT };
        ChildFailure::encode(Step::Lookup, errno)
    }
}

/// Marks every descriptor above 2 close-on-exec.
#[expect(unsafe_code, reason = "system calls between fork and exec")]
fn mark_inherited_cloexec() -> Result<(), i32> {
    // SAFETY: plain system calls with integer arguments.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
            return Ok(());
        }
        // Older kernels: one by one, up to the descriptor limit.
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(errno());
        }
        let last = limit.rlim_cur.min(FD_SWEEP_LIMIT) as c_int;
        for fd in 3..last {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) != 0 {
                return Err(errno());
            }
        }
    }
    Ok(())
}

/// This thread's `errno`.
fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_survive_the_trip_through_an_os_error() {
        let e = ChildFailure::encode(Step::WorkingDirectory, libc::EACCES);
        assert_eq!(
            ChildFailure::from_spawn_error(&e),
            Some(ChildFailure {
                step: Step::WorkingDirectory,
                errno: libc::EACCES
            })
        );
        let plain = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(ChildFailure::from_spawn_error(&plain), None);
    }
}
