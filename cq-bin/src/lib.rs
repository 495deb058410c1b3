//! The parts of `cq_server` and `cq_client` that are not argument parsing: logging set-up,
//! `-E` parsing, post scripts, default paths, signals and error reporting. The binaries in
//! `src/bin/` only parse arguments and compose these with the library crates.
//!
//! # Layout
//!
//! - `auth_args.rs`: `--auth munge|tls` and the TLS file options both binaries share.
//! - `background.rs`: the detached waiter behind `cq_client --background`.
//! - `client_run.rs`: cq_client's options, and what it does once they are parsed.
//! - `server_args.rs`: cq_server's options (also the source of its man page and completions).
//! - `server_run.rs`: cq_server's composition: store, engine, executor, policy, auth, listener.
//! - `executor_args.rs`: `--executor process|slurm`, `--lanes` and the Slurm options
//!   (`[executor]` in cq.toml), shared by cq_server and cq_worker.
//! - `config_file.rs`: `/etc/cq/cq.toml`, turned into options and the submit policy.
//! - `log_target.rs`: `--log stderr|syslog|journald|file:PATH`, reopened on SIGHUP.
//! - `metrics.rs`: `cq_server --metrics ADDR`, OpenMetrics counters and gauges.
//! - `daemon.rs`: `cq_server --daemon`.
//! - `cert_tool.rs`: `cq_server tls init|client`, the certificate tooling.
//! - `env_args.rs`: `-E NAME[=VALUE]` parsing.
//! - `listing.rs`: job tables and `--json` output for `--list`, `--status`, `--cancel`.
//! - `post_script.rs`: checking and running the client's `-P` script.
//! - `paths.rs`: the default state directory.
//! - `units.rs`: durations (`90s`, `2h`) and sizes (`64M`) on the command line.
//! - `state_lock.rs`: one server per state directory (a locked pid file), and `--pid-file`.
//! - `state_dir.rs`: the state directory, private to the server's user.
//! - `signals.rs`: SIGINT / SIGTERM for the server's graceful and forced shutdown.
//! - `report.rs`: logging set-up and the one-line error messages.
//! - `wait_line.rs`: the live line a waiting cq_client shows on a terminal.
//! - `emerge/`: `cq-emerge` and `cq-emerge-build`, the Portage workflow.
//! - `worker_run.rs`: cq_worker's options, and the worker it composes.

#![warn(missing_docs, unreachable_pub)]

pub mod auth_args;
pub mod background;
pub mod cert_tool;
pub mod client_run;
pub mod config_file;
pub mod daemon;
pub mod emerge;
pub mod env_args;
pub mod executor_args;
pub mod listing;
pub mod log_target;
pub mod metrics;
pub mod paths;
pub mod post_script;
pub mod report;
pub mod server_args;
pub mod server_run;
pub mod signals;
pub mod state_dir;
pub mod state_lock;
pub mod units;
pub mod wait_line;
pub mod worker_run;
