//! cq_client: submits a command to cq_server, waits for it, and runs a post script.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use cq_bin::client_run::{Args, CONFIG_OPTIONS, CQ_FAILURE, run};
use cq_bin::config_file::{ConfigFile, Section};
use cq_bin::env_args::resolve_env_args;
use cq_bin::post_script::check_post_script;
use cq_bin::report::{fail, init_logging};
use cq_core::CommandJob;

fn main() -> ExitCode {
    let (mut args, pass_env) = match parse_args() {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    if args.new_session {
        // Leave the terminal's session, so that neither its hang-up nor its signals reach the
        // background waiter. Cannot fail: the waiter is started as no group's leader.
        let _ = nix::unistd::setsid();
    }
    init_logging(tracing::Level::WARN, args.verbose);
    let mut env = match resolve_env_args(&args.env, |name| std::env::var_os(name)) {
        Ok(env) => env,
        Err(e) => return fail("cq_client", e, None, CQ_FAILURE),
    };
    // The configuration's pass_env: given -E wins; unset (or not UTF-8) names are left out.
    for name in pass_env {
        if env.iter().all(|(given, _)| *given != name)
            && let Some(value) = std::env::var_os(&name).and_then(|v| v.into_string().ok())
        {
            env.push((name, value));
        }
    }
    if let Some(script) = &args.post_script {
        match check_post_script(script) {
            Ok(found) => args.post_script = Some(found),
            Err(e) => return fail("cq_client", e, None, CQ_FAILURE),
        }
    }
    let mut job = CommandJob::new(args.command.iter().cloned());
    job.env = env;
    job.cwd = args.cwd.clone();
    job.tags = args.tags.clone();
    job.lane = args.lane.clone();
    job.timeout_ms = args
        .timeout
        .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    if args.wait.is_none()
        && args.retry.is_none()
        && !args.is_query()
        && let Err(e) = job.validate()
    {
        return fail("cq_client", e, None, CQ_FAILURE);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return fail(
                "cq_client",
                format!("cannot start the async runtime: {e}"),
                None,
                CQ_FAILURE,
            );
        }
    };
    runtime.block_on(run(args, job))
}

/// The command line, with defaults from the configuration file's `[client]` section, and
/// the names of the variables every job gets when set (`pass_env`).
fn parse_args() -> Result<(Args, Vec<String>), ExitCode> {
    // Usage errors are cq's failures too: keep them apart from the job's statuses.
    let usage = |e: clap::Error| {
        let _ = e.print();
        // `cq_client emerge foo`: the command must come after `--`.
        if e.kind() == clap::error::ErrorKind::UnknownArgument
            && let Some(clap::error::ContextValue::String(arg)) =
                e.get(clap::error::ContextKind::InvalidArg)
            && !arg.starts_with('-')
        {
            eprintln!("hint: put the command after --, as in: cq_client [OPTIONS] -- {arg} ...");
        }
        ExitCode::from(if e.use_stderr() { CQ_FAILURE } else { 0 })
    };
    let argv: Vec<OsString> = std::env::args_os().collect();
    // Building clap's command is a good part of cq_client's start: once unless a file has
    // options too.
    let given = Args::command().try_get_matches_from(&argv).map_err(usage)?;
    let args = Args::from_arg_matches(&given).map_err(usage)?;
    let file = ConfigFile::load(args.config.as_deref())
        .map_err(|e| fail("cq_client", e, None, CQ_FAILURE))?;
    let Some(file) = file else {
        return Ok((prefer_local(args, &given), Vec::new()));
    };
    let pass_env = file
        .client_pass_env()
        .map_err(|e| fail("cq_client", e, None, CQ_FAILURE))?;
    let command = Args::command();
    let from_file = file
        .arguments(Section::Client, &command, &given, |id| {
            CONFIG_OPTIONS.contains(&id)
        })
        .map_err(|e| fail("cq_client", e, None, CQ_FAILURE))?;
    if from_file.is_empty() {
        return Ok((prefer_local(args, &given), pass_env));
    }
    let merged = argv[..1]
        .iter()
        .cloned()
        .chain(from_file)
        .chain(argv[1..].iter().cloned());
    let matches = command.try_get_matches_from(merged).map_err(usage)?;
    let args = Args::from_arg_matches(&matches).map_err(usage)?;
    Ok((prefer_local(args, &matches), pass_env))
}

/// Given neither a host nor an authentication method, a client uses this host's server over
/// its Unix socket when there is one (no munged needed), else `localhost` with MUNGE.
fn prefer_local(mut args: Args, matches: &clap::ArgMatches) -> Args {
    use clap::parser::ValueSource;
    let unset = |id: &str| matches.value_source(id) != Some(ValueSource::CommandLine);
    if unset("host")
        && unset("auth")
        && (args.auth.socket.is_some() || cq_bin::paths::local_socket().is_some())
    {
        args.auth.auth = cq_bin::auth_args::AuthKind::Local;
    }
    args
}
