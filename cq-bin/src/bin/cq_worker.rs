//! cq_worker: runs a coordinator's jobs on this host, one at a time.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use cq_bin::config_file::{ConfigFile, Section};
use cq_bin::executor_args::EXECUTOR_OPTIONS;
use cq_bin::report::{fail, init_logging};
use cq_bin::worker_run::{Args, run};

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let command = Args::command();
    let given = command.clone().get_matches_from(&argv);
    let mut args = Args::from_arg_matches(&given).unwrap_or_else(|e| e.exit());
    let config = match ConfigFile::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return fail("cq_worker", e, None, 1),
    };
    if let Some(file) = &config {
        let executor = |id: &str| EXECUTOR_OPTIONS.contains(&id);
        let allowed = |id: &str| id != "config" && !executor(id);
        let from_file = match file
            .arguments(Section::Worker, &command, &given, allowed)
            .and_then(|mut worker| {
                worker.extend(file.arguments(Section::Executor, &command, &given, executor)?);
                Ok(worker)
            }) {
            Ok(arguments) => arguments,
            Err(e) => return fail("cq_worker", e, None, 1),
        };
        let merged = argv[..1]
            .iter()
            .cloned()
            .chain(from_file)
            .chain(argv[1..].iter().cloned());
        args =
            Args::from_arg_matches(&command.get_matches_from(merged)).unwrap_or_else(|e| e.exit());
    }
    init_logging(tracing::Level::INFO, args.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return fail(
                "cq_worker",
                format!("cannot start the async runtime: {e}"),
                None,
                1,
            );
        }
    };
    runtime.block_on(run(args))
}
