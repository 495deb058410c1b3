//! What `cq_client` does once its arguments are parsed: submit or pick up a job, wait for it
//! across lost connections, answer queries, hand the wait to the background, run the post
//! script, and turn all of it into an exit status.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser};
use cq_auth::ChannelCredentials;
use cq_auth::mtls::TlsServerAuthenticator;
use cq_auth::peercred::PeerCredServerAuthenticator;
use cq_core::protocol::ErrorCode;
use cq_core::{
    AuthError, Authenticator, Client, ClientError, CommandJob, Connector, CredentialSource, JobId,
    JobPhase, JobResult, Outcome, Progress, Reconnect, Submission,
};
use tokio::signal::unix::SignalKind;

use crate::auth_args::{AuthArgs, AuthKind};
use crate::background::spawn_waiter;
use crate::listing;
use crate::paths::user_state_dir;
use crate::post_script::{JobFacts, run_post_script};
use crate::report::{MUNGED_HINT, fail, say};
use crate::units::parse_duration;

/// Options that make no sense with a query (--list, --status, --cancel).
const QUERY_CONFLICTS: [&str; 8] = [
    "command",
    "wait",
    "detach",
    "background",
    "post_script",
    "env",
    "timeout",
    "cwd",
];

/// Options the configuration file's `[client]` section may set: where the server is, how to
/// authenticate, how long to wait, and the post script of jobs waited for; never the
/// command. (`pass_env`, the variables every job gets, is not an option.)
pub const CONFIG_OPTIONS: [&str; 11] = [
    "post_script",
    "host",
    "port",
    "auth",
    "munge_socket",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "server_uid",
    "tls_server_name",
    "reconnect_timeout",
];

/// Exit status for cq's own failures (connection, authentication, server errors, post
/// script), as opposed to the job's status.
pub const CQ_FAILURE: u8 = 255;

/// Submits COMMAND to cq_server, waits until it has run, runs the post script, and exits with
/// the job's exit status (128+N if a signal N killed it; 255 if cq itself failed).
#[derive(Debug, Parser)]
#[command(
    name = "cq_client",
    version,
    disable_help_flag = true,
    mut_arg("tls_cert", |a| a.help("This client's certificate (PEM) for --auth tls [default: /etc/cq/tls/client.pem]")),
    mut_arg("tls_key", |a| a.help("This client's private key (PEM) for --auth tls [default: /etc/cq/tls/client.key]"))
)]
pub struct Args {
    #[expect(missing_docs, reason = "the help text is the documentation")]
    #[arg(
        long,
        value_name = "FILE",
        help = "Configuration file; its [client] section sets defaults for the options that name a \
                server and how to reach it [default: /etc/cq/cq.toml if it exists]"
    )]
    pub config: Option<PathBuf>,
    /// Server host.
    #[arg(short = 'h', long, default_value = "localhost")]
    pub host: String,
    /// Server port.
    #[arg(short = 'p', long, default_value_t = 48005)]
    pub port: u16,
    /// Script run here when the job ended, with arguments INTERNAL_STATUS EXIT_STATUS and
    /// CQ_* variables.
    #[arg(short = 'P', long = "post-script", value_name = "SCRIPT")]
    pub post_script: Option<PathBuf>,
    /// Set NAME=VALUE for the job, or copy NAME from this environment; repeatable.
    #[arg(short = 'E', long = "env", value_name = "VAR[=VALUE]")]
    pub env: Vec<String>,
    #[expect(
        missing_docs,
        reason = "clap would show a doc comment here as help; AuthArgs documents itself"
    )]
    #[command(flatten)]
    pub auth: AuthArgs,
    /// With --auth munge: uid the server must run as for its replies to be believed;
    /// repeatable [default: 0 and this user's uid].
    #[arg(long, value_name = "UID")]
    pub server_uid: Vec<u32>,
    /// With --auth tls: the name the server's certificate must carry [default: the host].
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Print the job id once the job is accepted (it is then on the server's disk) and exit
    /// without waiting.
    #[arg(long, conflicts_with_all = ["post_script", "background", "wait"])]
    pub detach: bool,
    /// Wait for the existing job ID instead of submitting one, then behave as if it had been
    /// submitted here (post script, exit status).
    #[arg(long, value_name = "ID", conflicts_with_all = ["env", "command", "background"])]
    pub wait: Option<u64>,
    /// Submit your finished job ID again as a new job: the same command, `-E` variables and
    /// working directory (time limit: --timeout or the server's default), then behave as
    /// any submission (post script, --detach, exit status).
    #[arg(long, value_name = "ID", conflicts_with_all = ["env", "command", "wait", "cwd"])]
    pub retry: Option<u64>,
    /// Once the job is accepted, keep waiting in the background (detached from the terminal,
    /// output to --background-log) and exit at once.
    #[arg(long)]
    pub background: bool,
    /// Log of the background waiter [default: cq_client-job-ID.log in $XDG_STATE_HOME/cq or
    /// ~/.local/state/cq, root's too].
    #[arg(long, value_name = "FILE", requires = "background")]
    pub background_log: Option<PathBuf>,
    /// Internal: start a new session first (used by the --background waiter).
    #[arg(long, hide = true)]
    pub new_session: bool,
    /// Seconds to keep re-attaching to the job while the server is unreachable.
    #[arg(long, value_name = "SECS", default_value_t = 3600.0)]
    pub reconnect_timeout: f64,
    /// Working directory of the job on the server (entered with your rights there) [default:
    /// the server's, usually /].
    #[arg(long, value_name = "DIR", conflicts_with = "wait")]
    pub cwd: Option<String>,
    /// Run the job only on a worker that offers TAG (repeat: all of them), e.g. --tag
    /// arch=arm64 to build on the coordinator's arm64 build host.
    #[arg(long = "tag", value_name = "TAG", conflicts_with = "wait")]
    pub tags: Vec<String>,
    /// Never run the job at the same time as another job of lane NAME, on any worker (e.g.
    /// every build that writes one shared PKGDIR).
    #[arg(long, value_name = "NAME", conflicts_with = "wait")]
    pub lane: Option<String>,
    /// Kill the job (all its processes) if it runs longer than this (e.g. 90s, 2h); the
    /// server may set a default and a maximum.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// List the running job, the queued ones in order and the recently finished ones.
    #[arg(long, group = "query", conflicts_with_all = QUERY_CONFLICTS)]
    pub list: bool,
    /// With --list: only your jobs (by user name).
    #[arg(long, requires = "list", conflicts_with = "user")]
    pub mine: bool,
    /// With --list: only the jobs of user NAME.
    #[arg(long, value_name = "NAME", requires = "list")]
    pub user: Option<String>,
    /// With --list: only jobs in this state (repeatable).
    #[arg(long, value_name = "STATE", value_enum, requires = "list")]
    pub state: Vec<StateFilter>,
    /// Show one job.
    #[arg(long, value_name = "ID", group = "query", conflicts_with_all = QUERY_CONFLICTS)]
    pub status: Option<u64>,
    /// Cancel a job: a queued one leaves the queue, a running one's process group gets SIGTERM,
    /// then SIGKILL. Its owner and the admins may.
    #[arg(long, value_name = "ID", group = "query", conflicts_with_all = QUERY_CONFLICTS)]
    pub cancel: Option<u64>,
    /// Print a job's output so far (its owner and the admins may).
    #[arg(long, value_name = "ID", group = "query", conflicts_with_all = QUERY_CONFLICTS)]
    pub log: Option<u64>,
    /// Pause the server's queue: running jobs finish, nothing new starts (submissions are
    /// still taken). Admins only.
    #[arg(long, group = "query", conflicts_with_all = QUERY_CONFLICTS)]
    pub pause: bool,
    /// Resume a paused queue. Admins only.
    #[arg(long, group = "query", conflicts_with_all = QUERY_CONFLICTS)]
    pub resume: bool,
    /// Move queued job ID ahead of every other queued job (until the server restarts).
    /// Admins only.
    #[arg(long, value_name = "ID", group = "query", conflicts_with_all = QUERY_CONFLICTS)]
    pub first: Option<u64>,
    /// List the workers on other hosts (cq_worker) that have joined the server: their tags,
    /// the job each runs, when each was last heard of (and, for admins, its address).
    #[arg(long, group = "query", conflicts_with_all = QUERY_CONFLICTS)]
    pub workers: bool,
    /// While waiting, print the job's output as it comes (from its start); with --log, keep
    /// printing until the job ends.
    #[arg(long, conflicts_with_all = ["detach", "background", "list", "status", "cancel"])]
    pub follow: bool,
    /// With --log and --follow: pass control characters to the terminal as they are (by
    /// default, when standard output is a terminal, all but newline and tab are shown
    /// escaped, so that a job's output cannot rewrite your screen).
    #[arg(long)]
    pub raw: bool,
    /// When the job fails, print the last N lines of its output [default: 10 when standard
    /// error is a terminal, else 0]; 0 prints none.
    #[arg(long, value_name = "N", conflicts_with = "follow")]
    pub tail: Option<usize>,
    /// Print --list, --status and --cancel answers as JSON; when waiting for a job, print
    /// how it ended (outcome, exit status, results) as a JSON object.
    #[arg(long)]
    pub json: bool,
    /// Print nothing but errors.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// More log output (repeat for more); RUST_LOG overrides.
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
    /// The command and its arguments.
    #[arg(required_unless_present_any = ["wait", "retry", "list", "status", "cancel", "log", "pause", "resume", "first", "workers"], last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl Args {
    /// Whether this is `--list`, `--status`, `--cancel` or `--log` rather than a job.
    pub fn is_query(&self) -> bool {
        self.list
            || self.status.is_some()
            || self.cancel.is_some()
            || self.log.is_some()
            || self.pause
            || self.resume
            || self.first.is_some()
            || self.workers
    }
}

/// Does what `args` ask, with `job` (ignored by queries and `--wait`).
pub async fn run(args: Args, job: CommandJob) -> ExitCode {
    match args.auth.auth {
        AuthKind::Local => {
            let Some(socket) = args.auth.socket.clone().or_else(crate::paths::local_socket) else {
                return fail(
                    "cq_client",
                    "no local cq_server socket (/run/cq/cq.sock, $XDG_RUNTIME_DIR/cq/cq.sock)",
                    Some("start cq_server --auth local, or give --socket PATH or -h HOST"),
                    CQ_FAILURE,
                );
            };
            let uids = server_uids(&args);
            let client = Client::new(
                cq_transport_unix::UnixConnector::new(socket).expect_uids(uids.clone()),
                ChannelCredentials,
                PeerCredServerAuthenticator::new(uids),
            );
            follow(&client, &args, job).await
        }
        AuthKind::Munge => submit_munge(args, job).await,
        AuthKind::Tls => {
            let connector = args.auth.tls_connector(
                "client",
                &args.host,
                args.port,
                args.tls_server_name.as_deref(),
            );
            match connector {
                Ok(connector) => {
                    let client = Client::new(connector, ChannelCredentials, TlsServerAuthenticator);
                    follow(&client, &args, job).await
                }
                Err(e) => fail(
                    "cq_client",
                    e,
                    Some("pass --tls-ca, --tls-cert and --tls-key"),
                    CQ_FAILURE,
                ),
            }
        }
    }
}

#[cfg(feature = "munge")]
async fn submit_munge(args: Args, job: CommandJob) -> ExitCode {
    let client = args
        .auth
        .munge_client(&args.host, args.port, server_uids(&args));
    follow(&client, &args, job).await
}

/// The uids a server may run as for its replies to be believed: `--server-uid`, or root and
/// this user.
fn server_uids(args: &Args) -> Vec<u32> {
    if args.server_uid.is_empty() {
        vec![0, nix::unistd::getuid().as_raw()]
    } else {
        args.server_uid.clone()
    }
}

#[cfg(not(feature = "munge"))]
async fn submit_munge(_: Args, _: CommandJob) -> ExitCode {
    fail(
        "cq_client",
        "this cq_client was built without MUNGE support",
        Some("use --auth tls"),
        CQ_FAILURE,
    )
}

/// Submits (or picks up) the job, waits for it across lost connections, reports, and runs
/// the post script; the exit code says how it all went.
async fn follow<C, S, A>(client: &Client<C, S, A>, args: &Args, job: CommandJob) -> ExitCode
where
    C: Connector,
    S: CredentialSource,
    A: Authenticator,
{
    if args.is_query() {
        return query(client, args).await;
    }
    let job = match args.retry {
        Some(id) => match retried(client, JobId(id), job.timeout_ms).await {
            Ok(job) => job,
            Err(code) => return code,
        },
        None => job,
    };
    let policy = Reconnect {
        give_up_after: Duration::try_from_secs_f64(args.reconnect_timeout)
            .unwrap_or(Duration::ZERO),
        ..Reconnect::default()
    };
    // Ctrl-C stops the wait, not the job: it is caught from here on, to say so.
    let mut interrupt = match tokio::signal::unix::signal(SignalKind::interrupt()) {
        Ok(interrupt) => interrupt,
        Err(e) => {
            return fail(
                "cq_client",
                format_args!("cannot catch Ctrl-C: {e}"),
                None,
                CQ_FAILURE,
            );
        }
    };
    let mut facts = args.post_script.is_some().then(|| JobFacts {
        argv: job.argv.clone(),
        env: job.env.clone(),
        tags: job.tags.clone(),
        merged: false,
    });
    let mut merged = None;
    let (id, submission) = match args.wait {
        Some(id) => {
            // What ran, as far as the server shows it to us.
            if let Some(facts) = &mut facts {
                match client.status(JobId(id)).await {
                    Ok(job) => {
                        facts.argv = job.command;
                        facts.env = job.env;
                    }
                    Err(_) => *facts = JobFacts::default(),
                }
            }
            (JobId(id), None)
        }
        None => {
            // Retried with the same key: a submission the server took before the
            // connection broke is found again, never queued twice.
            let mut told = false;
            let submitting = client.submit_retrying(job, &policy, |e, _| {
                if !told && !args.quiet {
                    say(
                        "cq_client",
                        format_args!("cannot reach the server yet ({e}); trying again"),
                    );
                    told = true;
                }
            });
            let submitted = tokio::select! {
                submitted = submitting => submitted,
                _ = interrupt.recv() => {
                    say(
                        "cq_client",
                        "interrupted before the server answered; the job may have been queued: see cq_client --list",
                    );
                    return ExitCode::from(130);
                }
            };
            let submission = match submitted {
                Ok(submission) => submission,
                Err(e) => return fail("cq_client", &e, client_hint(&e), CQ_FAILURE),
            };
            let id = submission.job;
            merged = Some(submission.merged);
            if let Some(facts) = &mut facts {
                facts.merged = submission.merged;
            }
            if args.detach {
                println!("{id}");
                submission.close().await;
                return ExitCode::SUCCESS;
            }
            if !args.quiet {
                let what = if submission.merged {
                    format!("merged into job {id}, which was already queued")
                } else {
                    format!(
                        "job {id} queued on {} ({} ahead)",
                        client.server_name(),
                        submission.ahead
                    )
                };
                say("cq_client", what);
            }
            if args.background {
                submission.close().await;
                return background(args, id);
            }
            (id, Some(submission))
        }
    };
    let waited = tokio::select! {
        waited = wait_for(client, args, id, submission, &policy) => waited,
        _ = interrupt.recv() => return interrupted(args, id),
    };
    let result = match waited {
        Ok(result) => result,
        Err(code) => return code,
    };
    match &result.outcome {
        Outcome::Exited { code: 0 } => {}
        Outcome::Exited { .. } if args.quiet => {}
        outcome => say("cq_client", format_args!("job {id} {outcome}")),
    }
    if !matches!(result.outcome, Outcome::Exited { code: 0 }) && !args.follow && !args.quiet {
        show_tail(client, args, id).await;
    }
    if args.json {
        println!("{}", listing::end_to_json(id, merged, &result));
    }
    if let Some(script) = &args.post_script
        && let Err(e) =
            run_post_script(script, id, &result, &client.server_name(), facts.as_ref()).await
    {
        return fail("cq_client", e, None, CQ_FAILURE);
    }
    ExitCode::from(result.outcome.exit_status())
}

/// The command of finished job `id`, to submit again (`--retry`): only the job's owner may,
/// so that nobody runs another user's command with their own rights.
async fn retried<C, S, A>(
    client: &Client<C, S, A>,
    id: JobId,
    timeout_ms: Option<u64>,
) -> Result<CommandJob, ExitCode>
where
    C: Connector,
    S: CredentialSource,
    A: Authenticator,
{
    let job = client
        .status(id)
        .await
        .map_err(|e| fail("cq_client", &e, client_hint(&e), CQ_FAILURE))?;
    let me = nix::unistd::getuid().as_raw();
    if job.owner_uid != me {
        return Err(fail(
            "cq_client",
            format_args!(
                "job {id} is {}'s: only its owner may submit it again",
                job.owner
            ),
            Some("ask its owner"),
            CQ_FAILURE,
        ));
    }
    if job.phase != JobPhase::Finished {
        return Err(fail(
            "cq_client",
            format_args!("job {id} has not ended (it is {})", job.phase.word()),
            Some(&format!("wait for it with cq_client --wait {id}")),
            CQ_FAILURE,
        ));
    }
    let mut command = CommandJob::new(job.command);
    command.env = job.env;
    command.cwd = job.cwd;
    command.timeout_ms = timeout_ms;
    Ok(command)
}

/// Waits for job `id` (printing its output with `--follow`), re-attaching across lost
/// connections; `Err` is the exit code of a failed wait.
async fn wait_for<C, S, A>(
    client: &Client<C, S, A>,
    args: &Args,
    id: JobId,
    submission: Option<Submission<C::Stream, A>>,
    policy: &Reconnect,
) -> Result<JobResult, ExitCode>
where
    C: Connector,
    S: CredentialSource,
    A: Authenticator,
{
    let mut submission = submission;
    let mut followed = None;
    if args.follow {
        if let Some(submission) = submission.take() {
            submission.close().await;
        }
        let mut out = OutputPrinter::new(args.raw);
        match client.log(id, true, |data| out.print(data, true)).await {
            Ok(result) => followed = result,
            // The output stops; the wait goes on below, re-attaching as usual.
            Err(e) if e.is_transient() => {}
            // A waiter merged into someone else's job may wait for it, not read its output.
            Err(ClientError::Server {
                code: ErrorCode::NOT_PERMITTED,
                ..
            }) => {
                if !args.quiet {
                    eprintln!(
                        "cq_client: job {id}'s output is for its owner; waiting for it without"
                    );
                }
            }
            Err(e) => return Err(fail("cq_client", &e, client_hint(&e), CQ_FAILURE)),
        }
    }
    let mut told = false;
    let result = match followed {
        Some(result) => Ok(result),
        None => {
            let ahead = submission.as_ref().map(|s| s.ahead);
            let line = crate::wait_line::WaitLine::new(id, ahead, !args.quiet && !args.follow);
            let waiting = client.follow(id, submission, policy, |progress| match progress {
                Progress::Started => line.started(),
                Progress::Retrying { error, .. } if !told && !args.quiet => {
                    line.print(|| {
                        say(
                            "cq_client",
                            format_args!("lost the server ({error}); re-attaching to job {id}"),
                        );
                    });
                    told = true;
                }
                _ => {}
            });
            // The last line of the job's output on the live line: only for those who may
            // read it (others are refused, and the line shows the time alone).
            let showing = async {
                if line.shown() {
                    let _ = client.log(id, true, |data| line.output(data)).await;
                }
                std::future::pending::<std::convert::Infallible>().await
            };
            tokio::select! {
                result = waiting => result,
                never = showing => match never {},
            }
        }
    };
    result.map_err(|e| {
        // The job was accepted: whatever broke the wait, the job may still run or be done.
        let again = format!(
            "{}job {id} may still run, or be done: wait for it again with cq_client --wait {id}",
            client_hint(&e)
                .map(|h| format!("{h}; "))
                .unwrap_or_default()
        );
        fail("cq_client", &e, Some(&again), CQ_FAILURE)
    })
}

/// The last lines of a failed job's output, and where the rest is. Shown only to whoever may
/// read the log (its owner, an admin); quietly nothing otherwise.
async fn show_tail<C, S, A>(client: &Client<C, S, A>, args: &Args, id: JobId)
where
    C: Connector,
    S: CredentialSource,
    A: Authenticator,
{
    /// What is kept of the output while it streams: enough for the last lines.
    const KEPT: usize = 64 * 1024;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let lines = args.tail.unwrap_or(if terminal { 10 } else { 0 });
    if lines == 0 {
        return;
    }
    let mut kept: std::collections::VecDeque<u8> = std::collections::VecDeque::new();
    let read = client
        .log(id, false, |data| {
            kept.extend(data);
            let extra = kept.len().saturating_sub(KEPT);
            kept.drain(..extra);
        })
        .await;
    if read.is_err() || kept.is_empty() {
        return;
    }
    let kept = Vec::from(kept);
    let text = String::from_utf8_lossy(&kept);
    let all: Vec<&str> = text.lines().collect();
    let shown = &all[all.len().saturating_sub(lines)..];
    let mut out = format!(
        "cq_client: the last {} lines of job {id}'s output:\n",
        shown.len()
    );
    for line in shown {
        out.push_str("  ");
        out.push_str(&cq_core::printable::printable(line));
        out.push('\n');
    }
    out.push_str(&format!("cq_client: all of it: cq_client --log {id}\n"));
    eprint!("{out}");
}

/// Ctrl-C while waiting: the job goes on without this client.
fn interrupted(args: &Args, id: JobId) -> ExitCode {
    let post = args
        .post_script
        .as_ref()
        .map(|p| format!(" -P {}", p.display()))
        .unwrap_or_default();
    say(
        "cq_client",
        format_args!(
            "stopped waiting; job {id} goes on without this client (no post script runs here). Wait for it again: cq_client --wait {id}{post}"
        ),
    );
    ExitCode::from(130)
}

/// Hands the wait for job `id` to a detached `cq_client --wait` and returns.
fn background(args: &Args, id: JobId) -> ExitCode {
    let mut wait = vec![
        "-h".into(),
        args.host.clone().into(),
        "-p".into(),
        args.port.to_string().into(),
    ];
    wait.extend(args.auth.to_args());
    for uid in &args.server_uid {
        wait.extend(["--server-uid".into(), uid.to_string().into()]);
    }
    if let Some(name) = &args.tls_server_name {
        wait.extend(["--tls-server-name".into(), name.into()]);
    }
    if let Some(script) = &args.post_script {
        wait.extend(["-P".into(), script.clone().into_os_string()]);
    }
    wait.extend([
        "--reconnect-timeout".into(),
        args.reconnect_timeout.to_string().into(),
    ]);
    wait.extend([
        "--new-session".into(),
        "--wait".into(),
        id.to_string().into(),
    ]);
    let log = args
        .background_log
        .clone()
        .unwrap_or_else(|| user_state_dir().join(format!("cq_client-job-{id}.log")));
    match spawn_waiter(&wait, &log) {
        Ok(()) => {
            if !args.quiet {
                say(
                    "cq_client",
                    format_args!(
                        "waiting for job {id} in the background; log: {}",
                        log.display()
                    ),
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(
            "cq_client",
            format_args!("cannot wait in the background: {e}"),
            Some("wait with --wait ID"),
            CQ_FAILURE,
        ),
    }
}

/// `--state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StateFilter {
    /// Waiting for its turn.
    Queued,
    /// Running now.
    Running,
    /// Ended.
    Finished,
}

/// Prints a job's output to standard output, escaped for a terminal unless `--raw`.
struct OutputPrinter {
    out: std::io::StdoutLock<'static>,
    escaper: Option<cq_core::printable::TerminalEscaper>,
    buffer: Vec<u8>,
}

impl OutputPrinter {
    fn new(raw: bool) -> Self {
        let out = std::io::stdout().lock();
        let escape = !raw && std::io::IsTerminal::is_terminal(&out);
        Self {
            out,
            escaper: escape.then(cq_core::printable::TerminalEscaper::new),
            buffer: Vec::new(),
        }
    }

    /// Prints `data`; `flush` for output that must show at once (following a job).
    fn print(&mut self, data: &[u8], flush: bool) {
        let written = match &mut self.escaper {
            Some(escaper) => {
                self.buffer.clear();
                escaper.escape(data, &mut self.buffer);
                self.out.write_all(&self.buffer)
            }
            None => self.out.write_all(data),
        };
        drop(written.and_then(|()| if flush { self.out.flush() } else { Ok(()) }));
    }
}

impl Drop for OutputPrinter {
    fn drop(&mut self) {
        if let Some(escaper) = &mut self.escaper {
            self.buffer.clear();
            escaper.finish(&mut self.buffer);
            drop(self.out.write_all(&self.buffer));
        }
    }
}

/// `--list`, `--status ID`, `--cancel ID`, `--log ID`, `--pause`, `--resume`, `--first ID`,
/// `--workers`.
async fn query<C, S, A>(client: &Client<C, S, A>, args: &Args) -> ExitCode
where
    C: Connector,
    S: CredentialSource,
    A: Authenticator,
{
    if args.workers {
        return match client.workers().await {
            Ok(workers) if args.json => {
                println!("{}", listing::workers_to_json(&workers));
                ExitCode::SUCCESS
            }
            Ok(workers) => {
                print!("{}", listing::workers_to_table(&workers));
                ExitCode::SUCCESS
            }
            Err(e) => fail("cq_client", &e, client_hint(&e), CQ_FAILURE),
        };
    }
    if args.pause || args.resume {
        return match client.set_paused(args.pause).await {
            Ok(state) if args.json => {
                println!(
                    "{{\"paused\": {}, \"running\": {}, \"queued\": {}}}",
                    state.paused, state.running, state.queued
                );
                ExitCode::SUCCESS
            }
            Ok(state) => {
                if !args.quiet {
                    let what = if state.paused {
                        "is paused: running jobs finish, nothing new starts (resume it with cq_client --resume)"
                    } else {
                        "runs"
                    };
                    say(
                        "cq_client",
                        format_args!(
                            "the queue on {} {what}; {} running, {} queued",
                            client.server_name(),
                            state.running,
                            state.queued
                        ),
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail("cq_client", &e, client_hint(&e), CQ_FAILURE),
        };
    }
    if let Some(id) = args.log {
        let mut out = OutputPrinter::new(args.raw);
        return match client
            .log(JobId(id), args.follow, |data| out.print(data, args.follow))
            .await
        {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail("cq_client", &e, client_hint(&e), CQ_FAILURE),
        };
    }
    let answer = if let Some(id) = args.status {
        client.status(JobId(id)).await.map(|job| vec![job])
    } else if let Some(id) = args.first {
        let moved = client.promote(JobId(id)).await.map(|job| vec![job]);
        if moved.is_ok() && !args.json {
            if !args.quiet {
                say(
                    "cq_client",
                    format_args!("job {id} is now first in the queue"),
                );
            }
            return ExitCode::SUCCESS;
        }
        moved
    } else if let Some(id) = args.cancel {
        match client.cancel(JobId(id)).await {
            Ok(Some(job)) => Ok(vec![job]),
            Ok(None) => {
                if !args.quiet {
                    say(
                        "cq_client",
                        format_args!(
                            "you no longer wait for job {id}: it was another user's job, which goes on for its owner"
                        ),
                    );
                }
                return ExitCode::SUCCESS;
            }
            Err(e) => Err(e),
        }
    } else {
        client.list().await
    };
    let mut jobs = match answer {
        Ok(jobs) => jobs,
        Err(e) => return fail("cq_client", &e, client_hint(&e), CQ_FAILURE),
    };
    if args.list {
        let user = if args.mine {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        } else {
            args.user.clone()
        };
        jobs.retain(|job| listing::matches(job, user.as_deref(), &args.state));
    }
    if args.json {
        match (args.list, jobs.first()) {
            (false, Some(job)) => println!("{}", listing::one_to_json(job)),
            _ => println!("{}", listing::to_json(&jobs)),
        }
    } else if let (Some(id), Some(job), false) = (args.cancel, jobs.first(), args.quiet) {
        let what = match job.phase {
            JobPhase::Running => "is being stopped (its process group gets SIGTERM, then SIGKILL)",
            _ => "was cancelled",
        };
        say("cq_client", format_args!("job {id} {what}"));
    } else if !args.quiet || args.cancel.is_none() {
        print!("{}", listing::to_table(&jobs));
        // A paused queue explains queued jobs that do not start.
        if args.list
            && !args.quiet
            && let Ok(state) = client.queue_state().await
            && state.paused
        {
            say(
                "cq_client",
                format_args!(
                    "the queue on {} is paused: nothing new starts until an admin resumes it",
                    client.server_name()
                ),
            );
        }
        if !args.list {
            for (key, value) in jobs.iter().flat_map(|job| &job.results) {
                println!("  {key}={}", cq_core::printable::printable(value));
            }
        }
    }
    ExitCode::SUCCESS
}

fn client_hint(e: &ClientError) -> Option<&'static str> {
    match e {
        ClientError::Credential(AuthError::Unavailable(_)) => Some(MUNGED_HINT),
        other => other.hint(),
    }
}
