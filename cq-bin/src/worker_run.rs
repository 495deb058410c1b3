//! cq_worker: a build host that runs a coordinator's jobs, one at a time.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Parser};
use cq_auth::ChannelCredentials;
use cq_auth::mtls::TlsServerAuthenticator;
use cq_core::transport::Connector;
use cq_core::worker::{Worker, WorkerError, WorkerOptions};
use cq_core::{Authenticator, Client, Containment, CredentialSource, Executor, ProcessExecutor};
use tokio_util::sync::CancellationToken;

use crate::auth_args::{AuthArgs, AuthKind};
use crate::report::fail;
use crate::units::parse_duration;

/// Where a root worker keeps running jobs' output.
const ROOT_SPOOL: &str = "/var/lib/cq-worker";

/// What cq_worker is told.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "cq_worker",
    version,
    about = "Runs the jobs of a cq coordinator (cq_server) on this host, one at a time",
    disable_help_flag = true,
    mut_arg("tls_cert", |a| a.help("This worker's certificate (PEM) for --auth tls [default: /etc/cq/tls/worker.pem]")),
    mut_arg("tls_key", |a| a.help("This worker's private key (PEM) for --auth tls [default: /etc/cq/tls/worker.key]"))
)]
pub struct Args {
    /// Configuration file.
    #[arg(
        long,
        value_name = "FILE",
        help = "Configuration file; its [worker] section holds defaults for these options [default: /etc/cq/cq.toml if it exists]"
    )]
    pub config: Option<PathBuf>,
    /// The coordinator's host.
    #[arg(short = 'h', long, default_value = "localhost")]
    pub host: String,
    /// The coordinator's port.
    #[arg(short = 'p', long, default_value_t = 48005)]
    pub port: u16,
    /// This worker's name, unique among the coordinator's workers [default: the host name].
    #[arg(long)]
    pub name: Option<String>,
    /// What this worker offers (repeat): it runs only jobs whose tags it has all of, e.g.
    /// --tag arch=amd64 --tag profile=desktop.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    #[expect(
        missing_docs,
        reason = "clap would show a doc comment here as help; AuthArgs documents itself"
    )]
    #[command(flatten)]
    pub auth: AuthArgs,
    /// With --auth munge: uid the coordinator must run as for its answers to be believed
    /// (repeatable) [default: 0].
    #[arg(long = "server-uid", value_name = "UID")]
    pub server_uid: Vec<u32>,
    /// With --auth tls: the name the coordinator's certificate must carry [default: the
    /// host].
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Where running jobs' output waits until the coordinator has it; must be this user's
    /// and private [default: /var/lib/cq-worker as root, else ~/.local/state/cq/worker].
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Longest time between two reports while a job runs (keep it well under the
    /// coordinator's --worker-timeout); a cancel reaches a quiet job within it.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
    pub heartbeat: Duration,
    /// Run jobs as root, or as this worker's own user when the coordinator names nobody (a
    /// coordinator that does not switch users): off, a root worker runs jobs only as their
    /// requesters.
    #[arg(long)]
    pub allow_root_jobs: bool,
    #[expect(
        missing_docs,
        reason = "clap would show a doc comment here as help; ExecutorArgs documents itself"
    )]
    #[command(flatten)]
    pub executor: crate::executor_args::ExecutorArgs,
    /// Seconds between SIGTERM and SIGKILL when a job is stopped.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub kill_grace: f64,
    /// More log output (repeat for more); RUST_LOG overrides.
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
}

/// Runs the worker until SIGINT or SIGTERM; a job running then is stopped and its end
/// reported.
pub async fn run(args: Args) -> ExitCode {
    let name = match args.name.clone().map_or_else(host_name, Ok) {
        Ok(name) => name,
        Err(e) => return fail("cq_worker", e, Some("give --name"), 1),
    };
    let root = nix::unistd::geteuid().is_root();
    let spool = args.spool.clone().unwrap_or_else(|| {
        if root {
            PathBuf::from(ROOT_SPOOL)
        } else {
            crate::paths::user_state_dir().join("worker")
        }
    });
    let executor = match executor(&args, &spool) {
        Ok(executor) => executor,
        Err(e) => return fail("cq_worker", e, None, 1),
    };
    let base_env = vec![("PATH".into(), cq_core::executor::DEFAULT_PATH.into())];
    let executor: Arc<dyn Executor> = match args
        .executor
        .slurm(&spool.join("slurm"), base_env, None)
        .await
    {
        Ok(Some(slurm)) => {
            tracing::info!(partition = ?args.executor.partition, lanes = args.executor.lanes, "jobs run on Slurm");
            slurm
        }
        Ok(None) => executor,
        Err(e) => {
            return fail(
                "cq_worker",
                e,
                Some(
                    "check the Slurm options (--partition, --slurm-conf, --slurm-output-dir) and that slurmctld runs (sinfo)",
                ),
                1,
            );
        }
    };
    let mut options = WorkerOptions::new(name, args.tags.clone(), spool);
    options.heartbeat = args.heartbeat;
    options.allow_root_jobs = args.allow_root_jobs;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop.cancel();
    });
    match args.auth.auth {
        AuthKind::Munge => run_munge(&args, executor, options, shutdown).await,
        AuthKind::Tls => {
            let connector = args.auth.tls_connector(
                "worker",
                &args.host,
                args.port,
                args.tls_server_name.as_deref(),
            );
            match connector {
                Ok(connector) => {
                    let client = Client::new(connector, ChannelCredentials, TlsServerAuthenticator);
                    serve(client, executor, options, shutdown, args.executor.lanes).await
                }
                Err(e) => fail(
                    "cq_worker",
                    e,
                    Some("pass --tls-ca, --tls-cert and --tls-key"),
                    1,
                ),
            }
        }
        AuthKind::Local => fail(
            "cq_worker",
            "--auth local serves this host's clients only; a worker dials its coordinator",
            Some("use --auth munge or --auth tls"),
            1,
        ),
    }
}

#[cfg(feature = "munge")]
async fn run_munge(
    args: &Args,
    executor: Arc<dyn Executor>,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> ExitCode {
    let server_uids = if args.server_uid.is_empty() {
        vec![0]
    } else {
        args.server_uid.clone()
    };
    let client = args.auth.munge_client(&args.host, args.port, server_uids);
    serve(client, executor, options, shutdown, args.executor.lanes).await
}

#[cfg(not(feature = "munge"))]
async fn run_munge(
    _: &Args,
    _: Arc<dyn Executor>,
    _: WorkerOptions,
    _: CancellationToken,
) -> ExitCode {
    fail(
        "cq_worker",
        "this cq_worker was built without MUNGE",
        Some("use --auth tls"),
        1,
    )
}

async fn serve<C, S, A>(
    client: Client<C, S, A>,
    executor: Arc<dyn Executor>,
    options: WorkerOptions,
    shutdown: CancellationToken,
    lanes: u16,
) -> ExitCode
where
    C: Connector,
    S: CredentialSource,
    A: Authenticator,
{
    tracing::info!(worker = %options.name, tags = ?options.tags, lanes, server = %client.server_name(), "serving the coordinator");
    // Each lane is a worker of its own to the coordinator (NAME, NAME-2, ...), one job at a
    // time each; they share the connection settings and the spool.
    let client = Arc::new(client);
    let mut lanes_running = tokio::task::JoinSet::new();
    for lane in 1..=lanes {
        let mut options = options.clone();
        if lane > 1 {
            options.name = format!("{}-{lane}", options.name);
        }
        let worker = Worker::new(client.clone(), executor.clone(), options);
        let shutdown = shutdown.clone();
        lanes_running.spawn(async move { worker.run(shutdown).await });
    }
    let mut result = Ok(());
    while let Some(ended) = lanes_running.join_next().await {
        let failed = match ended {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => Err(e),
            Err(e) => return fail("cq_worker", format!("a lane failed: {e}"), None, 1),
        };
        // One lane refused or broken: the others stop too, their jobs' ends reported.
        shutdown.cancel();
        if result.is_ok() {
            result = failed;
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ WorkerError::Refused(_)) => fail(
            "cq_worker",
            e,
            Some("the coordinator's [policy] workers must name this worker's user (and address)"),
            1,
        ),
        Err(e) => {
            let hint = matches!(&e, WorkerError::Spool { .. }).then_some("give --spool DIR");
            fail("cq_worker", e, hint, 1)
        }
    }
}

/// The executor jobs run with here: as on a server (contained, killed after the grace,
/// results through `CQ_RESULT_FILE`).
fn executor(args: &Args, spool: &std::path::Path) -> Result<Arc<dyn Executor>, String> {
    let grace = Duration::try_from_secs_f64(args.kill_grace).map_err(|_| {
        format!(
            "--kill-grace {}: not a duration in seconds",
            args.kill_grace
        )
    })?;
    let (containment, no_cgroups) = Containment::detect();
    if let Some(why) = no_cgroups {
        tracing::warn!(reason = %why, "cgroups cannot be used: each job gets a session and process group instead");
    }
    let executor = ProcessExecutor::new()
        .with_kill_grace(grace)
        .with_base_env(vec![(
            "PATH".into(),
            cq_core::executor::DEFAULT_PATH.into(),
        )])
        .with_containment(containment);
    let root = nix::unistd::geteuid().is_root();
    // Jobs' output waits here, and the job the worker runs, to be found again after a
    // restart: a directory another user can reach or replace would show or swap them.
    crate::state_dir::prepare_private(spool)
        .map_err(|e| format!("the spool directory {}: {e}", spool.display()))?;
    let executor = match crate::state_dir::result_dir(spool, root).and_then(|dir| {
        executor
            .clone()
            .with_result_dir(&dir)
            .map_err(|e| e.to_string())
    }) {
        Ok(with_results) => with_results,
        Err(why) => {
            tracing::warn!(reason = %why, "jobs get no CQ_RESULT_FILE: they cannot report results back");
            executor
        }
    };
    Ok(Arc::new(executor))
}

fn host_name() -> Result<String, String> {
    nix::unistd::gethostname()
        .map_err(|e| format!("cannot read the host name: {e}"))?
        .into_string()
        .map_err(|_| "the host name is not UTF-8".to_owned())
}
