//! `cmrm serve`: the OpenAI-compatible multimodal server with per-request CMRM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;

use cmrm::serve::{FrontOptions, Limits, ServeOptions};
use cmrm::Engine;

use super::steering::SteerArgs;
use super::{ModelArgs, SamplingArgs};

/// llama-server's default temperature.
const SERVER_TEMP: f32 = 0.8;

/// Flags of `cmrm serve` (llama-server's names where it has them).
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    steering: SteerArgs,
    /// Address to listen on (loopback by default; another address exposes the server).
    #[arg(help_heading = "Server and limits", long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port (0 = any free port; the one chosen is printed).
    #[arg(help_heading = "Server and limits", long, default_value_t = 8080)]
    port: u16,
    /// Slots answering at once (-np), each with a context of --ctx-size.
    #[arg(
        help_heading = "Server and limits",
        long = "parallel",
        default_value_t = 1
    )]
    parallel: usize,
    /// Requests that may wait for a slot; more get 503.
    #[arg(help_heading = "Server and limits", long, default_value_t = 8)]
    queue: usize,
    /// API keys, comma-separated (Authorization: Bearer KEY or X-Api-Key).
    #[arg(
        help_heading = "Server and limits",
        long = "api-key",
        value_delimiter = ','
    )]
    api_key: Vec<String>,
    /// A file of API keys, one per line (# starts a comment).
    #[arg(help_heading = "Server and limits", long = "api-key-file")]
    api_key_file: Option<PathBuf>,
    /// Seconds a request may take to send its body or wait for a slot, and a streaming client
    /// may read nothing before its answer is stopped (a request's header must come within
    /// the smaller of this and 30 s).
    #[arg(
        help_heading = "Server and limits",
        long = "timeout",
        short = 'o',
        default_value_t = 600
    )]
    timeout: u64,
    /// Connections served at once; more wait in the kernel's backlog.
    #[arg(
        help_heading = "Server and limits",
        long = "max-connections",
        default_value_t = 128
    )]
    max_connections: usize,
    /// Serve file:// images from below this folder.
    #[arg(help_heading = "Server and limits", long = "media-path")]
    media_path: Option<PathBuf>,
    /// Fetch http(s):// image URLs (10 s and --max-image-bytes at most).
    #[arg(help_heading = "Server and limits", long = "media-fetch")]
    media_fetch: bool,
    /// Largest image, in bytes.
    #[arg(help_heading = "Server and limits", long = "max-image-bytes", default_value_t = 20 << 20)]
    max_image_bytes: usize,
    /// Largest image, in pixels (at most cmrm's own limit, the default), checked from the
    /// image's header before it is decoded.
    #[arg(help_heading = "Server and limits", long = "max-image-pixels", default_value_t = cmrm::media::MAX_PIXELS)]
    max_image_pixels: u64,
    /// Most images in one request.
    #[arg(
        help_heading = "Server and limits",
        long = "max-images",
        default_value_t = 8
    )]
    max_images: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(
        help_heading = "Server and limits",
        long = "max-tokens",
        default_value_t = 4096
    )]
    max_tokens: usize,
    /// Largest request body, in bytes.
    #[arg(help_heading = "Server and limits", long = "max-request-bytes", default_value_t = 64 << 20)]
    max_request_bytes: usize,
    /// Serve Prometheus metrics at /metrics.
    #[arg(help_heading = "Server and limits", long)]
    metrics: bool,
    /// The model name answers carry (default: the model file's name).
    #[arg(help_heading = "Server and limits", short = 'a', long)]
    alias: Option<String>,
}

/// Runs the server until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> Result<()> {
    anyhow::ensure!(args.parallel >= 1, "--parallel must be at least 1");
    anyhow::ensure!(
        args.max_connections >= 1,
        "--max-connections must be at least 1"
    );
    anyhow::ensure!(args.timeout >= 1, "--timeout must be at least 1 second");
    anyhow::ensure!(
        args.max_image_pixels <= cmrm::media::MAX_PIXELS,
        "--max-image-pixels {} is above cmrm's limit of {} pixels; give at most that",
        args.max_image_pixels,
        cmrm::media::MAX_PIXELS
    );
    // Behind the --rpc front: the address its clients reach.
    let front_addr = std::env::var(cmrm::serve::WORKER_ENV).ok();
    let worker = front_addr.is_some();
    if !args.model.rpc.is_empty() && !worker {
        return front(&args);
    }
    let mut keys: Vec<String> = args
        .api_key
        .iter()
        .filter(|k| !k.is_empty())
        .cloned()
        .collect();
    if let Some(f) = &args.api_key_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("{}: cannot read the API key file", f.display()))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
        anyhow::ensure!(!keys.is_empty(), "{}: no API key in the file", f.display());
    }
    if let Some(p) = &args.media_path {
        anyhow::ensure!(p.is_dir(), "--media-path {}: not a folder", p.display());
    }
    let plan = args.steering.plan(&args.model)?;
    let engine: &'static Engine = Box::leak(Box::new(Engine::load(
        args.model.engine_options_with(true)?,
    )?));
    let generate = args.sampling.options(engine.model(), SERVER_TEMP)?;
    let cmrm::sampling::Sampling::Chain(sampling) = generate.sampling else {
        anyhow::bail!("the server samples with llama.cpp's chain");
    };
    let (steerings, steering, fit) = plan.server_steering(engine, args.parallel)?;
    super::steering::tell_fit(&plan, fit);
    let model = args.alias.clone().unwrap_or_else(|| {
        args.model
            .model
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned())
    });
    let addr = if worker {
        // The model process behind `front`: loopback, any port.
        SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 0)
    } else {
        SocketAddr::new(args.host, args.port)
    };
    let options = ServeOptions {
        addr,
        engine,
        steerings,
        queue: args.queue,
        sampling,
        steering,
        limits: Limits {
            max_image_bytes: args.max_image_bytes,
            max_image_pixels: args.max_image_pixels,
            max_images: args.max_images,
            max_tokens: args.max_tokens,
            default_max_tokens: generate.max_tokens,
            media_path: args.media_path.clone(),
            media_fetch: args.media_fetch,
        },
        keys,
        model,
        vision: engine.has_projector(),
        max_request_bytes: args.max_request_bytes,
        timeout: Duration::from_secs(args.timeout),
        metrics: args.metrics,
        n_ctx: args.model.ctx_size as usize,
        max_connections: args.max_connections,
        public: front_addr.and_then(|a| a.parse().ok()),
    };
    let parallel = args.parallel;
    cmrm::serve::run(options, |addr| {
        eprintln!(
            "cmrm serve: listening on http://{addr} ({parallel} slot(s)); a chat page is at /"
        );
    })?;
    Ok(())
}

/// With --rpc: the listening front, the model in a child process it restarts when an RPC server
/// drops (ggml-rpc ends the process then).
fn front(args: &ServeArgs) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the cmrm program to start")?;
    let mut worker = vec![exe.to_string_lossy().into_owned()];
    worker.extend(std::env::args().skip(1));
    let options = FrontOptions {
        addr: SocketAddr::new(args.host, args.port),
        rpc: args.model.rpc.clone(),
        worker,
    };
    cmrm::serve::run_front(options, |addr| {
        eprintln!(
            "cmrm serve: listening on http://{addr}; the model runs in a child process, started \
             again when an RPC server drops; a chat page is at /"
        );
    })?;
    Ok(())
}
