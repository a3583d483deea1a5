//! What must hold before anything is loaded (privileges, BTF, tracefs), and the
//! `iostall probe` report of what this kernel supports.
use std::{fs, path::Path};

use serde::Serialize;

use crate::{
    btf_offsets::VMLINUX_BTF,
    event::AttachMode,
    tracer::{AttachRequest, TRACEFS, Tracer, TracerOptions},
};

/// `CAP_SYS_ADMIN`.
const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_PERFMON`.
const CAP_PERFMON: u32 = 38;
/// `CAP_BPF`.
const CAP_BPF: u32 = 39;

/// Why iostall cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The capabilities eBPF tracing needs are not all in the effective set (named,
    /// so that a container's missing one is obvious: inside one, uid 0 is not enough).
    #[error(
        "missing capability {}: iostall needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) \
         to load and attach its eBPF programs, plus CAP_SYS_RESOURCE on kernels before \
         5.11; run it as root with sudo, or in a container add BPF and PERFMON \
         (securityContext.capabilities.add)",
        .missing.join(" and ")
    )]
    Privileges {
        /// The missing capabilities, `CAP_BPF`, `CAP_PERFMON` or both.
        missing: Vec<&'static str>,
    },
    /// The kernel has no BTF.
    #[error(
        "the kernel exposes no BTF at {VMLINUX_BTF} (it needs CONFIG_DEBUG_INFO_BTF=y); \
         iostall reads kernel structures at offsets taken from it"
    )]
    NoBtf,
}

/// Effective capability bits of this process.
fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn has_cap(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

/// The capabilities missing from `caps` (an effective set) to load and attach tracing
/// programs: none with CAP_SYS_ADMIN, else those of CAP_BPF and CAP_PERFMON not held.
#[must_use]
pub fn missing_caps(caps: u64) -> Vec<&'static str> {
    if has_cap(caps, CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has_cap(caps, *cap))
        .map(|(_, name)| name)
        .collect()
}

/// Whether this process may load and attach tracing programs.
#[must_use]
pub fn privileged() -> bool {
    missing_caps(effective_caps()).is_empty()
}

/// Checks privileges and BTF; the errors say what to do.
pub fn check() -> Result<(), PreflightError> {
    let missing = missing_caps(effective_caps());
    if !missing.is_empty() {
        return Err(PreflightError::Privileges { missing });
    }
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(PreflightError::NoBtf);
    }
    Ok(())
}

/// One line of the probe report.
#[derive(Debug, Clone, Serialize)]
pub struct Capability {
    /// What was checked.
    pub name: String,
    /// Whether it is there.
    pub ok: bool,
    /// Why not, or where.
    pub detail: String,
}

/// What `iostall probe` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// `uname -r`.
    pub kernel_release: String,
    /// Each check.
    pub capabilities: Vec<Capability>,
    /// The mode `--attach auto` would use.
    pub auto_mode: Option<AttachMode>,
}

fn mounted(path: &str, fstype: &str) -> bool {
    fs::read_to_string("/proc/self/mountinfo").is_ok_and(|text| {
        text.lines().any(|l| {
            let mut halves = l.split(" - ");
            let left: Vec<&str> = halves.next().unwrap_or("").split(' ').collect();
            let right = halves.next().unwrap_or("");
            left.get(4) == Some(&path) && right.split(' ').next() == Some(fstype)
        })
    })
}

/// The running kernel's release string.
#[must_use]
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Checks everything, trying each attach mode for real (attach, then detach).
#[must_use]
pub fn probe() -> ProbeReport {
    let mut caps = Vec::new();
    let mut add = |name: &str, ok: bool, detail: String| {
        caps.push(Capability {
            name: name.into(),
            ok,
            detail,
        });
    };
    let missing = missing_caps(effective_caps());
    add(
        "privileges",
        missing.is_empty(),
        if missing.is_empty() {
            "root or CAP_BPF+CAP_PERFMON".into()
        } else {
            PreflightError::Privileges { missing }.to_string()
        },
    );
    let btf = Path::new(VMLINUX_BTF).exists();
    add(
        "btf",
        btf,
        if btf {
            VMLINUX_BTF.into()
        } else {
            PreflightError::NoBtf.to_string()
        },
    );
    let tracefs = Path::new(TRACEFS).join("events").is_dir();
    add(
        "tracefs",
        tracefs,
        if tracefs {
            format!("mounted at {TRACEFS}")
        } else {
            format!(
                "not mounted; iostall mounts it when attaching (or: mount -t tracefs tracefs {TRACEFS})"
            )
        },
    );
    let bpffs = mounted("/sys/fs/bpf", "bpf");
    add(
        "bpffs",
        bpffs,
        if bpffs {
            "mounted at /sys/fs/bpf".into()
        } else {
            "not mounted (not needed by iostall; mount -t bpf bpf /sys/fs/bpf to pin maps)".into()
        },
    );

    let mut auto_mode = None;
    match Tracer::load(&TracerOptions::default()) {
        Err(e) => add("ring buffer", false, format!("object did not load: {e}")),
        Ok(_) => {
            add("ring buffer", true, "BPF_MAP_TYPE_RINGBUF created".into());
            for mode in AttachMode::ALL {
                let request = match mode {
                    AttachMode::Fentry => AttachRequest::Fentry,
                    AttachMode::Kprobe => AttachRequest::Kprobe,
                    AttachMode::Tracepoint => AttachRequest::Tracepoint,
                };
                let result = Tracer::load(&TracerOptions::default())
                    .and_then(|mut t| t.attach(request).map(|(m, _)| m));
                let name = format!("attach mode {mode}");
                match result {
                    Ok(_) => {
                        auto_mode.get_or_insert(mode);
                        add(&name, true, "loads and attaches".into());
                    }
                    Err(e) => add(&name, false, e.to_string()),
                }
            }
            // Lifecycle signals (cgroup, exec/exit, OOM) attach beside any mode.
            match Tracer::load(&TracerOptions::default()).map(|mut t| t.attach_lifecycle()) {
                Ok(refused) if refused.is_empty() => add(
                    "lifecycle signals",
                    true,
                    "cgroup mkdir/rmdir, exec/exit, OOM kill tracepoints attach".into(),
                ),
                Ok(refused) => add("lifecycle signals", false, refused.join("; ")),
                Err(e) => add("lifecycle signals", false, e.to_string()),
            }
        }
    }
    // What iostall would not see on this node: roots off ext4/xfs/btrfs, and tracepoint mode's
    // blind spots when that is the mode it would use.
    let roots = crate::coverage::check_node(crate::event::FsSet::default());
    if roots.is_empty() {
        add(
            "runtime directories",
            true,
            "none of the known runtime or kubelet directories is present on this node".into(),
        );
    }
    for root in &roots {
        add(&format!("fs {}", root.root), root.seen(), root.message());
    }
    if auto_mode == Some(AttachMode::Tracepoint) {
        add(
            "tracepoint blind spots",
            false,
            format!("never timed: {}", crate::coverage::TRACEPOINT_BLIND_SPOTS),
        );
    }
    // Which cloud signal of disk throttling this node has.
    let (ebs, detail) =
        crate::ebs_nvme::probe_detail(&crate::ebs_nvme::find_volumes(Path::new("/sys/block")));
    add("cloud throttle counters", ebs, detail);
    ProbeReport {
        kernel_release: kernel_release(),
        capabilities: caps,
        auto_mode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_missing_capability_is_named() {
        let bit = |cap: u32| 1u64 << cap;
        assert!(missing_caps(bit(CAP_SYS_ADMIN)).is_empty());
        assert!(missing_caps(bit(CAP_BPF) | bit(CAP_PERFMON)).is_empty());
        assert_eq!(missing_caps(bit(CAP_BPF)), ["CAP_PERFMON"]);
        assert_eq!(missing_caps(bit(CAP_PERFMON)), ["CAP_BPF"]);
        assert_eq!(missing_caps(0), ["CAP_BPF", "CAP_PERFMON"]);
        let text = PreflightError::Privileges {
            missing: missing_caps(bit(CAP_BPF)),
        }
        .to_string();
        assert!(
            text.starts_with("missing capability CAP_PERFMON:"),
            "{text}"
        );
    }
}
