//! What this node is called and runs: read once by config, correlate and the Resource.

/// The node's host name (`/proc/sys/kernel/hostname`, else `uname`).
#[must_use]
pub fn host_name() -> String {
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let name = name.trim();
        if !name.is_empty() {
            return name.to_owned();
        }
    }
    uname_field(|u| &u.nodename)
}

/// The kernel release (`uname -r`).
#[must_use]
pub fn kernel_release() -> String {
    uname_field(|u| &u.release)
}

fn uname_field(pick: impl Fn(&libc::utsname) -> &[libc::c_char; 65]) -> String {
    // SAFETY: zeroed utsname is a valid out value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to an initialised value.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    let field = pick(&u);
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
