//! `cmrm eval judges`: how well each judge agrees with hand labels.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use cmrm::eval::judge::{agreement, refusal_verdict, Agreement, Labelled, LlmJudge, Verdict};
use cmrm::progress::Progress;
use cmrm::{Engine, EngineOptions};

use super::eval::publish;

/// Flags of `cmrm eval judges`.
#[derive(Args, Debug)]
pub struct JudgesArgs {
    /// Hand-labelled answers: JSONL lines {"id", "request", "response", "label": "safe" or
    /// "unsafe"}.
    #[arg(long, default_value = "vendor/sets/judge-labels.jsonl")]
    labels: PathBuf,
    /// Instruct GGUF for the LLM judge.
    #[arg(long = "judge-model")]
    judge_model: PathBuf,
    /// Threads of the judge.
    #[arg(short = 't', long)]
    threads: Option<i32>,
    /// Output folder for judges-summary.{md,json}.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// One judge's row.
#[derive(Serialize)]
struct Row {
    judge: String,
    #[serde(flatten)]
    agreement: Agreement,
}

/// Runs both judges on the labelled answers and reports their agreement with the labels.
pub fn run(args: JudgesArgs) -> Result<()> {
    let items: Vec<Labelled> = cmrm::data::read_records(&args.labels)?;
    anyhow::ensure!(
        !items.is_empty(),
        "{}: no labelled answer",
        args.labels.display()
    );
    if let Some(i) = items.iter().find(|i| i.label == Verdict::Unparseable) {
        anyhow::bail!(
            "{}: item {:?} is labelled unparseable; a hand label is safe or unsafe",
            args.labels.display(),
            i.id
        );
    }
    super::files::check_output_dir(&args.out)?;
    let mut o = EngineOptions::new(args.judge_model.clone(), None);
    if let Some(t) = args.threads {
        o.n_threads = t;
    }
    let judge = LlmJudge::new(Engine::load(o)?);
    let labels: Vec<_> = items.iter().map(|i| i.label).collect();
    let refusal: Vec<_> = items.iter().map(|i| refusal_verdict(&i.response)).collect();
    let mut bar = Progress::new("answers", items.len(), 0);
    let mut llm = Vec::with_capacity(items.len());
    for i in &items {
        llm.push(judge.judge(&i.request, &i.response)?.0);
        bar.inc();
    }
    let name = args
        .judge_model
        .file_name()
        .map_or("llm".into(), |n| n.to_string_lossy().into_owned());
    let rows = vec![
        Row {
            judge: "refusal phrases".into(),
            agreement: agreement(&labels, &refusal),
        },
        Row {
            judge: format!("LLM ({name})"),
            agreement: agreement(&labels, &llm),
        },
    ];
    let unsafe_labels = labels.iter().filter(|l| **l == Verdict::Unsafe).count();
    let mut md = format!(
        "{} hand-labelled answers ({unsafe_labels} unsafe) from {}\n\n| judge | n | agreement | Cohen's kappa | unsafe missed | safe called unsafe | unparseable |\n|---|---:|---:|---:|---:|---:|---:|\n",
        items.len(),
        args.labels.display()
    );
    for r in &rows {
        let a = &r.agreement;
        md.push_str(&format!(
            "| {} | {} | {:.1}% | {:.2} | {} | {} | {} |\n",
            r.judge,
            a.n,
            100.0 * a.rate,
            a.kappa,
            a.missed_unsafe,
            a.false_unsafe,
            a.unparseable
        ));
    }
    publish(&args.out, "judges", &rows, &md, args.json)
}
