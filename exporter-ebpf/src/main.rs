//! iostall's eBPF programs. Three families measure the same four operations (read,
//! write, open, fsync) on ext4, xfs and btrfs, and userspace attaches exactly one family:
//! - `fentry`: fentry/fexit on the filesystems' file operations (cheapest, needs BTF
//!   trampolines);
//! - `kprobe`: kprobe/kretprobe on the same functions;
//! - `tracepoint`: syscall tracepoints filtered by super block magic, plus raw
//!   tracepoints on `ext4_sync_file_enter/exit` for ext4's fsync.
//!
//! Every family keeps only the filesystems of `--fs` (`LoadConfig::fs_mask`), in the
//! kernel.
//!
//! Beside them, `lifecycle` reports container lifecycle from the kernel's side (cgroup
//! mkdir/rmdir, exec/exit in container cgroups and of runtime daemons, OOM kills) on
//! plain tracepoints, attached in every mode; `journal` reports jbd2 commits the same
//! way, into the IO ring.
//!
//! All three share one in-flight protocol (`inflight`) and one emitter (`emit`), so an
//! event looks the same whichever family produced it.
// Built for the bpf target by exporter/build.rs; on the host (clippy, `--workspace`
// builds) it compiles as an ordinary, empty program.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod emit;
mod fentry;
mod inflight;
mod journal;
mod kernel;
mod kprobe;
mod lifecycle;
mod maps;
mod syscalls;
mod tracepoint;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; nothing can actually panic.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
