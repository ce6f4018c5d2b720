//! CMRM steering of a session: dataset-level vectors or each input's own (sample-level) shift,
//! through the control vector or the graph callback, with per-turn overrides.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use super::{CallbackPhases, CallbackSteering, CmrmSteeringBuilder, CvecSteering};
use crate::capture::{lock, LayerCapture};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ffi::SharedHook;
use crate::layer_vectors::LayerVectors;
use crate::media::{Corruption, CorruptionImages, Image};
use crate::session::{
    Applied, Apply, Positions, Probe, SteerConfig, Steering, TurnHooks, TurnInput, TurnPlan,
};
use crate::vectors::CmrmVectors;

/// How the shift is added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mechanism {
    /// llama.cpp's control vector (every backend; layers 1..n_layer-1).
    #[default]
    Cvec,
    /// Edits of `l_out-<il>` in the eval callback (reaches layer 0).
    Callback,
}

impl FromStr for Mechanism {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cvec" => Ok(Mechanism::Cvec),
            "callback" => Ok(Mechanism::Callback),
            _ => Err(format!("{s:?} is not a mechanism (cvec, callback)")),
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mechanism::Cvec => "cvec",
            Mechanism::Callback => "callback",
        })
    }
}

/// Where a turn's shift comes from by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Dataset-level total shifts per layer (from a vector file).
    Dataset,
    /// Sample-level: each input's own shift against this corruption.
    Sample(Corruption),
}

/// CMRM steering for a session.
pub struct CmrmSteering {
    n_layer: usize,
    n_embd: usize,
    vectors: Option<LayerVectors>,
    vectors_id: u64,
    source: Source,
    config: SteerConfig,
    mechanism: Mechanism,
    callback: Option<Arc<Mutex<CallbackSteering>>>,
    capture: Option<Arc<Mutex<LayerCapture>>>,
    /// Corruption images, made once (the most recent few kept).
    corruption_images: CorruptionImages,
    /// Per-layer safety directions (a vector file's, for ShiftDC's `project` rule).
    safety: Option<LayerVectors>,
}

impl CmrmSteering {
    /// A builder of steering on `engine`'s model.
    pub fn builder(engine: &Engine) -> CmrmSteeringBuilder<'_> {
        CmrmSteeringBuilder::new(engine)
    }

    /// The steering a builder describes.
    pub(super) fn assemble(b: CmrmSteeringBuilder<'_>) -> Result<Self> {
        let (n_layer, n_embd) = (b.engine.model().n_layer(), b.engine.model().n_embd());
        if let Some(v) = &b.vectors {
            v.check("the shifts", n_layer, n_embd)?;
        }
        if let Some(d) = &b.safety {
            d.check("the safety directions", n_layer, n_embd)?;
        }
        let sample = matches!(b.source, Source::Sample(_));
        if !sample && b.vectors.is_none() {
            return Err(Error::Steering(
                "dataset-level steering needs a vector file".into(),
            ));
        }
        b.config.check(sample, b.mechanism == Mechanism::Callback)?;
        let vectors_id = b.vectors.as_ref().map_or(0, |v| {
            crate::hash::fnv1a(v.iter().flatten().flat_map(|x| x.to_bits().to_le_bytes()))
        });
        Ok(Self {
            n_layer,
            n_embd,
            vectors: b.vectors,
            vectors_id,
            source: b.source,
            config: b.config,
            mechanism: b.mechanism,
            callback: (b.mechanism == Mechanism::Callback)
                .then(|| CallbackSteering::shared(n_layer, n_embd)),
            capture: (sample || b.sample_turns).then(|| LayerCapture::all_layers(n_layer)),
            corruption_images: CorruptionImages::default(),
            safety: b.safety,
        })
    }

    /// Dataset-level steering with fixed shifts.
    pub fn dataset(
        engine: &Engine,
        deltas: impl Into<LayerVectors>,
        config: SteerConfig,
        mechanism: Mechanism,
    ) -> Result<Self> {
        Self::builder(engine)
            .vectors(deltas)
            .config(config)
            .mechanism(mechanism)
            .build()
    }

    /// Dataset-level steering with a vector file's shifts and recommended settings, through
    /// the control vector; shifts far beyond the model's own scale are refused.
    pub fn from_vectors(engine: &Engine, vectors: &CmrmVectors) -> Result<Self> {
        super::check_scale(engine, &vectors.deltas)?;
        Self::dataset(
            engine,
            vectors.deltas.clone(),
            vectors.recommended.clone(),
            Mechanism::Cvec,
        )
    }

    /// Sample-level steering against `corruption`.
    pub fn sample(
        engine: &Engine,
        corruption: Corruption,
        config: SteerConfig,
        mechanism: Mechanism,
    ) -> Result<Self> {
        Self::builder(engine)
            .sample(corruption)
            .config(config)
            .mechanism(mechanism)
            .build()
    }

    /// The default configuration.
    pub fn config(&self) -> &SteerConfig {
        &self.config
    }

    /// The default source.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The mechanism.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Per-layer last-token states of the single-turn prompt (system, text, images).
    fn states(
        &mut self,
        probe: &mut dyn Probe,
        turn: &TurnInput<'_>,
        images: &[Image],
    ) -> Result<LayerVectors> {
        let capture = self.capture.clone().ok_or_else(|| {
            Error::Steering("sample-level steering was not prepared for this session".into())
        })?;
        {
            let mut c = lock(&capture)?;
            c.clear();
            c.set_armed(true);
        }
        let text = probe_text(turn.text, images.len());
        let out = probe.prefill(turn.system, &text, images);
        let mut c = lock(&capture)?;
        c.set_armed(false);
        out?;
        c.all_states()
    }

    /// The corruption image for a turn: the turn's own image for `anchor`, else the fixed
    /// image of the corruption (loaded once).
    fn corruption_image(&mut self, corruption: &Corruption, turn: &TurnInput<'_>) -> Result<Image> {
        if *corruption == Corruption::Anchor {
            return turn.images.first().cloned().ok_or_else(|| {
                Error::Steering("the anchor corruption needs an image in the turn".into())
            });
        }
        self.corruption_images.get(corruption)
    }
}

impl Steering for CmrmSteering {
    fn graph_hook(&self) -> Option<SharedHook> {
        let mut hooks: Vec<SharedHook> = Vec::new();
        if let Some(c) = &self.callback {
            hooks.push(c.clone());
        }
        if let Some(c) = &self.capture {
            hooks.push(c.clone());
        }
        crate::session::chain(hooks)
    }

    fn plan(&mut self, turn: &TurnInput<'_>, probe: &mut dyn Probe) -> Result<TurnPlan> {
        let o = turn.overrides.cloned().unwrap_or_default();
        if o.enabled == Some(false) {
            return Ok(TurnPlan::none("turned off for this turn"));
        }
        let default_corruption = match &self.source {
            Source::Sample(c) => Some(c.clone()),
            Source::Dataset => None,
        };
        let sample = o.sample.unwrap_or(default_corruption.is_some());
        let corruption = o
            .corruption
            .clone()
            .or(default_corruption)
            .unwrap_or(Corruption::Noise(0));
        let config = o.config(&self.config);
        let callback = self.mechanism == Mechanism::Callback;
        config.check(sample, callback)?;
        if turn.images.is_empty() && !config.text_only {
            return Ok(TurnPlan::none("no image in this turn"));
        }
        if config.alpha == 0.0 {
            // No hooks at all: even an idle `last` hook splits the last prompt token from
            // its batch, which moves llama.cpp's attention sums by rounding on long prompts.
            return Ok(TurnPlan::none("alpha is 0"));
        }
        let applied = Applied {
            applied: true,
            reason: None,
            source: Some(if sample { "sample" } else { "dataset" }.into()),
            method: Some(
                if config.apply == Apply::Project {
                    "shiftdc"
                } else {
                    "cmrm"
                }
                .into(),
            ),
            alpha: Some(config.alpha),
            layers: Some(config.layer_range(self.n_layer)),
            positions: Some(config.positions.to_string()),
            apply: Some(config.apply.to_string()),
            corruption: sample.then(|| corruption.to_string()),
            mechanism: Some(self.mechanism.to_string()),
        };
        let mut tag = fnv(&format!("{applied:?}"));
        let hooks: Box<dyn TurnHooks> = if sample {
            tag = fnv(&format!(
                "{tag} {:?} {}",
                turn.text,
                turn.system.unwrap_or("")
            )) ^ turn.images.iter().fold(0, |h, i| h ^ i.hash());
            let text_states = self.states(probe, turn, &[])?;
            if config.apply.measures_live() {
                let directions = match config.apply {
                    Apply::Project => Some(self.safety.clone().ok_or_else(|| {
                        Error::Steering(
                            "the project rule (ShiftDC) needs safety directions: calibrate with --method shiftdc --benign FILE".into(),
                        )
                    })?),
                    _ => None,
                };
                let cb = self.callback.clone().expect("checked: callback mechanism");
                lock_cb(&cb).set_targets(text_states, &config, directions);
                Box::new(CallbackPhases(cb))
            } else {
                let corrupt = self.corruption_image(&corruption, turn)?;
                let corrupt_states = self.states(probe, turn, std::slice::from_ref(&corrupt))?;
                let shift = text_states.map(|il, t| crate::math::sub(t, &corrupt_states[il]));
                let shift = self.pure(shift, &config)?;
                self.hooks_for(&shift, &config)?
            }
        } else {
            let deltas = self.vectors.clone().ok_or_else(|| {
                Error::Steering(
                    "dataset-level steering asked for, but no vector file is loaded".into(),
                )
            })?;
            tag = fnv(&format!("{tag} {}", self.vectors_id));
            let deltas = self.pure(deltas, &config)?;
            self.hooks_for(&deltas, &config)?
        };
        let tag = tag | 1;
        Ok(TurnPlan {
            hooks,
            applied,
            tag,
            prefix_tag: if config.positions == Positions::All {
                tag
            } else {
                0
            },
        })
    }
}

impl CmrmSteering {
    /// The shifts the `pure` rule adds: each stripped of its component along the file's
    /// refusal direction; other rules keep them as they are.
    fn pure(&self, shifts: LayerVectors, config: &SteerConfig) -> Result<LayerVectors> {
        if config.apply != Apply::Pure {
            return Ok(shifts);
        }
        let dirs = self.safety.as_ref().ok_or_else(|| {
            Error::Steering(
                "the pure rule needs the vector file's refusal directions: calibrate with --method shiftdc --benign FILE".into(),
            )
        })?;
        Ok(crate::vectors::strip_refusal(&shifts, dirs))
    }

    fn hooks_for(&self, deltas: &LayerVectors, config: &SteerConfig) -> Result<Box<dyn TurnHooks>> {
        debug_assert!(deltas.check("", self.n_layer, self.n_embd).is_ok());
        match &self.callback {
            None => Ok(Box::new(CvecSteering::new(deltas, config))),
            Some(cb) => {
                lock_cb(cb).set_deltas(deltas, config);
                Ok(Box::new(CallbackPhases(cb.clone())))
            }
        }
    }
}

/// The turn's text for a probe with `n_images` images: the real turn's media markers, where it
/// has them, kept for the first `n_images` and removed for the rest.
fn probe_text(text: &str, n_images: usize) -> String {
    let marker = crate::ffi::Mtmd::marker();
    let mut out = String::with_capacity(text.len());
    for (i, part) in text.split(marker.as_str()).enumerate() {
        if i > 0 && i <= n_images {
            out.push_str(&marker);
        }
        out.push_str(part);
    }
    out
}

/// The callback steering, to be set for a new turn: a poison left by a panic in an earlier
/// turn (which that turn reported) is cleared, as the turn sets the steering afresh.
fn lock_cb(cb: &Mutex<CallbackSteering>) -> std::sync::MutexGuard<'_, CallbackSteering> {
    cb.lock().unwrap_or_else(|e| {
        cb.clear_poison();
        e.into_inner()
    })
}

fn fnv(s: &str) -> u64 {
    crate::hash::fnv1a(s.bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn probes_keep_one_marker_per_probe_image() {
        let m = crate::ffi::Mtmd::marker();
        let text = format!("{m}{m}Compare them.");
        assert_eq!(super::probe_text(&text, 0), "Compare them.");
        assert_eq!(super::probe_text(&text, 1), format!("{m}Compare them."));
        assert_eq!(super::probe_text("no marker", 1), "no marker");
    }
}
