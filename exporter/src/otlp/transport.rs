//! Sending export requests: OTLP/gRPC (the `opentelemetry-proto` tonic clients) or
//! OTLP/HTTP with protobuf bodies (`POST /v1/traces`, `/v1/logs`,
//! `Content-Type: application/x-protobuf`), with headers, gzip, a timeout and an extra
//! CA. Errors are classified as retryable or not, as the OTLP specification says:
//! gRPC `UNAVAILABLE`, `RESOURCE_EXHAUSTED`, `CANCELLED`, `DEADLINE_EXCEEDED`, `ABORTED`,
//! `OUT_OF_RANGE`, `DATA_LOSS`; HTTP 429, 502, 503, 504; and connection failures.
use std::{io::Write as _, str::FromStr, time::Duration};

use bytes::{Buf as _, BufMut as _, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::{
    Code, Status,
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use crate::config::{Compression, Protocol, Signal, SignalConfig};

/// gRPC method of the traces service (`opentelemetry-proto`'s `TraceServiceClient`).
pub const TRACES_METHOD: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// gRPC method of the logs service.
pub const LOGS_METHOD: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// A tonic codec for messages that are already protobuf bytes (see
/// [`super::wire`]): the same frames `TraceServiceClient`/`LogsServiceClient` send.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

/// Encoder of [`RawCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawEncoder;

/// Decoder of [`RawCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Errors while building a client (at start).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The gRPC endpoint or its TLS settings were refused.
    #[error("{field}: {message}")]
    Grpc {
        /// The config field at fault.
        field: &'static str,
        /// What tonic said.
        message: String,
    },
    /// The HTTP client could not be built (TLS settings).
    #[error("otlp: cannot build the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

/// One failed export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportError {
    /// Whether trying again may succeed.
    pub retryable: bool,
    /// A server-requested delay before the next try.
    pub retry_after: Option<Duration>,
    /// What went wrong.
    pub message: String,
    /// The endpoint does not take this signal at all (gRPC `Unimplemented`, HTTP 404 or
    /// 405): a backend that stores traces but not logs.
    pub unsupported: bool,
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Whether a gRPC status code is retryable (OTLP specification).
#[must_use]
pub fn grpc_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Whether an HTTP status is retryable (OTLP specification).
#[must_use]
pub fn http_retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// A client for one signal.
#[derive(Debug, Clone)]
pub enum SignalClient {
    /// OTLP/gRPC.
    Grpc {
        /// The (lazily connecting) channel.
        channel: Channel,
        /// Request metadata (headers).
        metadata: MetadataMap,
        /// Per-request timeout.
        timeout: Duration,
        /// gzip requests.
        gzip: bool,
        /// The service method.
        path: http::uri::PathAndQuery,
    },
    /// OTLP/HTTP protobuf.
    Http {
        /// The client (connection pool, TLS).
        client: reqwest::Client,
        /// The full URL.
        url: String,
        /// Request headers.
        headers: reqwest::header::HeaderMap,
        /// gzip request bodies.
        gzip: bool,
    },
}

impl SignalClient {
    /// Builds the client. gRPC channels connect lazily, so this needs a tokio runtime
    /// but no reachable collector.
    pub fn new(signal: Signal, cfg: &SignalConfig) -> Result<Self, TransportError> {
        let gzip = cfg.compression == Compression::Gzip;
        match cfg.protocol {
            Protocol::Grpc => {
                let grpc_err = |message: String| TransportError::Grpc {
                    field: "otlp.endpoint",
                    message,
                };
                let mut endpoint = Endpoint::from_str(&cfg.endpoint)
                    .map_err(|e| grpc_err(format!("{:?}: {e}", cfg.endpoint)))?
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout.min(Duration::from_secs(5)));
                if cfg.endpoint.starts_with("https:") {
                    let mut tls = ClientTlsConfig::new().with_native_roots();
                    if let Some(pem) = &cfg.ca_pem {
                        tls = tls.ca_certificate(Certificate::from_pem(pem));
                    }
                    endpoint = endpoint.tls_config(tls).map_err(|e| TransportError::Grpc {
                        field: "otlp.certificate",
                        message: e.to_string(),
                    })?;
                }
                let mut metadata = MetadataMap::new();
                for (k, v) in &cfg.headers {
                    let key = MetadataKey::from_bytes(k.as_bytes()).map_err(|_| {
                        TransportError::Grpc {
                            field: "otlp.headers",
                            message: format!("{k:?} is not a valid gRPC metadata key"),
                        }
                    })?;
                    let value =
                        MetadataValue::try_from(v.as_str()).map_err(|_| TransportError::Grpc {
                            field: "otlp.headers",
                            message: format!("the value of {k:?} is not valid gRPC metadata"),
                        })?;
                    metadata.insert(key, value);
                }
                Ok(Self::Grpc {
                    channel: endpoint.connect_lazy(),
                    metadata,
                    timeout: cfg.timeout,
                    gzip,
                    path: http::uri::PathAndQuery::from_static(match signal {
                        Signal::Traces => TRACES_METHOD,
                        Signal::Logs => LOGS_METHOD,
                    }),
                })
            }
            Protocol::HttpProtobuf => {
                let mut builder = reqwest::Client::builder()
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
                    .pool_max_idle_per_host(2)
                    .user_agent(concat!("iostall/", env!("CARGO_PKG_VERSION")));
                if let Some(pem) = &cfg.ca_pem {
                    for cert in
                        reqwest::Certificate::from_pem_bundle(pem).map_err(TransportError::Http)?
                    {
                        builder = builder.add_root_certificate(cert);
                    }
                }
                let client = builder.build().map_err(TransportError::Http)?;
                let mut headers = reqwest::header::HeaderMap::new();
                for (k, v) in &cfg.headers {
                    if let (Ok(name), Ok(value)) = (
                        reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                        reqwest::header::HeaderValue::from_str(v),
                    ) {
                        headers.insert(name, value);
                    }
                }
                headers.insert(
                    reqwest::header::CONTENT_TYPE,
                    reqwest::header::HeaderValue::from_static("application/x-protobuf"),
                );
                if gzip {
                    headers.insert(
                        reqwest::header::CONTENT_ENCODING,
                        reqwest::header::HeaderValue::from_static("gzip"),
                    );
                }
                Ok(Self::Http {
                    client,
                    url: cfg.endpoint.clone(),
                    headers,
                    gzip,
                })
            }
        }
    }

    /// Sends one encoded export request (`ExportTraceServiceRequest` or
    /// `ExportLogsServiceRequest` bytes, matching the client's signal).
    pub async fn export(&self, body: Bytes) -> Result<(), ExportError> {
        let response = match self {
            Self::Grpc {
                channel,
                metadata,
                timeout,
                gzip,
                path,
            } => {
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                if *gzip {
                    grpc = grpc.send_compressed(CompressionEncoding::Gzip);
                }
                grpc.ready().await.map_err(|e| ExportError {
                    unsupported: false,
                    retryable: true,
                    retry_after: None,
                    message: format!("gRPC channel not ready: {}", error_chain(&e)),
                })?;
                let resp = grpc
                    .unary(
                        grpc_request(body, metadata, *timeout),
                        path.clone(),
                        RawCodec,
                    )
                    .await
                    .map_err(grpc_error)?;
                resp.into_inner()
            }
            Self::Http { .. } => self.http_post(body).await?,
        };
        // Both responses have `partial_success { rejected = 1; error_message = 2 }`.
        if let Ok(resp) = ExportTraceServiceResponse::decode(response.as_ref())
            && let Some(p) = resp.partial_success
            && (p.rejected_spans > 0 || !p.error_message.is_empty())
        {
            tracing::warn!(rejected = p.rejected_spans, message = %p.error_message, "collector rejected part of an export");
        }
        Ok(())
    }

    async fn http_post(&self, body: Bytes) -> Result<Bytes, ExportError> {
        let Self::Http {
            client,
            url,
            headers,
            gzip,
        } = self
        else {
            return Ok(Bytes::new());
        };
        let body = if *gzip {
            Bytes::from(gzip_bytes(&body))
        } else {
            body
        };
        let resp = client
            .post(url)
            .headers(headers.clone())
            .body(body)
            .send()
            .await
            .map_err(|e| ExportError {
                unsupported: false,
                retryable: true,
                retry_after: None,
                message: format!("POST {url}: {}", error_chain(&e)),
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.bytes().await.unwrap_or_default());
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(ExportError {
            unsupported: matches!(status.as_u16(), 404 | 405),
            retryable: http_retryable(status.as_u16()),
            retry_after,
            message: format!("POST {url}: HTTP {status}"),
        })
    }
}

fn grpc_request<T>(msg: T, metadata: &MetadataMap, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    *req.metadata_mut() = metadata.clone();
    req.set_timeout(timeout);
    req
}

fn grpc_error(status: Status) -> ExportError {
    ExportError {
        unsupported: status.code() == Code::Unimplemented,
        retryable: grpc_retryable(status.code()),
        retry_after: None,
        message: format!("gRPC {:?}: {}", status.code(), status.message()),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// gzip-compresses `data`.
#[must_use]
pub fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_classification() {
        assert!(grpc_retryable(Code::Unavailable));
        assert!(grpc_retryable(Code::ResourceExhausted));
        assert!(!grpc_retryable(Code::InvalidArgument));
        assert!(!grpc_retryable(Code::Unauthenticated));
        for s in [429, 502, 503, 504] {
            assert!(http_retryable(s));
        }
        for s in [400, 401, 403, 404, 413, 500] {
            assert!(!http_retryable(s));
        }
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let data = b"hello hello hello hello".repeat(10);
        let z = gzip_bytes(&data);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(z.as_slice())
            .read_to_end(&mut out)
            .expect("gunzip");
        assert_eq!(out, data);
    }
}
