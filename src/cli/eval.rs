//! `cmrm eval ...`: safety, utility and fidelity of conditions on a data set.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};

use cmrm::data::{read_jsonl, Item};
use cmrm::eval::fidelity::{self, FidelityRecord};
use cmrm::eval::journal::Journal;
use cmrm::eval::judge::LlmJudge;
use cmrm::eval::safety::{self, SafetyRecord};
use cmrm::eval::utility::{self, UtilityRecord};
use cmrm::eval::{ConditionPlan, Conditions, Grid, Kind};
use cmrm::session::{Layers, Positions};
use cmrm::{Engine, EngineOptions};

use super::files::publish;
use super::steering::{RuleArgs, VectorArgs};
use super::ModelArgs;

/// Evaluation commands.
#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Unsafe rate on harmful requests per condition (refusal or LLM judge).
    #[command(long_about = super::help::SAFETY, after_long_help = super::help::SAFETY_EXAMPLES)]
    Safety(SafetyArgs),
    /// Utility on benign data: perplexity of references, multiple choice, over-refusal.
    #[command(long_about = super::help::UTILITY)]
    Utility(UtilityArgs),
    /// How close each condition brings the model to its text-only behaviour.
    #[command(long_about = super::help::FIDELITY)]
    Fidelity(FidelityArgs),
    /// How well the refusal-phrase judge and an LLM judge agree with hand labels.
    #[command(long_about = super::help::JUDGES)]
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
#[command(next_help_heading = "Data and output")]
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
    /// Items answered at once, as sessions on lanes of one batched context (llama.cpp's
    /// `--parallel`); the results are those of 1 up to batched arithmetic's rounding.
    #[arg(long = "parallel", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
}

/// The benign set `eval utility` and `sweep` use when given none: 240 requests with images,
/// half of them harmful-looking but safe (relative to cmrm's source folder).
pub const DEFAULT_BENIGN: &str = "vendor/sets/benign-xs.jsonl";

/// Reads a data file; the default benign set missing gets a message that says where it is.
pub fn read_data(path: &std::path::Path) -> Result<Vec<Item>> {
    if path == std::path::Path::new(DEFAULT_BENIGN) && !path.exists() {
        anyhow::bail!(
            "{DEFAULT_BENIGN}, the default benign set, is not here: it comes with cmrm's source; run from the source folder or pass the benign data with --data (eval utility) or --benign (sweep)"
        );
    }
    Ok(read_jsonl(path)?)
}

impl DataArgs {
    /// The items.
    pub fn items(&self) -> Result<Vec<Item>> {
        let mut items = read_data(&self.data)?;
        if let Some(n) = self.limit {
            items.truncate(n);
        }
        super::files::check_images(&self.data, &items)?;
        super::files::check_output_dir(&self.out)?;
        Ok(items)
    }
}

/// How the CMRM conditions steer: flags shared by the evaluation commands and the sweep.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Conditions")]
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

/// Conditions and how to run them.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Conditions")]
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

impl GridArgs {
    /// The library's grid for `model`'s vector file.
    pub fn grid(&self, model: &ModelArgs) -> Grid {
        Grid {
            alphas: self.alphas.clone(),
            layer_grid: self.layer_grid.clone(),
            positions_grid: self.positions_grid.clone(),
            rules: self.rules.settings(),
            mechanism: self.rules.mechanism,
            vectors: self.vectors.query(model),
        }
    }

    /// The plan of `kinds` on this grid; `-v` says which vector file and why.
    pub fn plan(&self, kinds: &[Kind], model: &ModelArgs) -> Result<ConditionPlan> {
        let plan = ConditionPlan::new(kinds, &self.grid(model))?;
        self.vectors.tell(model, plan.located(), plan.passed_over());
        Ok(plan)
    }
}

/// The conditions of `plan` on `engine`, saying how the vector file fits the model.
pub fn conditions<'e>(
    engine: &'e Engine,
    plan: ConditionPlan,
    data: &DataArgs,
    n_predict: usize,
) -> Result<Conditions<'e>> {
    let conds = Conditions::new(
        engine,
        plan,
        data.system.clone(),
        n_predict,
        data.parallel as usize,
    )?;
    if let Some((path, fit)) = conds.fit() {
        if let Some(line) = fit.message(path) {
            eprintln!("{line}");
        }
    }
    Ok(conds)
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
    #[arg(
        help_heading = "Answers and judge",
        long,
        value_enum,
        default_value = "refusal"
    )]
    judge: JudgeKind,
    /// Instruct GGUF for the LLM judge.
    #[arg(help_heading = "Answers and judge", long = "judge-model")]
    judge_model: Option<PathBuf>,
    /// Answer tokens (greedy).
    #[arg(
        help_heading = "Answers and judge",
        short = 'n',
        long = "n-predict",
        default_value_t = 64
    )]
    n_predict: usize,
}

fn safety(args: SafetyArgs) -> Result<()> {
    let items = args.data.items()?;
    let plan = args
        .conditions
        .grid
        .plan(&args.conditions.conditions, &args.model)?;
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
    let mut conds = conditions(&engine, plan, &args.data, args.n_predict)?;
    let mut journal: Journal<SafetyRecord> = Journal::open(&args.data.out.join("safety.jsonl"))?;
    let records = cmrm::eval::run_safety(&items, &mut conds, &mut journal, judge.as_ref())?;
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
#[command(mut_arg("data", |a| a
    .required(false)
    .default_value(DEFAULT_BENIGN)
    .help("JSONL data: {\"id\"?, \"prompt\", \"image\", \"category\"?, \"reference\"?, \"choices\"?, \"answer\"?} per line (image paths relative to the file); default: the 240 benign requests with images of vendor/sets/benign-xs.jsonl, half of them harmful-looking but safe")))]
pub struct UtilityArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    conditions: ConditionArgs,
    /// Answer tokens (greedy) for the over-refusal check.
    #[arg(
        help_heading = "Answers",
        short = 'n',
        long = "n-predict",
        default_value_t = 48
    )]
    n_predict: usize,
}

fn utility(args: UtilityArgs) -> Result<()> {
    let items = args.data.items()?;
    let plan = args
        .conditions
        .grid
        .plan(&args.conditions.conditions, &args.model)?;
    let engine = Engine::load(args.model.engine_options()?)?;
    let mut conds = conditions(&engine, plan, &args.data, args.n_predict)?;
    let mut journal: Journal<UtilityRecord> = Journal::open(&args.data.out.join("utility.jsonl"))?;
    let records = cmrm::eval::run_utility(&items, &mut conds, &mut journal)?;
    let summaries = utility::summarize(&records);
    let by_category = utility::category_table(&records, &items);
    let md = match by_category.is_empty() {
        true => utility::table(&summaries),
        false => format!(
            "{}\nOver-refusal per category:\n\n{by_category}",
            utility::table(&summaries)
        ),
    };
    publish(&args.data.out, "utility", &summaries, &md, args.data.json)
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
    #[arg(
        help_heading = "Answers",
        short = 'n',
        long = "n-predict",
        default_value_t = 16
    )]
    n_predict: usize,
}

fn fidelity(mut args: FidelityArgs) -> Result<()> {
    // The text-only run is the reference of every comparison, not a condition.
    args.conditions.conditions.retain(|c| *c != Kind::Text);
    let items = args.data.items()?;
    let plan = args
        .conditions
        .grid
        .plan(&args.conditions.conditions, &args.model)?;
    let engine = Engine::load(args.model.engine_options()?)?;
    let mut conds = conditions(&engine, plan, &args.data, args.n_predict)?;
    let mut journal: Journal<FidelityRecord> =
        Journal::open(&args.data.out.join("fidelity.jsonl"))?;
    let records = cmrm::eval::run_fidelity(&items, &mut conds, &mut journal)?;
    let summaries = fidelity::summarize_records(&records);
    publish(
        &args.data.out,
        "fidelity",
        &summaries,
        &fidelity::table(&summaries),
        args.data.json,
    )
}
