//! Where the cloud says it inside the guest: AWS Nitro EBS volumes count, in their NVMe
//! vendor log page `0xD0`, the time demand spent over the volume's and over the
//! instance's IOPS and throughput limits. That is the throttle itself, measured by the
//! volume, not inferred; the EBS CSI driver reads it only for the volumes it mounts, so
//! the root volume (where containerd and the kubelet write) was covered by nothing.
//!
//! - [`parse`] ([`page`]): the page's bytes to [`EbsStats`] (pure; tested on a page built to the
//!   documented layout).
//! - [`find_volumes`] ([`device`]): the EBS namespaces under `/sys/block` (model `Amazon Elastic Block
//!   Store`), with the devices of their partitions.
//! - [`read_log_page`] ([`device`]): the NVMe admin Get Log Page ioctl.
//! - [`EbsSampler`] ([`sampler`]): reads every volume every [`SAMPLE_EVERY`], feeds `/metrics`
//!   ([`crate::metrics::Metrics::set_ebs`]) and the `why` of slow operations on those
//!   devices ([`crate::why::ebs`]).
//!
//! Layout (little endian), from AWS's own `ebsnvme` (amazonlinux/amazon-ec2-utils), the
//! `nvme amzn stats` plugin (linux-nvme/nvme-cli `plugins/amzn/amzn-nvme.c`) and the EBS
//! CSI driver (`pkg/metrics/nvme.go`); times in microseconds:
//!
//! | offset | field |
//! |---|---|
//! | 0 | `u32` magic `0x3C23B510` (instance storage: `0xEC2C0D7E`) |
//! | 4 | `u32` version (0; 1 adds per-IO-size histograms after byte 4096) |
//! | 8..96 | `u64` × 11: read ops, write ops, read bytes, write bytes, read time, write time, volume IOPS exceeded, volume throughput exceeded, instance IOPS exceeded, instance throughput exceeded, queue length (a gauge) |
//! | 96..512 | reserved |
//! | 512 | read latency histogram: `u64` bins, then 64 × (`u64` lower, `u64` upper, `u32` count, `u32` reserved) |
//! | 2056 | write latency histogram, the same |
//!
//! Elsewhere nothing like it exists in the guest: Azure exposes no in-guest counter of
//! disk throttling (it must be inferred: [`crate::why::disk`]); GCP persistent disks:
//! unverified.
use std::path::PathBuf;

pub mod device;
pub mod page;
pub mod sampler;

pub use device::{EbsVolume, MODEL, find_volumes, probe_detail, read_log_page};
pub use page::{
    EBS_MAGIC, EXCEEDED, EbsStats, LOCAL_STORAGE_MAGIC, LOG_PAGE_ID, LOG_PAGE_LEN, LatencyBin,
    parse,
};
pub use sampler::{EbsSample, EbsSampler, Recent, RecentByDevice, SAMPLE_EVERY, render};

use page::{HIST_BINS, PARSED_LEN};

/// Errors reading or decoding the page.
#[derive(Debug, thiserror::Error)]
pub enum EbsError {
    /// Fewer bytes than the counters and histograms take.
    #[error("EBS log page 0xD0: {len} bytes, need at least {PARSED_LEN}")]
    Short {
        /// Bytes given.
        len: usize,
    },
    /// Not an EBS volume's page.
    #[error(
        "EBS log page 0xD0: magic {found:#010x}, not EBS's {EBS_MAGIC:#010x}{}",
        if *found == LOCAL_STORAGE_MAGIC { " (an instance-storage volume)" } else { "" }
    )]
    Magic {
        /// The first four bytes.
        found: u32,
    },
    /// A histogram claims more bins than the layout has.
    #[error("EBS log page 0xD0: {field}.num_bins is {bins}, at most {HIST_BINS}")]
    Bins {
        /// `read_latency` or `write_latency`.
        field: &'static str,
        /// The count given.
        bins: u64,
    },
    /// The device could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The device.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The ioctl failed.
    #[error("NVMe Get Log Page 0xD0 on {path} failed: {source}")]
    Ioctl {
        /// The device.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The controller answered with an NVMe error status.
    #[error("NVMe Get Log Page 0xD0 on {path}: NVMe status {status:#x}")]
    Status {
        /// The device.
        path: PathBuf,
        /// The status the ioctl returned.
        status: i32,
    },
}
