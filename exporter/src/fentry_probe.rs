//! Whether the kernel takes tracing (fentry) programs at all, asked before the kernel's
//! BTF is parsed for them: aya's parse is iostall's largest allocation (~25 MiB), and on
//! kernels that refuse tracing programs (a lockdown or LSM answers `EPERM`) it was paid
//! at every start for nothing.
//!
//! The question is a real `BPF_PROG_LOAD` of the smallest fentry program (`r0 = 0;
//! exit`) on one of iostall's own targets, its BTF id taken from the offsets' parse.

/// `BPF_PROG_LOAD`.
const BPF_PROG_LOAD: libc::c_long = 5;
/// `BPF_PROG_TYPE_TRACING`.
const BPF_PROG_TYPE_TRACING: u32 = 26;
/// `BPF_TRACE_FENTRY`.
const BPF_TRACE_FENTRY: u32 = 24;

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`, up to
/// `attach_prog_fd` (offsets as in `linux/bpf.h`; the kernel takes a shorter attr).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_prog_fd: u32,
    _pad: u32,
}

const _: () = assert!(std::mem::offset_of!(ProgLoadAttr, attach_btf_id) == 108);

/// `Some(error)` when the kernel refuses a minimal fentry program on the function of
/// BTF id `attach_btf_id` with `EPERM`; `None` when it loads, or fails otherwise (then
/// the real load says why).
#[must_use]
pub fn refused(attach_btf_id: u32) -> Option<std::io::Error> {
    // mov r0, 0; exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_TRACING,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_TRACE_FENTRY,
        attach_btf_id,
        ..ProgLoadAttr::default()
    };
    // SAFETY: `attr` and what it points to outlive the call; the size is the struct's.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>() as libc::c_uint,
        )
    };
    if fd >= 0 {
        // SAFETY: a descriptor the kernel just gave us, closed once.
        unsafe { libc::close(fd as libc::c_int) };
        return None;
    }
    let error = std::io::Error::last_os_error();
    (error.raw_os_error() == Some(libc::EPERM)).then_some(error)
}
