//! The busybox rootfs as an image in the test's containerd, for containers that run from a
//! snapshot: containerd then hands the shim rootfs mounts (overlay) to mount at
//! `<bundle>/rootfs`, as in production, instead of a ready directory.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::ctr::Ctr;
use crate::process;

/// The name the image is imported under.
pub const IMAGE: &str = "docker.io/library/tether-busybox:latest";

/// How long building and importing the image may take.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// Imports `rootfs` as [`IMAGE`] into `ctr`'s namespace, unpacked for containerd's default
/// snapshotter: a one-layer `docker save` archive built in `work`. Returns the image name.
pub fn import(ctr: &Ctr, rootfs: &Path, work: &Path) -> String {
    let dir = work.join("image");
    fs::create_dir_all(&dir).expect("create the image dir");
    let layer = dir.join("layer.tar");
    let mut tar = Command::new("tar");
    tar.arg("-C").arg(rootfs).arg("-cf").arg(&layer).arg(".");
    process::run(tar, None, IMPORT_TIMEOUT).expect_ok();
    let mut sum = Command::new("sha256sum");
    sum.arg(&layer);
    let out = process::run(sum, None, IMPORT_TIMEOUT);
    out.expect_ok();
    let digest = out.stdout.split_whitespace().next().expect("sha256sum prints a digest").to_owned();
    let config = serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{digest}")] },
    });
    fs::write(dir.join("config.json"), config.to_string()).expect("write the image config");
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [IMAGE.trim_start_matches("docker.io/library/")],
        "Layers": ["layer.tar"],
    }]);
    fs::write(dir.join("manifest.json"), manifest.to_string()).expect("write the manifest");
    let archive = dir.join("image.tar");
    let mut tar = Command::new("tar");
    tar.arg("-C").arg(&dir).arg("-cf").arg(&archive).args(["manifest.json", "config.json", "layer.tar"]);
    process::run(tar, None, IMPORT_TIMEOUT).expect_ok();
    let archive = archive.display().to_string();
    ctr.run_for(&["images", "import", archive.as_str()], IMPORT_TIMEOUT).expect_ok();
    IMAGE.to_owned()
}

/// This machine's architecture in OCI's words.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
