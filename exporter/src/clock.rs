//! Kernel timestamps (`CLOCK_MONOTONIC`, from `bpf_ktime_get_ns`) to wall-clock time.
//!
//! The offset between the two clocks is sampled, not assumed: it moves when NTP steps
//! the wall clock, so [`MonotonicToUnix::refresh_if_stale`] re-samples it at most once a
//! second from the decode loop.
use std::time::{Duration, Instant};

/// Reads a clock in nanoseconds.
fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out pointer; these clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Converts `CLOCK_MONOTONIC` nanoseconds to Unix-epoch nanoseconds.
#[derive(Debug, Clone)]
pub struct MonotonicToUnix {
    offset_ns: i128,
    sampled_at: Instant,
}

impl Default for MonotonicToUnix {
    fn default() -> Self {
        Self::new()
    }
}

impl MonotonicToUnix {
    /// How often the offset is re-sampled.
    pub const REFRESH: Duration = Duration::from_secs(1);

    /// Samples the offset now.
    #[must_use]
    pub fn new() -> Self {
        Self {
            offset_ns: sample_offset(),
            sampled_at: Instant::now(),
        }
    }

    /// Re-samples the offset if it is older than [`Self::REFRESH`].
    pub fn refresh_if_stale(&mut self) {
        if self.sampled_at.elapsed() >= Self::REFRESH {
            *self = Self::new();
        }
    }

    /// Unix nanoseconds of a `CLOCK_MONOTONIC` timestamp.
    #[must_use]
    pub fn to_unix_ns(&self, monotonic_ns: u64) -> u64 {
        (monotonic_ns as i128 + self.offset_ns).clamp(0, u64::MAX as i128) as u64
    }
}

/// `REALTIME - MONOTONIC`, from the tightest of a few bracketed readings.
fn sample_offset() -> i128 {
    let mut best: Option<(i128, i128)> = None;
    for _ in 0..5 {
        let before = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        let after = clock_ns(libc::CLOCK_MONOTONIC);
        let gap = after - before;
        let offset = real - (before + gap / 2);
        if best.is_none_or(|(g, _)| gap < g) {
            best = Some((gap, offset));
        }
    }
    best.map_or(0, |(_, offset)| offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_now_maps_to_wall_clock_now() {
        let conv = MonotonicToUnix::new();
        let mono = clock_ns(libc::CLOCK_MONOTONIC) as u64;
        let unix = conv.to_unix_ns(mono) as i128;
        let real = clock_ns(libc::CLOCK_REALTIME);
        assert!((real - unix).abs() < 5_000_000, "off by {} ns", real - unix);
    }
}
