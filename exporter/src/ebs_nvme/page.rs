//! The bytes of log page 0xD0 to typed counters (layout in [`super`]'s doc).
use serde::Serialize;

use super::EbsError;

/// The log page's id.
pub const LOG_PAGE_ID: u8 = 0xD0;
/// The first four bytes of an EBS volume's page.
pub const EBS_MAGIC: u32 = 0x3C23_B510;
/// The first four bytes of an instance-storage volume's page (not read here).
pub const LOCAL_STORAGE_MAGIC: u32 = 0xEC2C_0D7E;
/// Bytes read from the device: the page's base part.
pub const LOG_PAGE_LEN: usize = 4096;

/// Bytes up to the end of the write histogram: what [`parse`] needs.
pub(super) const PARSED_LEN: usize = HIST_WRITE + HIST_LEN;
const HIST_READ: usize = 512;
pub(super) const HIST_BINS: usize = 64;
const BIN_LEN: usize = 24;
const HIST_LEN: usize = 8 + HIST_BINS * BIN_LEN;
const HIST_WRITE: usize = HIST_READ + HIST_LEN;

/// One latency histogram bin (microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LatencyBin {
    /// Lower bound.
    pub lower_us: u64,
    /// Upper bound.
    pub upper_us: u64,
    /// Operations that took that long.
    pub count: u32,
}

/// The counters of one page (totals since the volume was attached).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EbsStats {
    /// The layout's version.
    pub version: u32,
    /// Completed reads.
    pub read_ops: u64,
    /// Completed writes.
    pub write_ops: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Time spent by completed reads.
    pub read_time_us: u64,
    /// Time spent by completed writes.
    pub write_time_us: u64,
    /// Time demand exceeded the volume's provisioned IOPS.
    pub volume_exceeded_iops_us: u64,
    /// Time demand exceeded the volume's provisioned throughput.
    pub volume_exceeded_throughput_us: u64,
    /// Time the volume exceeded the instance's EBS IOPS limit.
    pub instance_exceeded_iops_us: u64,
    /// Time the volume exceeded the instance's EBS throughput limit.
    pub instance_exceeded_throughput_us: u64,
    /// Operations waiting now (a gauge).
    pub queue_length: u64,
    /// Read latency histogram.
    pub read_latency: Vec<LatencyBin>,
    /// Write latency histogram.
    pub write_latency: Vec<LatencyBin>,
}

impl EbsStats {
    /// Time over any limit, as the four counters added up (they may overlap in time).
    #[must_use]
    pub fn exceeded_us(&self) -> [u64; 4] {
        [
            self.volume_exceeded_iops_us,
            self.volume_exceeded_throughput_us,
            self.instance_exceeded_iops_us,
            self.instance_exceeded_throughput_us,
        ]
    }
}

/// Names of [`EbsStats::exceeded_us`]'s entries: (`limit` label, what).
pub const EXCEEDED: [(&str, &str); 4] = [
    ("volume", "iops"),
    ("volume", "throughput"),
    ("instance", "iops"),
    ("instance", "throughput"),
];

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn histogram(b: &[u8], at: usize, field: &'static str) -> Result<Vec<LatencyBin>, EbsError> {
    let bins = u64_at(b, at);
    if bins > HIST_BINS as u64 {
        return Err(EbsError::Bins { field, bins });
    }
    Ok((0..bins as usize)
        .map(|i| {
            let bin = at + 8 + i * BIN_LEN;
            LatencyBin {
                lower_us: u64_at(b, bin),
                upper_us: u64_at(b, bin + 8),
                count: u32_at(b, bin + 16),
            }
        })
        .collect())
}

/// Decodes a page (at least its first 3600 bytes, through the write histogram; the rest, per-IO-size
/// histograms of version 1, is not read).
pub fn parse(page: &[u8]) -> Result<EbsStats, EbsError> {
    if page.len() < PARSED_LEN {
        return Err(EbsError::Short { len: page.len() });
    }
    let magic = u32_at(page, 0);
    if magic != EBS_MAGIC {
        return Err(EbsError::Magic { found: magic });
    }
    let c = |i: usize| u64_at(page, 8 + 8 * i);
    Ok(EbsStats {
        version: u32_at(page, 4),
        read_ops: c(0),
        write_ops: c(1),
        read_bytes: c(2),
        write_bytes: c(3),
        read_time_us: c(4),
        write_time_us: c(5),
        volume_exceeded_iops_us: c(6),
        volume_exceeded_throughput_us: c(7),
        instance_exceeded_iops_us: c(8),
        instance_exceeded_throughput_us: c(9),
        queue_length: c(10),
        read_latency: histogram(page, HIST_READ, "read_latency")?,
        write_latency: histogram(page, HIST_WRITE, "write_latency")?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A page laid out as `ebsnvme`'s `nvme_get_amzn_stats_logpage` and nvme-cli's
    /// `amzn_latency_log_page_base` describe it (offsets in this module's doc). No raw
    /// capture of the page is published anywhere we could find (AWS's docs and the
    /// tools print decoded values only), so it is built here; the values are those of
    /// a gp3 root volume at its 3000 IOPS cap for ~42 s.
    pub(crate) fn page(volume_iops_us: u64) -> Vec<u8> {
        let mut p = vec![0u8; LOG_PAGE_LEN];
        p[0..4].copy_from_slice(&EBS_MAGIC.to_le_bytes());
        for (i, v) in [
            1_048_576u64,    // read ops
            8_388_608,       // write ops
            42_949_672_960,  // read bytes
            137_438_953_472, // write bytes
            512_000_000,     // read time
            9_876_543_210,   // write time
            volume_iops_us,  // volume IOPS exceeded
            0,               // volume throughput exceeded
            1_500_000,       // instance IOPS exceeded
            250_000,         // instance throughput exceeded
            17,              // queue length
        ]
        .into_iter()
        .enumerate()
        {
            p[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        // Reserved bytes are not read: garbage there must not matter.
        p[96..512].fill(0xAA);
        for (at, counts) in [(HIST_READ, [5u32, 900, 12]), (HIST_WRITE, [1, 7000, 3100])] {
            p[at..at + 8].copy_from_slice(&3u64.to_le_bytes());
            for (i, ((lo, hi), n)) in [(0u64, 128u64), (128, 1024), (1024, 65536)]
                .into_iter()
                .zip(counts)
                .enumerate()
            {
                let bin = at + 8 + i * BIN_LEN;
                p[bin..bin + 8].copy_from_slice(&lo.to_le_bytes());
                p[bin + 8..bin + 16].copy_from_slice(&hi.to_le_bytes());
                p[bin + 16..bin + 20].copy_from_slice(&n.to_le_bytes());
                // The reserved half of the count's u64 (the CSI driver reads a u64).
                p[bin + 20..bin + 24].copy_from_slice(&0xDEADu32.to_le_bytes());
            }
        }
        p
    }

    #[test]
    fn parses_a_page_built_to_the_layout() {
        let s = parse(&page(42_000_000)).expect("parses");
        assert_eq!(s.version, 0);
        assert_eq!((s.read_ops, s.write_ops), (1_048_576, 8_388_608));
        assert_eq!(
            (s.read_bytes, s.write_bytes),
            (42_949_672_960, 137_438_953_472)
        );
        assert_eq!(
            (s.read_time_us, s.write_time_us),
            (512_000_000, 9_876_543_210)
        );
        assert_eq!(s.exceeded_us(), [42_000_000, 0, 1_500_000, 250_000]);
        assert_eq!(s.queue_length, 17);
        assert_eq!(s.read_latency.len(), 3);
        assert_eq!(
            s.write_latency[1],
            LatencyBin {
                lower_us: 128,
                upper_us: 1024,
                count: 7000
            }
        );
        assert_eq!(s.read_latency[2].count, 12);
        // The base part alone (what the CSI driver reads) is enough.
        assert!(parse(&page(0)[..PARSED_LEN]).is_ok());
    }

    #[test]
    fn bad_pages_say_what_is_wrong() {
        let e = parse(&page(0)[..100]).expect_err("short");
        assert_eq!(
            e.to_string(),
            "EBS log page 0xD0: 100 bytes, need at least 3600"
        );
        let e = parse(&[]).expect_err("empty");
        assert!(matches!(e, EbsError::Short { len: 0 }));
        let mut p = page(0);
        p[0..4].copy_from_slice(&LOCAL_STORAGE_MAGIC.to_le_bytes());
        let e = parse(&p).expect_err("instance storage");
        assert_eq!(
            e.to_string(),
            "EBS log page 0xD0: magic 0xec2c0d7e, not EBS's 0x3c23b510 (an instance-storage volume)"
        );
        p[0..4].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(parse(&p), Err(EbsError::Magic { found: 0 })));
        let mut p = page(0);
        p[HIST_WRITE..HIST_WRITE + 8].copy_from_slice(&65u64.to_le_bytes());
        let e = parse(&p).expect_err("bins");
        assert_eq!(
            e.to_string(),
            "EBS log page 0xD0: write_latency.num_bins is 65, at most 64"
        );
    }
}
