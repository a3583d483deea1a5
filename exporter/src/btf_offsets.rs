//! Kernel structure field offsets from the running kernel's BTF, so the eBPF programs
//! read `struct file`, `dentry`, `task_struct`… at this kernel's offsets, not at offsets
//! frozen when iostall was built.
//!
//! The BTF is read with [`BtfLookup`], which keeps only the names below: a full parse of
//! the kernel's 5.5 MB BTF was iostall's start-up memory peak.
use std::path::Path;

use exporter_common::KernelOffsets;

use crate::btf_lookup::{BtfError, BtfLookup};

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Where the overlay module's BTF (split on vmlinux's) is, when overlayfs is a module
/// and loaded.
pub const OVERLAY_MODULE_BTF: &str = "/sys/kernel/btf/overlay";

/// Every struct and member name [`resolve`], [`overlay_layout`] and
/// [`check_syscall_regs`] look up: the reader keeps only these.
pub const NAMES: &[&str] = &[
    // structs
    "task_struct",
    "files_struct",
    "fdtable",
    "file",
    "inode",
    "super_block",
    "dentry",
    "nsproxy",
    "mnt_namespace",
    "kiocb",
    "pt_regs",
    "ovl_file",
    "ovl_fs",
    // members
    "files",
    "fdt",
    "fd",
    "max_fds",
    "f_inode",
    "f_path",
    "f_pos",
    "i_sb",
    "i_ino",
    "s_magic",
    "s_dev",
    "d_name",
    "name",
    "d_parent",
    "mnt_ns",
    "ns",
    "inum",
    "ki_filp",
    "ki_pos",
    "exit_code",
    "i_mode",
    "private_data",
    "realfile",
    "upperfile",
    "d_sb",
    "r10",
    "dx",
    "si",
    "di",
    "orig_ax",
    "cs",
];

/// Errors while resolving offsets.
#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    /// The kernel has no BTF file (built without `CONFIG_DEBUG_INFO_BTF`).
    #[error(
        "the kernel exposes no BTF at {VMLINUX_BTF} (it needs CONFIG_DEBUG_INFO_BTF=y); \
         iostall reads kernel structures at offsets taken from it"
    )]
    NoBtf,
    /// The BTF file could not be read or is malformed.
    #[error("failed to read kernel BTF: {0}")]
    Parse(#[from] BtfError),
    /// A structure or member this mode needs is not in the kernel's BTF.
    #[error("kernel BTF has no {0}; this kernel's layout is not supported")]
    Missing(String),
}

/// Opens the running kernel's BTF for [`NAMES`] and the functions `functions` (whose ids
/// [`function_id`] then tells).
pub fn load_kernel_btf<'a>(
    functions: impl IntoIterator<Item = &'a str>,
) -> Result<BtfLookup, OffsetError> {
    load_btf(Path::new(VMLINUX_BTF), functions)
}

fn load_btf<'a>(
    path: &Path,
    functions: impl IntoIterator<Item = &'a str>,
) -> Result<BtfLookup, OffsetError> {
    if !path.exists() {
        return Err(OffsetError::NoBtf);
    }
    Ok(BtfLookup::open(
        path,
        NAMES.iter().copied().chain(functions),
    )?)
}

/// The BTF id of the kernel function `name` (one given to [`load_kernel_btf`]), if the
/// BTF has it.
#[must_use]
pub fn function_id(btf: &BtfLookup, name: &str) -> Option<u32> {
    btf.function_id(name)
}

/// Resolves every offset iostall uses. Offsets that every mode needs are required; the
/// others (`f_pos`, mount namespace, `kiocb`, overlayfs's) become
/// [`KernelOffsets::UNKNOWN`] when absent and the kernel side then leaves the matching
/// field empty (or, for overlayfs, does not follow its files).
pub fn resolve(btf: &BtfLookup) -> Result<KernelOffsets, OffsetError> {
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
pub fn overlay_layout(vmlinux: &BtfLookup, module_btf: &Path) -> OverlayLayout {
    let Ok(private_data) = member_offset(vmlinux, "file", &["private_data"]) else {
        return OverlayLayout::UNKNOWN;
    };
    let from = |btf: &BtfLookup| -> Option<OverlayLayout> {
        if let Ok(realfile) = member_offset(btf, "ovl_file", &["realfile"]) {
            return Some(OverlayLayout {
                private_data,
                realfile,
                upperfile: member_offset(btf, "ovl_file", &["upperfile"])
                    .unwrap_or(KernelOffsets::UNKNOWN),
            });
        }
        // Overlayfs is here but has no `struct ovl_file`: the older layout.
        btf.has_struct("ovl_fs").then_some(OverlayLayout {
            private_data,
            ..OverlayLayout::UNKNOWN
        })
    };
    if let Some(layout) = from(vmlinux) {
        return layout;
    }
    if module_btf.exists()
        && let Ok(module) = BtfLookup::open_split(module_btf, vmlinux, NAMES.iter().copied())
        && let Some(layout) = from(&module)
    {
        return layout;
    }
    OverlayLayout::UNKNOWN
}

/// Checks that `struct pt_regs` has the x86-64 layout the generic syscall programs read
/// arguments at (`r10`, `dx`, `si`, `di`, `orig_ax`, `cs`); anything else keeps the
/// per-syscall tracepoints.
pub fn check_syscall_regs(btf: &BtfLookup) -> Result<(), String> {
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
pub fn member_offset(
    btf: &BtfLookup,
    struct_name: &str,
    path: &[&str],
) -> Result<u32, OffsetError> {
    let missing = || OffsetError::Missing(format!("struct {struct_name}.{}", path.join(".")));
    match btf.member_bit_offset(struct_name, path)? {
        Some(bits) if bits.is_multiple_of(8) => Ok(bits / 8),
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets as btf_rs's full parse gives them: the reference [`BtfLookup`] is
    /// compared with (the code iostall used before the targeted reader).
    mod reference {
        use btf_rs::{Btf, Type};

        pub fn member_offset(btf: &Btf, struct_name: &str, path: &[&str]) -> Option<u32> {
            let mut current = struct_by_name(btf, struct_name)?;
            let mut offset_bits = 0u32;
            for (i, name) in path.iter().enumerate() {
                let (bits, member_type) = find_member(btf, &current, name)?;
                offset_bits += bits;
                if i + 1 < path.len() {
                    current = resolve_struct(btf, member_type)?;
                }
            }
            offset_bits.is_multiple_of(8).then_some(offset_bits / 8)
        }

        pub fn function_id(btf: &Btf, name: &str) -> Option<u32> {
            btf.resolve_ids_by_name(name)
                .ok()?
                .into_iter()
                .find(|id| matches!(btf.resolve_type_by_id(*id), Ok(Type::Func(_))))
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
    }

    /// Every offset iostall resolves, plus members behind anonymous unions and nested
    /// structs, and the fentry targets' ids, are what btf_rs's full parse of the real
    /// kernel BTF says.
    #[test]
    fn targeted_reader_agrees_with_a_full_parse_of_this_kernels_btf() {
        let full = btf_rs::Btf::from_file(VMLINUX_BTF).expect("btf_rs parses vmlinux");
        let paths: &[(&str, &[&str])] = &[
            ("task_struct", &["files"]),
            ("files_struct", &["fdt"]),
            ("fdtable", &["fd"]),
            ("fdtable", &["max_fds"]),
            ("file", &["f_inode"]),
            ("file", &["f_path", "dentry"]),
            ("file", &["f_path", "mnt"]),
            ("file", &["f_pos"]),
            ("file", &["private_data"]),
            ("file", &["f_op"]),
            ("file", &["f_mode"]),
            ("inode", &["i_sb"]),
            ("inode", &["i_ino"]),
            ("inode", &["i_mode"]),
            ("inode", &["i_size"]),
            ("super_block", &["s_magic"]),
            ("super_block", &["s_dev"]),
            ("dentry", &["d_name", "name"]),
            ("dentry", &["d_name", "len"]),
            ("dentry", &["d_name"]),
            ("dentry", &["d_parent"]),
            ("dentry", &["d_sb"]),
            ("dentry", &["d_inode"]),
            ("task_struct", &["nsproxy"]),
            ("task_struct", &["exit_code"]),
            ("task_struct", &["exit_signal"]),
            ("task_struct", &["pid"]),
            ("task_struct", &["comm"]),
            ("nsproxy", &["mnt_ns"]),
            ("mnt_namespace", &["ns", "inum"]),
            ("kiocb", &["ki_filp"]),
            ("kiocb", &["ki_pos"]),
            ("pt_regs", &["r10"]),
            ("pt_regs", &["dx"]),
            ("pt_regs", &["si"]),
            ("pt_regs", &["di"]),
            ("pt_regs", &["orig_ax"]),
            ("pt_regs", &["cs"]),
            ("ovl_file", &["realfile"]),
            ("ovl_file", &["upperfile"]),
            ("sk_buff", &["len"]),
            ("sock", &["sk_rcvbuf"]),
        ];
        let functions = [
            "ext4_file_read_iter",
            "ext4_file_write_iter",
            "ext4_sync_file",
            "vfs_read",
            "do_sys_openat2",
            "xfs_file_fsync",
            "no_such_function_here",
        ];
        let extra: Vec<&str> = paths
            .iter()
            .flat_map(|(s, p)| std::iter::once(*s).chain(p.iter().copied()))
            .chain(functions)
            .collect();
        let btf = load_kernel_btf(extra.iter().copied()).expect("reads vmlinux");
        let mut compared = 0;
        for (s, path) in paths {
            let want = reference::member_offset(&full, s, path);
            let got = member_offset(&btf, s, path).ok();
            assert_eq!(got, want, "struct {s}.{}", path.join("."));
            compared += usize::from(want.is_some());
        }
        assert!(
            compared >= paths.len() - 2,
            "only {compared} offsets resolved at all"
        );
        for f in functions {
            assert_eq!(
                function_id(&btf, f),
                reference::function_id(&full, f),
                "{f}"
            );
        }
        assert!(function_id(&btf, "vfs_read").is_some());
        // The set iostall loads with.
        let ours = resolve(&btf).expect("resolves");
        let offset = |s: &str, p: &[&str]| {
            reference::member_offset(&full, s, p).unwrap_or(KernelOffsets::UNKNOWN)
        };
        assert_eq!(ours.file_dentry, offset("file", &["f_path", "dentry"]));
        assert_eq!(ours.mnt_ns_inum, offset("mnt_namespace", &["ns", "inum"]));
        assert_eq!(ours.dentry_name, offset("dentry", &["d_name", "name"]));
    }

    /// Reads the real kernel's BTF: every required offset resolves, inside its struct.
    #[test]
    fn resolves_this_kernels_offsets() {
        let btf = load_kernel_btf(["exit_signal"]).expect("this machine's kernel has BTF");
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
        let btf = load_kernel_btf([]).expect("this machine's kernel has BTF");
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
        let btf = load_kernel_btf([]).expect("this machine's kernel has BTF");
        assert_eq!(check_syscall_regs(&btf), Ok(()));
    }

    #[test]
    fn missing_member_names_the_struct_and_path() {
        let btf = load_kernel_btf([]).expect("this machine's kernel has BTF");
        let err = member_offset(&btf, "dentry", &["no_such_member"]).expect_err("missing");
        assert!(
            err.to_string().contains("struct dentry.no_such_member"),
            "{err}"
        );
    }
}
