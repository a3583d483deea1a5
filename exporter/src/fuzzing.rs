//! One entry point per decoder of bytes iostall did not write: the kernel's ring records
//! (IO and lifecycle), containerd's event envelopes, the CRI answers it reads, dockerd's
//! event and container JSON, the Kubernetes API's pod watch events, and its own YAML
//! config. The `fuzz/` targets call these under libFuzzer, and the `fuzz_corpus` test
//! replays the stored corpus through them on every test run, so a crash found once stays
//! fixed. Each must return (never panic, never allocate without bound) for any input,
//! and says whether it accepted it.
use std::{cell::RefCell, path::Path};

use ::kube::core::watch as kube_watch;
use prost::Message as _;

use crate::{
    clock::MonotonicToUnix,
    config::{CliOverrides, Config, FileConfig},
    decode::Decoder,
    event::AttachMode,
    runtime::{containerd, cri, docker, kube},
};

thread_local! {
    static IO_DECODER: RefCell<Decoder> = RefCell::new(Decoder::new(AttachMode::Tracepoint));
    static CLOCK: MonotonicToUnix = MonotonicToUnix::new();
}

/// A record of the IO ring buffer.
pub fn ring_io(data: &[u8]) -> bool {
    IO_DECODER.with(|d| d.borrow_mut().decode(data).is_ok())
}

/// A record of the lifecycle ring buffer.
pub fn ring_lifecycle(data: &[u8]) -> bool {
    CLOCK.with(|clock| crate::lifecycle::decode(data, clock).is_ok())
}

/// A containerd events-service envelope, its payload, and the runtime event made of it.
pub fn containerd_envelope(data: &[u8]) -> bool {
    let Ok(envelope) = containerd_client::types::Envelope::decode(data) else {
        return false;
    };
    match containerd::decode_envelope(&envelope) {
        Ok(message) => containerd::runtime_event(&message, None).is_some(),
        Err(_) => false,
    }
}

/// A containerd `Container` (from its containers service), or its OCI spec's JSON.
pub fn containerd_container(data: &[u8]) -> bool {
    let annotations = containerd::spec_annotations(data);
    match containerd_client::services::v1::Container::decode(data) {
        Ok(c) => containerd::container_meta(&c).is_some() || !annotations.is_empty(),
        Err(_) => !annotations.is_empty(),
    }
}

/// The CRI answers iostall reads: the pod sandbox and container lists. The first byte
/// picks which.
pub fn cri_lists(data: &[u8]) -> bool {
    let Some((which, rest)) = data.split_first() else {
        return false;
    };
    if which % 2 == 0 {
        let Ok(list) = k8s_cri::v1::ListPodSandboxResponse::decode(rest) else {
            return false;
        };
        list.items.iter().filter_map(cri::sandbox_meta).count() > 0
    } else {
        let Ok(list) = k8s_cri::v1::ListContainersResponse::decode(rest) else {
            return false;
        };
        list.containers
            .iter()
            .filter_map(cri::container_meta)
            .count()
            > 0
    }
}

/// A line of dockerd's `/events` stream, or its `/containers/json` list.
pub fn docker_json(data: &[u8]) -> bool {
    if let Ok(msg) = serde_json::from_slice::<docker::DockerEventMessage>(data) {
        return docker::map_event(&msg).is_some();
    }
    match serde_json::from_slice::<Vec<docker::ContainerSummary>>(data) {
        Ok(list) => {
            list.iter().for_each(|c| drop(docker::listed_event(c, 0)));
            !list.is_empty()
        }
        Err(_) => false,
    }
}

/// A pod watch event as the API server sends it, and what iostall keeps of the pod.
pub fn kube_watch_event(data: &[u8]) -> bool {
    use k8s_openapi::api::core::v1::Pod;
    let Ok(event) = serde_json::from_slice::<kube_watch::WatchEvent<Pod>>(data) else {
        return false;
    };
    let pod = match event {
        kube_watch::WatchEvent::Added(p)
        | kube_watch::WatchEvent::Modified(p)
        | kube_watch::WatchEvent::Deleted(p) => p,
        _ => return false,
    };
    let index = kube::KubePodIndex::detached(vec!["app".into(), "app.kubernetes.io/*".into()]);
    let info = index.pod_info(&pod);
    !crate::enrich::metadata::KubePod::from(info).uid.is_empty()
}

/// A config file, then everything resolved from it (no flags, no environment).
pub fn config_yaml(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(file) = FileConfig::parse(Path::new("fuzz.yaml"), text) else {
        return false;
    };
    Config::resolve(&CliOverrides::default(), &file, &|_| None).is_ok()
}

/// A target's entry point: whether it accepted the input.
pub type Entry = fn(&[u8]) -> bool;

/// Every target: its name (the `fuzz/` target and corpus directory) and entry point,
/// which says whether the input was accepted (the seeds must be).
pub const TARGETS: &[(&str, Entry)] = &[
    ("ring_io", ring_io),
    ("ring_lifecycle", ring_lifecycle),
    ("containerd_envelope", containerd_envelope),
    ("containerd_container", containerd_container),
    ("cri_lists", cri_lists),
    ("docker_json", docker_json),
    ("kube_watch_event", kube_watch_event),
    ("config_yaml", config_yaml),
];

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::TARGETS;

    /// `fuzz/corpus/<target>/`: the inputs libFuzzer kept (and any crash found, saved
    /// there once fixed), replayed through the same entry points on every test run.
    #[test]
    fn the_stored_corpus_replays_without_a_panic() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        for (name, entry) in TARGETS {
            let dir = root.join(name);
            let files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}: every target has a corpus", dir.display()))
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            assert!(!files.is_empty(), "{}: empty corpus", dir.display());
            for file in files {
                let data = std::fs::read(&file).expect("corpus file");
                let accepted = entry(&data);
                // The seeds are well-formed inputs (fuzz/src/bin/seeds.rs): a decoder
                // that stops accepting one has broken on real input.
                let seed = file
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed-"));
                assert!(accepted || !seed, "{} was refused", file.display());
            }
        }
    }
}
