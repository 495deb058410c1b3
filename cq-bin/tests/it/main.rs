//! End-to-end tests: the real cq_server and cq_client binaries, a private munged, loopback.

mod auth;
mod authorization;
mod bad_input;
mod daemon;
mod durable;
mod experience;
mod host;
mod integrity;
mod jobs;
mod local;
mod netns;
mod policy;
mod portage;
mod queue;
mod results;
mod serial;
mod slurm;
mod support;
mod tls;
mod users;
mod workers;
