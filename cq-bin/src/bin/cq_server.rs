//! cq_server: runs the commands clients submit, strictly one at a time.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgAction, Parser, Subcommand};
use cq_auth::mtls::{TlsChannelCredentials, TlsClientAuthenticator, UserMap};
use cq_bin::auth_args::{AuthArgs, AuthKind};
use cq_bin::cert_tool::{self, TlsCommand};
use cq_bin::paths::default_state_dir;
use cq_bin::report::{fail, init_logging};
use cq_bin::signals::ShutdownSignals;
use cq_bin::state_lock::{StateLock, lock_state_dir};
use cq_bin::units::{parse_duration, parse_size};
use cq_core::engine::Reviver;
use cq_core::executor::CommandRun;
use cq_core::scheduler::{Decision, DedupScope, DuplicateJobs};
use cq_core::server::HookProgram;
use cq_core::{
    Authenticator, CredentialSource, Engine, EngineConfig, Job, Listener, ProcessExecutor, Server,
    ServerConfig, ShutdownMode, SqliteStore,
};
use cq_transport_tcp::TcpListener;
use cq_transport_tls::{ServerTls, TlsListener};

/// Runs the commands cq_client submits, strictly one at a time, in arrival order, and tells
/// every client how its job ended.
#[derive(Debug, Parser)]
#[command(
    version,
    disable_help_flag = true,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on.
    #[arg(short = 'h', long, default_value = "0.0.0.0")]
    host: String,
    /// Port to listen on (0 picks a free one; the log says which).
    #[arg(short = 'p', long, default_value_t = 48005)]
    port: u16,
    /// Directory for job logs [default: /var/lib/cq for root, else ~/.local/state/cq].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    auth: AuthArgs,
    /// With --auth tls: file mapping certificate names to local users [default: the
    /// certificate name is the user name].
    #[arg(long, value_name = "FILE")]
    tls_user_map: Option<PathBuf>,
    /// Seconds a new connection gets to say hello and send its request.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    handshake_timeout: f64,
    /// Connections served at once; more are closed.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_connections: usize,
    /// Seconds between SIGTERM and SIGKILL when a job is cancelled.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    kill_grace: f64,
    /// Seconds the running job may still take after SIGTERM/SIGINT before it is cancelled.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    shutdown_grace: f64,
    /// Days finished jobs (outcome and log) are kept for clients that ask late.
    #[arg(long, value_name = "DAYS", default_value_t = 7.0)]
    retention_days: f64,
    /// Queue a job that was running when the server died again, instead of reporting it lost.
    #[arg(long)]
    requeue_lost: bool,
    /// Merge a submission into an equal job (same command, environment, working directory and
    /// user) that is queued, or queued or running; the submitter waits for that job instead.
    #[arg(long, value_enum, default_value_t = Dedup::Queued)]
    dedup: Dedup,
    /// Program that decides about each submission (JSON on stdin and stdout; see README).
    #[arg(long, value_name = "PATH")]
    submit_hook: Option<PathBuf>,
    /// Time the submit hook gets before it is killed and the fallback applies.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    submit_hook_timeout: Duration,
    /// Decision when the submit hook fails, hangs or answers garbage.
    #[arg(long, value_enum, default_value_t = Fallback::Accept)]
    submit_hook_fallback: Fallback,
    /// Output kept per job (e.g. 64M); past it the log is cut, with a marker.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64M")]
    log_limit: u64,
    /// Time limit of jobs that ask for none (e.g. 6h) [default: none].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    default_timeout: Option<Duration>,
    /// Longest time limit a job may have; longer ones (and jobs without one) get this.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    max_timeout: Option<Duration>,
    /// More log output (repeat for more); RUST_LOG overrides.
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    verbose: u8,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

/// `--submit-hook-fallback`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Fallback {
    /// Queue the job as if there were no hook.
    Accept,
    /// Refuse the job.
    Reject,
}

/// `--dedup`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Dedup {
    /// Never merge.
    Off,
    /// Merge into queued jobs.
    Queued,
    /// Merge into queued jobs and the running one.
    Running,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Certificate tooling for --auth tls.
    #[command(subcommand)]
    Tls(TlsCommand),
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(Command::Tls(command)) = args.command.take() {
        return match cert_tool::run(command) {
            Ok(done) => {
                println!("{done}");
                ExitCode::SUCCESS
            }
            Err(e) => fail("cq_server", e, None, 1),
        };
    }
    init_logging(tracing::Level::INFO, args.verbose);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            return fail(
                "cq_server",
                format!("cannot start the async runtime: {e}"),
                None,
                1,
            );
        }
    };
    match runtime.block_on(start(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let hint = e.downcast_ref::<StartError>().map(StartError::hint);
            fail("cq_server", format!("{e:#}"), hint, 1)
        }
    }
}

/// Everything but the listener and authentication, which depend on `--auth`.
struct Parts {
    config: ServerConfig,
    executor: Arc<ProcessExecutor>,
    engine: EngineConfig,
    store: Arc<SqliteStore>,
    dedup: Option<DuplicateJobs>,
    hook_program: Option<HookProgram>,
    shutdown_grace: Duration,
    /// Held until the server has stopped and recorded everything.
    _state_lock: StateLock,
}

async fn start(args: Args) -> anyhow::Result<()> {
    let seconds = |s: f64, what: &str| {
        Duration::try_from_secs_f64(s)
            .with_context(|| format!("--{what} {s}: not a duration in seconds"))
    };
    let mut config = ServerConfig::default();
    config.handshake_timeout = seconds(args.handshake_timeout, "handshake-timeout")?;
    config.max_connections = args.max_connections;
    config.default_time_limit = args.default_timeout;
    config.max_time_limit = args.max_timeout;
    let executor =
        Arc::new(ProcessExecutor::new().with_kill_grace(seconds(args.kill_grace, "kill-grace")?));
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let log_dir = state_dir.join("logs");
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| StartError::StateDir(format!("cannot create {}: {e}", log_dir.display())))?;
    let lock = lock_state_dir(&state_dir).map_err(|e| StartError::StateDir(e.to_string()))?;
    let store = SqliteStore::open(&state_dir.join("cq.db"))
        .map_err(|e| StartError::StateDir(e.to_string()))?;
    let mut engine = EngineConfig::default().with_log_dir(&log_dir);
    engine.retention = seconds(args.retention_days * 86400.0, "retention-days")?;
    engine.requeue_running = args.requeue_lost;
    engine.log_limit = args.log_limit;
    let dedup = match args.dedup {
        Dedup::Off => None,
        Dedup::Queued => Some(DuplicateJobs::new(DedupScope::Queued)),
        Dedup::Running => Some(DuplicateJobs::new(DedupScope::QueuedOrRunning)),
    };
    let parts = Parts {
        _state_lock: lock,
        config,
        executor,
        engine,
        store: Arc::new(store),
        dedup,
        hook_program: args.submit_hook.as_ref().map(|path| {
            let fallback = match args.submit_hook_fallback {
                Fallback::Accept => Decision::Accept,
                Fallback::Reject => {
                    Decision::Reject("the submit hook failed; ask the admin".to_owned())
                }
            };
            HookProgram::new(path, args.submit_hook_timeout, fallback)
        }),
        shutdown_grace: seconds(args.shutdown_grace, "shutdown-grace")?,
    };

    let bind = || async {
        TcpListener::bind((args.host.as_str(), args.port))
            .await
            .map_err(|e| {
                StartError::Listen(format!("cannot listen on {}:{}: {e}", args.host, args.port))
            })
    };
    match args.auth.auth {
        AuthKind::Munge => start_munge(&args, parts, bind().await?).await,
        AuthKind::Tls => {
            let files = args.auth.tls_files("server");
            let tls = ServerTls::from_files(&files.ca, &files.cert, &files.key)
                .map_err(|e| StartError::Tls(e.to_string()))?;
            let authenticator = match &args.tls_user_map {
                Some(path) => TlsClientAuthenticator::with_user_map(UserMap::load(path)?),
                None => TlsClientAuthenticator::new(),
            };
            tracing::info!(ca = %files.ca.display(), cert = %files.cert.display(), "mutual TLS");
            serve(
                TlsListener::new(bind().await?, &tls),
                authenticator,
                TlsChannelCredentials,
                parts,
            )
            .await
        }
    }
}

#[cfg(feature = "munge")]
async fn start_munge(args: &Args, parts: Parts, tcp: TcpListener) -> anyhow::Result<()> {
    use cq_auth::munge::{MungeAuthenticator, MungeCredentialSource, MungeSocket};
    let socket = args
        .auth
        .munge_socket
        .clone()
        .map_or_else(MungeSocket::default_socket, MungeSocket::at);
    let signer = MungeCredentialSource::new(socket.clone());
    // Refuse to start rather than serve requests nobody can authenticate.
    signer
        .probe()
        .await
        .map_err(|e| StartError::Munge(e.to_string()))?;
    tracing::info!(socket = %socket.describe(), "MUNGE");
    serve(tcp, MungeAuthenticator::new(socket), signer, parts).await
}

#[cfg(not(feature = "munge"))]
async fn start_munge(_: &Args, _: Parts, _: TcpListener) -> anyhow::Result<()> {
    Err(StartError::Munge("this cq_server was built without MUNGE support".into()).into())
}

async fn serve(
    listener: impl Listener,
    auth: impl Authenticator,
    signer: impl CredentialSource,
    parts: Parts,
) -> anyhow::Result<()> {
    let executor = parts.executor.clone();
    let reviver: Reviver = Arc::new(move |command| {
        Box::new(CommandRun::new(command, executor.clone())) as Box<dyn Job>
    });
    let log_dir = parts.engine.log_dir.clone().unwrap_or_default();
    let mut engine = Engine::new(parts.engine).with_store(parts.store.clone(), reviver);
    if let Some(dedup) = parts.dedup {
        engine = engine.with_hook(dedup);
    }
    let engine = engine
        .start()
        .await
        .map_err(|e| StartError::StateDir(e.to_string()))?;
    if let Some(addr) = listener.local_addr() {
        tracing::info!(state = %parts.store.path().display(), log_dir = %log_dir.display(), "listening on {addr}");
    }
    let server = Server::with_config(engine.clone(), auth, signer, parts.executor, parts.config);
    let server = match parts.hook_program {
        Some(hook) => server.with_hook_program(hook),
        None => server,
    };
    let mut signals = ShutdownSignals::install().context("cannot install signal handlers")?;
    let mut first = None;
    server
        .run(listener, async { first = Some(signals.next().await) })
        .await;

    let grace = parts.shutdown_grace;
    tracing::info!(
        signal = first.unwrap_or("?"),
        grace_secs = grace.as_secs_f64(),
        "shutting down: the running job may finish within the grace period; signal again to cancel it now"
    );
    tokio::select! {
        () = engine.shutdown(ShutdownMode::FinishRunning) => {}
        () = tokio::time::sleep(grace) => {
            tracing::info!("grace period over: cancelling the running job");
            engine.shutdown(ShutdownMode::CancelRunning).await;
        }
        signal = signals.next() => {
            tracing::info!(signal, "cancelling the running job");
            engine.shutdown(ShutdownMode::CancelRunning).await;
        }
    }
    tracing::info!("stopped; queued jobs are kept for the next start");
    Ok(())
}

/// Start-up failures that have a typical fix.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("{0}")]
    Listen(String),
    #[error("{0}")]
    Munge(String),
    #[error("state directory: {0}")]
    StateDir(String),
    #[error("{0}")]
    Tls(String),
}

impl StartError {
    fn hint(&self) -> &'static str {
        match self {
            Self::Listen(_) => {
                "is another cq_server running? choose another address with -h or port with -p"
            }
            Self::Munge(_) => cq_bin::report::MUNGED_HINT,
            Self::StateDir(_) => "choose a writable directory with --state-dir",
            Self::Tls(_) => {
                "create certificates with `cq_server tls init DIR --host NAME`, or pass --tls-ca/--tls-cert/--tls-key"
            }
        }
    }
}
