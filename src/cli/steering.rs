//! The `--cmrm*` flags: which vectors steer and how. Values are parsed into the library's
//! types when the command line is read, and the combination is checked before a model loads.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use cmrm::media::Corruption;
use cmrm::session::{Apply, Layers, Positions, SteerConfig, SteerOverride};
use cmrm::steer::{Mechanism, Source};
use cmrm::vectors::{default_path, discover, CmrmVectors, ModelId};
use cmrm::{CmrmSteering, Engine};

use super::ModelArgs;

/// Which vector file, for every command that steers.
#[derive(Args, Clone, Debug)]
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
    /// The vector file to use: `--cmrm FILE`, else `<model-stem>.cmrm.gguf`, else the one
    /// `*.cmrm.gguf` in the model's folder made for this model (`required`: an error when
    /// there is none). Read before the model loads; `-v` says which file and why.
    pub fn load(
        &self,
        model: &ModelArgs,
        required: bool,
    ) -> Result<Option<(PathBuf, CmrmVectors)>> {
        if let Some(p) = &self.file {
            let v = CmrmVectors::load(p)?;
            if model.verbose {
                eprintln!("cmrm: vectors {} (given with --cmrm)", p.display());
            }
            return Ok(Some((p.clone(), v)));
        }
        let running = || ModelId::of_files(&model.model, model.mmproj.as_deref());
        let found = discover(&model.model, running)?;
        if model.verbose {
            for (p, why) in &found.passed_over {
                eprintln!("cmrm: passed over {}: {why}", p.display());
            }
        }
        match found.chosen {
            Some(c) => {
                if model.verbose {
                    eprintln!("cmrm: vectors {} ({})", c.path.display(), c.reason);
                }
                Ok(Some((c.path, c.vectors)))
            }
            None if required => {
                let mut msg = format!(
                    "no vector file for {}: neither {} nor a *.cmrm.gguf made for this model in its folder; make one with `cmrm calibrate` or pass --cmrm FILE",
                    model.model.display(),
                    default_path(&model.model).display()
                );
                for (p, why) in &found.passed_over {
                    msg.push_str(&format!("\n  passed over {}: {why}", p.display()));
                }
                anyhow::bail!(msg)
            }
            None => Ok(None),
        }
    }

    /// Checks that `vectors` were made for the loaded model (or another quantization of it,
    /// said in one line) and are of its scale.
    pub fn check(&self, path: &Path, vectors: &CmrmVectors, engine: &Engine) -> Result<()> {
        let id = ModelId::of(engine)?;
        let fit = vectors.check_model(path, &id, self.force)?;
        if let Some(line) = fit.message(path) {
            eprintln!("{line}");
        }
        cmrm::steer::check_scale(engine, &vectors.deltas)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(())
    }
}

/// How shifts are applied, for every command that steers.
#[derive(Args, Clone, Debug)]
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
    /// `base` with the flags that are set.
    pub fn config(&self, base: SteerConfig) -> SteerConfig {
        SteerConfig {
            apply: self.apply.unwrap_or(base.apply),
            layers: self.layers.unwrap_or(base.layers),
            positions: self.positions.unwrap_or(base.positions),
            ..base
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

/// What the flags ask for, checked before the model loads.
pub struct SteerPlan {
    vectors: Option<(PathBuf, CmrmVectors)>,
    source: Source,
    config: SteerConfig,
    mechanism: Mechanism,
}

impl SteerArgs {
    /// Reads the vector file and checks the settings; `None` for plain inference.
    pub fn plan(&self, model: &ModelArgs) -> Result<Option<SteerPlan>> {
        if self.off {
            return Ok(None);
        }
        if self.rules.corruption.is_some() && !self.sample {
            anyhow::bail!("--cmrm-corruption applies to sample-level CMRM only: add --cmrm-sample");
        }
        let vectors = self.vectors.load(model, false)?;
        if vectors.is_none() && !self.sample {
            let r = &self.rules;
            let set = self.alpha.is_some()
                || r.apply.is_some()
                || r.layers.is_some()
                || r.positions.is_some()
                || r.mechanism != Mechanism::Cvec
                || self.text_only
                || self.vectors.force;
            if set {
                anyhow::bail!(
                    "the --cmrm-* flags would be ignored: there is no vector file (neither {} nor a *.cmrm.gguf made for this model in its folder); pass --cmrm FILE or --cmrm-sample",
                    default_path(&model.model).display()
                );
            }
            return Ok(None);
        }
        let base = vectors
            .as_ref()
            .map(|(_, v)| v.recommended.clone())
            .unwrap_or_default();
        let mut config = self.rules.config(base);
        if let Some(a) = self.alpha {
            config.alpha = a;
        }
        config.text_only |= self.text_only;
        let source = if self.sample {
            Source::Sample(
                self.rules
                    .corruption
                    .clone()
                    .unwrap_or(Corruption::Noise(0)),
            )
        } else {
            Source::Dataset
        };
        config.check(self.sample, self.rules.mechanism == Mechanism::Callback)?;
        Ok(Some(SteerPlan {
            vectors,
            source,
            config,
            mechanism: self.rules.mechanism,
        }))
    }

    /// The steering of every slot of a server, and the settings requests start from: the
    /// plan's steering on by default; without a plan (no vector file and no --cmrm-sample, or
    /// --no-cmrm) sample-level steering that requests turn on themselves.
    pub fn server_steering(
        &self,
        plan: Option<SteerPlan>,
        engine: &Engine,
        slots: usize,
    ) -> Result<(Vec<CmrmSteering>, SteerOverride)> {
        let (plan, enabled) = match plan {
            Some(p) => (p, true),
            None => (
                SteerPlan {
                    vectors: None,
                    source: Source::Sample(
                        self.rules
                            .corruption
                            .clone()
                            .unwrap_or(Corruption::Noise(0)),
                    ),
                    config: SteerConfig::default(),
                    mechanism: self.rules.mechanism,
                },
                false,
            ),
        };
        let deltas = match &plan.vectors {
            Some((path, v)) => {
                self.vectors.check(path, v, engine)?;
                Some(v.deltas.clone())
            }
            None => None,
        };
        let safety = safety_of(&plan);
        let steerings = (0..slots)
            .map(|_| {
                CmrmSteering::new(
                    engine,
                    deltas.clone(),
                    plan.source.clone(),
                    plan.config.clone(),
                    plan.mechanism,
                    true,
                )?
                .with_safety(safety.clone())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let defaults = SteerOverride {
            enabled: Some(enabled),
            ..SteerOverride::default()
        };
        Ok((steerings, defaults))
    }

    /// The steering of a plan on the loaded engine.
    pub fn steering(&self, plan: SteerPlan, engine: &Engine) -> Result<CmrmSteering> {
        let deltas = match &plan.vectors {
            Some((path, v)) => {
                self.vectors.check(path, v, engine)?;
                Some(v.deltas.clone())
            }
            None => None,
        };
        if engine.options().verbose {
            let (first, last) = plan.config.layer_range(engine.model().n_layer());
            let what = match (&plan.source, &plan.vectors) {
                (Source::Sample(c), _) => format!("sample-level, corruption {c}"),
                (Source::Dataset, Some((p, _))) => p.display().to_string(),
                (Source::Dataset, None) => "dataset".into(),
            };
            eprintln!(
                "cmrm: steering ({what}) alpha {} apply {} layers {first}-{last} positions {} via {}",
                plan.config.alpha, plan.config.apply, plan.config.positions, plan.mechanism
            );
        }
        let sample_ready = matches!(plan.source, Source::Sample(_));
        let safety = safety_of(&plan);
        Ok(CmrmSteering::new(
            engine,
            deltas,
            plan.source,
            plan.config,
            plan.mechanism,
            sample_ready,
        )?
        .with_safety(safety)?)
    }
}

/// The vector file's safety directions (for `--cmrm-apply project`), if it has them.
fn safety_of(plan: &SteerPlan) -> Option<Vec<Vec<f32>>> {
    plan.vectors
        .as_ref()
        .and_then(|(_, v)| v.safety.as_ref())
        .map(|s| s.directions.clone())
}
