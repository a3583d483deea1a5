//! An in-process OTLP receiver for tests, on the official `opentelemetry-proto` service
//! definitions: a tonic `TraceServiceServer` + `LogsServiceServer` (gRPC, gzip accepted)
//! or an HTTP/protobuf server (`POST /v1/traces`, `POST /v1/logs`, gzip bodies), on a
//! real localhost listener. Every request is forwarded into a channel the test reads.
//!
//! The receiver runs on its own thread with its own tokio runtime, so tests stay
//! synchronous; dropping it stops the server.
use std::{
    io::Read as _,
    net::SocketAddr,
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::post,
};
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{
            ExportLogsServiceRequest, ExportLogsServiceResponse,
            logs_service_server::{LogsService, LogsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{KeyValue, any_value::Value},
    logs::v1::LogRecord,
    resource::v1::Resource,
    trace::v1::Span,
};
use prost::Message;
use tokio::sync::oneshot;
use tonic::codec::CompressionEncoding;

/// How a request reached the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestMeta {
    /// `grpc` or `http/protobuf`.
    pub protocol: &'static str,
    /// Request headers (gRPC metadata), names lower-case.
    pub headers: Vec<(String, String)>,
    /// Whether the body was gzip-compressed (HTTP only; tonic decompresses itself).
    pub gzip: bool,
    /// When the request reached the receiver.
    pub received_at: Instant,
}

/// One received export request.
#[derive(Debug, Clone)]
pub enum Export {
    /// A traces export.
    Traces(ExportTraceServiceRequest, RequestMeta),
    /// A logs export.
    Logs(ExportLogsServiceRequest, RequestMeta),
}

/// Everything received so far, flattened.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    /// Each span with the Resource it came under.
    pub spans: Vec<(Resource, Span)>,
    /// Each log record with the Resource it came under.
    pub logs: Vec<(Resource, LogRecord)>,
    /// Every request's metadata.
    pub requests: Vec<RequestMeta>,
    /// Number of `ResourceSpans` seen over all requests.
    pub resource_spans: usize,
    /// Number of `ResourceLogs` seen over all requests.
    pub resource_logs: usize,
}

impl Collected {
    /// Adds one request.
    pub fn add(&mut self, export: Export) {
        match export {
            Export::Traces(req, meta) => {
                self.requests.push(meta);
                for rs in req.resource_spans {
                    self.resource_spans += 1;
                    let res = rs.resource.unwrap_or_default();
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            self.spans.push((res.clone(), s));
                        }
                    }
                }
            }
            Export::Logs(req, meta) => {
                self.requests.push(meta);
                for rl in req.resource_logs {
                    self.resource_logs += 1;
                    let res = rl.resource.unwrap_or_default();
                    for sl in rl.scope_logs {
                        for l in sl.log_records {
                            self.logs.push((res.clone(), l));
                        }
                    }
                }
            }
        }
    }
}

impl Collected {
    /// The log records whose LogRecord `event_name` is `name` (runtime events:
    /// `iostall.container.exited`…), with their Resources, in arrival order.
    pub fn logs_named(&self, name: &str) -> Vec<&(Resource, LogRecord)> {
        self.logs
            .iter()
            .filter(|(_, l)| l.event_name == name)
            .collect()
    }
}

/// A string attribute's value (`None` if absent or of another type).
pub fn str_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attrs
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?
    {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// An int attribute's value (`None` if absent or of another type).
pub fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attrs
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?
    {
        Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

/// A running receiver.
pub struct OtlpReceiver {
    addr: SocketAddr,
    protocol: &'static str,
    rx: mpsc::Receiver<Export>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    collected: Collected,
}

struct Grpc(mpsc::Sender<Export>);

fn metadata_pairs(m: &tonic::metadata::MetadataMap) -> Vec<(String, String)> {
    m.clone()
        .into_headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let meta = RequestMeta {
            protocol: "grpc",
            headers: metadata_pairs(request.metadata()),
            gzip: false,
            received_at: Instant::now(),
        };
        let _ = self.0.send(Export::Traces(request.into_inner(), meta));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let meta = RequestMeta {
            protocol: "grpc",
            headers: metadata_pairs(request.metadata()),
            gzip: false,
            received_at: Instant::now(),
        };
        let _ = self.0.send(Export::Logs(request.into_inner(), meta));
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

fn http_body(headers: &HeaderMap, body: &Bytes) -> Result<(Vec<u8>, RequestMeta), StatusCode> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if ctype != "application/x-protobuf" {
        return Err(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let data = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body.as_ref())
            .read_to_end(&mut out)
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        out
    } else {
        body.to_vec()
    };
    let meta = RequestMeta {
        protocol: "http/protobuf",
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        gzip,
        received_at: Instant::now(),
    };
    Ok((data, meta))
}

fn protobuf_response(msg: &impl Message) -> axum::response::Response {
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        msg.encode_to_vec(),
    )
        .into_response()
}

async fn http_traces(
    State(tx): State<mpsc::Sender<Export>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let (data, meta) = match http_body(&headers, &body) {
        Ok(x) => x,
        Err(status) => return status.into_response(),
    };
    match ExportTraceServiceRequest::decode(data.as_slice()) {
        Ok(req) => {
            let _ = tx.send(Export::Traces(req, meta));
            protobuf_response(&ExportTraceServiceResponse::default())
        }
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

async fn http_logs(
    State(tx): State<mpsc::Sender<Export>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let (data, meta) = match http_body(&headers, &body) {
        Ok(x) => x,
        Err(status) => return status.into_response(),
    };
    match ExportLogsServiceRequest::decode(data.as_slice()) {
        Ok(req) => {
            let _ = tx.send(Export::Logs(req, meta));
            protobuf_response(&ExportLogsServiceResponse::default())
        }
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

impl OtlpReceiver {
    /// A gRPC receiver on `127.0.0.1:0`.
    pub fn grpc() -> Result<Self> {
        Self::grpc_on(([127, 0, 0, 1], 0).into())
    }

    /// A gRPC receiver on `addr` (e.g. a port chosen earlier, to come up late).
    pub fn grpc_on(addr: SocketAddr) -> Result<Self> {
        Self::start(addr, "grpc")
    }

    /// A gRPC receiver on `127.0.0.1:0` over TLS, with the PEM certificate chain and
    /// key given (see [`TestCa`]).
    pub fn grpc_tls(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        Self::start_with(([127, 0, 0, 1], 0).into(), "grpc", Some(tls), false)
    }

    /// A gRPC receiver with the trace service only, as backends that store traces but
    /// not logs are (Arize Phoenix): logs get gRPC `Unimplemented`.
    pub fn grpc_traces_only() -> Result<Self> {
        Self::start_with(([127, 0, 0, 1], 0).into(), "grpc", None, true)
    }

    /// An HTTP/protobuf receiver taking traces only: `POST /v1/logs` gets `405`, as
    /// Phoenix answers.
    pub fn http_traces_only() -> Result<Self> {
        Self::start_with(([127, 0, 0, 1], 0).into(), "http/protobuf", None, true)
    }

    /// An HTTP/protobuf receiver on `127.0.0.1:0`.
    pub fn http() -> Result<Self> {
        Self::http_on(([127, 0, 0, 1], 0).into())
    }

    /// An HTTP/protobuf receiver on `addr`.
    pub fn http_on(addr: SocketAddr) -> Result<Self> {
        Self::start(addr, "http/protobuf")
    }

    fn start(addr: SocketAddr, protocol: &'static str) -> Result<Self> {
        Self::start_with(addr, protocol, None, false)
    }

    fn start_with(
        addr: SocketAddr,
        protocol: &'static str,
        tls: Option<tonic::transport::ServerTlsConfig>,
        traces_only: bool,
    ) -> Result<Self> {
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).context("server TLS config")?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("receiver runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("binding the OTLP receiver on {addr}"))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("otlp-receiver-{protocol}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let stop = async {
                        let _ = stop_rx.await;
                    };
                    if protocol == "grpc" {
                        let logs = (!traces_only).then(|| {
                            LogsServiceServer::new(Grpc(tx.clone()))
                                .accept_compressed(CompressionEncoding::Gzip)
                                .max_decoding_message_size(64 << 20)
                        });
                        let _ = builder
                            // Large HTTP/2 windows, as real collectors (BDP probing) have:
                            // without them each big export waits on window updates.
                            .initial_stream_window_size(Some(8 << 20))
                            .initial_connection_window_size(Some(16 << 20))
                            .add_service(
                                TraceServiceServer::new(Grpc(tx))
                                    .accept_compressed(CompressionEncoding::Gzip)
                                    .max_decoding_message_size(64 << 20),
                            )
                            .add_optional_service(logs)
                            .serve_with_incoming_shutdown(
                                tonic::transport::server::TcpIncoming::from(listener)
                                    .with_nodelay(Some(true)),
                                stop,
                            )
                            .await;
                    } else {
                        let logs = if traces_only {
                            axum::routing::get(|| async { "" })
                        } else {
                            post(http_logs)
                        };
                        let app = Router::new()
                            .route("/v1/traces", post(http_traces))
                            .route("/v1/logs", logs)
                            .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
                            .with_state(tx);
                        let _ = axum::serve(listener, app)
                            .with_graceful_shutdown(stop)
                            .await;
                    }
                });
            })
            .context("receiver thread")?;
        Ok(Self {
            addr,
            protocol,
            rx,
            shutdown: Some(stop_tx),
            thread: Some(thread),
            collected: Collected::default(),
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `grpc` or `http/protobuf`.
    pub fn protocol(&self) -> &'static str {
        self.protocol
    }

    /// The base endpoint URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits up to `timeout` for the next request.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Export> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Collects requests until `done` holds for everything received so far, or
    /// `timeout` passes; returns (a copy of) everything received so far either way.
    pub fn collect_until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&Collected) -> bool,
    ) -> Collected {
        let deadline = Instant::now() + timeout;
        while !done(&self.collected) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            match self.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(export) => self.collected.add(export),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        while let Ok(export) = self.rx.try_recv() {
            self.collected.add(export);
        }
        self.collected.clone()
    }

    /// Stops the server (in-flight requests finish) and returns the requests not read
    /// yet, those it took while stopping included: dropping it would lose them.
    pub fn stop(mut self) -> Vec<Export> {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.rx.try_iter().collect()
    }

    /// Everything received so far (without waiting).
    pub fn collected(&mut self) -> Collected {
        self.collect_until(Duration::ZERO, |_| true)
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `GET /metrics` (or any path) from iostall's metrics endpoint at `addr`: the body.
pub fn scrape(addr: SocketAddr, path: &str) -> Result<String> {
    crate::exposition::scrape_as(addr, path, None).map(|(_content_type, body)| body)
}

/// The value of one series (`name` or `name{labels}` exactly as exposed) in a
/// Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The metrics address iostall logged (`metrics on http://ADDR/metrics`).
pub fn metrics_addr_from_log(stderr: &str) -> Option<SocketAddr> {
    let rest = stderr.split("metrics on http://").nth(1)?;
    rest.split('/').next()?.parse().ok()
}

/// `VmRSS` of a process, in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A throw-away CA and a server certificate it signed, for `127.0.0.1` and `localhost`.
pub struct TestCa {
    /// The CA certificate (what a client must trust), PEM.
    pub ca_pem: String,
    /// The server certificate, PEM.
    pub server_cert_pem: String,
    /// The server's private key, PEM.
    pub server_key_pem: String,
}

impl TestCa {
    /// Generates a new CA and server certificate.
    pub fn new() -> Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "iostall test CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let server_key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "iostall test receiver");
        let server = params.signed_by(&server_key, &ca, &ca_key)?;
        Ok(Self {
            ca_pem: ca.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
        })
    }
}
