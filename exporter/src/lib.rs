//! iostall: slow ext4 operations, seen with eBPF, tagged with who did them.
//!
//! Stages, in the order data flows: [`tracer`] (load and attach the eBPF programs),
//! [`decode`] (ring-buffer bytes to [`event::IoRecord`]), [`why`] (the disk, journal
//! and pressure beside each slow operation), [`correlate`] (trace and span
//! ids, Resource), [`startup`] (each pod's startup as one trace, the IO stalls inside),
//! [`sink`] (console, JSON, OTLP via [`otlp`]), wired by [`pipeline`];
//! [`lifecycle`] turns the kernel's cgroup, exec/exit and OOM signals into runtime events;
//! [`config`] resolves and validates settings once at start, [`metrics`] counts.
pub mod bounds;
pub mod btf_lookup;
pub mod btf_offsets;
pub mod clock;
pub mod config;
pub mod correlate;
pub mod coverage;
pub mod decode;
pub mod ebs_nvme;
pub mod enrich;
pub mod event;
pub mod fentry_probe;
pub mod fuzzing;
pub mod host;
pub mod io_latency;
pub mod lifecycle;
pub mod metrics;
pub mod mounts;
pub mod openmetrics;
pub mod otlp;
pub mod pipeline;
pub mod preflight;
pub mod runtime;
pub mod sink;
pub mod startup;
pub mod tracefs_format;
pub mod tracer;
pub mod why;
