//! The server: slots, the accept loop (connection limit, header timeout, graceful shutdown).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::parse::Limits;
use super::{http, metrics, slots};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::sampling::SamplingParams;
use crate::session::SteerOverride;
use crate::steer::CmrmSteering;

/// How to serve.
pub struct ServeOptions {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// The engine the slots share.
    pub engine: &'static Engine,
    /// One steering per slot (`--parallel`).
    pub steerings: Vec<CmrmSteering>,
    /// Requests that may wait for a slot before the server answers 503.
    pub queue: usize,
    /// Sampling settings of the server.
    pub sampling: SamplingParams,
    /// CMRM settings every request starts from.
    pub steering: SteerOverride,
    /// Request limits.
    pub limits: Limits,
    /// Accepted API keys (empty: none needed).
    pub keys: Vec<String>,
    /// The model name answers carry.
    pub model: String,
    /// Whether a projector is loaded.
    pub vision: bool,
    /// Largest request body, bytes.
    pub max_request_bytes: usize,
    /// How long a request waits for its body or a slot, and a streaming client may take no
    /// piece of its answer before the answer is stopped.
    pub timeout: Duration,
    /// Serve `/metrics`.
    pub metrics: bool,
    /// Context size of a slot.
    pub n_ctx: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// The address clients reach when it is not `addr`: that of the `--rpc` front
    /// ([`super::run_front`]) before this model process. Origin and Host are checked against
    /// it.
    pub public: Option<SocketAddr>,
}

/// The server's tokio runtime (two workers: the model runs on the slots' own threads).
pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start the server runtime: {e}")))
}

/// Serves until SIGINT or SIGTERM; then finishes the requests under way (at most 30 s) and
/// returns. `ready` is called with the bound address once the server listens.
pub fn run(options: ServeOptions, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let rt = runtime()?;
    rt.block_on(async move {
        let metrics = Arc::new(metrics::Metrics::default());
        let pool = slots::Pool::start(
            options.engine,
            options.steerings,
            options.queue,
            options.timeout,
            metrics.clone(),
        )?;
        let listener = tokio::net::TcpListener::bind(options.addr)
            .await
            .map_err(|e| Error::Invalid(format!("cannot listen on {}: {e}", options.addr)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let shared = Arc::new(http::Shared {
            engine: options.engine,
            pool,
            metrics,
            sampling: options.sampling,
            steering: options.steering,
            limits: options.limits,
            keys: options.keys,
            model: options.model,
            vision: options.vision,
            max_request_bytes: options.max_request_bytes,
            timeout: options.timeout,
            metrics_endpoint: options.metrics,
            n_ctx: options.n_ctx,
            addr: options.public.unwrap_or(addr),
        });
        ready(addr);
        let app = http::router(shared.clone());
        accept(listener, app, &shared, options.max_connections).await;
        Ok(())
    })
}

/// Bytes a connection's kernel send buffer holds at most (the kernel doubles it): with it, a
/// streaming client that stops reading fills the buffer after about a hundred pieces, and
/// the slot notices the stall. Answers are small; this costs them nothing.
const SEND_BUFFER: usize = 16 << 10;
/// Longest wait for a request's header (and between requests on a kept-alive connection),
/// unless --timeout is shorter.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves connections, at most `max_connections` at once (more wait in the kernel's backlog),
/// until SIGINT or SIGTERM; then refuses new requests, lets the ones under way finish (30 s
/// at most) and returns.
async fn accept(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shared: &http::Shared,
    max_connections: usize,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let max = u32::try_from(max_connections.max(1)).unwrap_or(u32::MAX);
    let open = Arc::new(tokio::sync::Semaphore::new(max as usize));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let header_timeout = shared.timeout.min(HEADER_TIMEOUT);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = open.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    eprintln!("cmrm serve: accept failed ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop_rx.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    eprintln!("cmrm serve: stopping; finishing the requests under way");
    shared.pool.close();
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(30), open.acquire_many(max))
        .await
        .is_err()
    {
        eprintln!("cmrm serve: requests still under way after 30 s; stopping anyway");
    }
}

pub(super) async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}
