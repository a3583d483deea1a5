//! Device number → mount point, from the host's mount table, to turn the kernel's
//! filesystem-relative dentry chain into a full path.
//!
//! The host's table is `/proc/1/mountinfo` (init's mount namespace): in a DaemonSet pod
//! with `hostPID`, iostall's own table lists the container's mounts, in which the node's
//! `/var/lib/containerd` does not appear at all. `/proc/self/mountinfo` is the fallback
//! when pid 1's is not readable.
use std::{
    collections::HashMap,
    fs,
    time::{Duration, Instant},
};

/// Mount points of block devices, re-read on a miss (at most once a second).
#[derive(Debug, Default)]
pub struct MountTable {
    by_dev: HashMap<(u32, u32), String>,
    read_at: Option<Instant>,
}

impl MountTable {
    /// Minimum time between two re-reads caused by misses.
    pub const REREAD_AFTER: Duration = Duration::from_secs(1);

    /// Reads the table now.
    #[must_use]
    pub fn load() -> Self {
        let mut table = Self::default();
        table.reread();
        table
    }

    fn reread(&mut self) {
        self.by_dev = fs::read_to_string("/proc/1/mountinfo")
            .or_else(|_| fs::read_to_string("/proc/self/mountinfo"))
            .map(|text| parse_mountinfo(&text))
            .unwrap_or_default();
        self.read_at = Some(Instant::now());
    }

    /// The mount point where the root of device `major:minor` is mounted.
    pub fn mount_point(&mut self, major: u32, minor: u32) -> Option<&str> {
        if !self.by_dev.contains_key(&(major, minor))
            && self
                .read_at
                .is_none_or(|t| t.elapsed() >= Self::REREAD_AFTER)
        {
            self.reread();
        }
        self.by_dev.get(&(major, minor)).map(String::as_str)
    }
}

/// Parses mountinfo into (major, minor) → mount point of the filesystem's root. The
/// first mount of a filesystem's root wins (later ones are usually bind mounts).
pub fn parse_mountinfo(text: &str) -> HashMap<(u32, u32), String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 5 || fields[3] != "/" {
            continue;
        }
        let Some((major, minor)) = fields[2].split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
            continue;
        };
        out.entry((major, minor))
            .or_insert_with(|| unescape(fields[4]));
    }
    out
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
pub(crate) fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if bytes[i] == b'\\'
            && let Some(digits) = octal
        {
            out.push(
                digits
                    .iter()
                    .fold(0u8, |v, d| v.wrapping_mul(8) + (d - b'0')),
            );
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits a kernel `dev_t` (`major << 20 | minor`) into its parts.
#[must_use]
pub fn split_kernel_dev(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xfffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 7:3 / /tmp/x\\040y/mnt rw,relatime shared:5 - ext4 /dev/loop3 rw
31 22 7:3 /sub /srv/bind rw,relatime shared:5 - ext4 /dev/loop3 rw
40 22 0:45 / /sys/fs/cgroup rw - tmpfs tmpfs rw
";

    #[test]
    fn maps_root_mounts_and_unescapes() {
        let table = parse_mountinfo(SAMPLE);
        assert_eq!(table.get(&(254, 0)).map(String::as_str), Some("/"));
        assert_eq!(table.get(&(7, 3)).map(String::as_str), Some("/tmp/x y/mnt"));
        assert_eq!(
            table.get(&(0, 45)).map(String::as_str),
            Some("/sys/fs/cgroup")
        );
    }

    #[test]
    fn kernel_dev_split() {
        assert_eq!(split_kernel_dev((7 << 20) | 3), (7, 3));
        assert_eq!(split_kernel_dev((259 << 20) | 65536), (259, 65536));
    }
}
