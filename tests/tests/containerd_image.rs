//! The locally built image archive has the docker-archive layout containerd and docker
//! import: `manifest.json` with both tags, configs, and a layer with busybox and its
//! applets. Needs `busybox-static`; fails (never skips) without it.

use std::{collections::HashMap, io::Read};

use iostall_tests::image::{APPLETS, BUSYBOX_IMAGE, PAUSE_IMAGE, build_busybox_archive};

fn entries(tar_bytes: &[u8]) -> HashMap<String, (tar::EntryType, Vec<u8>, Option<String>)> {
    let mut out = HashMap::new();
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").to_string_lossy().into_owned();
        let kind = entry.header().entry_type();
        let link = entry
            .link_name()
            .expect("link")
            .map(|l| l.to_string_lossy().into_owned());
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read");
        out.insert(path, (kind, data, link));
    }
    out
}

#[test]
fn busybox_archive_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("image.tar");
    build_busybox_archive(&path).expect("archive builds (is busybox-static installed?)");
    let outer = entries(&std::fs::read(&path).expect("read"));
    let (_, manifest, _) = outer.get("manifest.json").expect("manifest.json");
    let manifest: serde_json::Value = serde_json::from_slice(manifest).expect("json");
    let images = manifest.as_array().expect("array");
    assert_eq!(images.len(), 2);
    let mut tags = Vec::new();
    for image in images {
        tags.push(image["RepoTags"][0].as_str().expect("tag").to_owned());
        let config = image["Config"].as_str().expect("config name");
        let (_, config, _) = outer.get(config).expect("config file");
        let config: serde_json::Value = serde_json::from_slice(config).expect("json");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["Env"][0], "PATH=/bin");
        let layer_name = image["Layers"][0].as_str().expect("layer");
        let (_, layer, _) = outer.get(layer_name).expect("layer file");
        let digest = format!("sha256:{}", layer_name.trim_end_matches("/layer.tar"));
        assert_eq!(config["rootfs"]["diff_ids"][0], digest.as_str());
        let files = entries(layer);
        let (kind, busybox, _) = files.get("bin/busybox").expect("bin/busybox");
        assert_eq!(*kind, tar::EntryType::Regular);
        assert!(busybox.starts_with(b"\x7fELF"));
        for applet in APPLETS {
            let (kind, _, link) = files
                .get(&format!("bin/{applet}"))
                .unwrap_or_else(|| panic!("bin/{applet} missing"));
            assert_eq!(*kind, tar::EntryType::Symlink);
            assert_eq!(link.as_deref(), Some("busybox"));
        }
    }
    tags.sort();
    assert_eq!(tags, vec![BUSYBOX_IMAGE.to_owned(), PAUSE_IMAGE.to_owned()]);
}
