//! OTLP export: slow operations as spans and log records, to any OpenTelemetry backend.
//!
//! # Why not the OpenTelemetry SDK
//!
//! The messages are built directly with `opentelemetry-proto` and sent with its tonic
//! client (gRPC) or as HTTP/protobuf (reqwest), instead of through the SDK's
//! `TracerProvider`/`LoggerProvider`: the SDK (0.32) keeps **one Resource per provider**
//! and lets **no span builder set trace or span ids**, while iostall needs
//!
//! - **kernel timestamps**: a span starts and ends when the kernel says the operation
//!   did, not when userspace learned about it;
//! - **deterministic ids** (see [`crate::correlate`]), so a restarted exporter joins the
//!   same traces and a log record carries its span's ids;
//! - **one Resource per pod**: the Collector's `k8sattributes` processor matches Resource
//!   attributes only, so each export groups records into one `ResourceSpans` /
//!   `ResourceLogs` per [`crate::correlate::ResourceKey`].
//!
//! The standard `OTEL_EXPORTER_OTLP_*` settings keep their documented meaning (see
//! [`crate::config`]).
//!
//! Runtime lifecycle events (container created, started, exited…) become log records
//! too, in the same batches and under the same Resources as the slow operations, with
//! the trace id of their container's IO of the same window (see [`encode`]).
//!
//! Modules: [`resource`] (the node's Resource), [`encode`] (records to OTLP messages:
//! the attribute definition and the `opentelemetry-proto` reference), [`wire`] (the same
//! messages written straight to protobuf bytes: the hot path),
//! [`transport`] (gRPC and HTTP clients, retry classification), [`exporter`] (the
//! batching, retrying export task behind [`crate::sink::otlp::OtlpSink`]).
pub mod encode;
pub mod exporter;
pub mod resource;
pub mod transport;
pub mod wire;

use crate::{
    correlate::{CorrelatedEvent, CorrelatedRecord, ResourceKey},
    startup::report::StartupSpan,
};

/// What the export queue holds: a slow operation (a span and a log record), a runtime
/// event (a log record only), a shared operation's copy in a starting pod's trace or a
/// startup's root or phase (spans only).
#[derive(Debug, Clone, PartialEq)]
pub enum ExportItem {
    /// A slow operation.
    Io(CorrelatedRecord),
    /// A runtime lifecycle event.
    Runtime(CorrelatedEvent),
    /// A shared runtime operation's copy in a starting pod's trace (its log record went
    /// out once, with the original).
    SharedIo(CorrelatedRecord),
    /// A pod startup's root or phase span.
    Startup(StartupSpan),
}

impl ExportItem {
    /// The Resource it is exported under.
    #[must_use]
    pub fn resource(&self) -> &ResourceKey {
        match self {
            Self::Io(c) | Self::SharedIo(c) => &c.resource,
            Self::Runtime(c) => &c.resource,
            Self::Startup(s) => &s.resource,
        }
    }

    /// The slow operation, if it is one.
    #[must_use]
    pub fn io(&self) -> Option<&CorrelatedRecord> {
        match self {
            Self::Io(c) => Some(c),
            _ => None,
        }
    }

    /// Whether it becomes a span.
    #[must_use]
    pub fn has_span(&self) -> bool {
        !matches!(self, Self::Runtime(_))
    }

    /// Whether it becomes a log record.
    #[must_use]
    pub fn has_log(&self) -> bool {
        matches!(self, Self::Io(_) | Self::Runtime(_))
    }
}

impl From<CorrelatedRecord> for ExportItem {
    fn from(c: CorrelatedRecord) -> Self {
        Self::Io(c)
    }
}

impl From<CorrelatedEvent> for ExportItem {
    fn from(c: CorrelatedEvent) -> Self {
        Self::Runtime(c)
    }
}
