//! A container root filesystem made of Debian's busybox-static: one static binary, a symlink
//! per applet, and the directories runc mounts over.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where busybox-static puts its binary (usrmerge: /bin is /usr/bin).
const BUSYBOX_CANDIDATES: &[&str] = &["/usr/bin/busybox", "/bin/busybox"];

/// The host's busybox, checked to be statically linked (the rootfs has no libraries).
pub fn host_busybox() -> PathBuf {
    if let Some(p) = std::env::var_os("TETHER_TEST_BUSYBOX").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let found = BUSYBOX_CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("busybox not found: install Debian's busybox-static (apt-get install busybox-static)")
    });
    assert!(
        is_static_elf(&found),
        "{} is dynamically linked: the test rootfs needs busybox-static (apt-get install busybox-static)",
        found.display()
    );
    found
}

/// An ELF file without a PT_INTERP program header (64-bit little-endian hosts).
fn is_static_elf(p: &Path) -> bool {
    let Ok(data) = fs::read(p) else { return false };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return true; // not something we can judge: let it through
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
    let phoff = u64_at(0x20);
    let phentsize = u16_at(0x36);
    let phnum = u16_at(0x38);
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        if off + 4 > data.len() {
            break;
        }
        let p_type = u32::from_le_bytes(data[off..off + 4].try_into().unwrap());
        if p_type == 3 {
            return false; // PT_INTERP
        }
    }
    true
}

/// The applets the host's busybox provides (`busybox --list`), without `busybox` itself.
pub fn applets(busybox: &Path) -> Vec<String> {
    let out =
        Command::new(busybox).arg("--list").output().unwrap_or_else(|e| panic!("{} --list: {e}", busybox.display()));
    assert!(out.status.success(), "{} --list failed", busybox.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(str::to_owned)
        .collect()
}

/// Builds a busybox rootfs at `dir` (created) and returns `dir`.
///
/// Layout: /bin/busybox (a copy), /bin/APPLET → busybox for every applet, empty /proc /dev
/// /sys /tmp /run /root, /etc/passwd and /etc/group with root, /etc/hostname.
pub fn build(dir: &Path) -> PathBuf {
    let busybox = host_busybox();
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("create rootfs/bin");
    for d in ["proc", "dev", "sys", "tmp", "run", "root", "etc", "sbin", "usr/bin", "var"] {
        fs::create_dir_all(dir.join(d)).expect("create rootfs dir");
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod /tmp");
    let target = bin.join("busybox");
    fs::copy(&busybox, &target).expect("copy busybox into the rootfs");
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).expect("chmod busybox");
    for applet in applets(&busybox) {
        let link = bin.join(&applet);
        if link.symlink_metadata().is_err() {
            symlink("busybox", &link).expect("applet symlink");
        }
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        .expect("write /etc/passwd");
    fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("write /etc/group");
    fs::write(dir.join("etc/hostname"), "tether-test\n").expect("write /etc/hostname");
    dir.to_path_buf()
}
