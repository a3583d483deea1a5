//! The Resource every export carries: who is sending (`service.*`) and where
//! (`host.name`, `k8s.node.name`, `os.*`).
use std::{borrow::Cow, collections::BTreeMap};

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    resource::v1::Resource,
};

pub use crate::host::{host_name, kernel_release};
use crate::{config::ResourceConfig, correlate::ResourceKey};

/// A string attribute.
#[must_use]
pub fn kv_str(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// The Resources records are exported under, one per [`ResourceKey`].
#[derive(Debug, Clone)]
pub struct Resources {
    node: Resource,
    node_encoded: Vec<u8>,
}

impl Resources {
    /// The node's Resource: `service.name` (config / `OTEL_SERVICE_NAME` / `iostall`),
    /// `service.version`, `host.name`, `k8s.node.name` (from `NODE_NAME` when set),
    /// `os.type=linux`, `os.version` (kernel release), then `OTEL_RESOURCE_ATTRIBUTES`
    /// and the config file's attributes, which override the detected ones.
    #[must_use]
    pub fn new(config: &ResourceConfig, node_name: Option<String>) -> Self {
        let mut attrs: BTreeMap<String, String> = BTreeMap::new();
        attrs.insert("service.version".into(), env!("CARGO_PKG_VERSION").into());
        attrs.insert("host.name".into(), host_name());
        if let Some(node) = node_name.filter(|n| !n.is_empty()) {
            attrs.insert("k8s.node.name".into(), node);
        }
        attrs.insert("os.type".into(), "linux".into());
        attrs.insert("os.version".into(), kernel_release());
        for (k, v) in &config.attributes {
            attrs.insert(k.clone(), v.clone());
        }
        attrs.insert("service.name".into(), config.service_name.clone());
        let node = Resource {
            attributes: attrs.iter().map(|(k, v)| kv_str(k, v.clone())).collect(),
            ..Resource::default()
        };
        Self {
            node_encoded: prost::Message::encode_to_vec(&node),
            node,
        }
    }

    /// From the environment (`NODE_NAME`) and the resolved config.
    #[must_use]
    pub fn from_env(config: &ResourceConfig) -> Self {
        Self::new(config, std::env::var("NODE_NAME").ok())
    }

    /// The Resource of `key`.
    #[must_use]
    pub fn get(&self, key: &ResourceKey) -> Cow<'_, Resource> {
        match key {
            ResourceKey::Node => Cow::Borrowed(&self.node),
            ResourceKey::Workload(w) => {
                let mut resource = self.node.clone();
                resource
                    .attributes
                    .extend(w.attributes().into_iter().map(|(k, v)| kv_str(&k, v)));
                Cow::Owned(resource)
            }
        }
    }

    /// The Resource of `key`, protobuf-encoded.
    #[must_use]
    pub fn encoded(&self, key: &ResourceKey) -> Cow<'_, [u8]> {
        match key {
            ResourceKey::Node => Cow::Borrowed(&self.node_encoded),
            // Once per pod per batch: cheap next to the batch's spans.
            ResourceKey::Workload(_) => Cow::Owned(prost::Message::encode_to_vec(&*self.get(key))),
        }
    }
}
