//! Steering: adding `alpha * delta` to the residual stream while a multimodal input is read.
//!
//! Two mechanisms. The default is llama.cpp's in-graph control vector
//! (`llama_set_adapter_cvec`), which runs on every backend but cannot reach layer 0. The
//! graph-callback path edits `l_out-<il>` in the eval callback: it reaches layer 0 and can be
//! switched per decode without a scheduler re-reserve, at the cost of one synchronisation per
//! steered layer and micro-batch.

mod callback;
mod cvec;
mod steerer;

pub use callback::{CallbackPhases, CallbackSteering};
pub use cvec::CvecSteering;
pub use steerer::{Mechanism, Source, Steerer};

use anyhow::{bail, Result};

/// How per-layer total shifts become per-layer additions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Apply {
    /// Add each layer's total shift `delta_l` at layer l (compounds through the layers).
    Total,
    /// Add `delta_l - delta_(l-1)` at layer l (the first steered layer gets its total), so
    /// that the accumulated addition at layer l is `delta_l`.
    Increment,
    /// Sample-level, callback path: move the last prompt token's state at each layer
    /// `alpha` of the way to the text-only state, measured as the graph runs (no compounding).
    Interpolate,
}

impl Apply {
    /// Name used in files and flags.
    pub fn name(self) -> &'static str {
        match self {
            Apply::Total => "total",
            Apply::Increment => "increment",
            Apply::Interpolate => "interpolate",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "total" => Ok(Apply::Total),
            "increment" => Ok(Apply::Increment),
            "interpolate" => Ok(Apply::Interpolate),
            _ => bail!("unknown apply rule {s:?} (total, increment, interpolate)"),
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

/// Layer range meaning "the default layer of the model": one layer at about 70% of the depth
/// (layer 20 of SmolLM2-135M's 30, 16 of Qwen2.5-0.5B's 24), chosen by the fidelity
/// measurements in the README (`scripts/choose-defaults.sh`).
pub const AUTO_LAYERS: (usize, usize) = (usize::MAX, usize::MAX);

/// The default steered layer of a model with `n_layer` layers.
pub fn default_layer(n_layer: usize) -> usize {
    ((n_layer - 1) * 7 + 5) / 10
}

impl Default for SteerConfig {
    /// The measured defaults: `total` shift at one layer at ~70% depth, on the last prompt token
    /// and the generated tokens, alpha 1.
    fn default() -> Self {
        Self {
            alpha: 1.0,
            apply: Apply::Total,
            layers: AUTO_LAYERS,
            positions: Positions::Last,
            text_only: false,
        }
    }
}

impl SteerConfig {
    /// The layer range for a model of `n_layer` layers: [`AUTO_LAYERS`] resolved, and clamped.
    pub fn layer_range(&self, n_layer: usize) -> (usize, usize) {
        if self.layers == AUTO_LAYERS {
            let l = default_layer(n_layer);
            return (l, l);
        }
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
            apply: Apply::Increment,
            ..SteerConfig::default()
        };
        let a = additions(&deltas(), &cfg);
        assert_eq!(a[0], vec![0.0, 0.0]);
        assert_eq!(a[1], vec![3.0, 1.0]);
        assert_eq!(a[2], vec![1.0, 3.0]);
        assert_eq!(a[3], vec![0.0, 0.0]);
    }

    #[test]
    fn the_default_layer_is_at_seventy_percent_depth() {
        assert_eq!(default_layer(30), 20);
        assert_eq!(default_layer(24), 16);
        assert_eq!(SteerConfig::default().layer_range(30), (20, 20));
        let all = SteerConfig {
            layers: (0, 99),
            ..SteerConfig::default()
        };
        assert_eq!(all.layer_range(30), (0, 29));
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
