//! cq_server: runs the commands clients submit, strictly one at a time.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgAction, Parser};
use cq_auth::munge::{MungeAuthenticator, MungeCredentialSource, MungeSocket};
use cq_bin::paths::default_state_dir;
use cq_bin::report::{MUNGED_HINT, fail, init_logging};
use cq_bin::signals::ShutdownSignals;
use cq_core::engine::ShutdownMode;
use cq_core::{Engine, EngineConfig, ProcessExecutor, Server, ServerConfig};
use cq_transport_tcp::TcpListener;

/// Runs the commands cq_client submits, strictly one at a time, in arrival order, and tells
/// every client how its job ended.
#[derive(Debug, Parser)]
#[command(version, disable_help_flag = true)]
struct Args {
    /// Address to listen on.
    #[arg(short = 'h', long, default_value = "0.0.0.0")]
    host: String,
    /// Port to listen on (0 picks a free one; the log says which).
    #[arg(short = 'p', long, default_value_t = 48005)]
    port: u16,
    /// Directory for job logs [default: /var/lib/cq for root, else ~/.local/state/cq].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// munged's socket [default: libmunge's, usually /run/munge/munge.socket.2].
    #[arg(long, value_name = "PATH")]
    munge_socket: Option<PathBuf>,
    /// Seconds a new connection gets to say hello and send its request.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    handshake_timeout: f64,
    /// Connections served at once; more are closed.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_connections: usize,
    /// Seconds between SIGTERM and SIGKILL when a job is cancelled.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    kill_grace: f64,
    /// More log output (repeat for more); RUST_LOG overrides.
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    verbose: u8,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

fn main() -> ExitCode {
    let args = Args::parse();
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
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let hint = e.downcast_ref::<StartError>().map(StartError::hint);
            fail("cq_server", format!("{e:#}"), hint, 1)
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let seconds = |s: f64, what: &str| {
        Duration::try_from_secs_f64(s)
            .with_context(|| format!("--{what} {s}: not a duration in seconds"))
    };
    let mut config = ServerConfig::default();
    config.handshake_timeout = seconds(args.handshake_timeout, "handshake-timeout")?;
    config.max_connections = args.max_connections;
    let kill_grace = seconds(args.kill_grace, "kill-grace")?;

    let state_dir = args.state_dir.unwrap_or_else(default_state_dir);
    let log_dir = state_dir.join("logs");
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| StartError::StateDir(format!("cannot create {}: {e}", log_dir.display())))?;

    let socket = args
        .munge_socket
        .map_or_else(MungeSocket::default_socket, MungeSocket::at);
    let signer = MungeCredentialSource::new(socket.clone());
    // Refuse to start rather than serve requests nobody can authenticate.
    signer
        .probe()
        .await
        .map_err(|e| StartError::Munge(e.to_string()))?;

    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|e| {
            StartError::Listen(format!("cannot listen on {}:{}: {e}", args.host, args.port))
        })?;
    if let Some(addr) = cq_core::Listener::local_addr(&listener) {
        tracing::info!(state_dir = %state_dir.display(), munge_socket = %socket.describe(), "listening on {addr}");
    }

    let engine = Engine::new(EngineConfig::default().with_log_dir(&log_dir)).spawn();
    let executor = ProcessExecutor::new().with_kill_grace(kill_grace);
    let server = Server::with_config(
        engine.clone(),
        MungeAuthenticator::new(socket),
        signer,
        executor,
        config,
    );
    let mut signals = ShutdownSignals::install().context("cannot install signal handlers")?;
    let mut first = None;
    server
        .run(listener, async { first = Some(signals.next().await) })
        .await;

    tracing::info!(
        signal = first.unwrap_or("?"),
        "shutting down: waiting for the running job; signal again to cancel it"
    );
    tokio::select! {
        () = engine.shutdown(ShutdownMode::FinishRunning) => {}
        signal = signals.next() => {
            tracing::info!(signal, "cancelling the running job");
            engine.shutdown(ShutdownMode::CancelRunning).await;
        }
    }
    tracing::info!("stopped");
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
}

impl StartError {
    fn hint(&self) -> &'static str {
        match self {
            Self::Listen(_) => {
                "is another cq_server running? choose another address with -h or port with -p"
            }
            Self::Munge(_) => MUNGED_HINT,
            Self::StateDir(_) => "choose a writable directory with --state-dir",
        }
    }
}
