//! `cmrm calibrate` and `cmrm merge`: vector files from an anchor set.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use cmrm::calibrate::{self, CalibrateOptions};
use cmrm::media::Corruption;
use cmrm::session::{Apply, Layers, Positions, SteerConfig, SteerOverride};
use cmrm::vectors::{default_path, AnchorSet, Method};
use cmrm::Engine;

use super::ModelArgs;

/// A shard `i/n`: anchors i, i+n, i+2n, ...
fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{s:?}: --shard takes i/n with 0 <= i < n, e.g. 0/4");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// `--method`: an aggregation of the per-anchor shifts, or `shiftdc` (their mean, plus
/// ShiftDC's safety directions, which need `--benign`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum CalibrationMethod {
    Aggregate(Method),
    ShiftDc,
}

impl std::str::FromStr for CalibrationMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shiftdc" => Ok(CalibrationMethod::ShiftDc),
            _ => s
                .parse()
                .map(CalibrationMethod::Aggregate)
                .map_err(|_| format!("{s:?} is not a method (mean, pca, shiftdc)")),
        }
    }
}

/// Flags of `cmrm calibrate`.
#[derive(Args, Debug)]
pub struct CalibrateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Anchors: JSONL lines {"prompt": ..., "image": optional path or data URI}.
    #[arg(help_heading = "Calibration", long)]
    anchors: PathBuf,
    /// Use only the first N anchors.
    #[arg(help_heading = "Calibration", long)]
    limit: Option<usize>,
    /// Output vector file (default: <model-stem>.cmrm.gguf next to the model).
    #[arg(help_heading = "Calibration", short = 'o', long)]
    output: Option<PathBuf>,
    /// Aggregation of the per-anchor shifts: mean or pca; shiftdc: the mean, plus ShiftDC's
    /// per-layer safety directions from the anchors (harmful) and --benign, for
    /// `--cmrm-apply project`.
    #[arg(help_heading = "Calibration", long, default_value = "mean")]
    method: CalibrationMethod,
    /// Benign requests (JSONL, text only is used): with them the file also holds safety
    /// directions (mean text-only state of the anchors minus that of these).
    #[arg(help_heading = "Calibration", long, value_name = "FILE")]
    benign: Option<PathBuf>,
    /// Meaningless image: blank, noise, noise:SEED, anchor (each anchor's own image) or an
    /// image file.
    #[arg(help_heading = "Calibration", long, default_value = "noise")]
    corruption: Corruption,
    /// System message used for every anchor (use the one you will chat with).
    #[arg(help_heading = "Calibration", long = "system-prompt", alias = "system")]
    system: Option<String>,
    /// Anchors read at once, as sessions on lanes of one batched context (llama.cpp's
    /// `--parallel`); the file is the same every run, and that of 1 up to rounding.
    #[arg(help_heading = "Calibration", long = "parallel", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    parallel: u32,
    /// Only anchors i, i+n, i+2n, ... (`i/n`); merge the shards with `cmrm merge`.
    #[arg(help_heading = "Calibration", long, value_name = "i/n", value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    /// Recommended alpha written into the file.
    #[arg(help_heading = "Recommended settings written to the file", long, default_value_t = SteerConfig::default().alpha)]
    alpha: f32,
    /// Recommended apply rule.
    #[arg(
        help_heading = "Recommended settings written to the file",
        long,
        default_value = "total"
    )]
    apply: Apply,
    /// Recommended layers A-B (default: one layer at ~70% depth).
    #[arg(
        help_heading = "Recommended settings written to the file",
        long,
        value_name = "A-B"
    )]
    layers: Option<Layers>,
    /// Recommended positions (last-prompt: the last prompt token only; last: it and the
    /// generated tokens; after-image; all).
    #[arg(
        help_heading = "Recommended settings written to the file",
        long,
        default_value = "last-prompt"
    )]
    positions: Positions,
}

/// Runs calibration.
pub fn run(args: CalibrateArgs) -> Result<()> {
    if args.method == CalibrationMethod::ShiftDc && args.benign.is_none() {
        anyhow::bail!("--method shiftdc needs --benign FILE: benign requests to contrast the anchors with (e.g. vendor/sets/benign.jsonl)");
    }
    if args.benign.is_some() && args.shard.is_some() {
        anyhow::bail!(
            "--benign cannot be sharded: measure the safety directions in one unsharded run"
        );
    }
    let benign = match &args.benign {
        Some(p) => Some(cmrm::data::read_jsonl(p)?),
        None => None,
    };
    let mut anchors = cmrm::data::read_jsonl(&args.anchors)?;
    let anchor_set = AnchorSet::of_file(&args.anchors, anchors.len())?;
    if let Some(n) = args.limit {
        anchors.truncate(n);
    }
    let recommended = SteerOverride {
        alpha: Some(args.alpha),
        apply: Some(args.apply),
        positions: Some(args.positions),
        layers: args.layers,
        ..SteerOverride::default()
    }
    .config(&SteerConfig::default());
    recommended.check(false, false)?;
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| default_path(&args.model.model));
    super::files::check_output_file(&out)?;
    let engine = Engine::load(args.model.engine_options()?)?;
    let opts = CalibrateOptions {
        method: match args.method {
            CalibrationMethod::Aggregate(m) => m,
            CalibrationMethod::ShiftDc => Method::Mean,
        },
        corruption: args.corruption.clone(),
        system: args.system.clone(),
        shard: args.shard,
        recommended,
        anchor_set: Some(anchor_set),
        benign,
    };
    let v = calibrate::calibrate_parallel(&engine, &anchors, &opts, &out, args.parallel as usize)?;
    let safety = v.safety.as_ref().map_or(String::new(), |s| {
        format!(
            ", safety directions from {} harmful / {} benign requests",
            s.n_harmful, s.n_benign
        )
    });
    eprintln!(
        "wrote {} ({} anchors, {}, corruption {}{safety})",
        out.display(),
        v.n_anchors,
        v.method,
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
    #[arg(long)]
    method: Option<Method>,
}

/// Merges shards.
pub fn merge(args: MergeArgs) -> Result<()> {
    super::files::check_output_file(&args.output)?;
    let v = calibrate::merge(&args.inputs, &args.output, args.method)?;
    eprintln!("wrote {} ({} anchors)", args.output.display(), v.n_anchors);
    Ok(())
}
