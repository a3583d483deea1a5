//! Test fixtures.

pub mod bench;
pub mod capped_disk;
pub mod containerd;
pub mod deploy;
pub mod dockerd;
pub mod exposition;
pub mod fake_kube;
pub mod image;
pub mod iostall_proc;
pub mod log_capture;
pub mod otlp_receiver;
pub mod peers;
pub mod records;
pub mod slowfs;
pub mod soak;
pub mod workload;
