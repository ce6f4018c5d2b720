//! `cmrm eval ...`: evaluation commands.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use clap::{Args, Subcommand};

use cmrm::calibrate::Corruption;
use cmrm::data::read_jsonl;
use cmrm::eval::fidelity::{compare, summarize, Fidelity, FidelitySummary};
use cmrm::eval::{Condition, Runner};
use cmrm::progress::Progress;
use cmrm::steer::{Source, Steerer};
use cmrm::vectors::{default_path, CmrmVectors};
use cmrm::Engine;

use super::steering::SteerArgs;
use super::ModelArgs;

/// Evaluation commands.
#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// How close each condition brings the model to its text-only behaviour.
    Fidelity(FidelityArgs),
}

/// Runs an evaluation command.
pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Fidelity(a) => fidelity(a),
    }
}

/// Flags shared by evaluation commands.
#[derive(Args, Debug)]
pub struct DataArgs {
    /// JSONL data: {"prompt", "image", ...} per line.
    #[arg(long)]
    pub data: PathBuf,
    /// Use only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
    /// System message for every item.
    #[arg(long = "system", alias = "system-prompt")]
    pub system: Option<String>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `cmrm eval fidelity`.
#[derive(Args, Debug)]
pub struct FidelityArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    steering: SteerArgs,
    /// Conditions compared with the text-only run: image, cmrm, cmrm-sample.
    #[arg(long, value_delimiter = ',', default_value = "image,cmrm,cmrm-sample")]
    conditions: Vec<String>,
    /// Alphas for the CMRM conditions (default: the vector file's or --cmrm-alpha).
    #[arg(long = "alpha", value_delimiter = ',')]
    alphas: Vec<f32>,
    /// Greedy answer tokens compared.
    #[arg(short = 'n', long = "n-predict", default_value_t = 16)]
    n_predict: i32,
}

fn fidelity(args: FidelityArgs) -> Result<()> {
    let mut items = read_jsonl(&args.data.data)?;
    if let Some(n) = args.data.limit {
        items.truncate(n);
    }
    let engine = Engine::load(args.model.engine_options())?;
    let mut steerers = steerers(&engine, &args.steering, &args.conditions, &args.alphas)?;
    let system = args.data.system.clone();
    let mut runner = Runner::new(&engine, system.clone(), args.n_predict, None)?;
    // Callback steerers edit the graph of their own context.
    let mut own: Vec<Option<Runner>> = steerers
        .iter()
        .map(|(_, s)| {
            s.graph_hook()
                .map(|h| Runner::new(&engine, system.clone(), args.n_predict, Some(h)))
                .transpose()
        })
        .collect::<Result<_>>()?;
    let mut results: Vec<Vec<Fidelity>> = vec![Vec::new(); 1 + steerers.len()];
    let mut bar = Progress::new("items", items.len(), 0);
    let with_image = args.conditions.iter().any(|c| c == "image");
    for item in &items {
        let text = runner.run(item, Condition::Text)?;
        if with_image {
            let image = runner.run(item, Condition::Image)?;
            results[0].push(compare(&text, &image));
        }
        for (i, (_, s)) in steerers.iter_mut().enumerate() {
            let r = own[i].as_mut().unwrap_or(&mut runner);
            let out = r.run(item, Condition::Steered(s))?;
            results[i + 1].push(compare(&text, &out));
        }
        bar.inc();
    }
    let mut names = vec!["image".to_string()];
    names.extend(steerers.iter().map(|(n, _)| n.clone()));
    let summaries: Vec<FidelitySummary> = names
        .iter()
        .zip(&results)
        .filter(|(_, r)| !r.is_empty())
        .map(|(n, r)| summarize(n, r))
        .collect();
    if args.data.json {
        println!("{}", serde_json::to_string_pretty(&summaries)?);
    } else {
        print_fidelity(&summaries);
    }
    Ok(())
}

/// Steerers for the CMRM conditions, one per (condition, alpha), with display names.
fn steerers<'e>(
    engine: &'e Engine,
    flags: &SteerArgs,
    conditions: &[String],
    alphas: &[f32],
) -> Result<Vec<(String, Steerer<'e>)>> {
    let mut out = Vec::new();
    for c in conditions {
        ensure!(
            ["image", "cmrm", "cmrm-sample"].contains(&c.as_str()),
            "unknown condition {c:?} (image, cmrm, cmrm-sample)"
        );
        if c == "image" {
            continue;
        }
        let (source, base) = if c == "cmrm" {
            let path = flags
                .file
                .clone()
                .unwrap_or_else(|| default_path(&engine.options().model));
            let v = CmrmVectors::load(&path)?;
            v.check_model(&path, &cmrm::calibrate::model_id(engine)?, flags.force)?;
            (Source::Dataset(v.deltas.clone()), v.recommended)
        } else {
            (
                Source::Sample(Corruption::parse(&flags.corruption)),
                Default::default(),
            )
        };
        // `--cmrm-layers` takes a comma-separated list here: one condition per range.
        let layer_list: Vec<Option<String>> = match &flags.layers {
            Some(l) => l.split(',').map(|x| Some(x.trim().to_string())).collect(),
            None => vec![None],
        };
        for layers in layer_list {
            let config = SteerArgs {
                layers: layers.clone(),
                ..flags.clone()
            }
            .config(base.clone())?;
            let list = if alphas.is_empty() {
                vec![config.alpha]
            } else {
                alphas.to_vec()
            };
            for a in list {
                let cfg = cmrm::steer::SteerConfig {
                    alpha: a,
                    ..config.clone()
                };
                let name = match &layers {
                    Some(l) => format!("{c}@{a} L{l}"),
                    None => format!("{c}@{a}"),
                };
                out.push((
                    name,
                    Steerer::new(engine, source.clone(), cfg, flags.mechanism)?,
                ));
            }
        }
    }
    Ok(out)
}

fn print_fidelity(s: &[FidelitySummary]) {
    println!(
        "{:<24} {:>4} {:>16} {:>22} {:>12} {:>9} {:>9}",
        "condition",
        "n",
        "KL(text||cond)",
        "top-1 agree [95% CI]",
        "prefix",
        "cos mean",
        "cos last"
    );
    for r in s {
        let cm = r.cosine.iter().sum::<f64>() / r.cosine.len().max(1) as f64;
        println!(
            "{:<24} {:>4} {:>8.3} ± {:<5.3} {:>6.1}% [{:>4.1}, {:>4.1}] {:>6.2} ± {:<4.2} {:>9.3} {:>9.3}",
            r.condition,
            r.n,
            r.kl.0,
            r.kl.1,
            100.0 * r.top1_agree.0,
            100.0 * r.top1_agree.1 .0,
            100.0 * r.top1_agree.1 .1,
            r.shared_prefix.0,
            r.shared_prefix.1,
            cm,
            r.cosine.last().copied().unwrap_or(f64::NAN)
        );
    }
}
