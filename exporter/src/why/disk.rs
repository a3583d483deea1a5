//! Per block device, a rolling view cheap enough to leave on: IOPS, throughput, requests
//! in flight, await, and whether the device sits flat at a ceiling (saturated).
//!
//! Source: `/proc/diskstats`, read once a second by one thread. The block layer keeps
//! those counters for every request anyway, so the view adds no cost per IO (the block
//! tracepoints would: a program run at each issue and completion). What diskstats
//! cannot give is device time apart from queue wait: its times run from the request's
//! allocation to its completion. `await` here is that whole time.
//!
//! Saturation must be inferred: a cloud disk throttled at its IOPS cap (Azure exports no
//! in-guest counter) looks calm on a busy graph, but its completions per second sit flat
//! at the cap while requests queue and their await climbs. [`assess`] looks for exactly
//! that over the last few seconds.
use std::{
    collections::{HashMap, VecDeque},
    path::Path,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{Stall, WhyValue};

/// A block device's `(major, minor)`.
pub type DevNo = (u32, u32);

/// The device's state when an operation ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskContext {
    /// `major:minor` of the whole device measured (a partition's disk, a loop device).
    pub device: String,
    /// Its kernel name (`sda`, `nvme0n1`, `loop3`).
    pub name: String,
    /// Completed requests per second over the last second.
    pub iops: f64,
    /// Bytes read and written per second over the last second.
    pub bytes_per_second: f64,
    /// Requests in flight at the last sample.
    pub in_flight: u64,
    /// Mean time of the requests completed in the last second, allocation to completion,
    /// milliseconds (0 when none completed).
    pub await_ms: f64,
    /// Whether completed IOPS sit flat near a ceiling while requests queue and wait.
    pub saturated: bool,
    /// The ceiling observed: the IOPS it sits at, when saturated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling_iops: Option<f64>,
}

impl DiskContext {
    /// Calls `f` with each attribute.
    pub fn for_each_attribute(&self, f: &mut dyn FnMut(&'static str, WhyValue<'_>)) {
        f("iostall.disk.device", WhyValue::Str(&self.device));
        f("iostall.disk.name", WhyValue::Str(&self.name));
        f("iostall.disk.iops", WhyValue::Double(self.iops));
        f(
            "iostall.disk.bytes_per_second",
            WhyValue::Double(self.bytes_per_second),
        );
        f(
            "iostall.disk.in_flight",
            WhyValue::Int(i64::try_from(self.in_flight).unwrap_or(i64::MAX)),
        );
        f("iostall.disk.await_ms", WhyValue::Double(self.await_ms));
        f("iostall.disk.saturated", WhyValue::Bool(self.saturated));
        if let Some(c) = self.ceiling_iops {
            f("iostall.disk.ceiling_iops", WhyValue::Double(c));
        }
    }

    /// The table's part, when the disk is a cause: `sat 10/s` (the ceiling).
    #[must_use]
    pub fn short(&self) -> Option<String> {
        if !self.saturated {
            return None;
        }
        Some(format!(
            "sat {:.0}/s",
            self.ceiling_iops.unwrap_or(self.iops)
        ))
    }
}

/// One device's counters, as `/proc/diskstats` has them (cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests completed: reads, writes, discards and flushes.
    pub ios: u64,
    /// Sectors (512 bytes) read, written and discarded.
    pub sectors: u64,
    /// Milliseconds the completed requests took, summed (field 11, "weighted").
    pub time_ms: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Milliseconds with at least one request in flight (field 10, "io_ticks").
    pub busy_ms: u64,
}

/// Parses `/proc/diskstats`: `(major, minor, name, counters)` per line. Lines too short
/// to hold the classic 11 fields are skipped; the discard and flush fields (kernels
/// 4.18 and 5.5) count when present.
#[must_use]
pub fn parse_diskstats(text: &str) -> Vec<(DevNo, String, Counters)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(major), Some(minor), Some(name)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse::<u32>(), minor.parse::<u32>()) else {
            continue;
        };
        let f: Vec<u64> = it.map_while(|v| v.parse().ok()).collect();
        if f.len() < 11 {
            continue;
        }
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        out.push((
            (major, minor),
            name.to_owned(),
            Counters {
                ios: at(0) + at(4) + at(11) + at(15),
                sectors: at(2) + at(6) + at(13),
                time_ms: at(10),
                in_flight: at(8),
                busy_ms: at(9),
            },
        ));
    }
    out
}

/// One second of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Second {
    /// Completed requests per second.
    pub iops: f64,
    /// Bytes per second.
    pub bytes_per_second: f64,
    /// Requests in flight at the end of the second.
    pub in_flight: u64,
    /// Mean request time of the completed requests, ms (0 when none completed).
    pub await_ms: f64,
    /// Fraction of the second with a request in flight (0..=1).
    pub busy: f64,
}

impl Second {
    /// The second between two samples `elapsed` apart; `None` when counters went
    /// backwards (the device was replaced) or no time passed.
    #[must_use]
    pub fn between(before: &Counters, after: &Counters, elapsed: Duration) -> Option<Self> {
        let dt = elapsed.as_secs_f64();
        if dt <= 0.0 {
            return None;
        }
        let ios = after.ios.checked_sub(before.ios)?;
        let sectors = after.sectors.checked_sub(before.sectors)?;
        // The 32-bit ms fields wrap; a wrap reads as no time rather than as an error.
        let time_ms = after.time_ms.saturating_sub(before.time_ms);
        let busy_ms = after.busy_ms.saturating_sub(before.busy_ms);
        Some(Self {
            iops: ios as f64 / dt,
            bytes_per_second: sectors as f64 * 512.0 / dt,
            in_flight: after.in_flight,
            await_ms: if ios == 0 {
                0.0
            } else {
                time_ms as f64 / ios as f64
            },
            busy: (busy_ms as f64 / 1000.0 / dt).min(1.0),
        })
    }
}

/// What the detector concluded over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Saturation {
    /// Flat at a ceiling, queued and waiting.
    pub saturated: bool,
    /// The ceiling's IOPS, when saturated.
    pub ceiling_iops: Option<f64>,
}

/// Tuning of [`assess`]; the defaults are what the tests and the fixture exercise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorConfig {
    /// Seconds looked at.
    pub window: usize,
    /// Fewer seconds than this say nothing (a device just seen, a window just begun).
    pub min_seconds: usize,
    /// A second is "at the ceiling" when its IOPS are within `1 - near_max` of the
    /// span's median, either way, plus one completion (0.85: 7.5 to 12.5 around 10).
    pub near_max: f64,
    /// This fraction of the window's seconds must be at the ceiling and busy.
    pub flat_fraction: f64,
    /// A second is "busy" (a queue exists) when a request was in flight this fraction
    /// of it.
    pub busy: f64,
    /// Await must be at least this many times the device's unloaded await…
    pub await_factor: f64,
    /// …and at least this many milliseconds above it (a fast device's microseconds
    /// tripling is no throttle).
    pub await_margin_ms: f64,
    /// The unloaded await assumed until one is seen, ms.
    pub default_unloaded_await_ms: f64,
    /// Fewer IOPS than this at the ceiling is an idle device, never saturated.
    pub min_iops: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            window: 8,
            min_seconds: 5,
            near_max: 0.85,
            flat_fraction: 0.7,
            busy: 0.8,
            await_factor: 4.0,
            await_margin_ms: 5.0,
            default_unloaded_await_ms: 10.0,
            min_iops: 1.0,
        }
    }
}

/// Whether `seconds` (oldest first) end in the throttle signature: over the window or
/// its latest `min_seconds` or more, completions flat around that span's median for most
/// of it, a request in flight nearly all the time in those seconds, and their await well
/// above `unloaded_await_ms` (the device's await when nothing queues; `None` if never
/// seen). The latest second must itself be queued and at the ceiling: saturated says
/// "now", and a cap that lifted under a still-busy device ends at the first fast second.
///
/// Looking at the latest seconds too, not only the whole window, finds a cap that began
/// mid-window after `min_seconds`, not once the window has forgotten the faster past.
/// Flatness is judged around the median, not the highest second: one burst second (the
/// backend catching up, an xfs log flush merged into fewer larger requests) must not hide
/// eight flat ones.
#[must_use]
pub fn assess(
    seconds: &[Second],
    unloaded_await_ms: Option<f64>,
    config: &DetectorConfig,
) -> Saturation {
    if seconds.len() < config.min_seconds.max(1)
        || seconds.last().is_none_or(|s| s.busy < config.busy)
    {
        return Saturation::default();
    }
    (config.min_seconds.max(1)..=seconds.len())
        .rev()
        .map(|k| assess_span(&seconds[seconds.len() - k..], unloaded_await_ms, config))
        .find(|s| s.saturated)
        .unwrap_or_default()
}

/// The median of `values` (the mean of the middle two for an even count); `None` when
/// empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some(f64::midpoint(values[n / 2 - 1], values[n / 2])),
    }
}

/// [`assess`] over exactly `seconds`.
fn assess_span(
    seconds: &[Second],
    unloaded_await_ms: Option<f64>,
    config: &DetectorConfig,
) -> Saturation {
    let not = Saturation::default();
    let Some(center) = median(seconds.iter().map(|s| s.iops).collect()) else {
        return not;
    };
    if center < config.min_iops {
        return not;
    }
    // One completion either way is sampling, not variation: a backend at exactly 10/s
    // reads 9, 11, 9, 11 when the second's boundary falls between two completions.
    let tolerance = center * (1.0 - config.near_max) + 1.0;
    let near = |iops: f64| (iops - center).abs() <= tolerance;
    let at_ceiling: Vec<&Second> = seconds
        .iter()
        .filter(|s| near(s.iops) && s.busy >= config.busy)
        .collect();
    if (at_ceiling.len() as f64) < config.flat_fraction * seconds.len() as f64
        || seconds.last().is_none_or(|s| !near(s.iops))
    {
        return not;
    }
    let unloaded = unloaded_await_ms.unwrap_or(config.default_unloaded_await_ms);
    let slow = (unloaded * config.await_factor).max(unloaded + config.await_margin_ms);
    // Latency must have risen: the await of the flat seconds, weighted by requests.
    let ios: f64 = at_ceiling.iter().map(|s| s.iops).sum();
    let await_ms = at_ceiling.iter().map(|s| s.iops * s.await_ms).sum::<f64>() / ios;
    if await_ms < slow {
        return not;
    }
    Saturation {
        saturated: true,
        ceiling_iops: median(at_ceiling.iter().map(|s| s.iops).collect()),
    }
}

/// One device's history.
#[derive(Debug, Default)]
struct Device {
    name: String,
    last: Option<Counters>,
    seconds: VecDeque<Second>,
    /// The lowest await of a second with requests but no queue: the device unloaded.
    unloaded_await_ms: Option<f64>,
    saturation: Saturation,
    /// Whether it ever completed a request while watched (only those go on `/metrics`).
    did_io: bool,
}

impl Device {
    fn push(&mut self, second: Second, config: &DetectorConfig) {
        self.did_io |= second.iops > 0.0;
        // Unloaded: requests completed, but the device was idle most of the second.
        if second.iops > 0.0 && second.busy < 0.5 && second.await_ms > 0.0 {
            let u = self.unloaded_await_ms.get_or_insert(second.await_ms);
            *u = u.min(second.await_ms);
        }
        if self.seconds.len() == config.window {
            self.seconds.pop_front();
        }
        self.seconds.push_back(second);
        let (a, b) = self.seconds.as_slices();
        let all: Vec<Second> = a.iter().chain(b).copied().collect();
        self.saturation = assess(&all, self.unloaded_await_ms, config);
    }
}

/// The shared state: per whole device, its history. The sampler thread writes it once a
/// second; the sink thread and `/metrics` read it.
#[derive(Debug, Default)]
pub struct DiskState {
    devices: Mutex<HashMap<DevNo, Device>>,
}

/// One device's latest state, for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSnapshot {
    /// `(major, minor)`.
    pub dev: DevNo,
    /// Kernel name.
    pub name: String,
    /// The last second.
    pub last: Second,
    /// The detector's verdict.
    pub saturation: Saturation,
}

impl DiskState {
    /// Takes one sample of the devices watched, `elapsed` after the last one.
    pub fn update(
        &self,
        sample: Vec<(DevNo, String, Counters)>,
        elapsed: Duration,
        config: &DetectorConfig,
    ) {
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        for (dev, name, counters) in sample {
            let d = devices.entry(dev).or_default();
            d.name = name;
            if let Some(before) = d.last.replace(counters)
                && let Some(second) = Second::between(&before, &counters, elapsed)
            {
                d.push(second, config);
            }
        }
    }

    /// The devices that have done IO since iostall started (a series does not come and
    /// go with the device's idle spells), by device number.
    #[must_use]
    pub fn snapshot(&self) -> Vec<DeviceSnapshot> {
        let devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<DeviceSnapshot> = devices
            .iter()
            .filter(|(_, d)| d.did_io)
            .filter_map(|(dev, d)| {
                Some(DeviceSnapshot {
                    dev: *dev,
                    name: d.name.clone(),
                    last: *d.seconds.back()?,
                    saturation: d.saturation,
                })
            })
            .collect();
        out.sort_by_key(|d| d.dev);
        out
    }

    fn context(&self, dev: DevNo) -> Option<DiskContext> {
        let devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        let d = devices.get(&dev)?;
        let last = d.seconds.back()?;
        Some(DiskContext {
            device: format!("{}:{}", dev.0, dev.1),
            name: d.name.clone(),
            iops: last.iops,
            bytes_per_second: last.bytes_per_second,
            in_flight: last.in_flight,
            await_ms: last.await_ms,
            saturated: d.saturation.saturated,
            ceiling_iops: d.saturation.ceiling_iops,
        })
    }
}

/// The whole device under `dev`: a partition's disk (`/sys/dev/block/M:m/partition`
/// exists, and `../dev` names its disk), or `dev` itself (a disk, a loop device: the
/// loop is what a fixture caps). `None` when `dev` is no block device (an anonymous
/// device such as overlayfs' or btrfs').
#[must_use]
pub fn whole_device(sys_dev_block: &Path, dev: DevNo) -> Option<DevNo> {
    let here = sys_dev_block.join(format!("{}:{}", dev.0, dev.1));
    if !here.exists() {
        return None;
    }
    if !here.join("partition").exists() {
        return Some(dev);
    }
    let text = std::fs::read_to_string(here.join("../dev")).ok()?;
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Reads `/proc/diskstats` once a second into a [`DiskState`] until the state is
/// dropped. Partitions are left out: the ceiling belongs to the whole device.
fn sample_loop(state: Weak<DiskState>, config: DetectorConfig) {
    let sys = Path::new("/sys/dev/block");
    let mut whole: HashMap<DevNo, bool> = HashMap::new();
    let mut last = Instant::now();
    let mut warned = false;
    loop {
        let Some(state) = state.upgrade() else {
            return;
        };
        let now = Instant::now();
        match std::fs::read_to_string("/proc/diskstats") {
            Ok(text) => {
                let sample: Vec<_> = parse_diskstats(&text)
                    .into_iter()
                    .filter(|(dev, _, _)| {
                        *whole
                            .entry(*dev)
                            .or_insert_with(|| whole_device(sys, *dev) == Some(*dev))
                    })
                    .collect();
                state.update(sample, now - last, &config);
            }
            Err(e) if !warned => {
                warned = true;
                tracing::warn!("reading /proc/diskstats: {e}; no disk context");
            }
            Err(_) => {}
        }
        last = now;
        drop(state);
        // Sample on the second, whatever the read cost.
        let next = now + Duration::from_secs(1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

/// The rolling per-device view: gives each record its device's state.
#[derive(Debug)]
pub struct DiskView {
    state: Arc<DiskState>,
    sys_dev_block: std::path::PathBuf,
    /// A filesystem's device → its whole device (`None`: not a block device).
    whole: HashMap<DevNo, Option<DevNo>>,
}

impl DiskView {
    /// Starts the sampler thread (one `/proc/diskstats` read a second).
    ///
    /// # Errors
    /// When `/proc/diskstats` cannot be read or the thread cannot start.
    pub fn start(config: DetectorConfig) -> std::io::Result<Self> {
        std::fs::read_to_string("/proc/diskstats")?;
        let state = Arc::new(DiskState::default());
        let weak = Arc::downgrade(&state);
        std::thread::Builder::new()
            .name("iostall-diskstats".into())
            .spawn(move || sample_loop(weak, config))?;
        Ok(Self::with_state(state, "/sys/dev/block"))
    }

    /// A view over `state`, fed by someone else (tests).
    #[must_use]
    pub fn with_state(state: Arc<DiskState>, sys_dev_block: impl Into<std::path::PathBuf>) -> Self {
        Self {
            state,
            sys_dev_block: sys_dev_block.into(),
            whole: HashMap::new(),
        }
    }

    /// The shared state, for `/metrics`.
    #[must_use]
    pub fn state(&self) -> Arc<DiskState> {
        self.state.clone()
    }

    /// The state of the device under `record`'s file, if known.
    pub fn context(&mut self, stall: &Stall) -> Option<DiskContext> {
        let dev = stall.dev;
        let sys = &self.sys_dev_block;
        let whole = *self
            .whole
            .entry(dev)
            .or_insert_with(|| whole_device(sys, dev));
        self.state.context(whole?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(iops: f64, busy: f64, await_ms: f64) -> Second {
        Second {
            iops,
            bytes_per_second: iops * 4096.0,
            in_flight: u64::from(busy > 0.5),
            await_ms,
            busy,
        }
    }

    #[test]
    fn flat_at_the_cap_with_rising_await_is_saturated() {
        let c = DetectorConfig::default();
        // 10 IOPS, always a request in flight, await climbing from 120 to 400 ms.
        let s: Vec<Second> = [10.0, 9.0, 10.0, 11.0, 10.0, 10.0, 9.0, 10.0]
            .iter()
            .enumerate()
            .map(|(i, &iops)| second(iops, 0.99, 120.0 + 40.0 * i as f64))
            .collect();
        let got = assess(&s, Some(0.8), &c);
        assert!(got.saturated, "{got:?}");
        assert_eq!(got.ceiling_iops, Some(10.0));
        // With no unloaded await seen yet, the default one still tells 100+ ms apart.
        assert!(assess(&s, None, &c).saturated);
        // Too few seconds say nothing yet.
        assert!(!assess(&s[..4], Some(0.8), &c).saturated);
    }

    #[test]
    fn a_cap_that_begins_mid_window_is_found_after_min_seconds() {
        let c = DetectorConfig::default();
        let mut s: Vec<Second> = (0..3).map(|_| second(230.0, 0.1, 0.2)).collect();
        s.extend((0..3).map(|_| second(10.0, 0.99, 135.0)));
        assert!(!assess(&s, Some(0.2), &c).saturated, "3 capped seconds");
        s.push(second(10.0, 0.99, 135.0));
        // Four of the latest five: flat enough.
        let got = assess(&s, Some(0.2), &c);
        assert!(got.saturated, "4 capped seconds: {got:?}");
        assert_eq!(got.ceiling_iops, Some(10.0));
        // The queue gone (the writers stopped), it is no longer saturated now.
        s.push(second(3.0, 0.1, 1.0));
        assert!(!assess(&s, Some(0.2), &c).saturated);
    }

    #[test]
    fn one_burst_second_does_not_hide_a_flat_cap() {
        let c = DetectorConfig::default();
        // What a capped xfs looked like: flat at 10 with jitter, and one second where
        // the backend caught up.
        let s: Vec<Second> = [10.0, 11.95, 9.0, 24.0, 10.0, 11.0, 9.0, 10.0]
            .iter()
            .map(|&iops| second(iops, 1.0, 144.5))
            .collect();
        let got = assess(&s, Some(0.3), &c);
        assert!(got.saturated, "{got:?}");
        assert_eq!(got.ceiling_iops, Some(10.0));
    }

    #[test]
    fn a_cap_sampled_out_of_phase_alternates_and_is_still_flat() {
        let c = DetectorConfig::default();
        // Seen on a capped xfs: one-second samples of a 10/s backend read 9, 11, 9, 11.
        let s: Vec<Second> = (0..8)
            .map(|i| second(if i % 2 == 0 { 9.0 } else { 11.0 }, 1.0, 145.0))
            .collect();
        let got = assess(&s, Some(0.3), &c);
        assert!(got.saturated, "{got:?}");
        assert_eq!(got.ceiling_iops, Some(10.0));
    }

    #[test]
    fn a_cap_lifted_under_a_busy_device_ends_at_the_first_fast_second() {
        let c = DetectorConfig::default();
        let mut s: Vec<Second> = (0..7).map(|_| second(10.0, 1.0, 150.0)).collect();
        assert!(assess(&s, Some(0.3), &c).saturated);
        // Still a queue, but 60 times the completions: the ceiling is gone.
        s.push(second(600.0, 1.0, 3.0));
        assert!(!assess(&s, Some(0.3), &c).saturated);
    }

    #[test]
    fn bursty_idle_ish_is_not() {
        let c = DetectorConfig::default();
        let s: Vec<Second> = [0.0, 0.0, 50.0, 0.0, 3.0, 0.0, 0.0, 40.0]
            .iter()
            .map(|&iops| second(iops, if iops > 10.0 { 0.9 } else { 0.01 }, 200.0))
            .collect();
        assert!(!assess(&s, Some(0.8), &c).saturated);
    }

    #[test]
    fn high_but_varying_is_not() {
        let c = DetectorConfig::default();
        let s: Vec<Second> = [800.0, 1200.0, 900.0, 1500.0, 700.0, 1300.0, 1000.0, 1100.0]
            .iter()
            .map(|&iops| second(iops, 1.0, 40.0))
            .collect();
        assert!(!assess(&s, Some(0.5), &c).saturated);
    }

    #[test]
    fn flat_but_not_waiting_is_not() {
        let c = DetectorConfig::default();
        // A steady writer well under any cap: flat, but idle between requests.
        let idle: Vec<Second> = (0..8).map(|_| second(100.0, 0.05, 0.5)).collect();
        assert!(!assess(&idle, Some(0.5), &c).saturated);
        // A QD1 fsync loop on a fast disk: busy and flat, but its await is its own
        // unloaded await (latency-bound, not throttled).
        let qd1: Vec<Second> = (0..8).map(|_| second(2000.0, 1.0, 0.3)).collect();
        assert!(!assess(&qd1, Some(0.1), &c).saturated);
        // A QD1 loop on a slow disk whose unloaded await is its loaded one.
        let hdd: Vec<Second> = (0..8).map(|_| second(120.0, 1.0, 8.0)).collect();
        assert!(!assess(&hdd, Some(7.5), &c).saturated);
    }

    #[test]
    fn a_window_that_lifts_its_cap_is_no_longer_saturated() {
        let c = DetectorConfig::default();
        let mut d = Device::default();
        for _ in 0..8 {
            d.push(second(10.0, 1.0, 150.0), &c);
        }
        assert!(d.saturation.saturated);
        // The cap lifts: far more IOPS, fast again.
        d.push(second(600.0, 0.3, 0.4), &c);
        assert!(!d.saturation.saturated, "{:?}", d.saturation);
        // And a quiet second taught it the unloaded await.
        assert_eq!(d.unloaded_await_ms, Some(0.4));
    }

    #[test]
    fn diskstats_lines_parse_with_and_without_flush_fields() {
        let text = "   7       3 loop3 278 3 2468 1875 17913 8575 747156 28502 2 24616 \
                    39025 31 0 3145896 47 11433 8600\n   8       0 sda 10 0 80 5 20 0 160 \
                    40 1 30 45\n bad line\n";
        let got = parse_diskstats(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, (7, 3));
        assert_eq!(got[0].1, "loop3");
        assert_eq!(
            got[0].2,
            Counters {
                ios: 278 + 17913 + 31 + 11433,
                sectors: 2468 + 747156 + 3145896,
                time_ms: 39025,
                in_flight: 2,
                busy_ms: 24616,
            }
        );
        assert_eq!(got[1].2.ios, 30);
        let s = Second::between(
            &got[1].2,
            &Counters {
                ios: 50,
                sectors: 320,
                time_ms: 245,
                in_flight: 3,
                busy_ms: 530,
            },
            Duration::from_secs(1),
        )
        .expect("a second");
        assert_eq!(s.iops, 20.0);
        assert_eq!(s.await_ms, 10.0);
        assert_eq!(s.busy, 0.5);
        assert_eq!(s.bytes_per_second, 80.0 * 512.0);
        assert_eq!(s.in_flight, 3);
    }

    #[test]
    fn the_table_says_the_ceiling() {
        let mut c = DiskContext {
            device: "7:3".into(),
            name: "loop3".into(),
            iops: 9.0,
            bytes_per_second: 0.0,
            in_flight: 2,
            await_ms: 180.0,
            saturated: true,
            ceiling_iops: Some(10.0),
        };
        assert_eq!(c.short().as_deref(), Some("sat 10/s"));
        c.saturated = false;
        assert_eq!(c.short(), None);
    }

    #[test]
    fn a_partition_maps_to_its_disk() {
        let dir = std::env::temp_dir().join(format!("iostall-sysblock-{}", std::process::id()));
        let disk = dir.join("block/sda");
        let part = disk.join("sda1");
        std::fs::create_dir_all(&part).expect("dirs");
        std::fs::write(disk.join("dev"), "8:0\n").expect("dev");
        std::fs::write(part.join("dev"), "8:1\n").expect("dev");
        std::fs::write(part.join("partition"), "1\n").expect("partition");
        let by_dev = dir.join("dev");
        std::fs::create_dir_all(&by_dev).expect("dir");
        std::os::unix::fs::symlink(&part, by_dev.join("8:1")).expect("link");
        std::os::unix::fs::symlink(&disk, by_dev.join("8:0")).expect("link");
        assert_eq!(whole_device(&by_dev, (8, 1)), Some((8, 0)));
        assert_eq!(whole_device(&by_dev, (8, 0)), Some((8, 0)));
        assert_eq!(whole_device(&by_dev, (0, 42)), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
