//! `cmrm eval ...`: safety, utility and fidelity of conditions on a data set.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::{de::DeserializeOwned, Serialize};

use cmrm::calibrate::{model_id, Corruption};
use cmrm::data::{read_jsonl, Item};
use cmrm::eval::fidelity::{self, compare, FidelityRecord};
use cmrm::eval::journal::{write_atomic, Journal, Keyed};
use cmrm::eval::judge::{is_refusal, refusal_verdict, LlmJudge};
use cmrm::eval::safety::{self, SafetyRecord};
use cmrm::eval::utility::{self, UtilityRecord};
use cmrm::eval::{Condition, Runner};
use cmrm::progress::Progress;
use cmrm::steer::{Source, SteerConfig, Steerer};
use cmrm::vectors::{default_path, CmrmVectors};
use cmrm::{Engine, EngineOptions};

use super::steering::SteerArgs;
use super::ModelArgs;

/// Evaluation commands.
#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Unsafe rate on harmful requests per condition (refusal or LLM judge).
    Safety(SafetyArgs),
    /// Utility on benign data: perplexity of references, multiple choice, over-refusal.
    Utility(UtilityArgs),
    /// How close each condition brings the model to its text-only behaviour.
    Fidelity(FidelityArgs),
}

/// Runs an evaluation command.
pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Safety(a) => safety(a),
        EvalCommand::Utility(a) => utility(a),
        EvalCommand::Fidelity(a) => fidelity(a),
    }
}

/// Flags shared by evaluation and analysis commands.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// JSONL data: {"id"?, "prompt", "image", ...} per line (image paths relative to the file).
    #[arg(long)]
    pub data: PathBuf,
    /// Use only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
    /// System message for every item.
    #[arg(long = "system", alias = "system-prompt")]
    pub system: Option<String>,
    /// Output folder: per-sample JSONL (appended; a rerun resumes) and summaries.
    #[arg(long, default_value = "cmrm-out")]
    pub out: PathBuf,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl DataArgs {
    /// The items.
    pub fn items(&self) -> Result<Vec<Item>> {
        let mut items = read_jsonl(&self.data)?;
        if let Some(n) = self.limit {
            items.truncate(n);
        }
        Ok(items)
    }
}

/// Conditions and how to run them: flags shared by the evaluation commands.
#[derive(Args, Debug, Clone)]
pub struct ConditionArgs {
    /// Conditions: text (image removed), image (no CMRM), cmrm (dataset vectors), cmrm-sample.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "text,image,cmrm,cmrm-sample"
    )]
    pub conditions: Vec<String>,
    /// Alphas for the CMRM conditions (default: the vector file's, or --cmrm-alpha).
    #[arg(long = "alpha", value_delimiter = ',')]
    pub alphas: Vec<f32>,
    #[command(flatten)]
    pub steering: SteerArgs,
}

/// A condition ready to run.
pub enum Cond<'e> {
    /// Image removed.
    Text,
    /// Image, no steering.
    Image,
    /// Image with steering, and the runner of its own context for callback steering.
    Steer(Box<Steerer<'e>>, Option<Box<Runner<'e>>>),
}

/// The conditions of a run, with the shared runner.
pub struct Conditions<'e> {
    runner: Runner<'e>,
    list: Vec<(String, Cond<'e>)>,
}

impl<'e> Conditions<'e> {
    /// Builds the conditions the flags ask for.
    pub fn new(
        engine: &'e Engine,
        args: &ConditionArgs,
        system: Option<String>,
        n_predict: i32,
    ) -> Result<Self> {
        let runner = Runner::new(engine, system.clone(), n_predict, None)?;
        let flags = &args.steering;
        let mut list = Vec::new();
        for c in &args.conditions {
            match c.as_str() {
                "text" => list.push(("text".to_string(), Cond::Text)),
                "image" => list.push(("image".to_string(), Cond::Image)),
                "cmrm" | "cmrm-sample" => {
                    let (source, base) = if c == "cmrm" {
                        let path = flags
                            .file
                            .clone()
                            .unwrap_or_else(|| default_path(&engine.options().model));
                        let v = CmrmVectors::load(&path)?;
                        v.check_model(&path, &model_id(engine)?, flags.force)?;
                        (Source::Dataset(v.deltas.clone()), v.recommended)
                    } else {
                        (
                            Source::Sample(Corruption::parse(&flags.corruption)),
                            SteerConfig::default(),
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
                        let alphas = if args.alphas.is_empty() {
                            vec![config.alpha]
                        } else {
                            args.alphas.clone()
                        };
                        for a in alphas {
                            let cfg = SteerConfig {
                                alpha: a,
                                ..config.clone()
                            };
                            let name = match &layers {
                                Some(l) => format!("{c}@{a} L{l}"),
                                None => format!("{c}@{a}"),
                            };
                            let steerer =
                                Steerer::new(engine, source.clone(), cfg, flags.mechanism)?;
                            let own = steerer
                                .graph_hook()
                                .map(|h| {
                                    Runner::new(engine, system.clone(), n_predict, Some(h))
                                        .map(Box::new)
                                })
                                .transpose()?;
                            list.push((name, Cond::Steer(Box::new(steerer), own)));
                        }
                    }
                }
                _ => anyhow::bail!("unknown condition {c:?} (text, image, cmrm, cmrm-sample)"),
            }
        }
        ensure!(!list.is_empty(), "no condition to run");
        Ok(Self { runner, list })
    }

    /// Condition names.
    pub fn names(&self) -> Vec<String> {
        self.list.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Runs `f` for each condition not yet `done`, with its runner.
    pub fn each(
        &mut self,
        done: &dyn Fn(&str) -> bool,
        mut f: impl FnMut(&str, &mut Runner<'e>, Condition<'_, 'e>) -> Result<()>,
    ) -> Result<()> {
        for (name, cond) in &mut self.list {
            if done(name) {
                continue;
            }
            match cond {
                Cond::Text => f(name, &mut self.runner, Condition::Text)?,
                Cond::Image => f(name, &mut self.runner, Condition::Image)?,
                Cond::Steer(s, own) => {
                    let r = own.as_deref_mut().unwrap_or(&mut self.runner);
                    f(name, r, Condition::Steered(s))?
                }
            }
        }
        Ok(())
    }

    /// The steering configuration of a condition, when it steers.
    pub fn config(&self, name: &str) -> Option<SteerConfig> {
        self.list
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, c)| match c {
                Cond::Steer(s, _) => Some(s.config().clone()),
                _ => None,
            })
    }

    /// The shared runner (text and image conditions run on it).
    pub fn runner(&mut self) -> &mut Runner<'e> {
        &mut self.runner
    }
}

/// Writes `<out>/<name>-summary.json` and `.md` and prints the summary.
pub fn publish<S: Serialize>(
    out: &Path,
    name: &str,
    summaries: &S,
    markdown: &str,
    json: bool,
) -> Result<()> {
    let body = serde_json::to_string_pretty(summaries)?;
    write_atomic(&out.join(format!("{name}-summary.json")), body.as_bytes())?;
    write_atomic(&out.join(format!("{name}-summary.md")), markdown.as_bytes())?;
    if json {
        println!("{body}");
    } else {
        print!("{markdown}");
    }
    Ok(())
}

/// Which judge decides safety.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum JudgeKind {
    /// Refusal-phrase matching.
    Refusal,
    /// An instruct GGUF (--judge-model) answers safe/unsafe.
    Llm,
}

/// Flags of `cmrm eval safety`.
#[derive(Args, Debug)]
pub struct SafetyArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    conditions: ConditionArgs,
    /// Judge.
    #[arg(long, value_enum, default_value = "refusal")]
    judge: JudgeKind,
    /// Instruct GGUF for the LLM judge.
    #[arg(long = "judge-model")]
    judge_model: Option<PathBuf>,
    /// Answer tokens (greedy).
    #[arg(short = 'n', long = "n-predict", default_value_t = 64)]
    n_predict: i32,
}

fn safety(args: SafetyArgs) -> Result<()> {
    let items = args.data.items()?;
    let judge = match args.judge {
        JudgeKind::Refusal => None,
        JudgeKind::Llm => {
            let path = args
                .judge_model
                .clone()
                .context("--judge llm needs --judge-model GGUF")?;
            let mut o = EngineOptions::new(path, None);
            o.n_threads = args.model.engine_options().n_threads;
            Some(LlmJudge::new(Engine::load(o)?))
        }
    };
    let engine = Engine::load(args.model.engine_options())?;
    let mut conds = Conditions::new(
        &engine,
        &args.conditions,
        args.data.system.clone(),
        args.n_predict,
    )?;
    let mut journal: Journal<SafetyRecord> = Journal::open(&args.data.out.join("safety.jsonl"))?;
    let records = run_safety(&items, &mut conds, &mut journal, judge.as_ref())?;
    let summaries = safety::summarize(&records);
    publish(
        &args.data.out,
        "safety",
        &summaries,
        &safety::table(&summaries),
        args.data.json,
    )
}

/// Flags of `cmrm eval utility`.
#[derive(Args, Debug)]
pub struct UtilityArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    conditions: ConditionArgs,
    /// Answer tokens (greedy) for the over-refusal check.
    #[arg(short = 'n', long = "n-predict", default_value_t = 48)]
    n_predict: i32,
}

fn utility(args: UtilityArgs) -> Result<()> {
    let items = args.data.items()?;
    let engine = Engine::load(args.model.engine_options())?;
    let mut conds = Conditions::new(
        &engine,
        &args.conditions,
        args.data.system.clone(),
        args.n_predict,
    )?;
    let mut journal: Journal<UtilityRecord> = Journal::open(&args.data.out.join("utility.jsonl"))?;
    let records = run_utility(&items, &mut conds, &mut journal)?;
    let summaries = utility::summarize(&records);
    publish(
        &args.data.out,
        "utility",
        &summaries,
        &utility::table(&summaries),
        args.data.json,
    )
}

/// Flags of `cmrm eval fidelity`.
#[derive(Args, Debug)]
pub struct FidelityArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    conditions: ConditionArgs,
    /// Greedy answer tokens compared.
    #[arg(short = 'n', long = "n-predict", default_value_t = 16)]
    n_predict: i32,
}

fn fidelity(mut args: FidelityArgs) -> Result<()> {
    // The text-only run is the reference of every comparison, not a condition.
    args.conditions.conditions.retain(|c| c != "text");
    let items = args.data.items()?;
    let engine = Engine::load(args.model.engine_options())?;
    let mut conds = Conditions::new(
        &engine,
        &args.conditions,
        args.data.system.clone(),
        args.n_predict,
    )?;
    let mut journal: Journal<FidelityRecord> =
        Journal::open(&args.data.out.join("fidelity.jsonl"))?;
    let records = journaled(&items, &mut conds, &mut journal, |item, conds, done| {
        let text = conds.runner().run(item, Condition::Text)?;
        let mut new = Vec::new();
        conds.each(done, |name, runner, condition| {
            let out = runner.run(item, condition)?;
            new.push(FidelityRecord {
                id: item.id.clone(),
                condition: name.to_string(),
                fidelity: compare(&text, &out),
                response: out.text,
            });
            Ok(())
        })?;
        Ok(new)
    })?;
    let summaries = fidelity::summarize_records(&records);
    publish(
        &args.data.out,
        "fidelity",
        &summaries,
        &fidelity::table(&summaries),
        args.data.json,
    )
}

/// Runs every item under every condition not yet in `journal`: `run` gives the records of one
/// item (it is told which conditions are done); they are appended once the item is finished.
/// Returns the records of these items and conditions, earlier runs' included.
fn journaled<'e, T: Keyed + Serialize + DeserializeOwned + Clone>(
    items: &[Item],
    conds: &mut Conditions<'e>,
    journal: &mut Journal<T>,
    mut run: impl FnMut(&Item, &mut Conditions<'e>, &dyn Fn(&str) -> bool) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let names = conds.names();
    let finished = |j: &Journal<T>, id: &str| names.iter().all(|c| j.is_done(id, c));
    let done = items.iter().filter(|i| finished(journal, &i.id)).count();
    let mut bar = Progress::new("items", items.len(), done);
    for item in items {
        if finished(journal, &item.id) {
            continue;
        }
        let records = run(item, conds, &|c: &str| journal.is_done(&item.id, c))?;
        for r in records {
            journal.push(r)?;
        }
        bar.inc();
    }
    let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
    Ok(journal.select(&ids, &names))
}

/// Answers every item under every condition not yet in `journal`, judging safety; returns
/// the records of these items and conditions.
pub fn run_safety(
    items: &[Item],
    conds: &mut Conditions<'_>,
    journal: &mut Journal<SafetyRecord>,
    judge: Option<&LlmJudge>,
) -> Result<Vec<SafetyRecord>> {
    journaled(items, conds, journal, |item, conds, done| {
        let mut new = Vec::new();
        conds.each(done, |name, runner, condition| {
            let out = runner.run(item, condition)?;
            let (verdict, judge_output) = match judge {
                None => (refusal_verdict(&out.text), None),
                Some(j) => {
                    let (v, raw) = j.judge(&item.prompt, &out.text)?;
                    (v, Some(raw))
                }
            };
            new.push(SafetyRecord {
                id: item.id.clone(),
                condition: name.to_string(),
                refused: is_refusal(&out.text),
                response: out.text,
                verdict,
                judge_output,
                tokens: out.tokens.len(),
                ms: out.ms,
            });
            Ok(())
        })?;
        Ok(new)
    })
}

/// Measures utility of every item under every condition not yet in `journal`; returns the
/// records of these items and conditions.
pub fn run_utility(
    items: &[Item],
    conds: &mut Conditions<'_>,
    journal: &mut Journal<UtilityRecord>,
) -> Result<Vec<UtilityRecord>> {
    journaled(items, conds, journal, |item, conds, done| {
        let mut new = Vec::new();
        conds.each(done, |name, runner, condition| {
            let u = runner.utility(item, condition)?;
            new.push(UtilityRecord {
                id: item.id.clone(),
                condition: name.to_string(),
                refused: is_refusal(&u.response),
                response: u.response,
                ref_logprob: u.reference.map(|r| r.0),
                ref_tokens: u.reference.map(|r| r.1),
                choice: u.choice,
                correct: u.choice.zip(item.answer).map(|(c, a)| c == a),
                ms: u.ms,
            });
            Ok(())
        })?;
        Ok(new)
    })
}
