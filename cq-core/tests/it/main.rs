//! cq-core without sockets or munged: the engine with in-process jobs, and the server and
//! client engines over the in-memory transport.

mod engine;
mod engine_properties;
mod golden;
mod server;
mod support;
mod workers;
