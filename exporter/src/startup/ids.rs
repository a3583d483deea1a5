//! Deterministic ids of startup traces: the same pod attempt always gets the same trace
//! and span ids, so an iostall restarted in the middle of a startup continues its trace,
//! and anyone holding the pod uid and sandbox id can compute where to look.
use crate::correlate::{SpanId, StableHasher, TraceId};

/// The trace of the startup of pod `pod_uid` in sandbox `sandbox_id`, container restart
/// generation `generation` (0 for the first start). Not salted by host: a pod uid is
/// unique across the cluster.
#[must_use]
pub fn trace_id(pod_uid: &str, sandbox_id: &str, generation: u32) -> TraceId {
    let half = |salt: u64| {
        StableHasher::new(salt)
            .bytes(pod_uid.as_bytes())
            .bytes(b"/")
            .bytes(sandbox_id.as_bytes())
            .u64(u64::from(generation))
            .finish()
    };
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&half(0x7374_6172_7475_7031).to_be_bytes());
    id[8..].copy_from_slice(&half(0x7374_6172_7475_7032).to_be_bytes());
    if id == [0; 16] {
        id[15] = 1;
    }
    TraceId(id)
}

fn span_id(trace: TraceId, parts: &[&[u8]]) -> SpanId {
    let mut h = StableHasher::new(0x7370_616e_5f73_7570).bytes(&trace.0);
    for part in parts {
        h = h.bytes(part).bytes(b"\0");
    }
    let v = h.finish();
    SpanId(if v == 0 { 1 } else { v }.to_be_bytes())
}

/// The root `pod startup` span of `trace`.
#[must_use]
pub fn root_span_id(trace: TraceId) -> SpanId {
    span_id(trace, &[b"pod startup"])
}

/// The phase named `phase` (`pod sandbox`…) about container `container_id` (or `""`)
/// of `trace`.
#[must_use]
pub fn phase_span_id(trace: TraceId, phase: &str, container_id: &str) -> SpanId {
    span_id(trace, &[phase.as_bytes(), container_id.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_pod_sandbox_and_generation_only() {
        let a = trace_id("uid-1", "sb-1", 0);
        assert_eq!(a, trace_id("uid-1", "sb-1", 0));
        assert_ne!(a, trace_id("uid-1", "sb-2", 0));
        assert_ne!(a, trace_id("uid-1", "sb-1", 1));
        assert_ne!(a, trace_id("uid-2", "sb-1", 0));
        assert_eq!(root_span_id(a), root_span_id(a));
        assert_ne!(root_span_id(a), root_span_id(trace_id("uid-2", "sb-1", 0)));
        let create = phase_span_id(a, "container create", "c1");
        assert_ne!(create, phase_span_id(a, "container start", "c1"));
        assert_ne!(create, phase_span_id(a, "container create", "c2"));
        assert_ne!(create, root_span_id(a));
    }
}
