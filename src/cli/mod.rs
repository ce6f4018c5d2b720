//! Command definitions and llama.cpp-style flag handling.

mod analyze;
mod calibrate;
mod chat;
mod eval;
mod inspect;
mod report;
mod steering;
mod sweep;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use cmrm::{EngineOptions, SamplingParams};

/// Restore the safety alignment of quantized vision-language models at inference time (CMRM)
/// on llama.cpp.
#[derive(Parser)]
#[command(name = "cmrm", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Chat with a GGUF VLM about images (single turn with -p, else interactive).
    Chat(chat::ChatArgs),
    /// Compute CMRM shift vectors over an anchor set and write a vector file.
    Calibrate(calibrate::CalibrateArgs),
    /// Merge vector files calibrated with --shard into one.
    Merge(calibrate::MergeArgs),
    /// Print a vector file's metadata and per-layer norms.
    Inspect(inspect::InspectArgs),
    /// Evaluate conditions (text, image, CMRM) on a data set.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Analyse the representation gap.
    #[command(subcommand)]
    Analyze(analyze::AnalyzeCommand),
    /// Sweep alpha x layer ranges: unsafe rate against utility; choose a default.
    Sweep(sweep::SweepArgs),
    /// One self-contained HTML page from the outputs of eval, analyze and sweep.
    Report(report::ReportArgs),
}

impl Cli {
    /// Runs the chosen command.
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Chat(args) => chat::run(args),
            Command::Calibrate(args) => calibrate::run(args),
            Command::Merge(args) => calibrate::merge(args),
            Command::Inspect(args) => inspect::run(args),
            Command::Eval(cmd) => eval::run(cmd),
            Command::Analyze(cmd) => analyze::run(cmd),
            Command::Sweep(args) => sweep::run(args),
            Command::Report(args) => report::run(args),
        }
    }
}

/// llama.cpp's multi-letter short flags (`-ngl`, `-mm`, `-sys`, ...) rewritten to the long
/// forms clap understands.
pub fn llama_style_args(args: impl Iterator<Item = String>) -> Vec<String> {
    args.map(|a| {
        match a.as_str() {
            "-ngl" => "--n-gpu-layers",
            "-mm" => "--mmproj",
            "-sys" => "--system",
            "-cnv" => "--conversation",
            _ => return a,
        }
        .to_string()
    })
    .collect()
}

/// Model loading flags shared by every command that runs a model.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Text model GGUF.
    #[arg(short = 'm', long)]
    pub model: PathBuf,
    /// Multimodal projector GGUF (LLaVA-style mmproj).
    #[arg(long)]
    pub mmproj: Option<PathBuf>,
    /// Context size in tokens.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    pub ctx_size: u32,
    /// Batch size for prompt processing.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    pub batch_size: u32,
    /// CPU threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<i32>,
    /// Layers to offload to the GPU (-ngl; -1 = all).
    #[arg(long = "n-gpu-layers", default_value_t = -1, allow_negative_numbers = true)]
    pub n_gpu_layers: i32,
    /// Chat template: a llama.cpp built-in name (chatml, llama3, vicuna, ...) or a template.
    #[arg(long = "chat-template")]
    pub chat_template: Option<String>,
    /// Print llama.cpp's log and timings on stderr.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

impl ModelArgs {
    /// Engine options from the flags.
    pub fn engine_options(&self) -> EngineOptions {
        let mut o = EngineOptions::new(&self.model, self.mmproj.clone());
        o.n_ctx = self.ctx_size;
        o.n_batch = self.batch_size;
        if let Some(t) = self.threads {
            o.n_threads = t;
        }
        o.n_gpu_layers = self.n_gpu_layers;
        o.chat_template = self.chat_template.clone();
        o.verbose = self.verbose;
        o
    }
}

/// Sampling flags (llama.cpp's names and defaults).
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Tokens to generate (-1 = until end of text or full context).
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    pub n_predict: i32,
    /// Temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    /// Top-k sampling (0 = off).
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    /// Top-p sampling (1.0 = off).
    #[arg(long = "top-p", default_value_t = 0.95)]
    pub top_p: f32,
    /// Random seed (-1 = random).
    #[arg(short = 's', long, default_value_t = -1, allow_negative_numbers = true)]
    pub seed: i64,
    /// Never stop at end-of-text tokens.
    #[arg(long = "ignore-eos")]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    /// Sampling parameters; a random seed is drawn from the clock when `--seed` is -1.
    pub fn params(&self) -> SamplingParams {
        let seed = if self.seed < 0 {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        } else {
            self.seed as u64
        };
        SamplingParams {
            temp: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            seed,
        }
    }
}
