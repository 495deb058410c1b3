//! cq_client: submits a command to cq_server, waits for it, and runs a post script.

use std::process::ExitCode;

use clap::Parser;
use cq_bin::client_run::{Args, CQ_FAILURE, run};
use cq_bin::env_args::resolve_env_args;
use cq_bin::post_script::check_post_script;
use cq_bin::report::{fail, init_logging};
use cq_core::CommandJob;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            // Usage errors are cq's failures too: keep them apart from the job's statuses.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { CQ_FAILURE } else { 0 });
        }
    };
    if args.new_session {
        // Leave the terminal's session, so that neither its hang-up nor its signals reach the
        // background waiter. Cannot fail: the waiter is started as no group's leader.
        let _ = nix::unistd::setsid();
    }
    init_logging(tracing::Level::WARN, args.verbose);
    let env = match resolve_env_args(&args.env, |name| std::env::var_os(name)) {
        Ok(env) => env,
        Err(e) => return fail("cq_client", e, None, CQ_FAILURE),
    };
    if let Some(script) = &args.post_script
        && let Err(e) = check_post_script(script)
    {
        return fail("cq_client", e, None, CQ_FAILURE);
    }
    let mut job = CommandJob::new(args.command.iter().cloned());
    job.env = env;
    job.timeout_ms = args
        .timeout
        .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    if args.wait.is_none()
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
