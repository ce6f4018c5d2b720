//! The `--cmrm*` flags: which vectors steer and how. Values are parsed into the library's
//! types when the command line is read, and the combination is checked before a model loads.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use cmrm::media::Corruption;
use cmrm::session::{Apply, Layers, Positions, SteerOverride};
use cmrm::steer::{Located, Mechanism, Source, SteerPlan, VectorQuery};
use cmrm::vectors::Fit;
use cmrm::{CmrmSteering, Engine};

use super::ModelArgs;

/// Which vector file, for every command that steers.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "CMRM")]
pub struct VectorArgs {
    /// Vector file (default: <model-stem>.cmrm.gguf next to the model, else the one
    /// *.cmrm.gguf in the model's folder made for this model or another quantization of it).
    #[arg(long = "cmrm", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Use a vector file made for another model of the same shape (its shifts may mean
    /// nothing there; other quantizations of the same model need no --force).
    #[arg(long)]
    pub force: bool,
}

impl VectorArgs {
    /// Where to look for `model`'s vector file.
    pub fn query(&self, model: &ModelArgs) -> VectorQuery {
        VectorQuery::new(&model.model, model.mmproj.clone())
            .file(self.file.clone())
            .force(self.force)
    }

    /// With `-v`, says which vector file steers and why, and which were passed over.
    pub fn tell(
        &self,
        model: &ModelArgs,
        chosen: Option<&Located>,
        passed_over: &[(PathBuf, String)],
    ) {
        if !model.verbose {
            return;
        }
        for (p, why) in passed_over {
            eprintln!("cmrm: passed over {}: {why}", p.display());
        }
        if let Some(c) = chosen {
            let why = if self.file.is_some() {
                "given with --cmrm"
            } else {
                c.reason.as_str()
            };
            eprintln!("cmrm: vectors {} ({why})", c.path.display());
        }
    }
}

/// How shifts are applied, for every command that steers.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "CMRM")]
pub struct RuleArgs {
    /// How per-layer shifts are added: total (each layer's shift), increment (the difference
    /// from the layer below), interpolate (sample-level: toward the text-only state measured
    /// live), project (ShiftDC: only the part along the refusal direction), pure (total without
    /// the part along the refusal direction; project and pure need a file calibrated with
    /// --method shiftdc).
    #[arg(long = "cmrm-apply")]
    pub apply: Option<Apply>,
    /// Steered layers: A-B (inclusive) or a single layer A (default: the file's, else one
    /// layer at ~70% depth).
    #[arg(long = "cmrm-layers", value_name = "A-B")]
    pub layers: Option<Layers>,
    /// Steered tokens: last-prompt (the last prompt token only; the default), last (the last
    /// prompt token and the generated tokens), after-image, all [default: the file's, else
    /// last-prompt].
    #[arg(long = "cmrm-positions")]
    pub positions: Option<Positions>,
    /// Meaningless image of sample-level shifts: blank, noise, noise:SEED, anchor (the input's
    /// own image) or an image file.
    #[arg(long = "cmrm-corruption", value_name = "CORRUPTION")]
    pub corruption: Option<Corruption>,
    /// Mechanism: cvec (llama.cpp's control vector) or callback (edits in the graph callback,
    /// reaches layer 0).
    #[arg(long = "cmrm-path", default_value = "cvec")]
    pub mechanism: Mechanism,
}

impl RuleArgs {
    /// The settings the flags set.
    pub fn settings(&self) -> SteerOverride {
        SteerOverride {
            apply: self.apply,
            layers: self.layers,
            positions: self.positions,
            corruption: self.corruption.clone(),
            ..SteerOverride::default()
        }
    }
}

/// CMRM flags of `chat` (and `serve`).
#[derive(Args, Clone, Debug)]
pub struct SteerArgs {
    #[command(flatten)]
    pub vectors: VectorArgs,
    #[command(flatten)]
    pub rules: RuleArgs,
    /// Do not steer, even when a vector file sits next to the model.
    #[arg(long = "no-cmrm", conflicts_with_all = ["file", "sample", "alpha", "apply", "layers", "positions", "corruption", "text_only"])]
    pub off: bool,
    /// Scale of the shift (default: the file's recommended alpha, else 1).
    #[arg(long = "cmrm-alpha")]
    pub alpha: Option<f32>,
    /// Sample-level CMRM: compute each request's own shift (two extra prefills).
    #[arg(long = "cmrm-sample")]
    pub sample: bool,
    /// Also steer turns without an image.
    #[arg(long = "cmrm-text")]
    pub text_only: bool,
}

impl SteerArgs {
    /// The settings the flags set.
    pub fn settings(&self) -> SteerOverride {
        SteerOverride {
            enabled: self.off.then_some(false),
            sample: self.sample.then_some(true),
            alpha: self.alpha,
            text_only: self.text_only.then_some(true),
            ..self.rules.settings()
        }
    }

    /// Reads the vector file and checks the settings before the model loads; `-v` says
    /// which vector file and why.
    pub fn plan(&self, model: &ModelArgs) -> Result<SteerPlan> {
        let query = self.vectors.query(model);
        let plan = SteerPlan::new(&self.settings(), self.rules.mechanism, &query)?;
        self.vectors.tell(model, plan.located(), plan.passed_over());
        Ok(plan)
    }

    /// The steering of a plan on the loaded engine (none for plain inference); says how the
    /// vector file fits the model, and with `-v` what steers.
    pub fn steering(&self, plan: &SteerPlan, engine: &Engine) -> Result<Option<CmrmSteering>> {
        let (steering, fit) = plan.steering(engine)?;
        tell_fit(plan, fit);
        if engine.options().verbose && steering.is_some() {
            let config = plan.config();
            let (first, last) = config.layer_range(engine.model().n_layer());
            let what = match (plan.source(), plan.located()) {
                (Source::Sample(c), _) => format!("sample-level, corruption {c}"),
                (Source::Dataset, Some(v)) => v.path.display().to_string(),
                (Source::Dataset, None) => "dataset".into(),
            };
            eprintln!(
                "cmrm: steering ({what}) alpha {} apply {} layers {first}-{last} positions {} via {}",
                config.alpha, config.apply, config.positions, plan.mechanism()
            );
        }
        Ok(steering)
    }
}

/// Prints how the plan's vector file fits the model, when there is something to say.
pub fn tell_fit(plan: &SteerPlan, fit: Option<Fit>) {
    if let (Some(fit), Some(v)) = (fit, plan.located()) {
        if let Some(line) = fit.message(&v.path) {
            eprintln!("{line}");
        }
    }
}
