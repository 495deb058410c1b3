//! cq_server: runs the commands clients submit, strictly one at a time.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches};
use cq_bin::cert_tool;
use cq_bin::config_file::{ConfigFile, Section};
use cq_bin::daemon;
use cq_bin::executor_args::EXECUTOR_OPTIONS;
use cq_bin::log_target::{self, LogTarget};
use cq_bin::report::fail;
use cq_bin::server_args::{Args, Command, NOT_IN_CONFIG};
use cq_bin::server_run::{Context, Signals, StartError, start};
use nix::sys::signal::{SigSet, Signal};

/// jemalloc, not glibc's malloc: a queued job is about ten small allocations that live as
/// long as it waits, and glibc's 16-byte granularity and per-chunk header (32 bytes for a
/// 4-byte name) made them 15-30% larger, more with its per-thread arenas (cq-load: 1,150 to
/// 1,410 bytes per queued job with glibc, 1,010 to 1,030 with jemalloc; mimalloc: 1,470).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Threads for blocking work: MUNGE decodes take a fraction of a millisecond each, and
/// munged itself serves only a few at once.
const BLOCKING_THREADS: usize = 32;

fn main() -> ExitCode {
    // Until the handlers are in place, SIGHUP, SIGINT and SIGTERM wait (blocked, in this
    // thread and every thread started from it) instead of killing a server that is starting.
    let mut held = SigSet::empty();
    for signal in [Signal::SIGHUP, Signal::SIGINT, Signal::SIGTERM] {
        held.add(signal);
    }
    let _ = held.thread_block();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let command = Args::command();
    let given = command.clone().get_matches_from(&argv);
    let mut args = Args::from_arg_matches(&given).unwrap_or_else(|e| e.exit());
    if let Some(Command::Tls(tool)) = args.command.take() {
        return match cert_tool::run(tool) {
            Ok(done) => {
                println!("{done}");
                ExitCode::SUCCESS
            }
            Err(e) => fail("cq_server", e, None, 1),
        };
    }
    let config = match ConfigFile::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return fail("cq_server", e, None, 1),
    };
    if let Some(file) = &config {
        let executor = |id: &str| EXECUTOR_OPTIONS.contains(&id);
        let allowed = |id: &str| !NOT_IN_CONFIG.contains(&id) && !executor(id);
        let from_file = match file
            .arguments(Section::Server, &command, &given, allowed)
            .and_then(|mut server| {
                server.extend(file.arguments(Section::Executor, &command, &given, executor)?);
                Ok(server)
            }) {
            Ok(arguments) => arguments,
            Err(e) => return fail("cq_server", e, None, 1),
        };
        let merged = argv[..1]
            .iter()
            .cloned()
            .chain(from_file)
            .chain(argv[1..].iter().cloned());
        args =
            Args::from_arg_matches(&command.get_matches_from(merged)).unwrap_or_else(|e| e.exit());
    }
    if args.daemon && !args.daemon_child {
        return daemon::launch(&argv);
    }
    if args.daemon_child {
        daemon::detach();
    }
    let target = match (&args.log, args.daemon) {
        (Some(LogTarget::Stderr), true) => {
            return fail(
                "cq_server",
                "--daemon cannot log to stderr",
                Some("pass --log syslog, journald or file:PATH"),
                1,
            );
        }
        (Some(target), _) => target.clone(),
        (None, true) => LogTarget::Syslog(None),
        (None, false) => LogTarget::Stderr,
    };
    let log = match log_target::install(&target, args.verbose) {
        Ok(log) => log,
        // --daemon's default log is syslog; without one, a file in the state directory.
        Err(e) if args.daemon && args.log.is_none() => match daemon_log_file(&args) {
            Ok((log, file)) => {
                eprintln!(
                    "cq_server: cannot log to syslog ({e}); logging to {} instead",
                    file.display()
                );
                log
            }
            Err(why) => {
                return fail(
                    "cq_server",
                    format!("cannot log to syslog ({e}), nor to the state directory: {why}"),
                    Some("pass --log journald or file:PATH"),
                    1,
                );
            }
        },
        Err(e) => {
            return fail(
                "cq_server",
                format!("cannot log to {target}: {e}"),
                Some("choose another --log"),
                1,
            );
        }
    };
    // Blocking work (MUNGE decodes, account lookups) waits for one of a few threads rather
    // than start hundreds under a burst of connections: each thread costs resident stack and
    // malloc arena memory long after the burst (measured: 218 threads for 1000 waiting
    // clients, most of the server's memory per client).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
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
    let on_ready = if args.daemon_child {
        daemon::ready
    } else {
        daemon::foreground_ready
    };
    let context = Context {
        config,
        log,
        on_ready,
    };
    let started = runtime.block_on(async {
        let signals = Signals::install().context("cannot install signal handlers")?;
        // Delivered from now on, to this thread only: the handlers just queue them.
        let _ = held.thread_unblock();
        start(args, context, signals).await
    });
    match started {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let hint = e.downcast_ref::<StartError>().map(StartError::hint);
            fail("cq_server", format!("{e:#}"), hint, 1)
        }
    }
}

/// `--daemon` without a syslog: the log goes to `cq_server.log` in the state directory.
fn daemon_log_file(args: &Args) -> Result<(log_target::LogHandle, std::path::PathBuf), String> {
    let state = args
        .state_dir
        .clone()
        .unwrap_or_else(cq_bin::paths::default_state_dir);
    let dir = cq_bin::state_dir::prepare(&state)?;
    let file = dir.join("cq_server.log");
    let log = log_target::install(&LogTarget::File(file.clone()), args.verbose)
        .map_err(|e| e.to_string())?;
    Ok((log, file))
}
