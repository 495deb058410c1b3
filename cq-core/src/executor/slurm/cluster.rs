//! A single-node Slurm cluster in a directory, for tests and benchmarks.

use std::io;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the daemons get to bring the node up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A `slurmctld` and a `slurmd` of their own (configuration, state, logs and ports), their
/// one node `cq` with partition `main`, authenticating with a given munged. Stopped when
/// dropped. Needs root (slurmd runs jobs as their users) and Slurm's daemons installed.
#[derive(Debug)]
pub struct PrivateSlurm {
    dir: PathBuf,
    conf: PathBuf,
    ctld: Option<Child>,
    slurmd: Option<Child>,
}

impl PrivateSlurm {
    /// Starts the cluster in `dir` (which must exist), with munged's socket `munge_socket`,
    /// and waits until its node takes jobs.
    ///
    /// # Errors
    ///
    /// When a daemon cannot start, or the node is not up within 30 s (the error then holds
    /// the daemons' logs).
    pub fn start(dir: &Path, munge_socket: &Path) -> io::Result<Self> {
        let conf = dir.join("slurm.conf");
        for sub in ["state", "spool", "log"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let host = nix::unistd::gethostname()?
            .into_string()
            .map_err(|_| io::Error::other("the host name is not UTF-8"))?;
        let host = host.split('.').next().unwrap_or(&host).to_owned();
        let ctld_port = free_port()?;
        let slurmd_port = free_port()?;
        let d = dir.display();
        let text = format!(
            "ClusterName=cq\n\
             SlurmctldHost={host}(127.0.0.1)\n\
             SlurmctldPort={ctld_port}\n\
             SlurmUser=root\n\
             SlurmdUser=root\n\
             AuthType=auth/munge\n\
             AuthInfo=socket={socket}\n\
             CredType=cred/munge\n\
             StateSaveLocation={d}/state\n\
             SlurmdSpoolDir={d}/spool\n\
             SlurmctldPidFile={d}/slurmctld.pid\n\
             SlurmdPidFile={d}/slurmd.pid\n\
             SlurmctldLogFile={d}/log/slurmctld.log\n\
             SlurmdLogFile={d}/log/slurmd.log\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_CPU\n\
             SchedulerParameters=batch_sched_delay=0\n\
             SlurmdParameters=config_overrides\n\
             MpiDefault=none\n\
             ReturnToService=2\n\
             MinJobAge=3600\n\
             KillWait=5\n\
             AccountingStorageType=accounting_storage/none\n\
             JobAcctGatherType=jobacct_gather/none\n\
             JobCompType=jobcomp/filetxt\n\
             JobCompLoc={d}/jobcomp\n\
             NodeName=cq NodeHostname={host} NodeAddr=127.0.0.1 Port={slurmd_port} CPUs=4 State=UNKNOWN\n\
             PartitionName=main Nodes=cq Default=YES MaxTime=INFINITE State=UP\n",
            socket = munge_socket.display(),
        );
        std::fs::write(&conf, text)?;
        // Jobs of other users write into job directories below; they must reach them.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
        let mut cluster = Self {
            dir: dir.to_owned(),
            conf,
            ctld: None,
            slurmd: None,
        };
        cluster.ctld = Some(cluster.daemon("slurmctld", &[])?);
        cluster.slurmd = Some(cluster.daemon("slurmd", &["-N", "cq"])?);
        cluster.wait_until_idle()?;
        Ok(cluster)
    }

    fn daemon(&self, program: &str, extra: &[&str]) -> io::Result<Child> {
        let log = std::fs::File::create(self.dir.join(format!("{program}.out")))?;
        Command::new(program)
            .arg("-D")
            .arg("-f")
            .arg(&self.conf)
            .args(extra)
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {program}: {e}")))
    }

    fn wait_until_idle(&self) -> io::Result<()> {
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            let state = Command::new("sinfo")
                .args(["--noheader", "--Node", "--format=%T"])
                .env("SLURM_CONF", &self.conf)
                .output();
            if let Ok(out) = state
                && String::from_utf8_lossy(&out.stdout).trim() == "idle"
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        Err(io::Error::other(format!(
            "the Slurm node is not up after {} s\nslurmctld:\n{}\nslurmd:\n{}",
            START_TIMEOUT.as_secs(),
            log("log/slurmctld.log") + &log("slurmctld.out"),
            log("log/slurmd.log") + &log("slurmd.out"),
        )))
    }

    /// Whether jobs still run or wait (or the controller cannot say).
    fn jobs_left(&self) -> bool {
        Command::new("squeue")
            .args(["--noheader", "--format=%i"])
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .output()
            .map_or(true, |out| {
                !out.status.success() || !out.stdout.trim_ascii().is_empty()
            })
    }

    /// The configuration file (for `SLURM_CONF`).
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The partition jobs go to.
    pub fn partition(&self) -> &'static str {
        "main"
    }

    /// Stops the controller (Slurm is then unreachable) and waits for it to end.
    pub fn stop_controller(&mut self) {
        stop(self.ctld.take());
    }

    /// Starts the controller again after [`stop_controller`](Self::stop_controller), from
    /// its saved state.
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start).
    pub fn start_controller(&mut self) -> io::Result<()> {
        if self.ctld.is_none() {
            self.ctld = Some(self.daemon("slurmctld", &[])?);
        }
        self.wait_until_idle()
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn stop(child: Option<Child>) {
    let Some(mut child) = child else {
        return;
    };
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for PrivateSlurm {
    fn drop(&mut self) {
        // Jobs outlive slurmd (their slurmstepd goes on): end them first.
        if self.ctld.is_some() {
            let _ = Command::new("scancel")
                .arg(format!("--partition={}", self.partition()))
                .env("SLURM_CONF", &self.conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && self.jobs_left() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        stop(self.slurmd.take());
        stop(self.ctld.take());
    }
}
