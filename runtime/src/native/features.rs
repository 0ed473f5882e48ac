//! What the native executor can run, as the OCI runtime spec's Features document (the JSON
//! `runc features` prints): containerd 2.x asks a shim for it (`-info`) before it lets a pod
//! use, for instance, user namespaces or idmapped mounts.
//!
//! Each list states what this build of libcontainer does with a config, not what the spec
//! allows: the tests below hold the lists to libcontainer's own parsers where it has them.

use std::collections::HashMap;

use libcontainer::syscall::linux::MountOption;
use oci_spec::runtime::{
    Apparmor, Arch, Cgroup, Features, IDMap, IntelRdt, LinuxFeature, LinuxNamespaceType, LinuxSeccompAction,
    LinuxSeccompOperator, MountExtensions, Seccomp, Selinux,
};

/// Mount options libcontainer applies recursively with mount_setattr(2), beyond the
/// classic flags of [`MountOption::known_options`].
const RECURSIVE_MOUNT_OPTIONS: [&str; 18] = [
    "rro",
    "rrw",
    "rnosuid",
    "rsuid",
    "rnodev",
    "rdev",
    "rnoexec",
    "rexec",
    "rnodiratime",
    "rdiratime",
    "rrelatime",
    "rnorelatime",
    "rnoatime",
    "ratime",
    "rstrictatime",
    "rnostrictatime",
    "rnosymfollow",
    "rsymfollow",
];

/// The seccomp architectures a filter may name. libcontainer maps every architecture of the
/// spec, but LoongArch, m68k and SuperH need libseccomp 2.6, newer than the 2.5 line that
/// distributions of this shim's generation ship, so they are not promised.
const SECCOMP_ARCHS: [Arch; 17] = [
    Arch::ScmpArchX86,
    Arch::ScmpArchX86_64,
    Arch::ScmpArchX32,
    Arch::ScmpArchArm,
    Arch::ScmpArchAarch64,
    Arch::ScmpArchMips,
    Arch::ScmpArchMips64,
    Arch::ScmpArchMips64n32,
    Arch::ScmpArchMipsel,
    Arch::ScmpArchMipsel64,
    Arch::ScmpArchMipsel64n32,
    Arch::ScmpArchPpc,
    Arch::ScmpArchPpc64,
    Arch::ScmpArchPpc64le,
    Arch::ScmpArchS390,
    Arch::ScmpArchS390x,
    Arch::ScmpArchRiscv64,
];

/// The native executor's Features document. Guarantees: every hook, namespace, capability,
/// mount option, seccomp action, operator and architecture it lists is applied when a config
/// asks for it; what it marks disabled (SELinux process labels, systemd cgroups in this build,
/// idmapped mounts) is refused or ignored by libcontainer.
pub fn features() -> Features {
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut mount_options = MountOption::known_options();
    mount_options.extend(strings(&RECURSIVE_MOUNT_OPTIONS));
    mount_options.sort();

    let mut caps: Vec<caps::Capability> = caps::all().into_iter().collect();
    caps.sort_by_key(|c| c.index());

    let mut linux = LinuxFeature::default();
    linux.set_namespaces(Some(vec![
        LinuxNamespaceType::Cgroup,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::User,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Time,
    ]));
    linux.set_capabilities(Some(caps.iter().map(ToString::to_string).collect()));
    let mut cgroup = Cgroup::default();
    cgroup.set_v1(Some(true));
    cgroup.set_v2(Some(true));
    // libcgroups is built without its systemd feature (the workspace's Cargo.toml).
    cgroup.set_systemd(Some(false));
    cgroup.set_systemd_user(Some(false));
    linux.set_cgroup(Some(cgroup));
    let mut seccomp = Seccomp::default();
    seccomp.set_enabled(Some(true));
    seccomp.set_actions(Some(vec![
        LinuxSeccompAction::ScmpActAllow,
        LinuxSeccompAction::ScmpActErrno,
        LinuxSeccompAction::ScmpActKill,
        LinuxSeccompAction::ScmpActKillProcess,
        LinuxSeccompAction::ScmpActKillThread,
        LinuxSeccompAction::ScmpActLog,
        LinuxSeccompAction::ScmpActNotify,
        LinuxSeccompAction::ScmpActTrace,
        LinuxSeccompAction::ScmpActTrap,
    ]));
    seccomp.set_operators(Some(
        [
            LinuxSeccompOperator::ScmpCmpEq,
            LinuxSeccompOperator::ScmpCmpGe,
            LinuxSeccompOperator::ScmpCmpGt,
            LinuxSeccompOperator::ScmpCmpLe,
            LinuxSeccompOperator::ScmpCmpLt,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            LinuxSeccompOperator::ScmpCmpNe,
        ]
        .iter()
        .map(ToString::to_string)
        .collect(),
    ));
    seccomp.set_archs(Some(SECCOMP_ARCHS.to_vec()));
    linux.set_seccomp(Some(seccomp));
    let mut apparmor = Apparmor::default();
    apparmor.set_enabled(Some(true));
    linux.set_apparmor(Some(apparmor));
    // libcontainer labels mounts, but never sets a process's SELinux label.
    let mut selinux = Selinux::default();
    selinux.set_enabled(Some(false));
    linux.set_selinux(Some(selinux));
    let mut rdt = IntelRdt::default();
    rdt.set_enabled(Some(true));
    linux.set_intel_rdt(Some(rdt));
    // libcontainer 0.7 validates idmapped mounts and then refuses them all.
    let mut idmap = IDMap::default();
    idmap.set_enabled(Some(false));
    let mut extensions = MountExtensions::default();
    extensions.set_idmap(Some(idmap));
    linux.set_mount_extensions(Some(extensions));

    let mut features = Features::default();
    features.set_oci_version_min("1.0.0".to_string());
    features.set_oci_version_max(oci_spec::runtime::VERSION.to_string());
    features.set_hooks(Some(strings(&[
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ])));
    features.set_mount_options(Some(mount_options));
    features.set_linux(Some(linux));
    features.set_annotations(Some(HashMap::from([(
        "io.github.seccomp.libseccomp.version".to_string(),
        libseccomp_version(),
    )])));
    features
}

/// The version of the libseccomp this process loaded, as `runc features` reports it.
fn libseccomp_version() -> String {
    match libseccomp::ScmpVersion::current() {
        Ok(v) => format!("{}.{}.{}", v.major, v.minor, v.micro),
        Err(e) => format!("unknown ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use libcontainer::syscall::linux::MountRecursive;

    use super::*;

    #[test]
    fn every_mount_option_listed_is_one_libcontainer_parses() {
        let features = features();
        let options = features.mount_options().as_ref().expect("mount options");
        for option in options {
            let known = MountOption::from_str(option).is_ok() || MountRecursive::from_str(option).is_ok();
            assert!(known, "{option} is listed but libcontainer does not parse it");
        }
        assert!(options.contains(&"rbind".to_string()) && options.contains(&"rro".to_string()), "{options:?}");
        assert!(!options.contains(&"idmap".to_string()) && !options.contains(&"tmpcopyup".to_string()), "{options:?}");
    }

    #[test]
    fn the_document_is_the_specs_json() {
        let json = serde_json::to_value(features()).unwrap();
        assert_eq!(json["ociVersionMin"], "1.0.0", "{json}");
        assert_eq!(json["linux"]["namespaces"][7], "time", "{json}");
        assert_eq!(json["linux"]["capabilities"][0], "CAP_CHOWN", "{json}");
        assert_eq!(json["linux"]["seccomp"]["operators"][0], "SCMP_CMP_EQ", "{json}");
        assert_eq!(json["linux"]["seccomp"]["actions"][0], "SCMP_ACT_ALLOW", "{json}");
        assert_eq!(json["linux"]["seccomp"]["archs"][1], "SCMP_ARCH_X86_64", "{json}");
        assert_eq!(json["linux"]["mountExtensions"]["idmap"]["enabled"], false, "{json}");
        assert_eq!(json["linux"]["cgroup"]["systemd"], false, "{json}");
        let libseccomp = json["annotations"]["io.github.seccomp.libseccomp.version"].as_str().unwrap();
        assert!(libseccomp.starts_with("2."), "{json}");
    }
}
