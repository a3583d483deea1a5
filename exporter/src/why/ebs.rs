//! An AWS EBS volume's own word on its throttling: when the volume under a slow
//! operation spent time over its (or the instance's) IOPS or throughput limit in the
//! last sampling interval ([`crate::ebs_nvme`]), the operation says so. Off AWS there is
//! no such volume and this part is never set.
use serde::Serialize;

use super::{Stall, WhyValue};
use crate::ebs_nvme::{EXCEEDED, RecentByDevice};

/// What the volume said about the last interval before the operation ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EbsContext {
    /// The limits demand went over, e.g. `volume_iops,instance_throughput`.
    pub exceeded: String,
    /// The largest share of the interval spent over one of them (0 to 1).
    pub exceeded_ratio: f64,
}

impl EbsContext {
    /// Calls `f` with each attribute.
    pub fn for_each_attribute(&self, f: &mut dyn FnMut(&'static str, WhyValue<'_>)) {
        f("iostall.ebs.exceeded", WhyValue::Str(&self.exceeded));
        f(
            "iostall.ebs.exceeded_ratio",
            WhyValue::Double(self.exceeded_ratio),
        );
    }

    /// The table's part: `ebs 62%`.
    #[must_use]
    pub fn short(&self) -> Option<String> {
        Some(format!("ebs {:.0}%", self.exceeded_ratio * 100.0))
    }
}

/// Reads the sampler's last intervals by device.
#[derive(Debug)]
pub struct EbsView {
    recent: RecentByDevice,
}

impl EbsView {
    /// A view of what [`crate::ebs_nvme::EbsSampler::recent`] shares.
    #[must_use]
    pub fn new(recent: RecentByDevice) -> Self {
        Self { recent }
    }

    /// The throttling of the volume under `stall`'s filesystem in the last interval,
    /// when there was any.
    pub fn context(&mut self, stall: &Stall) -> Option<EbsContext> {
        let recent = *self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&stall.dev)?;
        let over: Vec<_> = EXCEEDED
            .iter()
            .zip(recent.exceeded_us)
            .filter(|(_, us)| *us > 0)
            .collect();
        let max = over.iter().map(|(_, us)| *us).max()?;
        Some(EbsContext {
            exceeded: over
                .iter()
                .map(|((limit, what), _)| format!("{limit}_{what}"))
                .collect::<Vec<_>>()
                .join(","),
            exceeded_ratio: (max as f64 / recent.interval_us.max(1) as f64).min(1.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ebs_nvme::Recent;

    #[test]
    fn says_which_limits_and_how_much_of_the_interval() {
        let recent = RecentByDevice::default();
        recent.lock().expect("lock").insert(
            (259, 1),
            Recent {
                exceeded_us: [3_100_000, 0, 0, 500_000],
                interval_us: 5_000_000,
            },
        );
        recent
            .lock()
            .expect("lock")
            .insert((259, 2), Recent::default());
        let mut view = EbsView::new(recent);
        let mut stall = Stall {
            dev: (259, 1),
            fsync: true,
            ..Stall::default()
        };
        let c = view.context(&stall).expect("throttled");
        assert_eq!(c.exceeded, "volume_iops,instance_throughput");
        assert!((c.exceeded_ratio - 0.62).abs() < 1e-9);
        assert_eq!(c.short().as_deref(), Some("ebs 62%"));
        let mut attrs = Vec::new();
        c.for_each_attribute(&mut |k, v| attrs.push((k, format!("{v:?}"))));
        assert_eq!(
            attrs[0],
            (
                "iostall.ebs.exceeded",
                "Str(\"volume_iops,instance_throughput\")".to_owned()
            )
        );
        // On the record's context, beside the other parts: the table and the spans.
        let why = super::super::StallContext {
            ebs: Some(c),
            ..Default::default()
        };
        assert_eq!(why.short(), "ebs 62%");
        let mut keys = Vec::new();
        why.for_each_attribute(&mut |k, _| keys.push(k));
        assert_eq!(keys, ["iostall.ebs.exceeded", "iostall.ebs.exceeded_ratio"]);
        // Not throttled in the last interval, or not an EBS volume: nothing said.
        stall.dev.1 = 2;
        assert_eq!(view.context(&stall), None);
        stall.dev.0 = 8;
        assert_eq!(view.context(&stall), None);
    }
}
