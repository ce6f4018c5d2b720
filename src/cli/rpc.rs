//! `cmrm rpc-server` (llama.cpp's rpc-server: lend this machine's devices to a model loaded
//! elsewhere), `cmrm devices` (llama.cpp's `--list-devices`) and the long `--version`.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;

use cmrm::ffi::{self, DeviceKind, RpcEndpoint};

/// The long `--version`: cmrm, the llama.cpp it carries, and the backends compiled in.
pub fn long_version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let gpu: Vec<&str> = [
            (cfg!(feature = "cuda"), "CUDA"),
            (cfg!(feature = "metal"), "Metal"),
            (cfg!(feature = "vulkan"), "Vulkan"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        format!(
            "{}\nllama.cpp: the source vendored by llama-cpp-sys-2 0.1.160 (ggml 0.26.0)\n\
             backends compiled in: CPU, RPC{}{}\n\
             (`cmrm devices` lists the devices this machine and any --rpc servers offer; a \
             build linked dynamically uses whatever backends its llama.cpp libraries carry)",
            env!("CARGO_PKG_VERSION"),
            if gpu.is_empty() { "" } else { ", " },
            gpu.join(", ")
        )
    })
}

/// `cmrm rpc-server`.
#[derive(Args, Debug)]
pub struct RpcServerArgs {
    /// Address to listen on. The RPC protocol has no authentication and no encryption: never
    /// expose it to an untrusted network.
    #[arg(short = 'H', long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(short = 'p', long, default_value_t = 50052)]
    port: u16,
    /// CPU threads when the CPU is lent [default: all cores].
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Devices to lend, comma-separated names from `cmrm devices` [default: every GPU, else
    /// the CPU].
    #[arg(short = 'd', long = "device", value_delimiter = ',')]
    device: Vec<String>,
    /// Keep received tensors in this folder, so that a model sent again loads from disk
    /// (llama.cpp's rpc-server -c).
    #[arg(short = 'c', long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Print llama.cpp's log.
    #[arg(short = 'v', long)]
    verbose: bool,
}

/// `cmrm devices`.
#[derive(Args, Debug)]
pub struct DevicesArgs {
    /// RPC servers whose devices to list too, HOST:PORT,...
    #[arg(long, value_delimiter = ',')]
    rpc: Vec<RpcEndpoint>,
}

/// Runs the RPC server until it is killed.
pub fn serve(args: RpcServerArgs) -> Result<()> {
    ffi::init_backend(args.verbose);
    if !is_loopback(&args.host) {
        eprintln!(
            "cmrm rpc-server: WARNING: listening on {} — the RPC protocol has no \
             authentication and no encryption; never run it on an open or untrusted network",
            args.host
        );
    }
    if let Some(dir) = &args.cache {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--cache {}: cannot create the folder", dir.display()))?;
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(4)
    });
    let endpoint = if args.host.contains(':') && !args.host.starts_with('[') {
        format!("[{}]:{}", args.host, args.port)
    } else {
        format!("{}:{}", args.host, args.port)
    };
    ffi::serve_rpc(&endpoint, args.cache.as_deref(), threads, &args.device)?;
    Ok(())
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Prints every backend and device, as llama.cpp's `--list-devices`.
pub fn devices(args: DevicesArgs) -> Result<()> {
    ffi::add_rpc_servers(&args.rpc)?;
    println!("backends: {}", ffi::backends().join(", "));
    println!("devices:");
    for d in ffi::devices() {
        let kind = match d.kind {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Gpu => "gpu",
            DeviceKind::IntegratedGpu => "igpu",
            DeviceKind::Accelerator => "accel",
        };
        println!(
            "  {}: {} [{}, {kind}] ({} MiB, {} MiB free)",
            d.name,
            d.description,
            d.backend,
            d.memory_total >> 20,
            d.memory_free >> 20
        );
    }
    Ok(())
}
