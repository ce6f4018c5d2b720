//! `cmrm calibrate` and `cmrm merge`: vector files from an anchor set.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;

use cmrm::calibrate::{self, CalibrateOptions, Corruption};
use cmrm::steer::SteerConfig;
use cmrm::vectors::{default_path, Method};
use cmrm::Engine;

use super::steering::parse_layers;
use super::ModelArgs;

/// Flags of `cmrm calibrate`.
#[derive(Args, Debug)]
pub struct CalibrateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Anchors: JSONL lines {"prompt": ..., "image": optional path or data URI}.
    #[arg(long)]
    anchors: PathBuf,
    /// Use only the first N anchors.
    #[arg(long)]
    limit: Option<usize>,
    /// Output vector file (default: <model-stem>.cmrm.gguf next to the model).
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    /// Aggregation of the per-anchor shifts.
    #[arg(long, value_enum, default_value = "mean")]
    method: Method,
    /// Meaningless image: blank, noise, noise:SEED, anchor (each anchor's own image) or a path.
    #[arg(long, default_value = "noise")]
    corruption: String,
    /// System message used for every anchor (use the one you will chat with).
    #[arg(long = "system", alias = "system-prompt")]
    system: Option<String>,
    /// Only anchors i, i+n, i+2n, ... (`i/n`); merge the shards with `cmrm merge`.
    #[arg(long, value_name = "i/n")]
    shard: Option<String>,
    /// Recommended alpha written into the file.
    #[arg(long, default_value_t = SteerConfig::default().alpha)]
    alpha: f32,
    /// Recommended apply rule.
    #[arg(long, value_enum, default_value = "total")]
    apply: cmrm::steer::Apply,
    /// Recommended layers `A-B` (default: one layer at ~70% depth).
    #[arg(long)]
    layers: Option<String>,
    /// Recommended positions.
    #[arg(long, value_enum, default_value = "last")]
    positions: cmrm::steer::Positions,
}

fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let (i, n) = s.split_once('/').context("--shard takes i/n, e.g. 0/4")?;
    let (i, n): (usize, usize) = (i.parse()?, n.parse()?);
    anyhow::ensure!(n > 0 && i < n, "--shard {s}: need 0 <= i < n");
    Ok((i, n))
}

/// Runs calibration.
pub fn run(args: CalibrateArgs) -> Result<()> {
    let mut anchors = calibrate::read_anchors(&args.anchors)?;
    if let Some(n) = args.limit {
        anchors.truncate(n);
    }
    let engine = Engine::load(args.model.engine_options())?;
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| default_path(&args.model.model));
    let recommended = SteerConfig {
        alpha: args.alpha,
        apply: args.apply,
        positions: args.positions,
        layers: match &args.layers {
            Some(l) => parse_layers(l)?,
            None => cmrm::steer::AUTO_LAYERS,
        },
        text_only: false,
    };
    let opts = CalibrateOptions {
        method: args.method,
        corruption: Corruption::parse(&args.corruption),
        system: args.system.clone(),
        shard: args.shard.as_deref().map(parse_shard).transpose()?,
        recommended,
    };
    let v = calibrate::calibrate(&engine, &anchors, &opts, &out)?;
    eprintln!(
        "wrote {} ({} anchors, {}, corruption {})",
        out.display(),
        v.n_anchors,
        v.method.name(),
        v.corruption
    );
    Ok(())
}

/// Flags of `cmrm merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Shard files made with `cmrm calibrate --shard i/n`.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output vector file.
    #[arg(short = 'o', long)]
    output: PathBuf,
    /// Re-aggregate with another method (default: the shards').
    #[arg(long, value_enum)]
    method: Option<Method>,
}

/// Merges shards.
pub fn merge(args: MergeArgs) -> Result<()> {
    let v = calibrate::merge(&args.inputs, &args.output, args.method)?;
    eprintln!("wrote {} ({} anchors)", args.output.display(), v.n_anchors);
    Ok(())
}
