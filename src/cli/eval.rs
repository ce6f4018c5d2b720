//! `cmrm eval ...`: safety, utility and fidelity of conditions on a data set.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::{de::DeserializeOwned, Serialize};

use cmrm::data::{read_jsonl, Item};
use cmrm::eval::fidelity::{self, compare, FidelityRecord};
use cmrm::eval::journal::{Journal, Keyed};
use cmrm::eval::judge::{is_refusal, refusal_verdict, LlmJudge};
use cmrm::eval::safety::{self, SafetyRecord};
use cmrm::eval::utility::{self, UtilityRecord};
use cmrm::eval::{Condition, Runner};
use cmrm::media::Corruption;
use cmrm::progress::Progress;
use cmrm::session::{Apply, Layers, Positions, SteerConfig, SteerOverride};
use cmrm::steer::{Mechanism, Source};
use cmrm::vectors::CmrmVectors;
use cmrm::{CmrmSteering, Engine, EngineOptions};

use super::steering::{RuleArgs, VectorArgs};
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
    /// How well the refusal-phrase judge and an LLM judge agree with hand labels.
    Judges(super::judges::JudgesArgs),
}

/// Runs an evaluation command.
pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Safety(a) => safety(a),
        EvalCommand::Utility(a) => utility(a),
        EvalCommand::Fidelity(a) => fidelity(a),
        EvalCommand::Judges(a) => super::judges::run(a),
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
    #[arg(long = "system-prompt", alias = "system")]
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
        super::files::check_images(&self.data, &items)?;
        super::files::check_output_dir(&self.out)?;
        Ok(items)
    }
}

/// A kind of condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// The image removed.
    Text,
    /// The image, no CMRM.
    Image,
    /// The image with dataset-level CMRM (the vector file).
    Cmrm,
    /// The image with sample-level CMRM.
    CmrmSample,
    /// The image with sample-level CMRM's interpolate rule (callback path).
    Interpolate,
    /// The image with ShiftDC: the project rule on the vector file's safety directions
    /// (sample-level, callback path; by default the last prompt token of layers L/2..L-1).
    Shiftdc,
}

impl Kind {
    /// Whether the condition measures the input's own shift.
    fn is_sample(self) -> bool {
        matches!(self, Kind::CmrmSample | Kind::Interpolate | Kind::Shiftdc)
    }
}

/// How the CMRM conditions steer: flags shared by the evaluation commands and the sweep.
#[derive(Args, Debug, Clone)]
pub struct GridArgs {
    /// Alphas of the CMRM conditions, one condition each (default: the vector file's).
    #[arg(long = "alpha", value_delimiter = ',')]
    pub alphas: Vec<f32>,
    /// Layer ranges of the CMRM conditions, comma-separated, one condition each (A-B or A;
    /// instead of --cmrm-layers).
    #[arg(
        long = "layer-grid",
        value_delimiter = ',',
        value_name = "LIST",
        conflicts_with = "layers"
    )]
    pub layer_grid: Vec<Layers>,
    /// Position sets of the CMRM conditions, comma-separated, one condition each (e.g.
    /// last,last-prompt; instead of --cmrm-positions).
    #[arg(
        long = "positions-grid",
        value_delimiter = ',',
        value_name = "LIST",
        conflicts_with = "positions"
    )]
    pub positions_grid: Vec<Positions>,
    #[command(flatten)]
    pub vectors: VectorArgs,
    #[command(flatten)]
    pub rules: RuleArgs,
}

/// What a steered condition is, in words: "CMRM dataset, alpha 1, layer 16, last prompt token
/// + generated".
fn label(kind: Kind, cfg: &SteerConfig) -> String {
    let method = match kind {
        Kind::Text | Kind::Image | Kind::Cmrm => "CMRM dataset",
        Kind::CmrmSample => "CMRM sample-level",
        Kind::Interpolate => "interpolate, sample-level",
        Kind::Shiftdc => "ShiftDC",
    };
    let layers = match cfg.layers {
        Layers::Default => "default layer".to_string(),
        Layers::UpperHalf => "upper half of the layers".to_string(),
        Layers::Range(a, b) if a == b => format!("layer {a}"),
        Layers::Range(a, b) => format!("layers {a}-{b}"),
    };
    let positions = match cfg.positions {
        Positions::Last => "last prompt token + generated",
        Positions::LastPrompt => "last prompt token only",
        Positions::AfterImage => "image and after",
        Positions::All => "every token",
    };
    format!("{method}, alpha {}, {layers}, {positions}", cfg.alpha)
}

/// Conditions and how to run them.
#[derive(Args, Debug, Clone)]
pub struct ConditionArgs {
    /// Conditions: text (image removed), image (no CMRM), cmrm (dataset vectors), cmrm-sample,
    /// interpolate, shiftdc (the last two on the callback path).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "text,image,cmrm,cmrm-sample"
    )]
    pub conditions: Vec<Kind>,
    #[command(flatten)]
    pub grid: GridArgs,
}

/// A named condition with the steering settings it runs under.
struct Named {
    name: String,
    label: String,
    condition: Condition,
    config: Option<SteerConfig>,
}

/// What the flags ask for, read and checked before the model loads.
pub struct ConditionPlan {
    list: Vec<Named>,
    vectors: Option<(PathBuf, CmrmVectors)>,
    sample: bool,
    mechanism: Mechanism,
    args: GridArgs,
}

/// Refuses flags the conditions would ignore.
fn refuse_unused(args: &GridArgs, dataset: bool, sample: bool, project: bool) -> Result<()> {
    let r = &args.rules;
    let unused = |flag: &str, why: &str| anyhow::anyhow!("{flag} would be ignored: {why}");
    if r.corruption.is_some() && !sample {
        return Err(unused(
            "--cmrm-corruption",
            "it applies to the cmrm-sample condition only",
        ));
    }
    if (args.vectors.file.is_some() || args.vectors.force) && !dataset && !project {
        return Err(unused(
            "--cmrm/--force",
            "no cmrm condition (nor cmrm-sample with --cmrm-apply project) uses a vector file",
        ));
    }
    let steering_flags = !args.alphas.is_empty()
        || !args.layer_grid.is_empty()
        || !args.positions_grid.is_empty()
        || r.apply.is_some()
        || r.layers.is_some()
        || r.positions.is_some()
        || r.mechanism != Mechanism::Cvec;
    if steering_flags && !dataset && !sample {
        return Err(unused(
            "the --alpha/--cmrm-* flags",
            "no condition steers (add cmrm, cmrm-sample, interpolate or shiftdc to --conditions)",
        ));
    }
    Ok(())
}

impl ConditionPlan {
    /// Reads the vector file when a dataset condition needs it and checks every setting.
    /// `grid` gives one condition per layer range (the sweep), else `--cmrm-layers` applies.
    pub fn new(kinds: &[Kind], args: &GridArgs, model: &ModelArgs) -> Result<Self> {
        let grid = &args.layer_grid;
        anyhow::ensure!(!kinds.is_empty(), "no condition to run (--conditions)");
        let dataset = kinds.contains(&Kind::Cmrm);
        let sample = kinds.iter().any(|k| k.is_sample());
        // The project rule (ShiftDC) reads the vector file's safety directions.
        let project = kinds.contains(&Kind::Shiftdc)
            || (kinds.contains(&Kind::CmrmSample) && args.rules.apply == Some(Apply::Project))
            || (dataset && args.rules.apply == Some(Apply::Pure));
        refuse_unused(args, dataset, sample, project)?;
        let vectors = if dataset || project {
            args.vectors.load(model, true)?
        } else {
            None
        };
        if let Some((path, _)) = vectors
            .as_ref()
            .filter(|(_, v)| project && v.safety.is_none())
        {
            anyhow::bail!(
                "{}: no safety directions for shiftdc (--cmrm-apply project) or the pure shift (--cmrm-apply pure); calibrate with --method shiftdc --benign FILE",
                path.display()
            );
        }
        // The conditions share one steering: the callback path when one of them needs it (the
        // two paths give the same logits where both apply).
        let mechanism = if kinds.contains(&Kind::Interpolate) || kinds.contains(&Kind::Shiftdc) {
            Mechanism::Callback
        } else {
            args.rules.mechanism
        };
        let callback = mechanism == Mechanism::Callback;
        let corruption = args
            .rules
            .corruption
            .clone()
            .unwrap_or(Corruption::Noise(0));
        let grid: Vec<Option<Layers>> = if grid.is_empty() {
            vec![None]
        } else {
            grid.iter().copied().map(Some).collect()
        };
        let mut list = Vec::new();
        for &kind in kinds {
            let (prefix, base) = match kind {
                Kind::Text | Kind::Image => {
                    let (name, condition) = if kind == Kind::Text {
                        (cmrm::eval::TEXT, Condition::Text)
                    } else {
                        (cmrm::eval::BASELINE, Condition::Image)
                    };
                    list.push(Named {
                        name: name.into(),
                        label: if kind == Kind::Text {
                            "text only (image removed)".into()
                        } else {
                            "image, no steering".into()
                        },
                        condition,
                        config: None,
                    });
                    continue;
                }
                Kind::Cmrm => (
                    "cmrm",
                    vectors
                        .as_ref()
                        .map(|(_, v)| v.recommended.clone())
                        .unwrap_or_default(),
                ),
                Kind::CmrmSample => ("cmrm-sample", SteerConfig::default()),
                Kind::Interpolate => (
                    "interpolate",
                    SteerConfig {
                        apply: Apply::Interpolate,
                        ..SteerConfig::default()
                    },
                ),
                Kind::Shiftdc => (
                    "shiftdc",
                    SteerConfig {
                        apply: Apply::Project,
                        layers: Layers::UpperHalf,
                        positions: Positions::LastPrompt,
                        ..SteerConfig::default()
                    },
                ),
            };
            let positions: Vec<Option<Positions>> = if args.positions_grid.is_empty() {
                vec![None]
            } else {
                args.positions_grid.iter().copied().map(Some).collect()
            };
            for (layers, pos) in grid
                .iter()
                .flat_map(|l| positions.iter().map(move |p| (l, p)))
            {
                let mut config = args.rules.config(base.clone());
                if matches!(kind, Kind::Interpolate | Kind::Shiftdc) {
                    // The rule is what the condition is.
                    config.apply = base.apply;
                }
                if let Some(l) = layers {
                    config.layers = *l;
                }
                if let Some(p) = pos {
                    config.positions = *p;
                }
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
                    let is_sample = kind.is_sample();
                    cfg.check(is_sample, callback)?;
                    let mut name = match layers {
                        Some(l) => format!("{prefix}@{a} L{l}"),
                        None => format!("{prefix}@{a}"),
                    };
                    if let Some(p) = pos {
                        name = format!("{name} {p}");
                    }
                    let o = SteerOverride {
                        enabled: Some(true),
                        sample: Some(is_sample),
                        corruption: is_sample.then(|| corruption.clone()),
                        alpha: Some(cfg.alpha),
                        apply: Some(cfg.apply),
                        layers: Some(cfg.layers),
                        positions: Some(cfg.positions),
                        text_only: Some(false),
                    };
                    list.push(Named {
                        name,
                        label: label(kind, &cfg),
                        condition: Condition::Steered(o),
                        config: Some(cfg),
                    });
                }
            }
        }
        Ok(Self {
            list,
            vectors,
            sample,
            mechanism,
            args: args.clone(),
        })
    }

    /// The steering the steered conditions share, on the loaded engine.
    fn steering(&self, engine: &Engine) -> Result<Option<CmrmSteering>> {
        if !self.list.iter().any(|n| n.config.is_some()) {
            return Ok(None);
        }
        let deltas = match &self.vectors {
            Some((path, v)) => {
                self.args.vectors.check(path, v, engine)?;
                Some(v.deltas.clone())
            }
            None => None,
        };
        let source = if deltas.is_some() {
            Source::Dataset
        } else {
            Source::Sample(
                self.args
                    .rules
                    .corruption
                    .clone()
                    .unwrap_or(Corruption::Noise(0)),
            )
        };
        let safety = self
            .vectors
            .as_ref()
            .and_then(|(_, v)| v.safety.as_ref())
            .map(|s| s.directions.clone());
        Ok(Some(
            CmrmSteering::new(
                engine,
                deltas,
                source,
                SteerConfig::default(),
                self.mechanism,
                self.sample,
            )?
            .with_safety(safety)?,
        ))
    }

    /// The vector file of the dataset conditions.
    pub fn vector_file(&self) -> Option<&Path> {
        self.vectors.as_ref().map(|(p, _)| p.as_path())
    }
}

/// The conditions of a run on one runner.
pub struct Conditions<'e> {
    runner: Runner<'e>,
    list: Vec<Named>,
}

impl<'e> Conditions<'e> {
    /// The conditions of `plan` on `engine`.
    pub fn new(
        engine: &'e Engine,
        plan: ConditionPlan,
        system: Option<String>,
        n_predict: usize,
    ) -> Result<Self> {
        let steering = plan.steering(engine)?;
        Ok(Self {
            runner: Runner::new(engine, steering, system, n_predict)?,
            list: plan.list,
        })
    }

    /// Condition names.
    pub fn names(&self) -> Vec<String> {
        self.list.iter().map(|n| n.name.clone()).collect()
    }

    /// Runs `f` for each condition not yet `done`, with the runner.
    pub fn each(
        &mut self,
        done: &dyn Fn(&str) -> bool,
        mut f: impl FnMut(&str, &mut Runner<'e>, &Condition) -> Result<()>,
    ) -> Result<()> {
        for n in &self.list {
            if !done(&n.name) {
                f(&n.name, &mut self.runner, &n.condition)?;
            }
        }
        Ok(())
    }

    /// What a condition is, in words (for tables and figures).
    pub fn label(&self, name: &str) -> String {
        self.list
            .iter()
            .find(|n| n.name == name)
            .map_or_else(|| name.to_string(), |n| n.label.clone())
    }

    /// The steering configuration of a condition, when it steers.
    pub fn config(&self, name: &str) -> Option<SteerConfig> {
        self.list
            .iter()
            .find(|n| n.name == name)
            .and_then(|n| n.config.clone())
    }

    /// The runner.
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
    cmrm::atomic::write(&out.join(format!("{name}-summary.json")), body.as_bytes())?;
    cmrm::atomic::write(&out.join(format!("{name}-summary.md")), markdown.as_bytes())?;
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
    n_predict: usize,
}

fn safety(args: SafetyArgs) -> Result<()> {
    let items = args.data.items()?;
    let plan = ConditionPlan::new(
        &args.conditions.conditions,
        &args.conditions.grid,
        &args.model,
    )?;
    let judge_path = match args.judge {
        JudgeKind::Refusal => None,
        JudgeKind::Llm => Some(
            args.judge_model
                .clone()
                .context("--judge llm needs --judge-model GGUF")?,
        ),
    };
    let judge = match judge_path {
        None => None,
        Some(path) => {
            let mut o = EngineOptions::new(path, None);
            o.n_threads = args.model.engine_options()?.n_threads;
            Some(LlmJudge::new(Engine::load(o)?))
        }
    };
    let engine = Engine::load(args.model.engine_options()?)?;
    let mut conds = Conditions::new(&engine, plan, args.data.system.clone(), args.n_predict)?;
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
    n_predict: usize,
}

fn utility(args: UtilityArgs) -> Result<()> {
    let items = args.data.items()?;
    let plan = ConditionPlan::new(
        &args.conditions.conditions,
        &args.conditions.grid,
        &args.model,
    )?;
    let engine = Engine::load(args.model.engine_options()?)?;
    let mut conds = Conditions::new(&engine, plan, args.data.system.clone(), args.n_predict)?;
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
    n_predict: usize,
}

fn fidelity(mut args: FidelityArgs) -> Result<()> {
    // The text-only run is the reference of every comparison, not a condition.
    args.conditions.conditions.retain(|c| *c != Kind::Text);
    let items = args.data.items()?;
    let plan = ConditionPlan::new(
        &args.conditions.conditions,
        &args.conditions.grid,
        &args.model,
    )?;
    let engine = Engine::load(args.model.engine_options()?)?;
    let mut conds = Conditions::new(&engine, plan, args.data.system.clone(), args.n_predict)?;
    let mut journal: Journal<FidelityRecord> =
        Journal::open(&args.data.out.join("fidelity.jsonl"))?;
    let records = journaled(&items, &mut conds, &mut journal, |item, conds, done| {
        let text = conds.runner().run(item, &Condition::Text)?;
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
