//! The one place where a child process is made and prepared for its job before `exec`.
//!
//! The child is created with `clone3` directly in the job's cgroup (`CLONE_INTO_CGROUP`:
//! moving a process into a cgroup afterwards waits for an RCU grace period, ~16 ms here, and
//! leaves a moment outside it) and with a pidfd to wait on. On x86_64 with Linux 5.16 or
//! newer it is made as `posix_spawn` makes children (`CLONE_VM | CLONE_VFORK`, on a stack of
//! its own): it borrows the server's memory until its `exec`, so nothing is copied, which
//! was most of a short job's cost. Elsewhere it is a copy, as with `fork`. Either way it
//! starts inside a multi-threaded process, where only async-signal-safe calls are allowed:
//! no allocation, no locks, no formatting, and (sharing memory) no writes but to its own
//! stack. So the parent prepares everything ([`ChildSpec::spawn`] turns strings into C
//! strings and pointer arrays), and the child only makes system calls, in this order:
//!
//! 1. (signals are blocked already: the making thread blocks them all) reset every handler
//!    to the default (the parent's handlers must never run in the child), put the standard
//!    descriptors in place, start a new session (no controlling terminal, its own process
//!    group);
//! 2. close every other descriptor but the failure pipe, so that nothing the server holds
//!    is reachable through the child;
//! 3. switch to the requester: supplementary groups, then group, then user (real, effective
//!    and saved), keeping root's capabilities in the permitted set only (so that the
//!    requester cannot trace the child or read its memory before its `exec`, which drops
//!    them), and set the umask;
//! 4. with the requester's rights only: enter the working directory, look the program up
//!    (and, with an allow list, check that the file found is one of the allowed files, by
//!    device and inode), unblock signals, and `execve` it.
//!
//! Where `clone3` is refused (`ENOSYS`: older kernels, and container seccomp profiles that
//! make glibc fall back), the child is made with `clone` and joins its cgroup itself, first
//! thing, by writing to the cgroup's `cgroup.procs`.
//!
//! A failure is written to a close-on-exec pipe as the step and the OS error, and the child
//! exits; the parent reads the pipe asynchronously. The child is made, and then reaped, on
//! a thread of its own: a child held before its `exec` (its user may stop it; a hung file
//! system may hold it for good) holds that thread only, and can still be killed.

use std::ffi::{CString, c_char, c_int};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{oneshot, watch};

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
    /// The job's cgroup directory, which the child is created in.
    pub(crate) cgroup: Option<OwnedFd>,
    /// The job's file mode creation mask.
    pub(crate) umask: u32,
}

/// The child's standard input, output and error.
#[derive(Debug)]
pub(crate) struct ChildStdio {
    pub(crate) stdin: OwnedFd,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
}

/// Which step of the child's set-up failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Step {
    /// Making the process at all (in this process, not the child).
    Clone = 9,
    /// Signals, standard descriptors, the new session.
    Session = 1,
    /// Joining the job's cgroup (only where `clone3` is refused).
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

/// A child's failure before `exec`, as the parent reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChildFailure {
    pub(crate) step: Step,
    pub(crate) errno: i32,
}

impl ChildFailure {
    fn decode(bytes: [u8; 8]) -> Self {
        let step = match bytes[0] {
            2 => Step::Cgroup,
            3 => Step::Descriptors,
            4 => Step::User,
            5 => Step::WorkingDirectory,
            6 => Step::Lookup,
            7 => Step::NotAllowed,
            8 => Step::Exec,
            9 => Step::Clone,
            _ => Step::Session,
        };
        Self {
            step,
            errno: i32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        }
    }

    /// The OS error the step failed with.
    pub(crate) fn error(self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }
}

/// Highest descriptor closed one by one when `close_range` is unavailable.
const FD_SWEEP_LIMIT: libc::rlim_t = 65536;

/// `clone3` flags (linux/sched.h).
const CLONE_VM: u64 = 0x100;
const CLONE_PIDFD: u64 = 0x1000;
const CLONE_VFORK: u64 = 0x4000;
const CLONE_PARENT_SETTID: u64 = 0x0010_0000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` (linux/sched.h), version 2 (with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Owned C strings and the null-terminated pointer array `execve` wants.
struct CStringArray {
    _strings: Vec<CString>,
    pointers: Vec<*const c_char>,
}

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

/// Which system call makes the child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CloneCall {
    /// `clone3` with `CLONE_VM | CLONE_VFORK`: the child borrows this process's memory until
    /// its exec (x86_64; elsewhere `Fork`).
    Vfork,
    /// `clone3` like `fork`.
    Fork,
    /// `clone` like `fork`, where `clone3` is refused; the child joins its cgroup itself.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "chosen by tests; else a fallback")
    )]
    Legacy,
}

impl CloneCall {
    /// `Vfork` on x86_64 with Linux 5.16 or newer, else `Fork`. (Before 5.16, a child that
    /// dumps core takes down every process sharing its memory: the server, with CLONE_VM.)
    fn preferred() -> Self {
        static PREFERRED: std::sync::OnceLock<CloneCall> = std::sync::OnceLock::new();
        *PREFERRED.get_or_init(|| {
            let release = nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut numbers = release
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u32>().ok());
            let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
            if cfg!(target_arch = "x86_64") && version >= (5, 16) {
                CloneCall::Vfork
            } else {
                CloneCall::Fork
            }
        })
    }
}

/// What the child holds: only C data and descriptor numbers, ready for system calls.
struct Prepared {
    argv: CStringArray,
    envp: CStringArray,
    candidates: CStringArray,
    allowed: Option<Vec<(u64, u64, CString)>>,
    cwd: CString,
    user: Option<UserSwitch>,
    umask: libc::mode_t,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    report: RawFd,
}

impl ChildSpec {
    /// Makes the child and lets it set itself up and `exec` (see the module docs). Returns at
    /// once: the child is made on a blocking thread, which then waits for its end; the
    /// [`Started`] says when it has exec'd (or failed to) and when it ends.
    ///
    /// # Errors
    ///
    /// A string that cannot become a C string (it holds a NUL byte), or the system refusing
    /// a pipe. (The system refusing the process comes from [`Started::exec`].)
    pub(crate) fn spawn(self, stdio: ChildStdio) -> io::Result<Started> {
        self.spawn_by(stdio, CloneCall::preferred())
    }

    fn spawn_by(self, stdio: ChildStdio, call: CloneCall) -> io::Result<Started> {
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
        let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let prepared = Prepared {
            argv: CStringArray::new(argv),
            envp: CStringArray::new(envp),
            candidates: CStringArray::new(candidates),
            allowed,
            cwd: c_path(&self.cwd, "the working directory")?,
            user: self.user,
            umask: self.umask as libc::mode_t,
            stdin: stdio.stdin.as_raw_fd(),
            stdout: stdio.stdout.as_raw_fd(),
            stderr: stdio.stderr.as_raw_fd(),
            report: report_write.as_raw_fd(),
        };
        let report = pipe::Receiver::from_owned_fd(report_read)?;
        let pid = Arc::new(AtomicI32::new(0));
        let (made_tx, made) = oneshot::channel();
        let (status_tx, status) = watch::channel(None);
        let maker = Maker {
            prepared,
            _stdio: stdio,
            _report: report_write,
            cgroup: self.cgroup,
        };
        let slot = pid.clone();
        // A thread of its own, not tokio's blocking pool: a child that can never be killed
        // (in uninterruptible sleep on a hung file system) holds this thread for good, and
        // must hold nothing the server needs (nor keep the runtime from shutting down).
        std::thread::Builder::new()
            .name("cq-child".into())
            .spawn(move || maker.run(call, &slot, made_tx, &status_tx))?;
        Ok(Started {
            pid,
            handover: std::sync::Mutex::new(Handover {
                made: Some(made),
                pidfd: None,
            }),
            report: Some(report),
            status,
        })
    }
}

/// What the blocking thread that makes (and then reaps) a child owns: the child's data, and
/// the descriptors it inherits, which this process closes once the child has its copies.
struct Maker {
    prepared: Prepared,
    _stdio: ChildStdio,
    _report: OwnedFd,
    cgroup: Option<OwnedFd>,
}

/// The raw pointers in `Prepared` point into the `CString`s it owns, which move with it, so
/// it may move to the thread that makes the child.
#[expect(
    unsafe_code,
    reason = "Send for a struct of owned C strings and their pointers"
)]
// SAFETY: see above; nothing in it is shared with another thread.
unsafe impl Send for Maker {}

impl Maker {
    /// On a blocking thread: makes the child (with every signal blocked on this thread, so
    /// that the child starts with them blocked and no handler of ours ever runs in it),
    /// hands its pidfd over, and reaps it when it ends. A child nobody took over is killed.
    fn run(
        self,
        call: CloneCall,
        pid: &AtomicI32,
        made: oneshot::Sender<io::Result<OwnedFd>>,
        status: &watch::Sender<Option<io::Result<Exit>>>,
    ) {
        let cgroup = self.cgroup.as_ref().map(AsRawFd::as_raw_fd);
        let mut old = SigSet::empty();
        let blocked = pthread_sigmask(
            SigmaskHow::SIG_SETMASK,
            Some(&SigSet::all()),
            Some(&mut old),
        );
        let result = self.prepared.make(call, cgroup, pid);
        if blocked.is_ok() {
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        }
        // The child has its own copies of its descriptors now (and, made with CLONE_VM, has
        // exec'd or exited): ours go, so that output and the failure pipe see their end when
        // the child's do.
        drop(self);
        let pidfd = match result {
            Ok(pidfd) => pidfd,
            Err(e) => {
                let kind = e.kind();
                let _ = made.send(Err(e));
                let _ = status.send(Some(Err(io::Error::new(kind, "the child was not made"))));
                return;
            }
        };
        let waited = pidfd.try_clone();
        if made.send(Ok(pidfd)).is_err() {
            // Nobody supervises it: it must not run on.
            let child = Pid::from_raw(pid.load(Ordering::Acquire));
            let _ = nix::sys::signal::killpg(child, Signal::SIGKILL);
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        }
        let ended = match &waited {
            Ok(fd) => wait_exit(libc::P_PIDFD, fd.as_raw_fd() as libc::id_t),
            Err(_) => wait_exit(libc::P_PID, pid.load(Ordering::Acquire) as libc::id_t),
        };
        let _ = status.send(Some(ended));
    }
}

impl Prepared {
    /// Makes the child with `call`, falling back to `clone` where the kernel (or a seccomp
    /// filter) refuses `clone3` or one of its flags. Stores the child's pid in `pid` (before
    /// the child runs, where the kernel can) and returns its pidfd.
    fn make(&self, call: CloneCall, cgroup: Option<RawFd>, pid: &AtomicI32) -> io::Result<OwnedFd> {
        let made = match call {
            #[cfg(target_arch = "x86_64")]
            CloneCall::Vfork => self.clone_vfork(cgroup, pid),
            #[cfg(not(target_arch = "x86_64"))]
            CloneCall::Vfork => self.clone_fork(cgroup, pid),
            CloneCall::Fork => self.clone_fork(cgroup, pid),
            CloneCall::Legacy => return self.clone_legacy(cgroup, pid),
        };
        match made {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) => {
                self.clone_legacy(cgroup, pid)
            }
            made => made,
        }
    }

    /// `clone3` with `CLONE_VM | CLONE_VFORK`, as `posix_spawn` does: the child runs on a
    /// stack of its own in this process's memory, and this thread waits until the child has
    /// exec'd or exited. Nothing is copied: no page tables, no copy-on-write faults in this
    /// (multi-threaded) process afterwards, which were most of a short job's cost here.
    #[cfg(target_arch = "x86_64")]
    #[expect(
        unsafe_code,
        reason = "clone3 with a stack of its own, which only assembly can call"
    )]
    fn clone_vfork(&self, cgroup: Option<RawFd>, pid: &AtomicI32) -> io::Result<OwnedFd> {
        let stack = ChildStack::new()?;
        let mut pidfd: c_int = -1;
        let mut args = CloneArgs {
            flags: CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_PARENT_SETTID,
            pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
            parent_tid: pid.as_ptr() as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.low as u64,
            stack_size: stack.size as u64,
            ..CloneArgs::default()
        };
        if let Some(dir) = cgroup {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = dir as u64;
        }
        let ret: isize;
        // SAFETY: `args` is a valid clone_args of the size passed; `pidfd`, `pid` and the
        // stack outlive the call, which returns in this thread only once the child has
        // exec'd or exited (CLONE_VFORK), so the child never uses them after they go. In the
        // child (rax 0), the kernel has switched to the new stack (16-byte aligned at its
        // top, as a call needs); the child calls `vfork_child(self)`, which never returns,
        // and touches only its own stack and, read-only, `self`. Signals are blocked on
        // this thread (see `Maker::run`), so the child starts with them blocked; its
        // handler table is its own (no CLONE_SIGHAND). rcx and r11 are clobbered by
        // `syscall`.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "mov rdi, r12",
                "call r13",
                "ud2",
                "2:",
                inlateout("rax") libc::SYS_clone3 as isize => ret,
                in("rdi") std::ptr::addr_of!(args),
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") std::ptr::from_ref(self),
                in("r13") vfork_child as *const () as usize,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        if ret < 0 {
            return Err(io::Error::from_raw_os_error(-ret as i32));
        }
        // SAFETY: CLONE_PIDFD made the kernel store a new descriptor in `pidfd`, owned by
        // nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(pidfd) })
    }

    /// `clone3` like `fork`: the child is a copy of this process (architectures without
    /// `clone_vfork`).
    #[expect(
        unsafe_code,
        reason = "clone3 and the child's system calls before exec"
    )]
    fn clone_fork(&self, cgroup: Option<RawFd>, pid: &AtomicI32) -> io::Result<OwnedFd> {
        let mut pidfd: c_int = -1;
        let mut args = CloneArgs {
            flags: CLONE_PIDFD,
            pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        if let Some(dir) = cgroup {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = dir as u64;
        }
        // SAFETY: clone3 without CLONE_VM and without a stack gives the child a copy of this
        // process, as fork does; `args` is a valid, initialised clone_args of the size
        // passed, and `pidfd` outlives the call. In the child (return value 0) only
        // `child_main` runs, which makes async-signal-safe system calls on `self` (copied
        // memory) and never returns.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                std::ptr::addr_of!(args),
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match ret {
            0 => self.child_main(None),
            -1 => Err(io::Error::last_os_error()),
            child => {
                pid.store(child as i32, Ordering::Release);
                // SAFETY: CLONE_PIDFD made the kernel store a new descriptor in `pidfd`,
                // owned by nobody else.
                Ok(unsafe { OwnedFd::from_raw_fd(pidfd) })
            }
        }
    }

    /// `clone` like `fork`, for systems that refuse `clone3`: the child joins the cgroup
    /// itself.
    #[expect(unsafe_code, reason = "clone and the child's system calls before exec")]
    fn clone_legacy(&self, cgroup: Option<RawFd>, pid: &AtomicI32) -> io::Result<OwnedFd> {
        let mut pidfd: c_int = -1;
        // SAFETY: as in `clone_fork`: no CLONE_VM, no new stack, so the child is a copy of
        // this process, and only `child_main` runs in it. With CLONE_PIDFD, the kernel
        // stores the pidfd through the third argument (parent_tid), which is valid for the
        // call; the remaining arguments are unused without their flags.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (CLONE_PIDFD as libc::c_ulong) | libc::SIGCHLD as libc::c_ulong,
                0usize,
                std::ptr::addr_of_mut!(pidfd),
                0usize,
                0usize,
            )
        };
        match ret {
            0 => self.child_main(cgroup),
            -1 => Err(io::Error::last_os_error()),
            child => {
                pid.store(child as i32, Ordering::Release);
                // SAFETY: CLONE_PIDFD made the kernel store a new descriptor in `pidfd`,
                // owned by nobody else.
                Ok(unsafe { OwnedFd::from_raw_fd(pidfd) })
            }
        }
    }

    /// Runs in the child: joins `join_cgroup` (a cgroup directory) if given, sets up and
    /// execs, or reports the failure and exits.
    #[expect(unsafe_code, reason = "system calls between clone and exec")]
    fn child_main(&self, join_cgroup: Option<RawFd>) -> ! {
        // A local, never `self`: with CLONE_VM, `self` is the parent's memory.
        let mut report = self.report;
        let (step, errno) = match join_cgroup.map(join_cgroup_now) {
            Some(Err(errno)) => (Step::Cgroup, errno),
            _ => self.run(&mut report),
        };
        let mut bytes = [0u8; 8];
        bytes[0] = step as u8;
        bytes[4..].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: write and _exit are async-signal-safe system calls; `bytes` lives on this
        // stack.
        unsafe {
            libc::write(report, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        }
    }

    /// The child's work; returns only on failure.
    #[expect(unsafe_code, reason = "raw system calls between clone and exec")]
    fn run(&self, report: &mut RawFd) -> (Step, i32) {
        // SAFETY (for every block below): each call is a system call (or a libc wrapper
        // documented as async-signal-safe) on data owned by `self`, which lives in the child's
        // copy of the parent's memory until `execve` replaces it; nothing allocates or takes a
        // lock.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
            for signal in 1..=64 {
                if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                    libc::signal(signal, libc::SIG_DFL);
                }
            }
            if libc::dup2(self.stdin, 0) < 0
                || libc::dup2(self.stdout, 1) < 0
                || libc::dup2(self.stderr, 2) < 0
                || libc::setsid() < 0
            {
                return (Step::Session, errno());
            }
            match close_inherited(self.report) {
                Ok(moved) => *report = moved,
                Err(e) => return (Step::Descriptors, e),
            }
            if let Some(user) = &self.user {
                // Keep root's capabilities in the permitted set (never effective) until exec,
                // which drops them: a process holding capabilities its user lacks cannot be
                // traced, nor its memory or descriptors read, by that user, whatever
                // fs.suid_dumpable says. (Made with CLONE_VM, its memory is the server's.)
                if libc::syscall(libc::SYS_prctl, libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                    return (Step::User, errno());
                }
                // Raw system calls: they change this (only) thread, with no library state.
                let groups: *const libc::gid_t = user.groups.as_ptr();
                if libc::syscall(libc::SYS_setgroups, user.groups.len(), groups) != 0
                    || libc::syscall(libc::SYS_setresgid, user.gid, user.gid, user.gid) != 0
                    || libc::syscall(libc::SYS_setresuid, user.uid, user.uid, user.uid) != 0
                {
                    return (Step::User, errno());
                }
            }
            libc::umask(self.umask);
            if libc::chdir(self.cwd.as_ptr()) != 0 {
                return (Step::WorkingDirectory, errno());
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            match &self.allowed {
                Some(allowed) => self.exec_allowed(allowed),
                None => self.exec_first(),
            }
        }
    }

    /// Tries each candidate in turn, as `execvp` does.
    #[expect(unsafe_code, reason = "execve between clone and exec")]
    fn exec_first(&self) -> (Step, i32) {
        let mut denied = false;
        for &candidate in self.candidates.entries() {
            // SAFETY: see `run`.
            unsafe {
                libc::execve(candidate, self.argv.as_ptr(), self.envp.as_ptr());
            }
            match errno() {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => denied = true,
                other => return (Step::Exec, other),
            }
        }
        let errno = if denied { libc::EACCES } else { libc::ENOENT };
        (Step::Lookup, errno)
    }

    /// Finds the first candidate that is an executable file, checks it is one of the allowed
    /// files, and runs the allowed file's own path: what runs is what was checked, whatever
    /// happens meanwhile to the (requester-controlled) path that led to it.
    #[expect(unsafe_code, reason = "stat, access and execve between clone and exec")]
    fn exec_allowed(&self, allowed: &[(u64, u64, CString)]) -> (Step, i32) {
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
                        other => return (Step::Lookup, other),
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
                return (Step::NotAllowed, libc::EPERM);
            };
            // SAFETY: see `run`.
            unsafe {
                libc::execve(path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
            }
            return (Step::Exec, errno());
        }
        let errno = if denied { libc::EACCES } else { libc::ENOENT };
        (Step::Lookup, errno)
    }
}

/// Moves the calling process into the cgroup whose directory is `dir` (writing "0" to
/// `cgroup.procs` moves the writer).
#[expect(unsafe_code, reason = "system calls between clone and exec")]
fn join_cgroup_now(dir: RawFd) -> Result<(), i32> {
    // SAFETY: openat, write and close are system calls; the strings are static.
    unsafe {
        let procs = libc::openat(
            dir,
            c"cgroup.procs".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if procs < 0 {
            return Err(errno());
        }
        let written = libc::write(procs, c"0".as_ptr().cast(), 1);
        let failed = errno();
        libc::close(procs);
        if written == 1 { Ok(()) } else { Err(failed) }
    }
}

/// Waits for the child `id` names (`idtype` `P_PIDFD` or `P_PID`) to end, and reaps it. With
/// libc, not nix: nix cannot represent real-time signals, which a job may well die of.
#[expect(
    unsafe_code,
    reason = "waitid has no wrapper that keeps any signal number"
)]
fn wait_exit(idtype: libc::idtype_t, id: libc::id_t) -> io::Result<Exit> {
    loop {
        // SAFETY: `info` is plain old data the kernel fills in; waitid takes no other
        // pointer.
        let (done, info) = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let done = libc::waitid(idtype, id, &mut info, libc::WEXITED);
            (done, info)
        };
        if done != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: for a child that ended (WEXITED), the kernel filled in si_status.
        let status = unsafe { info.si_status() };
        return Ok(match info.si_code {
            libc::CLD_EXITED => Exit::Code(status),
            libc::CLD_DUMPED => Exit::Signal {
                signal: status,
                core_dumped: true,
            },
            _ => Exit::Signal {
                signal: status,
                core_dumped: false,
            },
        });
    }
}

/// Where the failure report goes once the inherited descriptors are gone.
const REPORT_FD: c_int = 3;

/// Closes every descriptor but 0, 1, 2 and the report pipe, which moves to [`REPORT_FD`]
/// (close-on-exec). Closed, not only marked close-on-exec: until its exec, nothing of the
/// server's (the database, sockets) may be reachable through the child. Returns the report
/// pipe's descriptor.
#[expect(unsafe_code, reason = "system calls between clone and exec")]
fn close_inherited(report: RawFd) -> Result<RawFd, i32> {
    // SAFETY: plain system calls with integer arguments; the descriptor table is the
    // child's own (no CLONE_FILES).
    unsafe {
        let moved = if report == REPORT_FD {
            libc::fcntl(REPORT_FD, libc::F_SETFD, libc::FD_CLOEXEC)
        } else {
            libc::dup3(report, REPORT_FD, libc::O_CLOEXEC)
        };
        if moved < 0 {
            return Err(errno());
        }
        if libc::syscall(
            libc::SYS_close_range,
            (REPORT_FD + 1) as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        ) == 0
        {
            return Ok(REPORT_FD);
        }
        // Older kernels: one by one, up to the descriptor limit.
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(errno());
        }
        let last = limit.rlim_cur.min(FD_SWEEP_LIMIT) as c_int;
        for fd in REPORT_FD + 1..last {
            libc::close(fd);
        }
    }
    Ok(REPORT_FD)
}

/// This thread's `errno`.
fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL)
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal { signal: i32, core_dumped: bool },
}

/// The child's entry on its own stack (see `clone_vfork`).
#[cfg(target_arch = "x86_64")]
#[expect(unsafe_code, reason = "the entry point the assembly calls")]
extern "C" fn vfork_child(prepared: *const Prepared) -> ! {
    // SAFETY: `prepared` is the `&Prepared` that `clone_vfork` passed, alive until this
    // child has exec'd or exited (its parent thread waits for that).
    unsafe { (*prepared).child_main(None) }
}

/// A stack for a child made with `CLONE_VM`, with a guard page below it: an overflow kills
/// the child rather than writing into this process's memory.
#[cfg(target_arch = "x86_64")]
struct ChildStack {
    mapping: *mut libc::c_void,
    length: usize,
    low: usize,
    size: usize,
}

#[cfg(target_arch = "x86_64")]
impl ChildStack {
    /// What the child needs is a few hundred bytes; a generous margin costs only address
    /// space (pages are touched only if used).
    const SIZE: usize = 256 * 1024;
    const GUARD: usize = 4096;

    #[expect(unsafe_code, reason = "mmap and mprotect of a fresh mapping")]
    fn new() -> io::Result<Self> {
        let length = Self::SIZE + Self::GUARD;
        // SAFETY: a new anonymous private mapping, which nothing else refers to; on
        // failure nothing is mapped.
        unsafe {
            let mapping = libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if mapping == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let stack = Self {
                mapping,
                length,
                low: mapping as usize + Self::GUARD,
                size: Self::SIZE,
            };
            if libc::mprotect(mapping, Self::GUARD, libc::PROT_NONE) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(stack)
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for ChildStack {
    #[expect(unsafe_code, reason = "munmap of our own mapping")]
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and no longer used (the child has exec'd or exited).
        unsafe {
            libc::munmap(self.mapping, self.length);
        }
    }
}

/// The child's pidfd, on its way from the thread that makes it.
#[derive(Debug)]
struct Handover {
    made: Option<oneshot::Receiver<io::Result<OwnedFd>>>,
    /// Names the child whatever happens to its pid (the reaper holds its own copy).
    pidfd: Option<OwnedFd>,
}

/// A child that was made (or is being made): its pid, whether its `exec` worked, and its
/// end.
#[derive(Debug)]
pub(crate) struct Started {
    /// Its pid, also its process group and session once it leads them; 0 until known.
    pid: Arc<AtomicI32>,
    /// The pidfd, once handed over by the thread that made the child.
    handover: std::sync::Mutex<Handover>,
    report: Option<pipe::Receiver>,
    status: watch::Receiver<Option<io::Result<Exit>>>,
}

impl Started {
    /// Its pid, once the kernel has given one.
    pub(crate) fn pid(&self) -> Option<Pid> {
        let pid = self.pid.load(Ordering::Acquire);
        (pid > 0).then(|| Pid::from_raw(pid))
    }

    /// Resolves once the child has exec'd (`Ok`), or failed to be made or to set itself up
    /// (`Err`). Cancellable: a child stopped before its `exec` keeps it waiting, nothing
    /// else.
    pub(crate) async fn exec(&mut self) -> Result<(), ChildFailure> {
        let handover = self
            .handover
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(made) = handover.made.as_mut() {
            let made = made.await;
            handover.made = None;
            match made {
                Ok(Ok(pidfd)) => handover.pidfd = Some(pidfd),
                Ok(Err(e)) => {
                    self.report = None;
                    return Err(ChildFailure {
                        step: Step::Clone,
                        errno: e.raw_os_error().unwrap_or(libc::EIO),
                    });
                }
                Err(_) => {
                    self.report = None;
                    return Err(ChildFailure {
                        step: Step::Clone,
                        errno: libc::EIO,
                    });
                }
            }
        }
        let Some(report) = self.report.as_mut() else {
            return Ok(());
        };
        let mut bytes = [0u8; 8];
        let mut read = 0;
        while read < bytes.len() {
            match report.read(&mut bytes[read..]).await {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.report = None;
        if read == bytes.len() {
            Err(ChildFailure::decode(bytes))
        } else {
            // The pipe closed at exec (close-on-exec): the program runs.
            Ok(())
        }
    }

    /// Waits for the child to end (it is reaped then).
    ///
    /// # Errors
    ///
    /// When it cannot be waited for, or was never made.
    pub(crate) async fn wait(&self) -> io::Result<Exit> {
        let mut status = self.status.clone();
        let ended = status
            .wait_for(Option::is_some)
            .await
            .map_err(|_| io::Error::other("the child's reaper stopped"))?;
        match ended.as_ref() {
            Some(Ok(exit)) => Ok(*exit),
            Some(Err(e)) => Err(io::Error::new(e.kind(), e.to_string())),
            None => Err(io::Error::other("no status")),
        }
    }

    /// Sends `signal` to the child's process group (all it started, unless something left
    /// its session), and to the child itself (before its `setsid` it leads no group). Also
    /// while the child is being made: the kernel gives its pid before it runs.
    pub(crate) fn signal_group(&self, signal: Signal) {
        let Some(pid) = self.pid() else {
            return;
        };
        if self.reaped() {
            return;
        }
        match nix::sys::signal::killpg(pid, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH | nix::errno::Errno::EPERM) => {}
            Err(e) => {
                tracing::warn!(%pid, ?signal, error = %e, "cannot signal a process group")
            }
        }
        self.signal(pid, signal);
    }

    /// Sends `signal` to the child through its pidfd: never to another process that got its
    /// pid after it was reaped. Before the pidfd is handed over, the child is not reaped (its
    /// reaper starts after the handover), so its pid is still its own.
    #[expect(unsafe_code, reason = "pidfd_send_signal has no safe wrapper")]
    fn signal(&self, pid: Pid, signal: Signal) {
        let mut handover = self
            .handover
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if handover.pidfd.is_none()
            && let Some(made) = handover.made.as_mut()
            && let Ok(Ok(pidfd)) = made.try_recv()
        {
            handover.made = None;
            handover.pidfd = Some(pidfd);
        }
        let Some(pidfd) = &handover.pidfd else {
            let _ = nix::sys::signal::kill(pid, signal);
            return;
        };
        // SAFETY: a system call on a descriptor this value owns, with no pointer passed.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                signal as c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }

    fn reaped(&self) -> bool {
        self.status.borrow().is_some()
    }

    /// Whether the child has ended (and was reaped), or was never made.
    pub(crate) fn has_ended(&self) -> bool {
        self.reaped()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        // Dropped while it runs (the job's task was aborted): it must not run on unsupervised.
        if !self.reaped() {
            self.signal_group(Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::cgroup::CgroupTree;
    use crate::job::JobId;

    /// Runs `cat /proc/self/cgroup` in a fresh job cgroup, made by `call`, and returns what
    /// it printed and the cgroup's path below the mount.
    async fn cgroup_seen_by_child(call: CloneCall) -> (String, String) {
        let tree = CgroupTree::create().expect("cgroup v2 with delegation (as CI has)");
        let job = tree.job(JobId(call as u64 + 1)).unwrap();
        let (read, write) = nix::unistd::pipe().unwrap();
        let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let spec = ChildSpec {
            argv: vec!["cat".into(), "/proc/self/cgroup".into()],
            env: Vec::new(),
            candidates: vec!["/bin/cat".into()],
            allowed: None,
            cwd: "/".into(),
            user: None,
            cgroup: Some(job.dir_for_child().unwrap()),
            umask: 0o077,
        };
        let stdio = ChildStdio {
            stdin: null(),
            stdout: write,
            stderr: null(),
        };
        let mut started = spec.spawn_by(stdio, call).unwrap();
        started.exec().await.unwrap();
        assert_eq!(started.wait().await.unwrap(), Exit::Code(0));
        let mut printed = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(read), &mut printed).unwrap();
        let dir = tree.path().join(format!("job-{}", call as u64 + 1));
        let below_mount = dir
            .to_str()
            .unwrap()
            .split_once("/cq-")
            .map(|(_, rest)| format!("/cq-{rest}"))
            .unwrap();
        (printed, below_mount)
    }

    #[tokio::test]
    async fn the_child_starts_in_its_job_cgroup_however_it_is_made() {
        for call in [CloneCall::Vfork, CloneCall::Fork, CloneCall::Legacy] {
            let (printed, job) = cgroup_seen_by_child(call).await;
            let line = printed.lines().find(|l| l.starts_with("0::")).unwrap();
            assert!(line.ends_with(&job), "{call:?}: {line} is not in {job}");
        }
    }
}

#[cfg(test)]
mod stopped_before_exec {
    use std::time::Duration;

    use super::*;
    use crate::executor::cgroup::CgroupTree;
    use crate::job::JobId;

    /// Red team of Security III: a requester can stop its own child between the switch and
    /// `exec` (it is the requester's process then), which held a server thread. The wait
    /// for `exec` must hold nothing but the job: on a single-threaded runtime, timers still
    /// fire meanwhile. (The child is made in a frozen cgroup, so that it is held before its
    /// `exec` for certain, as a stop would hold it.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_child_held_before_its_exec_blocks_no_thread() {
        let tree = CgroupTree::create().expect("cgroup v2 with delegation (as CI has)");
        let job = tree.job(JobId(99)).unwrap();
        let freeze = tree.path().join("job-99/cgroup.freeze");
        std::fs::write(&freeze, "1").unwrap();
        let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let spec = ChildSpec {
            argv: vec!["true".into()],
            env: Vec::new(),
            candidates: vec!["/bin/true".into()],
            allowed: None,
            cwd: "/".into(),
            user: None,
            cgroup: Some(job.dir_for_child().unwrap()),
            umask: 0o077,
        };
        let stdio = ChildStdio {
            stdin: null(),
            stdout: null(),
            stderr: null(),
        };
        let mut started = spec.spawn(stdio).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), started.exec())
                .await
                .is_err(),
            "no exec while held, and the runtime's timer fired meanwhile"
        );
        assert_eq!(
            std::fs::read_link(format!("/proc/{}/exe", started.pid().unwrap())).unwrap(),
            std::env::current_exe().unwrap(),
            "the child is held before its exec (else this test proves nothing)"
        );
        std::fs::write(&freeze, "0").unwrap();
        let limit = Duration::from_secs(30);
        tokio::time::timeout(limit, started.exec())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            tokio::time::timeout(limit, started.wait())
                .await
                .unwrap()
                .unwrap(),
            Exit::Code(0)
        );
    }
}
