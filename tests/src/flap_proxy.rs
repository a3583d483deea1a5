//! A byte-for-byte proxy in front of a peer's socket that the test takes down and
//! brings back: a flapping peer, on demand and on time.
//!
//! [`FlapProxy::down`] does to its clients what a crashed daemon does: the listener
//! closes (a unix socket's file stays behind, stale, so connecting is refused, as after
//! a SIGKILL; a TCP port refuses) and every open connection is cut in both directions.
//! [`FlapProxy::up`] listens again on the same path or port. The peer behind it (a real
//! containerd, dockerd or the fake API server) keeps running, so the test can drive it
//! directly while its client (iostall) is cut off.
//!
//! It runs on a runtime of its own: call it from plain (not async) test code.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    runtime::Runtime,
    task::JoinHandle,
};

/// Where a proxy listens or forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

/// The proxy; down and gone when dropped.
pub struct FlapProxy {
    listen: Endpoint,
    upstream: Endpoint,
    rt: Option<Runtime>,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepted: Arc<AtomicU64>,
}

impl std::fmt::Debug for FlapProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlapProxy")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl FlapProxy {
    /// Listens on unix socket `listen`, forwarding to unix socket `upstream`; up.
    pub fn unix(listen: impl Into<PathBuf>, upstream: impl Into<PathBuf>) -> Result<Self> {
        Self::start(
            Endpoint::Unix(listen.into()),
            Endpoint::Unix(upstream.into()),
        )
    }

    /// Listens on a free port of 127.0.0.1, forwarding to `upstream`; up.
    pub fn tcp(upstream: SocketAddr) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Self::start(
            Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], port))),
            Endpoint::Tcp(upstream),
        )
    }

    fn start(listen: Endpoint, upstream: Endpoint) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("flap-proxy")
            .enable_all()
            .build()
            .context("the proxy's runtime")?;
        let mut me = Self {
            listen,
            upstream,
            rt: Some(rt),
            accept: None,
            conns: Arc::default(),
            accepted: Arc::default(),
        };
        me.up()?;
        Ok(me)
    }

    /// Where clients connect.
    pub fn listen(&self) -> &Endpoint {
        &self.listen
    }

    /// `http://127.0.0.1:<port>` of a TCP proxy.
    pub fn url(&self) -> Option<String> {
        match &self.listen {
            Endpoint::Tcp(a) => Some(format!("http://{a}")),
            Endpoint::Unix(_) => None,
        }
    }

    /// Whether it is listening.
    pub fn is_up(&self) -> bool {
        self.accept.is_some()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|c| !c.is_finished());
        conns.len()
    }

    /// Listens again (on the same path or port); no-op when up.
    pub fn up(&mut self) -> Result<()> {
        if self.accept.is_some() {
            return Ok(());
        }
        let rt = self.rt.as_ref().context("the proxy is gone")?;
        let _guard = rt.enter();
        let (conns, accepted, upstream) = (
            Arc::clone(&self.conns),
            Arc::clone(&self.accepted),
            self.upstream.clone(),
        );
        let task = match &self.listen {
            Endpoint::Unix(path) => {
                // The stale file a "crashed" listener left.
                let _ = std::fs::remove_file(path);
                let listener = UnixListener::bind(path)
                    .with_context(|| format!("binding {}", path.display()))?;
                tokio::spawn(async move {
                    while let Ok((client, _)) = listener.accept().await {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        let conn = tokio::spawn(forward(client, upstream.clone()));
                        conns.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
                    }
                })
            }
            Endpoint::Tcp(addr) => {
                let listener = bind_tcp(*addr)?;
                tokio::spawn(async move {
                    while let Ok((client, _)) = listener.accept().await {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        let conn = tokio::spawn(forward(client, upstream.clone()));
                        conns.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
                    }
                })
            }
        };
        self.accept = Some(task);
        Ok(())
    }

    /// Stops listening and cuts every open connection; returns once all are closed.
    pub fn down(&mut self) {
        let Some(rt) = self.rt.as_ref() else { return };
        let mut tasks: Vec<JoinHandle<()>> = self.accept.take().into_iter().collect();
        tasks.extend(
            self.conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..),
        );
        for t in &tasks {
            t.abort();
        }
        // Aborted tasks drop their sockets when they finish: wait for that, so "down"
        // is down when this returns.
        rt.block_on(async {
            for t in tasks {
                let _ = t.await;
            }
        });
    }
}

/// A TCP listener on `addr`, retrying briefly (the port was ours a moment ago).
fn bind_tcp(addr: SocketAddr) -> Result<TcpListener> {
    let mut last = None;
    for _ in 0..50 {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                l.set_nonblocking(true)?;
                return Ok(TcpListener::from_std(l)?);
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(last.map_or_else(|| anyhow::anyhow!("bind"), anyhow::Error::from))
        .with_context(|| format!("binding {addr} again"))
}

/// Copies both ways between `client` and a new connection to `upstream` until either
/// side closes (or the task is aborted, which closes both).
async fn forward<C: AsyncRead + AsyncWrite + Unpin>(mut client: C, upstream: Endpoint) {
    match upstream {
        Endpoint::Unix(path) => {
            if let Ok(mut server) = UnixStream::connect(&path).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        }
        Endpoint::Tcp(addr) => {
            if let Ok(mut server) = TcpStream::connect(addr).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        }
    }
}

impl Drop for FlapProxy {
    fn drop(&mut self) {
        self.down();
        if let Endpoint::Unix(path) = &self.listen {
            let _ = std::fs::remove_file(path);
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
