//! Planning an evaluation: which conditions (text only, image, CMRM and its variants) run under
//! which steering settings, read and checked before the model loads.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::runner::Condition;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::media::Corruption;
use crate::settings::{Apply, Layers, Positions, SteerConfig, SteerOverride};
use crate::steer::{CmrmSteering, Located, Mechanism, VectorQuery};
use crate::vectors::Fit;

/// A kind of condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

const KINDS: [(Kind, &str); 6] = [
    (Kind::Text, "text"),
    (Kind::Image, "image"),
    (Kind::Cmrm, "cmrm"),
    (Kind::CmrmSample, "cmrm-sample"),
    (Kind::Interpolate, "interpolate"),
    (Kind::Shiftdc, "shiftdc"),
];

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        KINDS.iter().find(|(_, n)| *n == s).map(|(k, _)| *k).ok_or_else(|| {
            format!("{s:?} is not a condition (text, image, cmrm, cmrm-sample, interpolate, shiftdc)")
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = KINDS.iter().find(|(k, _)| k == self).map_or("", |(_, n)| n);
        f.write_str(name)
    }
}

impl Kind {
    /// Whether the condition measures the input's own shift.
    pub fn is_sample(self) -> bool {
        matches!(self, Kind::CmrmSample | Kind::Interpolate | Kind::Shiftdc)
    }
}

/// How the CMRM conditions steer: one condition per alpha x layer range x position set.
#[derive(Clone, Debug, Default)]
pub struct Grid {
    /// Alphas, one condition each (empty: the vector file's, else 1).
    pub alphas: Vec<f32>,
    /// Layer ranges, one condition each (empty: `rules.layers`, else the condition's default).
    pub layer_grid: Vec<Layers>,
    /// Position sets, one condition each (empty: `rules.positions`, else the default).
    pub positions_grid: Vec<Positions>,
    /// Settings over each condition's own: alpha, apply, layers, positions, and the corruption
    /// of sample-level shifts.
    pub rules: SteerOverride,
    /// The mechanism (the callback path whatever this says when interpolate or shiftdc runs).
    pub mechanism: Mechanism,
    /// Where the vector file is.
    pub vectors: VectorQuery,
}

/// A named condition with the steering settings it runs under.
pub(super) struct Named {
    pub(super) name: String,
    pub(super) label: String,
    pub(super) condition: Condition,
    pub(super) config: Option<SteerConfig>,
}

/// The conditions asked for, read and checked before the model loads.
pub struct ConditionPlan {
    pub(super) list: Vec<Named>,
    vectors: Option<Located>,
    passed_over: Vec<(PathBuf, String)>,
    sample: bool,
    mechanism: Mechanism,
    corruption: Corruption,
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

/// Refuses settings the conditions would ignore.
fn refuse_unused(grid: &Grid, dataset: bool, sample: bool, project: bool) -> Result<()> {
    let r = &grid.rules;
    let unused = |flag: &str, why: &str| Error::Invalid(format!("{flag} would be ignored: {why}"));
    if r.corruption.is_some() && !sample {
        return Err(unused(
            "--cmrm-corruption",
            "it applies to the cmrm-sample condition only",
        ));
    }
    if (grid.vectors.file.is_some() || grid.vectors.force) && !dataset && !project {
        return Err(unused(
            "--cmrm/--force",
            "no cmrm condition (nor cmrm-sample with --cmrm-apply project) uses a vector file",
        ));
    }
    let steering_flags = !grid.alphas.is_empty()
        || !grid.layer_grid.is_empty()
        || !grid.positions_grid.is_empty()
        || r.alpha.is_some()
        || r.apply.is_some()
        || r.layers.is_some()
        || r.positions.is_some()
        || grid.mechanism != Mechanism::Cvec;
    if steering_flags && !dataset && !sample {
        return Err(unused(
            "the --alpha/--cmrm-* flags",
            "no condition steers (add cmrm, cmrm-sample, interpolate or shiftdc to --conditions)",
        ));
    }
    Ok(())
}

/// `items`, or one `None` when there are none.
fn or_one<T: Copy>(items: &[T]) -> Vec<Option<T>> {
    if items.is_empty() {
        vec![None]
    } else {
        items.iter().copied().map(Some).collect()
    }
}

impl ConditionPlan {
    /// Reads the vector file when a condition needs it and checks every setting.
    pub fn new(kinds: &[Kind], grid: &Grid) -> Result<Self> {
        if kinds.is_empty() {
            return Err(Error::Invalid("no condition to run (--conditions)".into()));
        }
        let dataset = kinds.contains(&Kind::Cmrm);
        let sample = kinds.iter().any(|k| k.is_sample());
        // The project rule (ShiftDC) reads the vector file's safety directions.
        let project = kinds.contains(&Kind::Shiftdc)
            || (kinds.contains(&Kind::CmrmSample) && grid.rules.apply == Some(Apply::Project))
            || (dataset && grid.rules.apply == Some(Apply::Pure));
        refuse_unused(grid, dataset, sample, project)?;
        let (vectors, passed_over) = if dataset || project {
            let found = grid.vectors.find()?;
            let chosen = found
                .chosen
                .ok_or_else(|| grid.vectors.not_found(&found.passed_over))?;
            (Some(chosen), found.passed_over)
        } else {
            (None, Vec::new())
        };
        if let Some(v) = vectors
            .as_ref()
            .filter(|v| project && v.vectors.safety.is_none())
        {
            return Err(Error::Invalid(format!(
                "{}: no safety directions for shiftdc (--cmrm-apply project) or the pure shift (--cmrm-apply pure); calibrate with --method shiftdc --benign FILE",
                v.path.display()
            )));
        }
        // The conditions share one steering: the callback path when one of them needs it (the
        // two paths give the same logits where both apply).
        let mechanism = if kinds.contains(&Kind::Interpolate) || kinds.contains(&Kind::Shiftdc) {
            Mechanism::Callback
        } else {
            grid.mechanism
        };
        let corruption = grid
            .rules
            .corruption
            .clone()
            .unwrap_or(Corruption::Noise(0));
        let mut plan = Self {
            list: Vec::new(),
            vectors,
            passed_over,
            sample,
            mechanism,
            corruption,
        };
        for &kind in kinds {
            plan.add(kind, grid)?;
        }
        Ok(plan)
    }

    /// Adds the conditions of `kind`: one, or one per point of the grid when it steers.
    fn add(&mut self, kind: Kind, grid: &Grid) -> Result<()> {
        let (prefix, base) = match kind {
            Kind::Text => {
                self.list.push(Named {
                    name: super::TEXT.into(),
                    label: "text only (image removed)".into(),
                    condition: Condition::Text,
                    config: None,
                });
                return Ok(());
            }
            Kind::Image => {
                self.list.push(Named {
                    name: super::BASELINE.into(),
                    label: "image, no steering".into(),
                    condition: Condition::Image,
                    config: None,
                });
                return Ok(());
            }
            Kind::Cmrm => (
                "cmrm",
                self.vectors
                    .as_ref()
                    .map(|v| v.vectors.recommended.clone())
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
        let callback = self.mechanism == Mechanism::Callback;
        let is_sample = kind.is_sample();
        let rules = SteerOverride {
            text_only: None,
            ..grid.rules.clone()
        };
        for layers in or_one(&grid.layer_grid) {
            for pos in or_one(&grid.positions_grid) {
                let mut config = rules.config(&base);
                if matches!(kind, Kind::Interpolate | Kind::Shiftdc) {
                    // The rule is what the condition is.
                    config.apply = base.apply;
                }
                if let Some(l) = layers {
                    config.layers = l;
                }
                if let Some(p) = pos {
                    config.positions = p;
                }
                let alphas = if grid.alphas.is_empty() {
                    vec![config.alpha]
                } else {
                    grid.alphas.clone()
                };
                for a in alphas {
                    let cfg = SteerConfig {
                        alpha: a,
                        ..config.clone()
                    };
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
                        corruption: is_sample.then(|| self.corruption.clone()),
                        text_only: Some(false),
                        ..SteerOverride::from(&cfg)
                    };
                    self.list.push(Named {
                        name,
                        label: label(kind, &cfg),
                        condition: Condition::Steered(o),
                        config: Some(cfg),
                    });
                }
            }
        }
        Ok(())
    }

    /// The steering the steered conditions share, on the loaded engine, and how the vector
    /// file fits the model.
    pub(super) fn steering(&self, engine: &Engine) -> Result<(Option<CmrmSteering>, Option<Fit>)> {
        if !self.list.iter().any(|n| n.config.is_some()) {
            return Ok((None, None));
        }
        let mut b = CmrmSteering::builder(engine)
            .mechanism(self.mechanism)
            .sample_turns(self.sample);
        let mut fit = None;
        match &self.vectors {
            Some(v) => {
                fit = Some(v.check(engine)?);
                b = b
                    .vectors(v.vectors.deltas.clone())
                    .safety(v.vectors.safety.as_ref().map(|s| s.directions.clone()));
            }
            None => b = b.sample(self.corruption.clone()),
        }
        Ok((Some(b.build()?), fit))
    }

    /// The vector file of the conditions, when one needs it.
    pub fn vector_file(&self) -> Option<&Path> {
        self.vectors.as_ref().map(|v| v.path.as_path())
    }

    /// The vector file and why it was chosen, when a condition needs one.
    pub fn located(&self) -> Option<&Located> {
        self.vectors.as_ref()
    }

    /// The `*.cmrm.gguf` files looked at and not used, with the reason.
    pub fn passed_over(&self) -> &[(PathBuf, String)] {
        &self.passed_over
    }

    /// Condition names, in order.
    pub fn names(&self) -> Vec<String> {
        self.list.iter().map(|n| n.name.clone()).collect()
    }
}
