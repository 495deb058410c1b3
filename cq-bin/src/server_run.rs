//! What `cq_server` does once its options are parsed: compose the store, engine, executor,
//! policy, authentication and listener, serve until a signal, and shut down gracefully.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cq_auth::ChannelCredentials;
use cq_auth::mtls::{TlsClientAuthenticator, UserMap};
use cq_auth::peercred::{PeerCredAuthenticator, PeerCredOr};
use cq_core::account::Account;
use cq_core::executor::DEFAULT_PATH;
use cq_core::policy::{AccessCheck, Admitted, PolicyRefusal};
use cq_core::scheduler::WorkerInfo;
use cq_core::scheduler::{Decision, DedupScope, DuplicateJobs};
use cq_core::server::{HookProgram, NoticeProgram};
use cq_core::transport::EitherListener;
use cq_core::{
    Authenticator, Containment, CredentialSource, Engine, EngineConfig, Executor, Listener,
    ProcessExecutor, Server, ServerConfig, SharedPolicy, ShutdownMode, SqliteStore, SubmitPolicy,
    UserLimits,
};
use cq_core::{Clearance, CommandJob, Identity};
use cq_transport_tcp::TcpListener;
use cq_transport_tls::{ServerTls, TlsListener, TlsReloader, revoked_serials};
use cq_transport_unix::UnixListener;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;

use crate::auth_args::AuthKind;
use crate::config_file::{ConfigFile, default_policy};
use crate::log_target::LogHandle;
use crate::paths::default_state_dir;
use crate::server_args::{Args, Dedup, Fallback, RunAsChoice};
use crate::signals::ShutdownSignals;
use crate::state_lock::{StateLock, StateLockError, lock_pid_file, lock_state_dir};

/// Start-up failures that have a typical fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Cannot listen.
    #[error("{0}")]
    Listen(String),
    /// munged unusable.
    #[error("{0}")]
    Munge(String),
    /// State directory or pid file unusable.
    #[error("state directory: {0}")]
    StateDir(String),
    /// Another server uses the state directory.
    #[error("{0}")]
    Busy(String),
    /// TLS files unusable.
    #[error("{0}")]
    Tls(String),
    /// The Unix socket cannot be served.
    #[error("{0}")]
    Socket(String),
    /// Jobs cannot run as their requester.
    #[error("{0}")]
    RunAs(String),
    /// The executor (Slurm) cannot run jobs.
    #[error("{0}")]
    Executor(String),
}

impl StartError {
    /// What to do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::Listen(_) => {
                "is another cq_server running? choose another address with -h or port with -p"
            }
            Self::Socket(_) => {
                "put --socket in a directory only cq_server's user (or root) can change, e.g. /run/cq; is another cq_server serving it?"
            }
            Self::Munge(_) => crate::report::MUNGED_HINT,
            Self::StateDir(_) => {
                "fix it, or choose another directory with --state-dir (owned by cq_server's user, in parents only root can change)"
            }
            Self::Busy(_) => "stop the other server, or give this one its own --state-dir",
            Self::Executor(_) => {
                "check the Slurm options (--partition, --slurm-conf, --slurm-output-dir) and that slurmctld runs (sinfo)"
            }
            Self::Tls(_) => {
                "fix the file named; certificates come from `cq_server tls init DIR --host NAME` (or pass --tls-ca/--tls-cert/--tls-key)"
            }
            Self::RunAs(_) => {
                "run cq_server as root, or pass --run-as server to run every job as cq_server's user"
            }
        }
    }
}

/// What the server needs besides the parsed options.
#[derive(Debug)]
pub struct Context {
    /// The configuration file read at start, if any.
    pub config: Option<ConfigFile>,
    /// The logger, reopened on SIGHUP.
    pub log: LogHandle,
    /// Called once the server listens (the `--daemon` hand-over).
    pub on_ready: fn(),
}

/// The signal handlers, installed before anything else can take time: a SIGHUP or SIGTERM
/// during start-up is handled (after start-up), never fatal.
#[derive(Debug)]
pub struct Signals {
    hangup: Signal,
    shutdown: ShutdownSignals,
}

impl Signals {
    /// Installs the handlers.
    ///
    /// # Errors
    ///
    /// When the runtime cannot register them.
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            hangup: signal(SignalKind::hangup())?,
            shutdown: ShutdownSignals::install()?,
        })
    }
}

/// Everything but the listener and authentication, which depend on `--auth`.
struct Parts {
    config: ServerConfig,
    executor: Arc<dyn Executor>,
    /// How many jobs the server's own workers run at once (--lanes).
    lanes: u16,
    engine: EngineConfig,
    store: Arc<SqliteStore>,
    dedup: Option<DuplicateJobs>,
    hook_program: Option<HookProgram>,
    notice_program: Option<NoticeProgram>,
    metrics: Option<std::net::TcpListener>,
    policy: SharedPolicy,
    reload: Reload,
    shutdown_grace: Duration,
    on_ready: fn(),
    signals: Signals,
    /// Held until the server has stopped and recorded everything.
    _locks: Vec<StateLock>,
}

/// How SIGHUP re-reads the policy and reopens the log (and, with TLS, re-reads the user map
/// and the revocation list).
struct Reload {
    config_path: Option<PathBuf>,
    rules: PolicyRules,
    log: LogHandle,
    tls: Option<TlsReload>,
}

/// What SIGHUP re-reads with TLS.
struct TlsReload {
    authenticator: TlsClientAuthenticator,
    listener: TlsReloader,
    files: crate::auth_args::TlsFiles,
    crl: Option<PathBuf>,
    user_map: Option<PathBuf>,
}

impl TlsReload {
    /// Reads the user map and the revocation list, and puts them in force.
    fn run(&self) -> anyhow::Result<()> {
        let users = self.user_map.as_deref().map(UserMap::load).transpose()?;
        let revoked = match &self.crl {
            Some(crl) => revoked_serials(crl)?,
            None => Vec::new(),
        };
        let tls = ServerTls::with_crl(
            &self.files.ca,
            &self.files.cert,
            &self.files.key,
            self.crl.as_deref(),
        )?;
        self.authenticator.reload(users, revoked);
        self.listener.replace(&tls);
        Ok(())
    }
}

/// Checks a queued job when it comes to start: the credential it was submitted with still
/// holds (the authenticator says), and the policy still admits it.
struct ServerAccessCheck<A> {
    policy: SharedPolicy,
    authenticator: A,
}

impl<A: Authenticator> AccessCheck for ServerAccessCheck<A> {
    fn admit(&self, requester: &Identity, job: &CommandJob) -> Result<Admitted, PolicyRefusal> {
        self.policy.admit(requester, job)
    }

    fn clear(&self, owner: &Identity, job: &CommandJob) -> Result<Clearance, PolicyRefusal> {
        self.authenticator
            .still_valid(owner)
            .map_err(PolicyRefusal::Revoked)?;
        self.policy.clear(owner, job)
    }
}

/// The parts of the policy that come from the command line and the process, not the file.
#[derive(Clone, Debug)]
struct PolicyRules {
    allow_root: bool,
    switch_user: bool,
    first_regular_uid: u32,
    /// A server that runs jobs as itself accepts only its own user unless the file says
    /// otherwise.
    own_user: Option<String>,
}

impl PolicyRules {
    fn policy(&self, file: Option<&ConfigFile>) -> SubmitPolicy {
        let mut policy = match file {
            Some(file) => file.policy(self.allow_root),
            None => default_policy(self.allow_root),
        };
        policy.switch_user = self.switch_user;
        policy.first_regular_uid = self.first_regular_uid;
        if let Some(own) = &self.own_user
            && policy.users.is_empty()
            && policy.groups.is_empty()
        {
            policy.users = vec![own.clone()];
        }
        policy
    }
}

/// One line for admins: who may submit, and with whose rights their jobs run.
fn describe_policy(policy: &SubmitPolicy) -> String {
    let who = match (policy.users.is_empty(), policy.groups.is_empty()) {
        (true, true) => "any authenticated user but service accounts".to_owned(),
        _ => format!(
            "users [{}] and members of groups [{}]",
            policy.users.join(", "),
            policy.groups.join(", ")
        ),
    };
    let root = if policy.allow_root {
        "root too"
    } else {
        "not root"
    };
    let rights = if policy.switch_user {
        "jobs run as their requester"
    } else {
        "jobs run as cq_server's own user"
    };
    let commands = match &policy.commands {
        Some(list) => format!(
            "only {}",
            list.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "any command".to_owned(),
    };
    let workers = if policy.workers.is_empty() {
        "no workers".to_owned()
    } else {
        format!("workers [{}]", policy.workers.join(", "))
    };
    format!(
        "admits {who} ({root}); {rights}; {commands}; admins [{}]; {workers}",
        policy.admins.join(", ")
    )
}

fn optional<T: PartialEq + Default>(value: T) -> Option<T> {
    (value != T::default()).then_some(value)
}

/// Runs the server until SIGTERM/SIGINT and a graceful stop.
///
/// # Errors
///
/// Start-up failures ([`StartError`] when there is a typical fix).
pub async fn start(args: Args, context: Context, signals: Signals) -> anyhow::Result<()> {
    let seconds = |s: f64, what: &str| {
        Duration::try_from_secs_f64(s)
            .with_context(|| format!("--{what} {s}: not a duration in seconds"))
    };
    // Everything the server creates (database, logs, pid files) is its own: jobs and hooks
    // set their own mask.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // The credential service first: a server that could authenticate nobody must fail
    // before it creates a state directory.
    let credentials = credentials(&args).await?;
    let mut config = ServerConfig::default();
    config.handshake_timeout = seconds(args.handshake_timeout, "handshake-timeout")?;
    config.max_connections = args.max_connections;
    config.max_connections_per_host = args.max_connections_per_host;
    config.worker_timeout = seconds(args.worker_timeout, "worker-timeout")?;
    config.requeue_lost = args.requeue_lost;

    let root = nix::unistd::geteuid().is_root();
    let switch_user = match args.run_as {
        Some(RunAsChoice::Requester) | None if root => true,
        Some(RunAsChoice::Requester) => {
            return Err(StartError::RunAs(
                "--run-as requester needs cq_server to run as root".into(),
            )
            .into());
        }
        Some(RunAsChoice::Server) | None => false,
    };
    let jobs = context
        .config
        .as_ref()
        .map(|c| c.jobs().clone())
        .unwrap_or_default();
    let mut base_env: Vec<(String, String)> = jobs.env.unwrap_or_default().into_iter().collect();
    if !base_env.iter().any(|(name, _)| name == "PATH") {
        base_env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    let (containment, no_cgroups) = Containment::detect();
    // On Slurm, Slurm contains the jobs (and the executor says how well).
    if args.executor.executor == crate::executor_args::ExecutorKind::Process {
        match &no_cgroups {
            None => tracing::info!(containment = %containment.describe(), "jobs are contained"),
            Some(why) => tracing::warn!(
                reason = %why,
                "cgroups cannot be used: each job gets a session and process group instead, which a process that starts its own session escapes"
            ),
        }
    }
    let mut executor = ProcessExecutor::new()
        .with_kill_grace(seconds(args.kill_grace, "kill-grace")?)
        .with_base_env(base_env.clone())
        .with_containment(containment);
    if let Some(cwd) = &jobs.cwd {
        executor = executor.with_cwd(cwd);
    }
    let own_name = {
        let uid = nix::unistd::geteuid();
        nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map_or_else(|| format!("uid {uid}"), |u| u.name)
    };
    let rules = PolicyRules {
        allow_root: args.allow_root,
        switch_user,
        first_regular_uid: Account::first_regular_uid(),
        own_user: (!switch_user).then(|| own_name.clone()),
    };
    let policy = SharedPolicy::new(rules.policy(context.config.as_ref()));
    log_policy(&policy.current(), root);

    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let state_dir = crate::state_dir::prepare(&state_dir).map_err(StartError::StateDir)?;
    let log_dir = state_dir.join("logs");
    let lock_error = |e: StateLockError| match e {
        StateLockError::Busy { .. } => StartError::Busy(e.to_string()),
        _ => StartError::StateDir(e.to_string()),
    };
    let mut locks = vec![lock_state_dir(&state_dir).map_err(lock_error)?];
    if let Some(pid_file) = &args.pid_file {
        let what = format!("the pid file {}", pid_file.display());
        locks.push(lock_pid_file(pid_file, what).map_err(lock_error)?);
    }
    let executor = match crate::state_dir::result_dir(&state_dir, switch_user).and_then(|dir| {
        executor
            .clone()
            .with_result_dir(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))
    }) {
        Ok(with_results) => with_results,
        Err(why) => {
            tracing::warn!(reason = %why, "jobs get no CQ_RESULT_FILE: they cannot report results back");
            executor
        }
    };
    let executor: Arc<dyn Executor> = match args
        .executor
        .slurm(&state_dir.join("slurm"), base_env, jobs.cwd.clone())
        .await
    {
        Ok(Some(slurm)) => {
            tracing::info!(partition = ?args.executor.partition, lanes = args.executor.lanes, "jobs run on Slurm");
            slurm
        }
        Ok(None) => Arc::new(executor),
        Err(e) => return Err(StartError::Executor(e).into()),
    };
    let store = SqliteStore::open(&state_dir.join("cq.db"))
        .map_err(|e| StartError::StateDir(e.to_string()))?;
    let mut engine = EngineConfig::default().with_log_dir(&log_dir);
    engine.retention = seconds(args.retention_days * 86400.0, "retention-days")?;
    engine.requeue_running = args.requeue_lost;
    engine.paused = args.paused;
    engine.local_worker = !args.no_local_worker;
    engine.worker_timeout = seconds(args.worker_timeout, "worker-timeout")?;
    engine.default_time_limit = args.default_timeout;
    engine.max_time_limit = args.max_timeout;
    engine.log_limit = args.log_limit;
    engine.limits = UserLimits::unlimited();
    engine.limits.queued_jobs = optional(args.max_queued_jobs);
    engine.limits.queued_bytes = optional(args.max_queued_bytes);
    engine.limits.log_bytes = optional(args.max_log_bytes);
    let dedup = match args.dedup {
        Dedup::Off => None,
        Dedup::Queued => Some(DuplicateJobs::new(DedupScope::Queued)),
        Dedup::Running => Some(DuplicateJobs::new(DedupScope::QueuedOrRunning)),
    };
    let hook_program = match &args.submit_hook {
        Some(path) => Some(hook_program(&args, path, root)?),
        None => None,
    };
    let notice_program = match &args.notice_hook {
        Some(path) => {
            let user = hook_user(args.notice_hook_user.as_deref(), root, "--notice-hook-user")?;
            let mut notice = NoticeProgram::new(path, args.notice_hook_timeout);
            if let Some(account) = user {
                tracing::info!(notice = %path.display(), user = %account, "notice program");
                notice = notice.run_as(account);
            }
            Some(notice)
        }
        None => None,
    };
    let metrics =
        match args.metrics {
            Some(addr) => Some(crate::metrics::bind(addr).map_err(|e| {
                StartError::Listen(format!("cannot serve the metrics on {addr}: {e}"))
            })?),
            None => None,
        };
    let parts = Parts {
        metrics,
        _locks: locks,
        config,
        executor,
        lanes: args.executor.lanes,
        engine,
        store: Arc::new(store),
        dedup,
        hook_program,
        notice_program,
        policy,
        reload: Reload {
            config_path: context.config.as_ref().map(|c| c.path().to_owned()),
            rules,
            log: context.log,
            tls: None,
        },
        shutdown_grace: seconds(args.shutdown_grace, "shutdown-grace")?,
        on_ready: context.on_ready,
        signals,
    };

    let bind = || async {
        TcpListener::bind((args.host.as_str(), args.port))
            .await
            .map_err(|e| {
                StartError::Listen(format!("cannot listen on {}:{}: {e}", args.host, args.port))
            })
    };
    let socket = match (&args.auth.socket, args.auth.auth) {
        (Some(path), _) => Some(path.clone()),
        (None, AuthKind::Local) => Some(crate::paths::default_socket()),
        (None, _) => None,
    };
    let unix = match &socket {
        Some(path) => Some(bind_socket(path)?),
        None => None,
    };
    match (credentials, unix) {
        #[cfg(feature = "munge")]
        (Credentials::Munge(socket), unix) => {
            use cq_auth::munge::{MungeAuthenticator, MungeCredentialSource};
            tracing::info!(socket = %socket.describe(), "MUNGE");
            let signer = MungeCredentialSource::new(socket.clone());
            let authenticator = MungeAuthenticator::new(socket);
            match unix {
                Some(unix) => {
                    let listener = EitherListener::new(bind().await?, unix);
                    serve(listener, PeerCredOr::new(authenticator), signer, parts).await
                }
                None => serve(bind().await?, authenticator, signer, parts).await,
            }
        }
        (Credentials::Tls(tls, files), unix) => {
            let mut parts = parts;
            let authenticator = TlsClientAuthenticator::new();
            let listener = TlsListener::new(bind().await?, &tls);
            let reload = TlsReload {
                authenticator: authenticator.clone(),
                listener: listener.reloader(),
                files: files.clone(),
                crl: args.tls_crl.clone(),
                user_map: args.tls_user_map.clone(),
            };
            reload.run().map_err(|e| StartError::Tls(e.to_string()))?;
            parts.reload.tls = Some(reload);
            tracing::info!(ca = %files.ca.display(), cert = %files.cert.display(), crl = ?args.tls_crl, "mutual TLS");
            match unix {
                Some(unix) => {
                    let listener = EitherListener::new(listener, unix);
                    serve(
                        listener,
                        PeerCredOr::new(authenticator),
                        ChannelCredentials,
                        parts,
                    )
                    .await
                }
                None => serve(listener, authenticator, ChannelCredentials, parts).await,
            }
        }
        (Credentials::Local, Some(unix)) => {
            serve(unix, PeerCredAuthenticator, ChannelCredentials, parts).await
        }
        (Credentials::Local, None) => Err(StartError::Listen(
            "--auth local serves a Unix socket: give --socket".into(),
        )
        .into()),
    }
}

/// Binds the Unix socket `path` (mode 0666: anybody on this host may connect; the policy
/// says who may submit). Its directory is made (mode 0755) if missing, and must be one only
/// cq_server's user or root can change, as must every directory on the way: the socket is
/// found, made and removed by path, which anyone who may rename entries there could point
/// at another file.
fn bind_socket(path: &std::path::Path) -> anyhow::Result<UnixListener> {
    let socket_error = |what: String| StartError::Socket(what);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| socket_error(format!("{}: give the socket's full path", path.display())))?;
    let me = nix::unistd::geteuid().as_raw();
    crate::state_dir::check_trusted_dir(dir, me).map_err(socket_error)?;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| socket_error(format!("cannot create {}: {e}", dir.display())))?;
        // The server's umask (077) would leave it to root alone; clients must pass.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| socket_error(format!("cannot open up {}: {e}", dir.display())))?;
        crate::state_dir::check_trusted_dir(dir, me).map_err(socket_error)?;
    }
    let listener = UnixListener::bind(path, 0o666).map_err(|e| {
        socket_error(format!(
            "cannot listen on the socket {}: {e}",
            path.display()
        ))
    })?;
    tracing::info!(socket = %path.display(), "listening on this host's Unix socket (identities from the kernel)");
    Ok(listener)
}

/// How the server will authenticate, checked before anything is created.
enum Credentials {
    /// MUNGE through munged at this socket (reachable at start-up).
    #[cfg(feature = "munge")]
    Munge(cq_auth::munge::MungeSocket),
    /// Mutual TLS with these files.
    Tls(ServerTls, crate::auth_args::TlsFiles),
    /// This host only: the Unix socket and the kernel's word.
    Local,
}

/// Checks the credential service: munged answers, or the TLS files load.
async fn credentials(args: &Args) -> anyhow::Result<Credentials> {
    match args.auth.auth {
        #[cfg(feature = "munge")]
        AuthKind::Munge => {
            use cq_auth::munge::{MungeCredentialSource, MungeSocket};
            let socket = args
                .auth
                .munge_socket
                .clone()
                .map_or_else(MungeSocket::default_socket, MungeSocket::at);
            // Refuse to start rather than serve requests nobody can authenticate.
            MungeCredentialSource::new(socket.clone())
                .probe()
                .await
                .map_err(|e| StartError::Munge(e.to_string()))?;
            Ok(Credentials::Munge(socket))
        }
        #[cfg(not(feature = "munge"))]
        AuthKind::Munge => {
            Err(StartError::Munge("this cq_server was built without MUNGE support".into()).into())
        }
        AuthKind::Local => Ok(Credentials::Local),
        AuthKind::Tls => {
            let files = args.auth.tls_files("server");
            let tls =
                ServerTls::with_crl(&files.ca, &files.cert, &files.key, args.tls_crl.as_deref())
                    .map_err(|e| StartError::Tls(e.to_string()))?;
            Ok(Credentials::Tls(tls, files))
        }
    }
}

/// Says at start-up whom the server admits, and warns where that gives others root's rights.
fn log_policy(policy: &SubmitPolicy, root: bool) {
    tracing::info!("policy: {}", describe_policy(policy));
    if let Some(anywhere) = policy.workers.iter().find(|w| !w.contains('@')) {
        tracing::warn!(
            worker = %anywhere,
            "a worker is admitted from any address: with MUNGE, root on any host with the key can be it and get every job (name its address: NAME@IP)"
        );
    }
    if root
        && !policy.switch_user
        && (!policy.users.iter().all(|u| u == "root") || !policy.groups.is_empty())
    {
        tracing::warn!(
            "cq_server runs as root and runs every job as itself (--run-as server): everybody the policy admits gets root's rights on this host"
        );
    }
}

/// The submit hook program: fails closed unless told otherwise, runs with few rights.
fn hook_program(args: &Args, path: &std::path::Path, root: bool) -> anyhow::Result<HookProgram> {
    let fallback = match args.submit_hook_fallback {
        Fallback::Accept => Decision::Accept,
        Fallback::Reject => Decision::Reject("the submit hook failed; ask the admin".to_owned()),
    };
    let mut hook = HookProgram::new(path, args.submit_hook_timeout, fallback);
    if let Some(account) = hook_user(args.submit_hook_user.as_deref(), root, "--submit-hook-user")?
    {
        tracing::info!(hook = %path.display(), user = %account, "submit hook");
        hook = hook.run_as(account);
    }
    Ok(hook)
}

/// The account an admin's program (submit hook, notice program) runs as: `user`, or nobody
/// when cq_server runs as root, or none (cq_server's own user).
fn hook_user(user: Option<&str>, root: bool, option: &str) -> anyhow::Result<Option<Account>> {
    let user = match (user, root) {
        (Some(user), _) => user.to_owned(),
        (None, true) => "nobody".to_owned(),
        (None, false) => return Ok(None),
    };
    let account = nix::unistd::User::from_name(&user)
        .ok()
        .flatten()
        .and_then(|u| Account::lookup(u.uid.as_raw()).ok())
        .ok_or_else(|| StartError::RunAs(format!("the user {user} does not exist ({option})")))?;
    Ok(Some(account))
}

async fn serve(
    listener: impl Listener,
    auth: impl Authenticator + Clone,
    signer: impl CredentialSource,
    parts: Parts,
) -> anyhow::Result<()> {
    let log_dir = parts.engine.log_dir.clone().unwrap_or_default();
    let access_check = ServerAccessCheck {
        policy: parts.policy.clone(),
        authenticator: auth.clone(),
    };
    let own = parts.engine.worker.clone();
    let mut engine = Engine::new(parts.engine)
        .with_store(parts.store.clone())
        .with_executor(parts.executor.clone())
        .with_access_check(Arc::new(access_check));
    // Further lanes are further workers of the server's own, with names that stay the same
    // across restarts (a job running on one is found again under its name).
    for lane in 2..=parts.lanes {
        let info = WorkerInfo::new(format!("{}-{lane}", own.name), own.tags.clone());
        engine = engine.with_worker(info, parts.executor.clone());
    }
    if let Some(dedup) = parts.dedup {
        engine = engine.with_hook(dedup);
    }
    if let Some(hook) = parts.hook_program {
        engine = engine.with_reviewer(Arc::new(hook));
    }
    let engine = engine
        .start()
        .await
        .map_err(|e| StartError::StateDir(e.to_string()))?;
    if let Some(notice) = parts.notice_program {
        tokio::spawn(notice.serve(engine.events()));
    }
    let Signals {
        mut hangup,
        shutdown: mut signals,
    } = parts.signals;
    let server = Server::with_config(engine.clone(), auth, signer, parts.config)
        .with_policy(parts.policy.clone());
    let stop_metrics = CancellationToken::new();
    if let Some(listener) = parts.metrics {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!("metrics on http://{addr}/metrics");
        }
        tokio::spawn(crate::metrics::serve(
            listener,
            engine.clone(),
            Some(server.stats()),
            Some(parts.store.clone()),
            stop_metrics.clone(),
        ));
    }
    if let Some(addr) = listener.local_addr() {
        tracing::info!(state = %parts.store.path().display(), log_dir = %log_dir.display(), "listening on {addr}");
    }
    (parts.on_ready)();
    let (reload, policy) = (parts.reload, parts.policy);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            reload.run(&policy);
        }
    });
    let stop_accepting = CancellationToken::new();
    let serving = tokio::spawn(server.run(listener, stop_accepting.clone().cancelled_owned()));
    let first = signals.next().await;
    let grace = parts.shutdown_grace;
    tracing::info!(
        signal = first,
        grace_secs = grace.as_secs_f64(),
        "shutting down: the running job may finish within the grace period (its waiters hear its outcome); signal again to cancel it now"
    );
    stop_accepting.cancel();
    tokio::select! {
        () = engine.stopped() => {}
        () = tokio::time::sleep(grace) => {
            tracing::info!("grace period over: cancelling the running job");
            engine.shutdown(ShutdownMode::CancelRunning).await;
        }
        signal = signals.next() => {
            tracing::info!(signal, "cancelling the running job");
            engine.shutdown(ShutdownMode::CancelRunning).await;
        }
    }
    if let Err(e) = serving.await {
        tracing::error!(error = %e, "the server task failed");
    }
    stop_metrics.cancel();
    tracing::info!("stopped; queued jobs are kept for the next start");
    Ok(())
}

impl Reload {
    /// SIGHUP: reopen the log file, read the policy again (a broken file keeps the old one).
    fn run(&self, policy: &SharedPolicy) {
        if let Err(e) = self.log.reopen() {
            tracing::error!(error = %e, "cannot reopen the log file; still writing to the old one");
        }
        if let Some(tls) = &self.tls {
            match tls.run() {
                Ok(()) => tracing::info!("SIGHUP: TLS user map and revocation list reloaded"),
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: cannot reload the TLS user map or revocation list; keeping the old ones"
                ),
            }
        }
        match ConfigFile::load(self.config_path.as_deref()) {
            Ok(file) => {
                policy.replace(self.rules.policy(file.as_ref()));
                tracing::info!(
                    "SIGHUP: log reopened, policy reloaded: {}",
                    describe_policy(&policy.current())
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: the configuration is invalid; keeping the old policy");
            }
        }
    }
}
