//! OCI images made by the harness: a rootfs directory becomes one uncompressed layer, each
//! image is a config (entrypoint, cmd, env) plus a manifest over that layer, and all of them
//! go into one OCI image-layout tar archive that `ctr images import` reads, so no registry is
//! needed. The CRI plugin sees images imported into its `k8s.io` namespace like pulled ones.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::ctr::Ctr;

/// How long an import may take (a few MB, unpacked into a snapshot).
const IMPORT_TIMEOUT: Duration = Duration::from_secs(60);

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// One image of an archive.
#[derive(Clone, Debug)]
pub struct Image {
    /// Full reference, e.g. `tether.test/busybox:1` (what containerd and the CRI name it).
    pub name: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
}

impl Image {
    pub fn new(name: &str) -> Image {
        Image { name: name.into(), entrypoint: Vec::new(), cmd: Vec::new(), env: Vec::new() }
    }

    pub fn entrypoint(mut self, args: &[&str]) -> Image {
        self.entrypoint = args.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn cmd(mut self, args: &[&str]) -> Image {
        self.cmd = args.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn env(mut self, vars: &[&str]) -> Image {
        self.env = vars.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// A content-addressed blob: its bytes and OCI descriptor.
struct Blob {
    bytes: Vec<u8>,
    media_type: &'static str,
}

impl Blob {
    fn new(bytes: Vec<u8>, media_type: &'static str) -> Blob {
        Blob { bytes, media_type }
    }

    fn digest(&self) -> String {
        format!("sha256:{}", hex(&Sha256::digest(&self.bytes)))
    }

    fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest(), "size": self.bytes.len() })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// This machine's architecture in OCI's words.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The files of `rootfs` as an uncompressed layer tar: entries sorted, symlinks kept as
/// symlinks, paths relative to the root.
pub fn layer_tar(rootfs: &Path) -> Vec<u8> {
    let mut paths = Vec::new();
    collect(rootfs, rootfs, &mut paths);
    paths.sort();
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    for rel in paths {
        builder
            .append_path_with_name(rootfs.join(&rel), &rel)
            .unwrap_or_else(|e| panic!("adding {} to the layer: {e}", rel.display()));
    }
    builder.into_inner().expect("finishing the layer tar")
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.expect("a directory entry");
        let path = entry.path();
        out.push(path.strip_prefix(root).expect("below the root").to_path_buf());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect(root, &path, out);
        }
    }
}

/// Writes an OCI image-layout archive with `images`, all over one layer made of `rootfs`, to
/// `archive`.
pub fn write_archive(rootfs: &Path, images: &[Image], archive: &Path) {
    let layer = Blob::new(layer_tar(rootfs), MEDIA_LAYER);
    let mut blobs = Vec::new();
    let mut index = Vec::new();
    for image in images {
        let config = json!({
            "architecture": oci_arch(),
            "os": "linux",
            "config": {
                "Entrypoint": image.entrypoint,
                "Cmd": image.cmd,
                "Env": image.env,
                "WorkingDir": "/",
            },
            // Uncompressed, so the layer's diff id is its digest.
            "rootfs": { "type": "layers", "diff_ids": [layer.digest()] },
        });
        let config = Blob::new(config.to_string().into_bytes(), MEDIA_CONFIG);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
        });
        let manifest = Blob::new(manifest.to_string().into_bytes(), MEDIA_MANIFEST);
        let mut descriptor = manifest.descriptor();
        let tag = image.name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
        // containerd's importer names the image after io.containerd.image.name.
        descriptor["annotations"] = json!({
            "io.containerd.image.name": image.name,
            "org.opencontainers.image.ref.name": tag,
        });
        descriptor["platform"] = json!({ "architecture": oci_arch(), "os": "linux" });
        index.push(descriptor);
        blobs.push(config);
        blobs.push(manifest);
    }
    blobs.push(layer);
    let index =
        json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": index });

    let file = fs::File::create(archive).unwrap_or_else(|e| panic!("{}: {e}", archive.display()));
    let mut tar = tar::Builder::new(file);
    let mut add = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes).unwrap_or_else(|e| panic!("adding {name} to the archive: {e}"));
    };
    add("oci-layout", json!({ "imageLayoutVersion": "1.0.0" }).to_string().as_bytes());
    add("index.json", index.to_string().as_bytes());
    let mut seen = std::collections::HashSet::new();
    for blob in &blobs {
        let digest = blob.digest();
        if seen.insert(digest.clone()) {
            add(&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")), &blob.bytes);
        }
    }
    tar.into_inner().expect("finishing the archive");
}

/// Imports `archive` with `ctr images import` into `ctr`'s namespace (unpacked for the
/// default snapshotter).
pub fn import(ctr: &Ctr, archive: &Path) {
    let archive = archive.display().to_string();
    ctr.run_for(&["images", "import", archive.as_str()], IMPORT_TIMEOUT).expect_ok();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_an_oci_layout() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::write(rootfs.join("bin/busybox"), b"not really").unwrap();
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
        let archive = dir.path().join("images.tar");
        write_archive(&rootfs, &[Image::new("tether.test/a:1").cmd(&["sh"]), Image::new("tether.test/b:2")], &archive);

        let mut files = std::collections::HashMap::new();
        for entry in tar::Archive::new(fs::File::open(&archive).unwrap()).entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            files.insert(entry.path().unwrap().display().to_string(), bytes);
        }
        let blob = |digest: &str| -> &Vec<u8> {
            let bytes = &files[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))];
            assert_eq!(format!("sha256:{}", hex(&Sha256::digest(bytes))), digest, "blobs are content-addressed");
            bytes
        };
        let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 2);
        assert_eq!(manifests[1]["annotations"]["io.containerd.image.name"], "tether.test/b:2");
        let manifest: Value = serde_json::from_slice(blob(manifests[0]["digest"].as_str().unwrap())).unwrap();
        let config: Value = serde_json::from_slice(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
        assert_eq!(config["config"]["Cmd"], json!(["sh"]));
        let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], layer_digest);
        // The layer holds the rootfs, the applet link still a link.
        let layer = blob(layer_digest);
        let mut layer = tar::Archive::new(&layer[..]);
        let entries: Vec<(String, tar::EntryType)> = layer
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.header().entry_type())
            })
            .collect();
        assert!(entries.contains(&("bin/sh".into(), tar::EntryType::Symlink)), "{entries:?}");
        assert!(entries.contains(&("bin/busybox".into(), tar::EntryType::Regular)), "{entries:?}");
    }
}
