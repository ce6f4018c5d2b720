//! `cmrm serve`: an OpenAI-compatible multimodal chat server (a drop-in for llama-server's
//! `/v1/chat/completions`) with CMRM on every image request, controllable per request through
//! a `cmrm` extension object, and a page to try it at `/`.

mod api;
mod front;
mod http;
mod metrics;
mod request;
mod slots;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use api::{ApiError, CmrmRequest};
pub use front::{run_front, FrontOptions, WORKER_ENV};
pub use request::Limits;

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
    /// How long a request waits for its body or a slot.
    pub timeout: Duration,
    /// Serve `/metrics`.
    pub metrics: bool,
    /// Context size of a slot.
    pub n_ctx: usize,
}

/// Serves until SIGINT or SIGTERM; then finishes the requests under way (at most 30 s) and
/// returns. `ready` is called with the bound address once the server listens.
pub fn run(options: ServeOptions, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start the server runtime: {e}")))?;
    rt.block_on(async move {
        let metrics = Arc::new(metrics::Metrics::default());
        let pool = slots::Pool::start(
            options.engine,
            options.steerings,
            options.queue,
            metrics.clone(),
        )?;
        let shared = Arc::new(http::Shared {
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
        });
        let listener = tokio::net::TcpListener::bind(options.addr)
            .await
            .map_err(|e| Error::Invalid(format!("cannot listen on {}: {e}", options.addr)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        ready(addr);
        let app = http::router(shared.clone());
        let stop = shutdown_signal();
        let closing = shared.clone();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            stop.await;
            eprintln!("cmrm serve: stopping; finishing the requests under way");
            closing.pool.close();
        });
        let server = tokio::spawn(async move { server.await });
        // After the signal, give the requests under way 30 s.
        let mut server = server;
        tokio::select! {
            r = &mut server => {
                r.map_err(|e| Error::Invalid(e.to_string()))?
                    .map_err(|e| Error::Invalid(format!("server error: {e}")))?;
            }
            _ = async {
                shutdown_signal().await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            } => {
                eprintln!("cmrm serve: requests still under way after 30 s; stopping anyway");
            }
        }
        Ok(())
    })
}

async fn shutdown_signal() {
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
