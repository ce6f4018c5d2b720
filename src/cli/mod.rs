//! Command definitions and llama.cpp-style flag handling. Flags are parsed once into the
//! library's types (clap value parsers over their `FromStr`), so a misspelt value is refused
//! before any model loads.

mod analyze;
mod calibrate;
mod card;
mod chat;
mod errors;
mod eval;
mod files;
mod help;
mod inspect;
mod judges;
mod quantize;
mod report;
mod rpc;
mod serve;
mod steering;
mod sweep;

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};

use cmrm::ffi::Model;
use cmrm::ffi::{FlashAttn, KvType, LoadMode};
use cmrm::sampling::{
    parse_logit_bias, parse_samplers, Mirostat, SamplerKind, Sampling, SamplingParams,
};
use cmrm::template::{TemplateChoice, TemplateOptions};
use cmrm::{EngineOptions, GenerateOptions};

pub use errors::report;

/// Restore the safety alignment of quantized vision-language models at inference time (CMRM)
/// on llama.cpp.
#[derive(Parser)]
#[command(
    name = "cmrm",
    version,
    long_version = rpc::long_version(),
    about,
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The usual path through the commands, under `cmrm --help`.
const AFTER_HELP: &str = "\
The usual path (M = -m MODEL.gguf --mmproj MMPROJ.gguf):
  cmrm calibrate $M --anchors vendor/sets/harmful-anchors.jsonl   # writes MODEL.cmrm.gguf beside the model
  cmrm chat $M --image photo.jpg -p \"What is in this picture?\"     # steered with that file (-v says how)
  cmrm serve $M --port 8080                                        # OpenAI API and a chat page
  cmrm eval safety $M --data vendor/sets/harmful-eval.jsonl        # unsafe rate with and without CMRM

`cmrm COMMAND --help` lists a command's flags; llama.cpp's flag names work (-ngl, -c, -fa, --temp).
Every command and file format: docs/ in the source, starting at README.md.";

#[derive(Subcommand)]
enum Command {
    /// Chat with a GGUF VLM about images (single turn with -p, else interactive).
    #[command(long_about = help::CHAT, after_long_help = help::CHAT_EXAMPLES)]
    Chat(chat::ChatArgs),
    /// Compute CMRM shift vectors over an anchor set and write a vector file.
    #[command(long_about = help::CALIBRATE, after_long_help = help::CALIBRATE_EXAMPLES)]
    Calibrate(calibrate::CalibrateArgs),
    /// Merge vector files calibrated with --shard into one.
    #[command(long_about = help::MERGE)]
    Merge(calibrate::MergeArgs),
    /// Print a vector file's metadata and per-layer norms.
    #[command(long_about = help::INSPECT)]
    Inspect(inspect::InspectArgs),
    /// Evaluate conditions (text, image, CMRM) on a data set.
    #[command(subcommand, long_about = help::EVAL)]
    Eval(eval::EvalCommand),
    /// Analyse the representation gap.
    #[command(subcommand, long_about = help::ANALYZE)]
    Analyze(analyze::AnalyzeCommand),
    /// Sweep alpha x layer ranges: unsafe rate against utility; choose a default.
    #[command(long_about = help::SWEEP, after_long_help = help::SWEEP_EXAMPLES)]
    Sweep(sweep::SweepArgs),
    /// One self-contained HTML page from the outputs of eval, analyze and sweep.
    #[command(long_about = help::REPORT)]
    Report(report::ReportArgs),
    /// An OpenAI-compatible multimodal chat server with per-request CMRM, and a chat page.
    #[command(long_about = help::SERVE, after_long_help = help::SERVE_EXAMPLES)]
    Serve(serve::ServeArgs),
    /// Write the Markdown card a model repository shows for a vector file.
    #[command(long_about = help::CARD)]
    Card(card::CardArgs),
    /// Quantize a model GGUF with llama.cpp's quantizer (as llama-quantize).
    #[command(long_about = help::QUANTIZE)]
    Quantize(quantize::QuantizeArgs),
    /// Lend this machine's CPU or GPUs to cmrm or llama.cpp elsewhere (llama.cpp's rpc-server).
    #[command(long_about = help::RPC_SERVER)]
    RpcServer(rpc::RpcServerArgs),
    /// List the backends and devices this build can compute on, RPC servers included.
    #[command(long_about = help::DEVICES)]
    Devices(rpc::DevicesArgs),
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
            Command::Serve(args) => serve::run(args),
            Command::Card(args) => card::run(args),
            Command::Quantize(args) => quantize::run(args),
            Command::RpcServer(args) => rpc::serve(args),
            Command::Devices(args) => rpc::devices(args),
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
            "-np" => "--parallel",
            "-dev" => "--device",
            "-ts" => "--tensor-split",
            _ => return a,
        }
        .to_string()
    })
    .collect()
}

/// Model loading flags shared by every command that runs a model (llama.cpp's names and
/// defaults).
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Model and llama.cpp")]
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
    /// Devices to offload to, comma-separated names from `cmrm devices` (-dev; "none": the
    /// CPU only) [default: every GPU and RPC server].
    #[arg(long = "device", value_name = "DEV1,DEV2,..", value_delimiter = ',')]
    pub device: Option<Vec<String>>,
    /// Fraction of the layers for each device, in order, e.g. 3,1 (-ts) [default: by free memory].
    #[arg(long = "tensor-split", value_name = "N0,N1,..", value_delimiter = ',', value_parser = parse_proportion)]
    pub tensor_split: Vec<f32>,
    /// RPC servers to offload layers to, HOST:PORT,... (started with `cmrm rpc-server` or
    /// llama.cpp's rpc-server). The protocol has no authentication: use trusted networks only.
    #[arg(long, value_name = "HOST:PORT,..", value_delimiter = ',')]
    pub rpc: Vec<cmrm::ffi::RpcEndpoint>,
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
    /// Render the chat template with Jinja (the model's own template as llama-server does).
    #[arg(long, overrides_with = "no_jinja")]
    pub jinja: bool,
    /// Use llama.cpp's built-in templates (llama-mtmd-cli's default).
    #[arg(long = "no-jinja")]
    pub no_jinja: bool,
    /// A chat template instead of the model's: a built-in name (chatml, llama3, vicuna, ...),
    /// or with --jinja the template text itself.
    #[arg(
        long = "chat-template",
        value_name = "NAME",
        conflicts_with = "chat_template_file"
    )]
    pub chat_template: Option<String>,
    /// A file holding a chat template (with --jinja, a Jinja template).
    #[arg(long = "chat-template-file", value_name = "FILE")]
    pub chat_template_file: Option<PathBuf>,
    /// Minimum image tokens (dynamic-resolution projectors).
    #[arg(long = "image-min-tokens")]
    pub image_min_tokens: Option<u32>,
    /// Maximum image tokens (dynamic-resolution projectors).
    #[arg(long = "image-max-tokens")]
    pub image_max_tokens: Option<u32>,
    /// MiB of image embeddings kept for reuse: an image shown again (a corruption image, the
    /// same photo in another condition or request) is not encoded again (0: never reuse).
    #[arg(long = "image-cache", value_name = "MIB", default_value_t = 256)]
    pub image_cache: usize,
    /// Print llama.cpp's log and timings on stderr.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

impl ModelArgs {
    /// Engine options from the flags; `jinja_default` is whether Jinja renders templates when
    /// neither --jinja nor --no-jinja is given (llama-mtmd-cli: no; llama-server: yes).
    pub fn engine_options_with(&self, jinja_default: bool) -> Result<EngineOptions> {
        let mut o = self.base_options();
        let choice = match (&self.chat_template, &self.chat_template_file) {
            (Some(t), _) => TemplateChoice::Named(t.clone()),
            (_, Some(f)) => {
                TemplateChoice::File(std::fs::read_to_string(f).with_context(|| {
                    format!("{}: cannot read the chat template file", f.display())
                })?)
            }
            _ => TemplateChoice::Model,
        };
        let jinja = if self.jinja {
            true
        } else if self.no_jinja {
            false
        } else {
            jinja_default
        };
        o.template = TemplateOptions { choice, jinja };
        Ok(o)
    }

    /// Engine options from the flags, templates as llama-mtmd-cli renders them (built-in
    /// templates unless --jinja).
    pub fn engine_options(&self) -> Result<EngineOptions> {
        self.engine_options_with(false)
    }

    fn base_options(&self) -> EngineOptions {
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
        o.devices = self
            .device
            .as_ref()
            .map(|d| d.iter().filter(|n| n.as_str() != "none").cloned().collect());
        o.tensor_split = self.tensor_split.clone();
        o.rpc = self.rpc.clone();
        o.flash_attn = self.flash_attn;
        o.type_k = self.cache_type_k;
        o.type_v = self.cache_type_v;
        o.load_mode = match (self.no_mmap, self.mlock) {
            (false, false) => LoadMode::Mmap,
            (true, false) => LoadMode::Read,
            (false, true) => LoadMode::MmapLocked,
            (true, true) => LoadMode::ReadLocked,
        };
        o.image_min_tokens = self.image_min_tokens;
        o.image_max_tokens = self.image_max_tokens;
        o.verbose = self.verbose;
        o.image_cache_bytes = self.image_cache << 20;
        o
    }
}

/// Sampling flags (llama.cpp's names and defaults). A flag left unset takes the model's
/// `general.sampling.*` recommendation when its GGUF has one, as llama.cpp does.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Sampling (llama.cpp's flags and defaults)")]
pub struct SamplingArgs {
    /// Tokens to generate (-1 = until the end of the answer or a full context).
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    pub n_predict: i64,
    /// Random seed (-1 = random).
    #[arg(short = 's', long, default_value_t = -1, allow_negative_numbers = true)]
    pub seed: i64,
    /// Temperature (0 keeps only the most likely token) [default: 0.2 in chat, as
    /// llama-mtmd-cli; 0.8 in serve, as llama-server].
    #[arg(long)]
    pub temp: Option<f32>,
    /// Top-k (0 = off) [default: 40].
    #[arg(long = "top-k")]
    pub top_k: Option<i32>,
    /// Top-p (1.0 = off) [default: 0.95].
    #[arg(long = "top-p")]
    pub top_p: Option<f32>,
    /// Min-p (0.0 = off) [default: 0.05].
    #[arg(long = "min-p")]
    pub min_p: Option<f32>,
    /// Locally typical sampling p (1.0 = off).
    #[arg(long = "typical", default_value_t = 1.0)]
    pub typical: f32,
    /// Top-n-sigma (-1 = off).
    #[arg(long = "top-n-sigma", default_value_t = -1.0, allow_negative_numbers = true)]
    pub top_n_sigma: f32,
    /// XTC probability (0 = off) [default: 0].
    #[arg(long = "xtc-probability")]
    pub xtc_probability: Option<f32>,
    /// XTC threshold [default: 0.1].
    #[arg(long = "xtc-threshold")]
    pub xtc_threshold: Option<f32>,
    /// Dynamic temperature range (0 = off).
    #[arg(long = "dynatemp-range", default_value_t = 0.0)]
    pub dynatemp_range: f32,
    /// Dynamic temperature exponent.
    #[arg(long = "dynatemp-exp", default_value_t = 1.0)]
    pub dynatemp_exp: f32,
    /// Tokens the penalties look back over (0 = off) [default: 64].
    #[arg(long = "repeat-last-n")]
    pub repeat_last_n: Option<i32>,
    /// Repetition penalty (1.0 = off) [default: 1.0].
    #[arg(long = "repeat-penalty")]
    pub repeat_penalty: Option<f32>,
    /// Presence penalty (0 = off).
    #[arg(
        long = "presence-penalty",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub presence_penalty: f32,
    /// Frequency penalty (0 = off).
    #[arg(
        long = "frequency-penalty",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub frequency_penalty: f32,
    /// DRY multiplier (0 = off).
    #[arg(long = "dry-multiplier", default_value_t = 0.0)]
    pub dry_multiplier: f32,
    /// DRY base.
    #[arg(long = "dry-base", default_value_t = 1.75)]
    pub dry_base: f32,
    /// DRY allowed length.
    #[arg(long = "dry-allowed-length", default_value_t = 2)]
    pub dry_allowed_length: i32,
    /// DRY look-back (0 = off).
    #[arg(long = "dry-penalty-last-n", default_value_t = 64)]
    pub dry_penalty_last_n: i32,
    /// A DRY sequence breaker (repeatable; replaces the defaults; "none" for none).
    #[arg(long = "dry-sequence-breaker")]
    pub dry_sequence_breaker: Vec<String>,
    /// Mirostat: 0 (off), 1 or 2 [default: 0].
    #[arg(long)]
    pub mirostat: Option<Mirostat>,
    /// Mirostat learning rate (eta) [default: 0.1].
    #[arg(long = "mirostat-lr")]
    pub mirostat_lr: Option<f32>,
    /// Mirostat target entropy (tau) [default: 5.0].
    #[arg(long = "mirostat-ent")]
    pub mirostat_ent: Option<f32>,
    /// Samplers in order, names separated by ';' or letters (default: edskypmxt).
    #[arg(long, alias = "sampling-seq", value_parser = |s: &str| parse_samplers(s).map(SamplerList))]
    pub samplers: Option<SamplerList>,
    /// Bias a token, TOKEN_ID+BIAS or TOKEN_ID-BIAS (repeatable; -inf bans it).
    #[arg(short = 'l', long = "logit-bias", value_parser = parse_logit_bias, allow_hyphen_values = true)]
    pub logit_bias: Vec<(i32, f32)>,
    /// A GBNF grammar the answer must follow.
    #[arg(long, conflicts_with_all = ["grammar_file", "json_schema", "json_schema_file"])]
    pub grammar: Option<String>,
    /// A file with a GBNF grammar.
    #[arg(long = "grammar-file", conflicts_with_all = ["json_schema", "json_schema_file"])]
    pub grammar_file: Option<PathBuf>,
    /// A JSON schema the answer must follow (converted to a grammar by llama.cpp).
    #[arg(short = 'j', long = "json-schema", conflicts_with = "json_schema_file")]
    pub json_schema: Option<String>,
    /// A file with a JSON schema.
    #[arg(long = "json-schema-file")]
    pub json_schema_file: Option<PathBuf>,
    /// Never stop at end-of-text tokens.
    #[arg(long = "ignore-eos")]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    /// Generation options for `model`, with `default_temp` when --temp is unset and the model
    /// recommends none; a random seed is drawn when --seed is -1.
    pub fn options(&self, model: &Model, default_temp: f32) -> Result<GenerateOptions> {
        let gguf = |key: &str| model.meta(&format!("general.sampling.{key}"));
        let num = |key: &str| -> Option<f32> { gguf(key).and_then(|v| v.trim().parse().ok()) };
        let d = SamplingParams::default();
        let seed = if self.seed < 0 {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32)
        } else {
            u32::try_from(self.seed).context("--seed must be -1 or at most 4294967295")?
        };
        let samplers = match &self.samplers {
            Some(s) => s.0.clone(),
            None => match gguf("sequence") {
                Some(seq) => parse_samplers(&seq)
                    .map_err(|e| anyhow::anyhow!("the model's general.sampling.sequence: {e}"))?,
                None => d.samplers.clone(),
            },
        };
        let dry_sequence_breakers = match self.dry_sequence_breaker.as_slice() {
            [] => d.dry_sequence_breakers.clone(),
            [one] if one == "none" => Vec::new(),
            many => many.to_vec(),
        };
        let grammar = match (
            &self.grammar,
            &self.grammar_file,
            &self.json_schema,
            &self.json_schema_file,
        ) {
            (Some(g), ..) => Some(g.clone()),
            (_, Some(f), ..) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("{}: cannot read the grammar file", f.display()))?,
            ),
            (_, _, Some(schema), _) => Some(cmrm::ffi::json_schema_to_grammar(schema)?),
            (_, _, _, Some(f)) => {
                let schema = std::fs::read_to_string(f).with_context(|| {
                    format!("{}: cannot read the JSON schema file", f.display())
                })?;
                Some(
                    cmrm::ffi::json_schema_to_grammar(&schema)
                        .with_context(|| format!("{}", f.display()))?,
                )
            }
            _ => None,
        };
        let mirostat = match self.mirostat {
            Some(m) => m,
            None => match gguf("mirostat").as_deref().map(str::trim) {
                Some(v) => v
                    .parse()
                    .map_err(|e| anyhow::anyhow!("the model's general.sampling.mirostat: {e}"))?,
                None => d.mirostat,
            },
        };
        let params = SamplingParams {
            seed,
            temp: self.temp.or(num("temp")).unwrap_or(default_temp),
            dynatemp_range: self.dynatemp_range,
            dynatemp_exponent: self.dynatemp_exp,
            top_k: self
                .top_k
                .or(num("top_k").map(|v| v as i32))
                .unwrap_or(d.top_k),
            top_p: self.top_p.or(num("top_p")).unwrap_or(d.top_p),
            min_p: self.min_p.or(num("min_p")).unwrap_or(d.min_p),
            typical_p: self.typical,
            xtc_probability: self
                .xtc_probability
                .or(num("xtc_probability"))
                .unwrap_or(d.xtc_probability),
            xtc_threshold: self
                .xtc_threshold
                .or(num("xtc_threshold"))
                .unwrap_or(d.xtc_threshold),
            top_n_sigma: self.top_n_sigma,
            min_keep: d.min_keep,
            penalty_last_n: self
                .repeat_last_n
                .or(num("penalty_last_n").map(|v| v as i32))
                .unwrap_or(d.penalty_last_n),
            repeat_penalty: self
                .repeat_penalty
                .or(num("penalty_repeat"))
                .unwrap_or(d.repeat_penalty),
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            dry_multiplier: self.dry_multiplier,
            dry_base: self.dry_base,
            dry_allowed_length: self.dry_allowed_length,
            dry_penalty_last_n: self.dry_penalty_last_n,
            dry_sequence_breakers,
            mirostat,
            mirostat_tau: self
                .mirostat_ent
                .or(num("mirostat_tau"))
                .unwrap_or(d.mirostat_tau),
            mirostat_eta: self
                .mirostat_lr
                .or(num("mirostat_eta"))
                .unwrap_or(d.mirostat_eta),
            samplers,
            logit_bias: self.logit_bias.clone(),
            grammar,
        };
        params
            .check()
            .map_err(|e| anyhow::anyhow!("sampling: {e}"))?;
        Ok(GenerateOptions {
            sampling: Sampling::Chain(params),
            max_tokens: usize::try_from(self.n_predict).ok(),
            ignore_eos: self.ignore_eos,
            stop: Vec::new(),
            logprobs: None,
        })
    }
}

/// One `--tensor-split` proportion: a finite number >= 0.
fn parse_proportion(s: &str) -> std::result::Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?}: a proportion is a number >= 0, e.g. 3,1")),
    }
}

/// A `--samplers` list.
#[derive(Clone, Debug)]
pub struct SamplerList(Vec<SamplerKind>);

/// llama.cpp's escape processing of `-p`: `\n`, `\r`, `\t`, `\'`, `\"`, `\\` and `\xHH`.
pub fn process_escapes(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            i += 1;
            match b[i] {
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'\'' => out.push(b'\''),
                b'"' => out.push(b'"'),
                b'\\' => out.push(b'\\'),
                b'x' if i + 2 < b.len() => match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.extend_from_slice(b"\\x"),
                },
                c => {
                    out.push(b'\\');
                    out.push(c);
                }
            }
        } else {
            out.push(b[i]);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
