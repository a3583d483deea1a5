//! Test fixtures.

pub mod containerd;
pub mod image;
pub mod iostall_proc;
pub mod otlp_receiver;
pub mod slowfs;
pub mod workload;
