//! Command definitions and llama.cpp-style flag handling. Flags are parsed once into the
//! library's types (clap value parsers over their `FromStr`), so a misspelt value is refused
//! before any model loads.

mod analyze;
mod calibrate;
mod chat;
mod errors;
mod eval;
mod inspect;
mod report;
mod steering;
mod sweep;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use cmrm::ffi::{FlashAttn, KvType, LoadMode};
use cmrm::template::TemplateChoice;
use cmrm::{EngineOptions, GenerateOptions, SamplingParams};

pub use errors::report;

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
            "-sys" => "--system-prompt",
            "-cnv" => "--conversation",
            "-ub" => "--ubatch-size",
            "-tb" => "--threads-batch",
            "-fa" => "--flash-attn",
            "-ctk" => "--cache-type-k",
            "-ctv" => "--cache-type-v",
            _ => return a,
        }
        .to_string()
    })
    .collect()
}

/// Model loading flags shared by every command that runs a model (llama.cpp's names and
/// defaults).
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Text model GGUF.
    #[arg(short = 'm', long)]
    pub model: PathBuf,
    /// Multimodal projector GGUF (mmproj) (-mm).
    #[arg(long)]
    pub mmproj: Option<PathBuf>,
    /// Context size in tokens (0 = the model's training context).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    pub ctx_size: u32,
    /// Logical batch size for prompt processing.
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048)]
    pub batch_size: u32,
    /// Physical batch size (-ub).
    #[arg(long = "ubatch-size", default_value_t = 512)]
    pub ubatch_size: u32,
    /// CPU threads for generation (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<i32>,
    /// CPU threads for prompt processing (-tb; default: --threads).
    #[arg(long = "threads-batch")]
    pub threads_batch: Option<i32>,
    /// Layers to offload to the GPU (-ngl; -1 = all).
    #[arg(long = "n-gpu-layers", default_value_t = -1, allow_negative_numbers = true)]
    pub n_gpu_layers: i32,
    /// Flash attention (-fa): on, off or auto.
    #[arg(long = "flash-attn", default_value = "auto")]
    pub flash_attn: FlashAttn,
    /// K cache type (-ctk): f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1.
    #[arg(long = "cache-type-k", default_value = "f16")]
    pub cache_type_k: KvType,
    /// V cache type (-ctv).
    #[arg(long = "cache-type-v", default_value = "f16")]
    pub cache_type_v: KvType,
    /// Read the model into memory instead of memory-mapping it.
    #[arg(long = "no-mmap")]
    pub no_mmap: bool,
    /// Keep the model in RAM (no swapping).
    #[arg(long)]
    pub mlock: bool,
    /// A llama.cpp built-in chat template by name (chatml, llama3, vicuna, ...) instead of
    /// the model's own.
    #[arg(long = "chat-template", value_name = "NAME")]
    pub chat_template: Option<String>,
    /// Minimum image tokens (dynamic-resolution projectors).
    #[arg(long = "image-min-tokens")]
    pub image_min_tokens: Option<u32>,
    /// Maximum image tokens (dynamic-resolution projectors).
    #[arg(long = "image-max-tokens")]
    pub image_max_tokens: Option<u32>,
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
        o.n_ubatch = self.ubatch_size;
        if let Some(t) = self.threads {
            o.n_threads = t;
            o.n_threads_batch = t;
        }
        if let Some(t) = self.threads_batch {
            o.n_threads_batch = t;
        }
        o.n_gpu_layers = self.n_gpu_layers;
        o.flash_attn = self.flash_attn;
        o.type_k = self.cache_type_k;
        o.type_v = self.cache_type_v;
        o.load_mode = match (self.no_mmap, self.mlock) {
            (false, false) => LoadMode::Mmap,
            (true, false) => LoadMode::Read,
            (false, true) => LoadMode::MmapLocked,
            (true, true) => LoadMode::ReadLocked,
        };
        if let Some(t) = &self.chat_template {
            o.template = TemplateChoice::Builtin(t.clone());
        }
        o.image_min_tokens = self.image_min_tokens;
        o.image_max_tokens = self.image_max_tokens;
        o.verbose = self.verbose;
        o
    }
}

/// Sampling flags (llama.cpp's names and defaults).
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Tokens to generate (-1 = until the end of the answer or a full context).
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    pub n_predict: i64,
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
    /// Generation options; a random seed is drawn from the clock when `--seed` is -1.
    pub fn options(&self) -> GenerateOptions {
        let seed = if self.seed < 0 {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        } else {
            self.seed as u64
        };
        GenerateOptions {
            sampling: SamplingParams {
                temp: self.temp,
                top_k: self.top_k,
                top_p: self.top_p,
                seed,
            },
            max_tokens: usize::try_from(self.n_predict).ok(),
            ignore_eos: self.ignore_eos,
            stop: Vec::new(),
        }
    }
}
