//! Kernel structure field offsets from the running kernel's BTF, so the eBPF programs
//! read `struct file`, `dentry`, `task_struct`… at this kernel's offsets, not at offsets
//! frozen when iostall was built.
use std::path::Path;

use btf_rs::{Btf, Type};
use exporter_common::KernelOffsets;

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Where the overlay module's BTF (split on vmlinux's) is, when overlayfs is a module
/// and loaded.
pub const OVERLAY_MODULE_BTF: &str = "/sys/kernel/btf/overlay";

/// Errors while resolving offsets.
#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    /// The kernel has no BTF file (built without `CONFIG_DEBUG_INFO_BTF`).
    #[error(
        "the kernel exposes no BTF at {VMLINUX_BTF} (it needs CONFIG_DEBUG_INFO_BTF=y); \
         iostall reads kernel structures at offsets taken from it"
    )]
    NoBtf,
    /// The BTF file could not be parsed.
    #[error("failed to parse kernel BTF at {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's error.
        #[source]
        source: btf_rs::Error,
    },
    /// A structure or member this mode needs is not in the kernel's BTF.
    #[error("kernel BTF has no {0}; this kernel's layout is not supported")]
    Missing(String),
}

/// Loads the running kernel's BTF.
pub fn load_kernel_btf() -> Result<Btf, OffsetError> {
    load_btf(Path::new(VMLINUX_BTF))
}

fn load_btf(path: &Path) -> Result<Btf, OffsetError> {
    if !path.exists() {
        return Err(OffsetError::NoBtf);
    }
    Btf::from_file(path).map_err(|source| OffsetError::Parse {
        path: path.display().to_string(),
        source,
    })
}

/// The BTF id of the kernel function `name`, if the BTF has it.
#[must_use]
pub fn function_id(btf: &Btf, name: &str) -> Option<u32> {
    btf.resolve_ids_by_name(name)
        .ok()?
        .into_iter()
        .find(|id| matches!(btf.resolve_type_by_id(*id), Ok(btf_rs::Type::Func(_))))
}

/// Resolves every offset iostall uses. Offsets that every mode needs are required; the
/// others (`f_pos`, mount namespace, `kiocb`, overlayfs's) become
/// [`KernelOffsets::UNKNOWN`] when absent and the kernel side then leaves the matching
/// field empty (or, for overlayfs, does not follow its files).
pub fn resolve(btf: &Btf) -> Result<KernelOffsets, OffsetError> {
    let required = |s: &str, path: &[&str]| member_offset(btf, s, path);
    let optional =
        |s: &str, path: &[&str]| member_offset(btf, s, path).unwrap_or(KernelOffsets::UNKNOWN);
    let overlay = overlay_layout(btf, Path::new(OVERLAY_MODULE_BTF));
    Ok(KernelOffsets {
        task_files: required("task_struct", &["files"])?,
        files_fdt: required("files_struct", &["fdt"])?,
        fdt_fd: required("fdtable", &["fd"])?,
        fdt_max_fds: required("fdtable", &["max_fds"])?,
        file_inode: required("file", &["f_inode"])?,
        file_dentry: required("file", &["f_path", "dentry"])?,
        file_pos: optional("file", &["f_pos"]),
        inode_sb: required("inode", &["i_sb"])?,
        inode_ino: optional("inode", &["i_ino"]),
        sb_magic: required("super_block", &["s_magic"])?,
        sb_dev: optional("super_block", &["s_dev"]),
        dentry_name: required("dentry", &["d_name", "name"])?,
        dentry_parent: required("dentry", &["d_parent"])?,
        task_nsproxy: optional("task_struct", &["nsproxy"]),
        nsproxy_mnt_ns: optional("nsproxy", &["mnt_ns"]),
        mnt_ns_inum: optional("mnt_namespace", &["ns", "inum"]),
        kiocb_filp: optional("kiocb", &["ki_filp"]),
        kiocb_pos: optional("kiocb", &["ki_pos"]),
        task_exit_code: optional("task_struct", &["exit_code"]),
        inode_mode: optional("inode", &["i_mode"]),
        file_private_data: overlay.private_data,
        ovl_file_realfile: overlay.realfile,
        ovl_file_upperfile: overlay.upperfile,
        dentry_sb: optional("dentry", &["d_sb"]),
    })
}

/// How an open overlayfs regular file leads to its real file: offsets of
/// `file.private_data`, then of `ovl_file.realfile` and `.upperfile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayLayout {
    /// `file.private_data`; unknown when overlayfs's layout could not be told (then
    /// overlay files are not followed).
    pub private_data: u32,
    /// `ovl_file.realfile`; unknown where `private_data` is the real file itself.
    pub realfile: u32,
    /// `ovl_file.upperfile`; unknown where the kernel has none.
    pub upperfile: u32,
}

impl OverlayLayout {
    /// Overlay files are not followed.
    pub const UNKNOWN: Self = Self {
        private_data: KernelOffsets::UNKNOWN,
        realfile: KernelOffsets::UNKNOWN,
        upperfile: KernelOffsets::UNKNOWN,
    };
}

/// Tells overlayfs's layout from BTF: from 6.13 an overlay file's `private_data` is a
/// `struct ovl_file` holding the real file; from 4.19 to 6.12 it is the real file
/// itself. Overlayfs built as a module has its types in `module_btf` (split on
/// vmlinux's), present once the module is loaded; without either, the layout is unknown
/// and overlay files are left alone rather than read wrongly.
pub fn overlay_layout(vmlinux: &Btf, module_btf: &Path) -> OverlayLayout {
    let Ok(private_data) = member_offset(vmlinux, "file", &["private_data"]) else {
        return OverlayLayout::UNKNOWN;
    };
    let from = |btf: &Btf| -> Option<OverlayLayout> {
        if let Ok(realfile) = member_offset(btf, "ovl_file", &["realfile"]) {
            return Some(OverlayLayout {
                private_data,
                realfile,
                upperfile: member_offset(btf, "ovl_file", &["upperfile"])
                    .unwrap_or(KernelOffsets::UNKNOWN),
            });
        }
        // Overlayfs is here but has no `struct ovl_file`: the older layout.
        struct_by_name(btf, "ovl_fs").map(|_| OverlayLayout {
            private_data,
            ..OverlayLayout::UNKNOWN
        })
    };
    if let Some(layout) = from(vmlinux) {
        return layout;
    }
    if module_btf.exists()
        && let Ok(module) = Btf::from_split_file(module_btf, vmlinux)
        && let Some(layout) = from(&module)
    {
        return layout;
    }
    OverlayLayout::UNKNOWN
}

/// Checks that `struct pt_regs` has the x86-64 layout the generic syscall programs read
/// arguments at (`r10`, `dx`, `si`, `di`, `orig_ax`, `cs`); anything else keeps the
/// per-syscall tracepoints.
pub fn check_syscall_regs(btf: &Btf) -> Result<(), String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("not x86-64".into());
    }
    for (name, want) in [
        ("r10", 56),
        ("dx", 96),
        ("si", 104),
        ("di", 112),
        ("orig_ax", 120),
        ("cs", 136),
    ] {
        let got = member_offset(btf, "pt_regs", &[name]).map_err(|e| e.to_string())?;
        if got != want {
            return Err(format!("pt_regs.{name} at {got}, expected {want}"));
        }
    }
    Ok(())
}

/// Byte offset of `path` (a chain of member names, each inside the previous member's
/// struct) inside `struct struct_name`.
pub fn member_offset(btf: &Btf, struct_name: &str, path: &[&str]) -> Result<u32, OffsetError> {
    let missing = || OffsetError::Missing(format!("struct {struct_name}.{}", path.join(".")));
    let mut current = struct_by_name(btf, struct_name).ok_or_else(missing)?;
    let mut offset_bits = 0u32;
    for (i, name) in path.iter().enumerate() {
        let (bits, member_type) = find_member(btf, &current, name).ok_or_else(missing)?;
        offset_bits += bits;
        if i + 1 < path.len() {
            current = resolve_struct(btf, member_type).ok_or_else(missing)?;
        }
    }
    if !offset_bits.is_multiple_of(8) {
        return Err(missing());
    }
    Ok(offset_bits / 8)
}

fn struct_by_name(btf: &Btf, name: &str) -> Option<btf_rs::Struct> {
    btf.resolve_types_by_name(name)
        .ok()?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
}

/// Follows typedefs and qualifiers to a struct or union.
fn resolve_struct(btf: &Btf, mut ty: Type) -> Option<btf_rs::Struct> {
    for _ in 0..16 {
        ty = match ty {
            Type::Struct(s) | Type::Union(s) => return Some(s),
            Type::Typedef(t) => btf.resolve_chained_type(&t).ok()?,
            Type::Const(t) => btf.resolve_chained_type(&t).ok()?,
            Type::Volatile(t) => btf.resolve_chained_type(&t).ok()?,
            Type::Restrict(t) => btf.resolve_chained_type(&t).ok()?,
            Type::TypeTag(t) => btf.resolve_chained_type(&t).ok()?,
            _ => return None,
        };
    }
    None
}

/// Finds `name` in `s`, looking inside anonymous struct/union members too. Returns the
/// bit offset from the start of `s` and the member's type.
fn find_member(btf: &Btf, s: &btf_rs::Struct, name: &str) -> Option<(u32, Type)> {
    for member in &s.members {
        let member_name = btf.resolve_name(member).unwrap_or_default();
        if member_name == name {
            return Some((member.bit_offset(), btf.resolve_chained_type(member).ok()?));
        }
        if member_name.is_empty() {
            let inner_ty = btf.resolve_chained_type(member).ok()?;
            if let Some(inner) = resolve_struct(btf, inner_ty)
                && let Some((bits, ty)) = find_member(btf, &inner, name)
            {
                return Some((member.bit_offset() + bits, ty));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the real kernel's BTF: every required offset resolves, inside its struct.
    #[test]
    fn resolves_this_kernels_offsets() {
        let btf = load_kernel_btf().expect("this machine's kernel has BTF");
        let offsets = resolve(&btf).expect("offsets resolve");
        assert_ne!(offsets.file_pos, KernelOffsets::UNKNOWN);
        assert_ne!(offsets.kiocb_filp, KernelOffsets::UNKNOWN);
        // `qstr.name` sits after the 8-byte hash/len union, so d_name.name > d_name.
        let d_name = member_offset(&btf, "dentry", &["d_name"]).expect("d_name");
        assert_eq!(offsets.dentry_name, d_name + 8);
        // f_path.dentry is the second pointer of struct path (after mnt).
        let f_path = member_offset(&btf, "file", &["f_path"]).expect("f_path");
        assert_eq!(offsets.file_dentry, f_path + 8);
        assert_eq!(offsets.kiocb_filp, 0, "ki_filp is kiocb's first member");
        // exit_code sits right before exit_signal (both int) in task_struct.
        let exit_signal = member_offset(&btf, "task_struct", &["exit_signal"]).expect("signal");
        assert_eq!(offsets.task_exit_code + 4, exit_signal);
    }

    /// This 6.18 kernel has overlayfs built in, with `struct ovl_file { realfile;
    /// upperfile; }` behind an overlay file's `private_data`.
    #[test]
    fn this_kernels_overlay_layout_is_ovl_file() {
        let btf = load_kernel_btf().expect("this machine's kernel has BTF");
        let layout = overlay_layout(&btf, Path::new("/nonexistent"));
        let private = member_offset(&btf, "file", &["private_data"]).expect("private_data");
        assert_eq!(
            layout,
            OverlayLayout {
                private_data: private,
                realfile: 0,
                upperfile: 8,
            }
        );
        let offsets = resolve(&btf).expect("offsets resolve");
        assert_eq!(offsets.file_private_data, private);
        assert_ne!(offsets.dentry_sb, KernelOffsets::UNKNOWN);
    }

    #[test]
    fn this_kernels_pt_regs_suit_the_generic_syscall_programs() {
        let btf = load_kernel_btf().expect("this machine's kernel has BTF");
        assert_eq!(check_syscall_regs(&btf), Ok(()));
    }

    #[test]
    fn missing_member_names_the_struct_and_path() {
        let btf = load_kernel_btf().expect("this machine's kernel has BTF");
        let err = member_offset(&btf, "dentry", &["no_such_member"]).expect_err("missing");
        assert!(
            err.to_string().contains("struct dentry.no_such_member"),
            "{err}"
        );
    }
}
