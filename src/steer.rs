//! Steering: adding `alpha * delta` to the residual stream while a multimodal input is read.
//!
//! Two mechanisms. The default is llama.cpp's in-graph control vector
//! (`llama_set_adapter_cvec`), which runs on every backend but cannot reach layer 0. The
//! graph-callback path edits `l_out-<il>` in the eval callback: it reaches layer 0 and can be
//! switched per decode without a scheduler re-reserve, at the cost of one synchronisation per
//! steered layer and micro-batch.

use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};

use crate::capture::layer_of;
use crate::ffi::{Context, GraphHook, HookTensor};
use crate::session::{Phase, PromptHooks};

/// How per-layer total shifts become per-layer additions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Apply {
    /// Add each layer's total shift `delta_l` at layer l (compounds through the layers).
    Total,
    /// Add `delta_l - delta_(l-1)` at layer l (the first steered layer gets its total), so
    /// that the accumulated addition at layer l is `delta_l`.
    Increment,
}

impl Apply {
    /// Name used in files and flags.
    pub fn name(self) -> &'static str {
        match self {
            Apply::Total => "total",
            Apply::Increment => "increment",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "total" => Ok(Apply::Total),
            "increment" => Ok(Apply::Increment),
            _ => bail!("unknown apply rule {s:?} (total, increment)"),
        }
    }
}

/// Which tokens are steered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Positions {
    /// The last prompt token and every generated token.
    Last,
    /// The image tokens and everything after them.
    AfterImage,
    /// Every token of the turn.
    All,
}

impl Positions {
    /// Name used in files and flags.
    pub fn name(self) -> &'static str {
        match self {
            Positions::Last => "last",
            Positions::AfterImage => "after-image",
            Positions::All => "all",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "last" => Ok(Positions::Last),
            "after-image" => Ok(Positions::AfterImage),
            "all" => Ok(Positions::All),
            _ => bail!("unknown positions {s:?} (last, after-image, all)"),
        }
    }
}

/// A steering configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct SteerConfig {
    /// Scale of the shift.
    pub alpha: f32,
    /// Total or increment.
    pub apply: Apply,
    /// Inclusive layer range.
    pub layers: (usize, usize),
    /// Steered tokens.
    pub positions: Positions,
    /// Also steer turns without an image.
    pub text_only: bool,
}

impl Default for SteerConfig {
    fn default() -> Self {
        Self {
            alpha: 1.0,
            apply: Apply::Increment,
            layers: (1, usize::MAX),
            positions: Positions::Last,
            text_only: false,
        }
    }
}

impl SteerConfig {
    /// The layer range clamped to a model of `n_layer` layers.
    pub fn layer_range(&self, n_layer: usize) -> (usize, usize) {
        (
            self.layers.0.min(n_layer - 1),
            self.layers.1.min(n_layer - 1),
        )
    }
}

/// Per-layer additions for layers 0..n_layer (zero outside the range), from total shifts.
pub fn additions(deltas: &[Vec<f32>], cfg: &SteerConfig) -> Vec<Vec<f32>> {
    let n_layer = deltas.len();
    let (first, last) = cfg.layer_range(n_layer);
    (0..n_layer)
        .map(|il| {
            if il < first || il > last {
                return vec![0.0; deltas[il].len()];
            }
            let prev = (cfg.apply == Apply::Increment && il > first).then(|| &deltas[il - 1]);
            deltas[il]
                .iter()
                .enumerate()
                .map(|(j, d)| cfg.alpha * (d - prev.map_or(0.0, |p| p[j])))
                .collect()
        })
        .collect()
}

/// The control-vector buffer (layers 1..n_layer-1, flattened) for llama.cpp.
pub fn control_rows(deltas: &[Vec<f32>], cfg: &SteerConfig) -> Vec<f32> {
    let mut cfg = cfg.clone();
    cfg.layers.0 = cfg.layers.0.max(1);
    additions(deltas, &cfg)[1..].concat()
}

/// Control-vector steering driven by the prompt phases.
pub struct CvecSteering {
    rows: Vec<f32>,
    range: (usize, usize),
    config: SteerConfig,
    active: bool,
    set: bool,
}

impl CvecSteering {
    /// Steering with `deltas` (total shifts per layer) under `config`.
    pub fn new(deltas: &[Vec<f32>], config: SteerConfig) -> Self {
        let n_layer = deltas.len();
        let (first, last) = config.layer_range(n_layer);
        Self {
            rows: control_rows(deltas, &config),
            range: (first.max(1), last.max(1)),
            config,
            active: false,
            set: false,
        }
    }

    fn apply(&mut self, ctx: &mut Context<'_>) -> Result<()> {
        if self.active && !self.set {
            ctx.set_control_vector(Some((&self.rows, self.range.0, self.range.1)))?;
            self.set = true;
        }
        Ok(())
    }
}

impl PromptHooks for CvecSteering {
    fn split_last_token(&self) -> bool {
        self.active && self.config.positions == Positions::Last
    }

    fn at(&mut self, ctx: &mut Context<'_>, phase: Phase) -> Result<()> {
        match (phase, self.config.positions) {
            (Phase::Start { has_image }, p) => {
                self.active = has_image || self.config.text_only;
                if self.set {
                    ctx.set_control_vector(None)?;
                    self.set = false;
                }
                if p == Positions::All {
                    self.apply(ctx)?;
                }
            }
            (Phase::Image, Positions::AfterImage) | (Phase::LastToken, Positions::Last) => {
                self.apply(ctx)?
            }
            _ => {}
        }
        Ok(())
    }
}

/// Steering by editing `l_out-<il>` in the eval callback (reaches layer 0).
pub struct CallbackSteering {
    additions: Vec<Vec<f32>>,
    positions: Positions,
    text_only: bool,
    active: bool,
    armed: bool,
}

impl CallbackSteering {
    /// A shared hook for [`crate::Engine::session`]; pass the same value as prompt hooks.
    pub fn new(deltas: &[Vec<f32>], config: &SteerConfig) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            additions: additions(deltas, config),
            positions: config.positions,
            text_only: config.text_only,
            active: false,
            armed: false,
        }))
    }

    /// Replaces the shifts (sample-level steering) keeping the configuration.
    pub fn set_deltas(&mut self, deltas: &[Vec<f32>], config: &SteerConfig) {
        self.additions = additions(deltas, config);
    }
}

impl GraphHook for CallbackSteering {
    fn wants(&self, name: &str) -> bool {
        self.armed
            && layer_of(name)
                .and_then(|il| self.additions.get(il))
                .is_some_and(|a| a.iter().any(|x| *x != 0.0))
    }

    fn observe(&mut self, name: &str, t: &mut HookTensor<'_>) {
        let Some(add) = layer_of(name).and_then(|il| self.additions.get(il)) else {
            return;
        };
        for r in 0..t.n_rows() {
            let mut row = t.read_row(r);
            row.iter_mut().zip(add).for_each(|(x, a)| *x += a);
            t.write_row(r, &row);
        }
    }
}

/// Drives a shared [`CallbackSteering`] from the prompt phases.
pub struct CallbackPhases(pub Arc<Mutex<CallbackSteering>>);

impl PromptHooks for CallbackPhases {
    fn split_last_token(&self) -> bool {
        self.0
            .lock()
            .is_ok_and(|s| s.active && s.positions == Positions::Last)
    }

    fn at(&mut self, _: &mut Context<'_>, phase: Phase) -> Result<()> {
        let mut s = self
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("steering hook poisoned"))?;
        match (phase, s.positions) {
            (Phase::Start { has_image }, p) => {
                s.active = has_image || s.text_only;
                s.armed = s.active && p == Positions::All;
            }
            (Phase::Image, Positions::AfterImage) | (Phase::LastToken, Positions::Last) => {
                s.armed = s.active;
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deltas() -> Vec<Vec<f32>> {
        vec![
            vec![1.0, 0.0],
            vec![3.0, 1.0],
            vec![4.0, 4.0],
            vec![10.0, 0.0],
        ]
    }

    #[test]
    fn increments_sum_to_the_total_shift() {
        let cfg = SteerConfig {
            layers: (1, 2),
            ..SteerConfig::default()
        };
        let a = additions(&deltas(), &cfg);
        assert_eq!(a[0], vec![0.0, 0.0]);
        assert_eq!(a[1], vec![3.0, 1.0]);
        assert_eq!(a[2], vec![1.0, 3.0]);
        assert_eq!(a[3], vec![0.0, 0.0]);
    }

    #[test]
    fn total_scales_each_layer_and_control_rows_skip_layer_0() {
        let cfg = SteerConfig {
            alpha: 0.5,
            apply: Apply::Total,
            layers: (0, 9),
            ..SteerConfig::default()
        };
        let a = additions(&deltas(), &cfg);
        assert_eq!(a[0], vec![0.5, 0.0]);
        assert_eq!(a[3], vec![5.0, 0.0]);
        assert_eq!(
            control_rows(&deltas(), &cfg),
            vec![1.5, 0.5, 2.0, 2.0, 5.0, 0.0]
        );
    }
}
