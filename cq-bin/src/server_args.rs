//! cq_server's options (also the source of its man page and shell completions).

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};

use crate::auth_args::AuthArgs;
use crate::cert_tool::TlsCommand;
use crate::log_target::LogTarget;
use crate::units::{parse_duration, parse_size};

/// Runs the commands cq_client submits, strictly one at a time, in arrival order, and tells
/// every client how its job ended.
#[derive(Debug, Parser)]
#[command(
    name = "cq_server",
    version,
    disable_help_flag = true,
    args_conflicts_with_subcommands = true,
    mut_arg("tls_cert", |a| a.help("The server's certificate (PEM) for --auth tls [default: /etc/cq/tls/server.pem]")),
    mut_arg("tls_key", |a| a.help("The server's private key (PEM) for --auth tls [default: /etc/cq/tls/server.key]"))
)]
pub struct Args {
    #[expect(
        missing_docs,
        reason = "clap shows doc comments as help; the subcommands document themselves"
    )]
    #[command(subcommand)]
    pub command: Option<Command>,
    #[expect(missing_docs, reason = "the help text is the documentation")]
    #[arg(
        long,
        value_name = "FILE",
        help = "Configuration file: server options under [server], the policy under [policy], the \
                jobs' base environment under [jobs] [default: /etc/cq/cq.toml if it exists]"
    )]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(short = 'h', long, default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the log says which).
    #[arg(short = 'p', long, default_value_t = 48005)]
    pub port: u16,
    /// Directory for the job database and logs [default: /var/lib/cq for root, else
    /// ~/.local/state/cq].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[expect(
        missing_docs,
        reason = "clap shows doc comments as help; AuthArgs documents itself"
    )]
    #[command(flatten)]
    pub auth: AuthArgs,
    /// With --auth tls: file mapping certificate names to local users [default: the
    /// certificate name is the user name].
    #[arg(long, value_name = "FILE")]
    pub tls_user_map: Option<PathBuf>,
    /// With --auth tls: a certificate revocation list (PEM, signed by the CA, e.g. from
    /// `cq_server tls revoke`); revoked client certificates are refused, and so are the
    /// queued jobs submitted with them. Read again, with the user map, on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tls_crl: Option<PathBuf>,
    #[expect(missing_docs, reason = "the help text is the documentation")]
    #[arg(
        long,
        help = "Accept jobs from root (uid 0); they run as root. Also `allow_root = true` in [policy]"
    )]
    pub allow_root: bool,
    /// Whose rights jobs run with [default: requester when cq_server runs as root, else
    /// server]. With server, only cq_server's own user may submit unless the policy names
    /// others (whose jobs then run with cq_server's rights).
    #[arg(long, value_enum, value_name = "WHO")]
    pub run_as: Option<RunAsChoice>,
    /// Detach from the terminal and run in the background, once listening (errors before
    /// that are printed and make the command fail). Logs go to --log (default syslog).
    #[arg(long)]
    pub daemon: bool,
    /// Internal: the background process of --daemon.
    #[arg(long, hide = true)]
    pub daemon_child: bool,
    /// Also write the server's pid to FILE, locked while it runs (the state directory always
    /// has one: cq_server.pid).
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Where the server logs: stderr, syslog (or syslog:SOCKET), journald or file:PATH
    /// (reopened on SIGHUP) [default: stderr; syslog with --daemon].
    #[arg(long, value_name = "TARGET", value_parser = LogTarget::parse)]
    pub log: Option<LogTarget>,
    /// Seconds a new connection gets to say hello and send its request.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub handshake_timeout: f64,
    /// Connections served at once; more are closed.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_connections: usize,
    /// Connections served at once from one host (an address; all of the loopback is one
    /// host; an IPv6 /64 gets 8 hosts' share); more are closed.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_connections_per_host: usize,
    /// Jobs one user may have queued, running or waited for (a merge waits) (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_queued_jobs: usize,
    /// Bytes of arguments and environment one user's queued jobs may hold (0: no limit).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64M")]
    pub max_queued_bytes: u64,
    /// Bytes of job logs one user may have kept until they are pruned (0: no limit).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4G")]
    pub max_log_bytes: u64,
    /// Seconds between SIGTERM and SIGKILL when a job is cancelled.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub kill_grace: f64,
    /// Seconds the running job may still take after SIGTERM/SIGINT before it is cancelled.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub shutdown_grace: f64,
    /// Days finished jobs (outcome and log) are kept for clients that ask late.
    #[arg(long, value_name = "DAYS", default_value_t = 7.0)]
    pub retention_days: f64,
    /// Queue a job that was running when the server died again, instead of reporting it lost.
    #[arg(long)]
    pub requeue_lost: bool,
    /// Start with the queue paused (for maintenance): jobs are taken and wait until an admin
    /// runs cq_client --resume.
    #[arg(long)]
    pub paused: bool,
    /// Run no jobs on this host: a pure coordinator whose jobs all run on workers
    /// (cq_worker) that join it.
    #[arg(long)]
    pub no_local_worker: bool,
    /// Seconds a worker (cq_worker) may be out of touch before the job it runs counts as
    /// lost.
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    pub worker_timeout: f64,
    /// Merge a submission into an equal job (same command, environment, working directory and
    /// user) that is queued, or queued or running; the submitter waits for that job instead.
    #[arg(long, value_enum, default_value_t = Dedup::Queued)]
    pub dedup: Dedup,
    /// Program that decides about each submission (JSON on stdin and stdout; see README).
    #[arg(long, value_name = "PATH")]
    pub submit_hook: Option<PathBuf>,
    /// Time the submit hook gets before it is killed and the fallback applies.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    pub submit_hook_timeout: Duration,
    /// Decision when the submit hook fails, hangs or answers garbage (a hook is a policy:
    /// by default it fails closed).
    #[arg(long, value_enum, default_value_t = Fallback::Reject)]
    pub submit_hook_fallback: Fallback,
    /// User the submit hook runs as [default: nobody when cq_server runs as root, else
    /// cq_server's own user].
    #[arg(long, value_name = "USER")]
    pub submit_hook_user: Option<String>,
    /// Serve OpenMetrics (Prometheus) counters and gauges on http://ADDR/metrics (e.g.
    /// 127.0.0.1:9448); off by default. No job, user or command is named there.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Program run once for every finished job, with the job as JSON on stdin (mail, chat,
    /// webhooks); one at a time, its output ignored (see README).
    #[arg(long, value_name = "PATH")]
    pub notice_hook: Option<PathBuf>,
    /// Time the notice program gets before it is killed.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub notice_hook_timeout: Duration,
    /// User the notice program runs as [default: nobody when cq_server runs as root, else
    /// cq_server's own user].
    #[arg(long, value_name = "USER")]
    pub notice_hook_user: Option<String>,
    #[expect(
        missing_docs,
        reason = "clap would show a doc comment here as help; ExecutorArgs documents itself"
    )]
    #[command(flatten)]
    pub executor: crate::executor_args::ExecutorArgs,
    /// Output kept per job (e.g. 64M); past it the log is cut, with a marker.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64M")]
    pub log_limit: u64,
    /// Time limit of jobs that ask for none (e.g. 6h) [default: none].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub default_timeout: Option<Duration>,
    /// Longest time limit a job may have; longer ones (and jobs without one) get this.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_timeout: Option<Duration>,
    /// More log output (repeat for more); RUST_LOG overrides.
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,
    /// Print help (also of the subcommands: `cq_server tls init --help`).
    #[arg(long, action = ArgAction::Help, global = true)]
    pub help: Option<bool>,
}

/// Options the configuration file may not set: they are about this one invocation.
pub const NOT_IN_CONFIG: [&str; 5] = ["config", "daemon", "daemon_child", "verbose", "help"];

/// `--run-as`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RunAsChoice {
    /// The requesting user (uid, and the groups and home of its account here); needs root.
    Requester,
    /// The user cq_server runs as.
    Server,
}

/// `--submit-hook-fallback`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fallback {
    /// Queue the job as if there were no hook.
    Accept,
    /// Refuse the job.
    Reject,
}

/// `--dedup`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dedup {
    /// Never merge.
    Off,
    /// Merge into queued jobs.
    Queued,
    /// Merge into queued jobs and the running one.
    Running,
}

/// cq_server's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Certificate tooling for --auth tls.
    #[command(subcommand)]
    Tls(TlsCommand),
}
