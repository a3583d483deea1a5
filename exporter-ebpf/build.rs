//! Rebuild the eBPF object when bpf-linker changes (aya-template does the same).
use which::which;

fn main() {
    // A missing bpf-linker shows up as a link error from cargo; point at the fix here.
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found on PATH: run scripts/setup.sh"),
    }
}
