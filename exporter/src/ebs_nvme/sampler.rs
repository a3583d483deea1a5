//! Reads every EBS volume every few seconds: the totals go to `/metrics`, the last
//! interval's time over the limits to the `why` of slow operations on the volume.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{EXCEEDED, EbsStats, EbsVolume, parse, read_log_page};

/// How often the sampler reads each volume (AWS: at most once a second is useful).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// One volume's last reading, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbsSample {
    /// Its `major:minor`.
    pub device: (u32, u32),
    /// `vol-…`, when known.
    pub volume_id: Option<String>,
    /// The counters.
    pub stats: EbsStats,
}

/// Writes the EBS families (nothing when no volume was ever read).
pub fn render(out: &mut String, samples: &[EbsSample], errors: u64) {
    use std::fmt::Write as _;
    if samples.is_empty() && errors == 0 {
        return;
    }
    let labels = |s: &EbsSample| {
        format!(
            "device=\"{}:{}\",volume_id=\"{}\"",
            s.device.0,
            s.device.1,
            s.volume_id.as_deref().unwrap_or("")
        )
    };
    for (what, help) in [
        (
            "iops",
            "IOPS demand exceeded the volume's provisioned IOPS (limit=volume) or the \
             instance's EBS IOPS limit (limit=instance)",
        ),
        (
            "throughput",
            "throughput demand exceeded the volume's provisioned throughput (limit=volume) \
             or the instance's EBS throughput limit (limit=instance)",
        ),
    ] {
        let name = format!("iostall_ebs_exceeded_{what}_seconds_total");
        let _ = writeln!(
            out,
            "# HELP {name} Time {help}, from the volume's NVMe log page 0xD0.\n\
             # TYPE {name} counter"
        );
        for s in samples {
            for ((limit, w), us) in EXCEEDED.iter().zip(s.stats.exceeded_us()) {
                if *w == what {
                    let _ = writeln!(
                        out,
                        "{name}{{{},limit=\"{limit}\"}} {}",
                        labels(s),
                        us as f64 / 1e6
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP iostall_ebs_volume_queue_length Operations waiting on the EBS volume \
         (NVMe log page 0xD0).\n# TYPE iostall_ebs_volume_queue_length gauge"
    );
    for s in samples {
        let _ = writeln!(
            out,
            "iostall_ebs_volume_queue_length{{{}}} {}",
            labels(s),
            s.stats.queue_length
        );
    }
    let _ = writeln!(
        out,
        "# HELP iostall_ebs_log_page_errors_total Failed reads of an EBS volume's NVMe log \
         page 0xD0.\n# TYPE iostall_ebs_log_page_errors_total counter\n\
         iostall_ebs_log_page_errors_total {errors}"
    );
}

/// What the last interval of one volume said: the time spent over each limit, for the
/// `why` of slow operations on it ([`crate::why::ebs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recent {
    /// Microseconds over each limit in the last interval, in [`EXCEEDED`]'s order.
    pub exceeded_us: [u64; 4],
    /// Length of that interval.
    pub interval_us: u64,
}

/// The volumes' last intervals, by device (the volume's and each partition's): shared
/// between the sampler and the sink thread.
pub type RecentByDevice = Arc<Mutex<HashMap<(u32, u32), Recent>>>;

/// Reads every EBS volume every [`SAMPLE_EVERY`] on its own thread.
#[derive(Debug)]
pub struct EbsSampler {
    volumes: Vec<EbsVolume>,
    last: HashMap<(u32, u32), (EbsStats, std::time::Instant)>,
    recent: RecentByDevice,
}

impl EbsSampler {
    /// A sampler of `volumes` (from [`super::find_volumes`]); `None` when there is none.
    #[must_use]
    pub fn new(volumes: Vec<EbsVolume>) -> Option<Self> {
        (!volumes.is_empty()).then(|| Self {
            volumes,
            last: HashMap::new(),
            recent: RecentByDevice::default(),
        })
    }

    /// The handle the `why` view reads.
    #[must_use]
    pub fn recent(&self) -> RecentByDevice {
        self.recent.clone()
    }

    /// Takes one reading of one volume: the interval since the last one goes to
    /// [`Self::recent`]. Returns the sample for `/metrics`.
    pub fn take(
        &mut self,
        volume: &EbsVolume,
        stats: EbsStats,
        now: std::time::Instant,
    ) -> EbsSample {
        if let Some((prev, at)) = self.last.get(&volume.device) {
            let mut exceeded_us = [0; 4];
            for (d, (cur, before)) in exceeded_us
                .iter_mut()
                .zip(stats.exceeded_us().into_iter().zip(prev.exceeded_us()))
            {
                *d = cur.saturating_sub(before);
            }
            let recent = Recent {
                exceeded_us,
                interval_us: now.duration_since(*at).as_micros() as u64,
            };
            let mut map = self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for dev in std::iter::once(volume.device).chain(volume.partitions.iter().copied()) {
                map.insert(dev, recent);
            }
        }
        self.last.insert(volume.device, (stats.clone(), now));
        EbsSample {
            device: volume.device,
            volume_id: volume.volume_id.clone(),
            stats,
        }
    }

    /// Reads every volume now; failures are counted in `/metrics` and logged once each.
    pub fn sample(&mut self, metrics: &crate::metrics::Metrics, warned: &mut bool) {
        let mut samples = Vec::with_capacity(self.volumes.len());
        for volume in self.volumes.clone() {
            match read_log_page(&volume.path).and_then(|page| parse(&page)) {
                Ok(stats) => samples.push(self.take(&volume, stats, std::time::Instant::now())),
                Err(e) => {
                    metrics.add_ebs_error();
                    if !std::mem::replace(warned, true) {
                        tracing::warn!(error = %e, "EBS volume statistics unreadable");
                    }
                }
            }
        }
        metrics.set_ebs(samples);
    }

    /// Runs [`Self::sample`] every [`SAMPLE_EVERY`] on a thread of its own.
    pub fn spawn(mut self, metrics: Arc<crate::metrics::Metrics>) -> std::io::Result<()> {
        let names: Vec<_> = self.volumes.iter().map(|v| v.name.clone()).collect();
        tracing::info!(volumes = ?names, "reading EBS NVMe statistics (log page 0xD0)");
        std::thread::Builder::new()
            .name("ebs-nvme".into())
            .spawn(move || {
                let mut warned = false;
                loop {
                    self.sample(&metrics, &mut warned);
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ebs_nvme::page::tests::page;

    #[test]
    fn sampler_keeps_the_last_interval_per_device_and_renders() {
        let volume = EbsVolume {
            name: "nvme0n1".into(),
            path: "/dev/nvme0n1".into(),
            device: (259, 0),
            volume_id: Some("vol-1".into()),
            partitions: vec![(259, 1)],
        };
        let mut sampler = EbsSampler::new(vec![volume.clone()]).expect("a volume");
        let t0 = std::time::Instant::now();
        sampler.take(&volume, parse(&page(1_000_000)).expect("page"), t0);
        assert!(
            sampler.recent().lock().expect("lock").is_empty(),
            "one reading: no interval"
        );
        let sample = sampler.take(
            &volume,
            parse(&page(4_000_000)).expect("page"),
            t0 + Duration::from_secs(5),
        );
        let recent = sampler
            .recent()
            .lock()
            .expect("lock")
            .get(&(259, 1))
            .copied();
        assert_eq!(
            recent,
            Some(Recent {
                exceeded_us: [3_000_000, 0, 0, 0],
                interval_us: 5_000_000
            })
        );
        let mut out = String::new();
        render(&mut out, &[sample], 2);
        for line in [
            "# TYPE iostall_ebs_exceeded_iops_seconds_total counter\n",
            "iostall_ebs_exceeded_iops_seconds_total{device=\"259:0\",volume_id=\"vol-1\",limit=\"volume\"} 4\n",
            "iostall_ebs_exceeded_iops_seconds_total{device=\"259:0\",volume_id=\"vol-1\",limit=\"instance\"} 1.5\n",
            "iostall_ebs_exceeded_throughput_seconds_total{device=\"259:0\",volume_id=\"vol-1\",limit=\"instance\"} 0.25\n",
            "iostall_ebs_volume_queue_length{device=\"259:0\",volume_id=\"vol-1\"} 17\n",
            "iostall_ebs_log_page_errors_total 2\n",
        ] {
            assert!(out.contains(line), "{line} missing in\n{out}");
        }
        let mut none = String::new();
        render(&mut none, &[], 0);
        assert!(none.is_empty(), "no EBS, no families");
    }
}
