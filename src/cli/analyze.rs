//! `cmrm analyze gap`: the representation gap between multimodal and text-only states, per
//! layer, before and after CMRM, with plots.

use std::path::Path;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

use cmrm::eval::fidelity::compare;
use cmrm::eval::Condition;
use cmrm::math::pca2;
use cmrm::plot::{Axis, Chart, Series, Style};
use cmrm::progress::Progress;
use cmrm::Engine;

use cmrm::eval::Kind;

use super::eval::{conditions, ConditionArgs, DataArgs};
use super::ModelArgs;

/// Analysis commands.
#[derive(Subcommand, Debug)]
pub enum AnalyzeCommand {
    /// Per-layer cosine and L2 gap to the text-only states, before and after CMRM; plots.
    #[command(long_about = super::help::ANALYZE)]
    Gap(GapArgs),
}

/// Runs an analysis command.
pub fn run(cmd: AnalyzeCommand) -> Result<()> {
    match cmd {
        AnalyzeCommand::Gap(a) => gap(a),
    }
}

/// Flags of `cmrm analyze gap`.
#[derive(Args, Debug)]
pub struct GapArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    conditions: ConditionArgs,
    /// Layer of the principal-component scatter (default: the middle layer).
    #[arg(help_heading = "Plot", long)]
    layer: Option<usize>,
}

/// Per-layer gap of one condition.
#[derive(Serialize)]
struct GapSummary {
    condition: String,
    n: usize,
    cosine: Vec<f64>,
    l2: Vec<f64>,
}

fn gap(mut args: GapArgs) -> Result<()> {
    args.conditions.conditions.retain(|c| *c != Kind::Text);
    anyhow::ensure!(
        args.data.parallel == 1,
        "cmrm analyze runs one item at a time: drop --parallel"
    );
    let items = args.data.items()?;
    let plan = args
        .conditions
        .grid
        .plan(&args.conditions.conditions, &args.model)?;
    let engine = Engine::load(args.model.engine_options()?)?;
    let n_layer = engine.model().n_layer();
    let layer = args.layer.unwrap_or(n_layer / 2).min(n_layer - 1);
    let mut conds = conditions(&engine, plan, &args.data, 1)?;
    let names = conds.names();
    let mut sums: Vec<(Vec<f64>, Vec<f64>)> =
        vec![(vec![0.0; n_layer], vec![0.0; n_layer]); names.len()];
    let mut scatter: Vec<Vec<Vec<f32>>> = vec![Vec::new(); names.len() + 1];
    let mut bar = Progress::new("items", items.len(), 0);
    for item in &items {
        let text = conds.runner().run(item, &Condition::Text)?;
        scatter[0].push(text.states[layer].clone());
        let mut k = 0;
        conds.each(&|_| false, |_, runner, condition| {
            let out = runner.run(item, condition)?;
            let f = compare(&text, &out);
            for il in 0..n_layer {
                sums[k].0[il] += f.cosine[il];
                sums[k].1[il] += f.l2[il];
            }
            scatter[k + 1].push(out.states[layer].clone());
            k += 1;
            Ok(())
        })?;
        bar.inc();
    }
    let n = items.len() as f64;
    let summaries: Vec<GapSummary> = names
        .iter()
        .zip(&sums)
        .map(|(c, (cs, ls))| GapSummary {
            condition: c.clone(),
            n: items.len(),
            cosine: cs.iter().map(|v| v / n).collect(),
            l2: ls.iter().map(|v| v / n).collect(),
        })
        .collect();
    let out = &args.data.out;
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create the folder", out.display()))?;
    let labels: Vec<String> = names.iter().map(|n| conds.label(n)).collect();
    plots(out, &summaries, &labels, &scatter, layer)?;
    let md = table(&summaries);
    cmrm::atomic::write(&out.join("gap-summary.md"), md.as_bytes())?;
    let json = serde_json::to_string_pretty(&summaries)?;
    cmrm::atomic::write(&out.join("gap-summary.json"), json.as_bytes())?;
    if args.data.json {
        println!("{json}");
    } else {
        print!("{md}");
        eprintln!(
            "plots: {}/gap-cosine.png, gap-l2.png, gap-pca-layer{layer}.png",
            out.display()
        );
    }
    Ok(())
}

fn plots(
    out: &Path,
    s: &[GapSummary],
    labels: &[String],
    scatter: &[Vec<Vec<f32>>],
    layer: usize,
) -> Result<()> {
    let per_layer = |get: &dyn Fn(&GapSummary) -> &Vec<f64>| -> Vec<Series> {
        s.iter()
            .zip(labels)
            .map(|(g, label)| Series {
                name: label.clone(),
                points: get(g)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i as f64, *v))
                    .collect(),
                style: Style::Line,
            })
            .collect()
    };
    Chart {
        title: "Cosine similarity to the text-only state (last prompt token)".into(),
        x: Axis::integer("layer"),
        y: Axis::new("cosine similarity"),
        series: per_layer(&|g| &g.cosine),
    }
    .save(&out.join("gap-cosine.png"))?;
    Chart {
        title: "L2 distance to the text-only state (last prompt token)".into(),
        x: Axis::integer("layer"),
        y: Axis::from_zero("L2 distance"),
        series: per_layer(&|g| &g.l2),
    }
    .save(&out.join("gap-l2.png"))?;
    let pooled: Vec<Vec<f32>> = scatter.iter().flatten().cloned().collect();
    let proj = pca2(&pooled);
    let mut series = Vec::new();
    let mut at = 0;
    let labels =
        std::iter::once("text only (image removed)".to_string()).chain(labels.iter().cloned());
    for (label, rows) in labels.zip(scatter) {
        series.push(Series {
            name: label,
            points: proj[at..at + rows.len()].to_vec(),
            style: Style::Points,
        });
        at += rows.len();
    }
    Chart {
        title: format!("Last-token states at layer {layer}: first two principal components"),
        x: Axis::new("first principal component"),
        y: Axis::new("second principal component"),
        series,
    }
    .save(&out.join(format!("gap-pca-layer{layer}.png")))?;
    Ok(())
}

fn table(s: &[GapSummary]) -> String {
    let mut md = String::from("| layer |");
    for g in s {
        md.push_str(&format!(" cos {} | L2 {} |", g.condition, g.condition));
    }
    md.push_str("\n|---:|");
    md.push_str(&"---:|---:|".repeat(s.len()));
    md.push('\n');
    for il in 0..s.first().map_or(0, |g| g.cosine.len()) {
        md.push_str(&format!("| {il} |"));
        for g in s {
            md.push_str(&format!(" {:.4} | {:.2} |", g.cosine[il], g.l2[il]));
        }
        md.push('\n');
    }
    md
}
