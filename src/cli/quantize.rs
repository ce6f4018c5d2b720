//! `cmrm quantize`: llama.cpp's quantizer (as `llama-quantize`), so that every quantization of
//! a model can be made and checked against one vector file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result};
use clap::Args;

use cmrm::ffi::{quantize, QuantizeParams};
use cmrm::progress::Progress;
use cmrm::quant::FileType;
use cmrm::vectors::{discover, ModelId};

/// Flags of `cmrm quantize`.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Model GGUF to quantize (F32, F16 or BF16; a quantized one with --allow-requantize).
    input: PathBuf,
    /// Output GGUF.
    output: PathBuf,
    /// llama.cpp file type: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K_S/M/L, Q4_K_S/M (Q4_K),
    /// Q5_K_S/M (Q5_K), Q6_K, IQ4_NL, IQ4_XS, F16, BF16, F32, ...
    #[arg(value_name = "TYPE")]
    ftype: FileType,
    /// Quantize a file whose weights are already quantized: the result re-encodes those
    /// weights, so it is no better than the input (llama-quantize's flag).
    #[arg(long = "allow-requantize")]
    allow_requantize: bool,
    /// Threads (default: all cores).
    #[arg(short = 't', long, default_value_t = 0)]
    threads: i32,
}

/// Quantizes, writing the output atomically.
pub fn run(args: QuantizeArgs) -> Result<()> {
    anyhow::ensure!(
        args.ftype.offered(),
        "{} needs an importance matrix, which cmrm quantize does not take: use llama-quantize --imatrix",
        args.ftype
    );
    cmrm::gguf::check_file(&args.input, "model")
        .map_err(|c| anyhow::anyhow!("{}: {c}", args.input.display()))?;
    let header = cmrm::gguf::read_header(&args.input)
        .map_err(|e| anyhow::anyhow!("{}: corrupt GGUF header: {e}", args.input.display()))?;
    let from = cmrm::quant::describe(&header);
    let plain = ["F32", "F16", "BF16"].contains(&from.as_str());
    anyhow::ensure!(
        plain || args.allow_requantize,
        "{} is already quantized ({from}): pass --allow-requantize to re-encode its quantized weights as {} (no better than {from}), or quantize the F16/BF16 original",
        args.input.display(),
        args.ftype
    );
    anyhow::ensure!(
        args.input != args.output,
        "{}: the output must be another file than the input",
        args.output.display()
    );
    super::files::check_output_file(&args.output)?;
    let mut partial = args.output.clone().into_os_string();
    partial.push(format!(".partial-{}", std::process::id()));
    let partial = PathBuf::from(partial);
    let start = Instant::now();
    let mut bar: Option<Progress> = None;
    let result = quantize(
        &args.input,
        &partial,
        &QuantizeParams {
            ftype: args.ftype.0,
            allow_requantize: args.allow_requantize,
            threads: args.threads,
        },
        Box::new(move |_done, total| {
            bar.get_or_insert_with(|| Progress::new("tensors", total, 0))
                .inc();
        }),
    );
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e).with_context(|| format!("{}: quantizing failed", args.input.display()));
    }
    std::fs::rename(&partial, &args.output).with_context(|| {
        let _ = std::fs::remove_file(&partial);
        format!("{}: cannot write", args.output.display())
    })?;
    let size = std::fs::metadata(&args.output).map_or(0, |m| m.len());
    eprintln!(
        "wrote {} ({}, {:.1} MB, from {from}, in {:.1} s)",
        args.output.display(),
        args.ftype,
        size as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    if let Ok(found) = discover(&args.output, || ModelId::of_files(&args.output, None)) {
        if let Some(c) = found.chosen {
            eprintln!("vectors: {} serves it too ({})", c.path.display(), c.reason);
        }
    }
    Ok(())
}
