//! iostall: slow ext4 operations, seen with eBPF, tagged with who did them.
//!
//! Stages, in the order data flows: [`tracer`] (load and attach the eBPF programs),
//! [`decode`] (ring-buffer bytes to [`event::IoRecord`]), [`sink`] (console, JSON),
//! wired by [`pipeline`].
pub mod btf_offsets;
pub mod clock;
pub mod decode;
pub mod event;
pub mod mounts;
pub mod pipeline;
pub mod preflight;
pub mod sink;
pub mod tracefs_format;
pub mod tracer;
