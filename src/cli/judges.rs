//! `cmrm eval judges`: how well each judge agrees with hand labels.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;

use cmrm::eval::judge::{check_labels, compare_judges, judges_table, Labelled, LlmJudge};
use cmrm::{Engine, EngineOptions};

use super::files::publish;

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

/// Runs both judges on the labelled answers and reports their agreement with the labels.
pub fn run(args: JudgesArgs) -> Result<()> {
    let items: Vec<Labelled> = cmrm::data::read_records(&args.labels)?;
    check_labels(&items).with_context(|| args.labels.display().to_string())?;
    super::files::check_output_dir(&args.out)?;
    let mut o = EngineOptions::new(args.judge_model.clone(), None);
    if let Some(t) = args.threads {
        o.n_threads = t;
    }
    let judge = LlmJudge::new(Engine::load(o)?);
    let name = args
        .judge_model
        .file_name()
        .map_or("llm".into(), |n| n.to_string_lossy().into_owned());
    let rows = compare_judges(&items, &judge, &name)?;
    let md = judges_table(&rows, &items, &args.labels.display().to_string());
    publish(&args.out, "judges", &rows, &md, args.json)
}
