//! The EBS volumes on this node, and reading their log page 0xD0.
use std::path::{Path, PathBuf};

use super::{EbsError, LOG_PAGE_ID, LOG_PAGE_LEN};

/// `/sys/block/<nvme>/device/model` of an EBS volume.
pub const MODEL: &str = "Amazon Elastic Block Store";

/// `struct nvme_passthru_cmd` of `<linux/nvme_ioctl.h>` (72 bytes).
#[repr(C)]
#[derive(Debug, Default)]
struct NvmePassthruCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

/// `NVME_IOCTL_ADMIN_CMD`: `_IOWR('N', 0x41, struct nvme_admin_cmd)`.
const NVME_IOCTL_ADMIN_CMD: u32 = 0xC048_4E41;
// The kernel's struct is 72 bytes, and the ioctl number encodes that size.
const _: () = assert!(std::mem::size_of::<NvmePassthruCmd>() == 72);
const _: () = assert!(
    NVME_IOCTL_ADMIN_CMD
        == (3 << 30) | ((std::mem::size_of::<NvmePassthruCmd>() as u32) << 16) | (0x4E << 8) | 0x41
);
/// NVMe admin opcode Get Log Page.
const NVME_ADMIN_GET_LOG_PAGE: u8 = 0x02;

/// Reads log page 0xD0 of the namespace `device` (`/dev/nvme0n1`), as `ebsnvme stats`
/// and `nvme amzn stats` do: admin Get Log Page, namespace 1, 4096 bytes.
///
/// Not exercised by any test: no machine here has an EBS volume (the parser is tested
/// on bytes built to the layout; this function only fills the buffer). Call it only on
/// a device [`find_volumes`] found, whose model is EBS's: other controllers may take
/// vendor log page 0xD0 to mean something else.
pub fn read_log_page(device: &Path) -> Result<Vec<u8>, EbsError> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(device).map_err(|source| EbsError::Open {
        path: device.to_owned(),
        source,
    })?;
    let mut page = vec![0u8; LOG_PAGE_LEN];
    let mut cmd = NvmePassthruCmd {
        opcode: NVME_ADMIN_GET_LOG_PAGE,
        nsid: 1,
        addr: page.as_mut_ptr() as u64,
        data_len: LOG_PAGE_LEN as u32,
        // Log page id, and the number of dwords minus one (NUMDL).
        cdw10: u32::from(LOG_PAGE_ID) | (((LOG_PAGE_LEN / 4 - 1) as u32) << 16),
        ..NvmePassthruCmd::default()
    };
    // SAFETY: `cmd` is a valid nvme_passthru_cmd whose `addr` points at `page`, which is
    // `data_len` bytes long and outlives the call; the kernel writes at most that.
    let status = unsafe { libc::ioctl(file.as_raw_fd(), NVME_IOCTL_ADMIN_CMD as _, &raw mut cmd) };
    match status {
        0 => Ok(page),
        s if s < 0 => Err(EbsError::Ioctl {
            path: device.to_owned(),
            source: std::io::Error::last_os_error(),
        }),
        status => Err(EbsError::Status {
            path: device.to_owned(),
            status,
        }),
    }
}

/// One EBS volume on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbsVolume {
    /// `nvme0n1`.
    pub name: String,
    /// `/dev/nvme0n1`.
    pub path: PathBuf,
    /// Its `major:minor`.
    pub device: (u32, u32),
    /// `vol-…` (the controller's serial, `vol0123…` on the wire), when readable.
    pub volume_id: Option<String>,
    /// The devices of its partitions (a filesystem on `nvme0n1p1` is on this volume).
    pub partitions: Vec<(u32, u32)>,
}

fn dev_numbers(path: &Path) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (a, b) = text.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The EBS volumes under `sys_block` (`/sys/block`): NVMe namespaces whose controller's
/// model is [`MODEL`]. Nothing (no error) where there is none: on other clouds and on
/// bare metal this is the common case.
#[must_use]
pub fn find_volumes(sys_block: &Path) -> Vec<EbsVolume> {
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut out: Vec<EbsVolume> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            if !name.starts_with("nvme") {
                return None;
            }
            let dir = e.path();
            let model = std::fs::read_to_string(dir.join("device/model")).ok()?;
            if model.trim() != MODEL {
                return None;
            }
            let volume_id = std::fs::read_to_string(dir.join("device/serial"))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .map(|s| match s.strip_prefix("vol") {
                    Some(rest) if !rest.starts_with('-') => format!("vol-{rest}"),
                    _ => s,
                });
            let partitions = std::fs::read_dir(&dir)
                .map(|d| {
                    d.flatten()
                        .filter(|p| {
                            p.file_name()
                                .to_str()
                                .is_some_and(|n| n.starts_with(&name) && n != name)
                        })
                        .filter_map(|p| dev_numbers(&p.path().join("dev")))
                        .collect()
                })
                .unwrap_or_default();
            Some(EbsVolume {
                path: Path::new("/dev").join(&name),
                device: dev_numbers(&dir.join("dev"))?,
                name,
                volume_id,
                partitions,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// What `iostall probe` says of the cloud's own throttling counters on this node:
/// whether there is any, and which.
#[must_use]
pub fn probe_detail(volumes: &[EbsVolume]) -> (bool, String) {
    if volumes.is_empty() {
        return (
            false,
            "none: no AWS EBS NVMe volume (log page 0xD0); elsewhere the disk's throttling \
             is inferred from its IOPS and latency (Azure exposes no in-guest counter; GCP \
             unverified)"
                .into(),
        );
    }
    let names: Vec<String> = volumes
        .iter()
        .map(|v| match &v.volume_id {
            Some(id) => format!("{} ({id})", v.name),
            None => v.name.clone(),
        })
        .collect();
    (
        true,
        format!(
            "AWS EBS NVMe log page 0xD0 on {}: time over the volume's and the instance's \
             IOPS and throughput limits",
            names.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ebs_namespaces_and_their_partitions_in_sysfs() {
        let root = tempfile::tempdir().expect("tempdir");
        let mk = |path: &str, text: &str| {
            let p = root.path().join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        };
        mk(
            "nvme0n1/device/model",
            "Amazon Elastic Block Store              \n",
        );
        mk("nvme0n1/device/serial", "vol0123456789abcdef0\n");
        mk("nvme0n1/dev", "259:0\n");
        mk("nvme0n1/nvme0n1p1/dev", "259:1\n");
        mk("nvme0n1/nvme0n1p128/dev", "259:2\n");
        mk("nvme1n1/device/model", "Amazon EC2 NVMe Instance Storage\n");
        mk("nvme1n1/dev", "259:3\n");
        mk("sda/device/model", "Amazon Elastic Block Store\n");
        mk("sda/dev", "8:0\n");
        let found = find_volumes(root.path());
        assert_eq!(found.len(), 1, "{found:?}");
        let v = &found[0];
        assert_eq!(v.name, "nvme0n1");
        assert_eq!(v.path, Path::new("/dev/nvme0n1"));
        assert_eq!(v.device, (259, 0));
        assert_eq!(v.volume_id.as_deref(), Some("vol-0123456789abcdef0"));
        let mut parts = v.partitions.clone();
        parts.sort_unstable();
        assert_eq!(parts, [(259, 1), (259, 2)]);
        assert!(find_volumes(&root.path().join("absent")).is_empty());
    }
}
