//! The settings every steering shares: the scale of the shift, the steered layers and
//! positions, the rule that turns per-layer shifts into additions, and a turn's own overrides.
//! Pure data and arithmetic, used by sessions, vector files and the command line alike.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::layer_vectors::LayerVectors;
use crate::media::Corruption;

/// How per-layer total shifts become per-layer additions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Apply {
    /// Add each layer's total shift `delta_l` at layer l (compounds through the layers).
    Total,
    /// Add `delta_l - delta_(l-1)` at layer l (the first steered layer gets its total), so
    /// that the accumulated addition at layer l is `delta_l`.
    Increment,
    /// Sample-level, callback path: move the last prompt token's state at each layer
    /// `alpha` of the way to the text-only state, measured as the graph runs (no compounding).
    Interpolate,
    /// ShiftDC (Zou et al. 2025): sample-level, callback path: remove from the last prompt
    /// token's state at each layer `alpha` times the part of its modality shift (the state
    /// minus the text-only state, measured as the graph runs) that lies along the vector
    /// file's safety direction of that layer; the rest of what the image brings stays.
    Project,
    /// `total` with each layer's shift stripped of its component along the vector file's
    /// refusal direction (the pure modality shift: what the image moved, without the refusal
    /// that averaging over harmful anchors adds); needs a file with directions.
    Pure,
}

impl Apply {
    /// Whether the rule measures the text-only state as the graph runs (sample-level,
    /// callback path, from the last prompt token).
    pub fn measures_live(self) -> bool {
        matches!(self, Apply::Interpolate | Apply::Project)
    }
}

/// Which tokens are steered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positions {
    /// The last prompt token and every generated token.
    Last,
    /// The last prompt token only, once during the prefill; generated tokens are left alone
    /// (ShiftDC's positions).
    LastPrompt,
    /// The image tokens and everything after them.
    AfterImage,
    /// Every token of the turn.
    All,
}

impl Positions {
    /// Whether steering starts at the last prompt token (decoded on its own for it).
    pub fn at_last_token(self) -> bool {
        matches!(self, Positions::Last | Positions::LastPrompt)
    }
}

macro_rules! named_enum {
    ($t:ty, $what:literal, $($v:path => $n:literal),+) => {
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                match s {
                    $($n => Ok($v),)+
                    _ => Err(format!(concat!("{:?} is not ", $what, " (", $($n, " "),+ , ")"), s)),
                }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($v => $n,)+ })
            }
        }
    };
}

named_enum!(Apply, "an apply rule", Apply::Total => "total", Apply::Increment => "increment", Apply::Interpolate => "interpolate", Apply::Project => "project", Apply::Pure => "pure");
named_enum!(Positions, "a position set", Positions::Last => "last", Positions::LastPrompt => "last-prompt", Positions::AfterImage => "after-image", Positions::All => "all");

/// Steered layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layers {
    /// One layer at about 70% of the depth (layer 20 of SmolLM2-135M's 30, 16 of a 24-layer
    /// model), chosen by the fidelity measurements (docs/method.md, "Choosing the defaults").
    #[default]
    Default,
    /// An inclusive range (clamped to the model).
    Range(usize, usize),
    /// From the middle layer to the last (ShiftDC's published setting).
    UpperHalf,
}

impl Layers {
    /// The inclusive layer range on a model of `n_layer` layers.
    pub fn range(self, n_layer: usize) -> (usize, usize) {
        match self {
            Layers::Default => {
                let l = default_layer(n_layer);
                (l, l)
            }
            Layers::Range(a, b) => (a.min(n_layer - 1), b.min(n_layer - 1)),
            Layers::UpperHalf => (n_layer / 2, n_layer - 1),
        }
    }
}

impl FromStr for Layers {
    type Err = String;
    /// `A-B` (inclusive), a single layer `A`, `default` or `upper-half`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "default" => return Ok(Layers::Default),
            "upper-half" => return Ok(Layers::UpperHalf),
            _ => {}
        }
        let bad =
            || format!("{s:?} is not a layer range (A-B, a single layer A, default or upper-half)");
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let a: usize = a.trim().parse().map_err(|_| bad())?;
        let b: usize = b.trim().parse().map_err(|_| bad())?;
        if a > b {
            return Err(format!("{s:?}: the range starts after it ends"));
        }
        Ok(Layers::Range(a, b))
    }
}

impl fmt::Display for Layers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layers::Default => f.write_str("default"),
            Layers::UpperHalf => f.write_str("upper-half"),
            Layers::Range(a, b) if a == b => write!(f, "{a}"),
            Layers::Range(a, b) => write!(f, "{a}-{b}"),
        }
    }
}

/// The default steered layer of a model with `n_layer` layers (~70% depth).
pub fn default_layer(n_layer: usize) -> usize {
    ((n_layer.max(1) - 1) * 7 + 5) / 10
}

/// A steering configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct SteerConfig {
    /// Scale of the shift.
    pub alpha: f32,
    /// How per-layer shifts are added.
    pub apply: Apply,
    /// Steered layers.
    pub layers: Layers,
    /// Steered tokens.
    pub positions: Positions,
    /// Also steer turns without an image.
    pub text_only: bool,
}

impl Default for SteerConfig {
    /// The measured defaults: `total` shift at one layer at ~70% depth, on the last prompt
    /// token only (`last-prompt`: nearly the safety gain of `last` at a fraction of its
    /// fluency cost, docs/measurements.md), alpha 1.
    fn default() -> Self {
        Self {
            alpha: 1.0,
            apply: Apply::Total,
            layers: Layers::Default,
            positions: Positions::LastPrompt,
            text_only: false,
        }
    }
}

impl SteerConfig {
    /// The inclusive layer range on a model of `n_layer` layers.
    pub fn layer_range(&self, n_layer: usize) -> (usize, usize) {
        self.layers.range(n_layer)
    }

    /// Per-layer additions for layers 0..n_layer (zero outside the range), from the total
    /// shifts `deltas` (one row per layer).
    pub fn additions(&self, deltas: &LayerVectors) -> LayerVectors {
        let (first, last) = self.layer_range(deltas.n_layer());
        deltas.map(|il, row| {
            if il < first || il > last {
                return vec![0.0; row.len()];
            }
            let prev = (self.apply == Apply::Increment && il > first).then(|| &deltas[il - 1]);
            row.iter()
                .enumerate()
                .map(|(j, d)| self.alpha * (d - prev.map_or(0.0, |p| p[j])))
                .collect()
        })
    }

    /// The control-vector buffer (layers 1..n_layer-1, flattened) for llama.cpp: the
    /// additions of the range with layer 0 left out (a control vector cannot reach it).
    pub fn control_rows(&self, deltas: &LayerVectors) -> Vec<f32> {
        let (first, last) = self.layer_range(deltas.len());
        let cfg = SteerConfig {
            layers: Layers::Range(first.max(1), last),
            ..self.clone()
        };
        cfg.additions(deltas)[1..].concat()
    }

    /// Refuses settings that cannot work: a non-finite alpha, `interpolate` or `project`
    /// outside sample-level callback steering on the last position.
    pub fn check(&self, sample: bool, callback: bool) -> Result<()> {
        if !self.alpha.is_finite() {
            return Err(Error::Steering(format!(
                "alpha {} is not a finite number",
                self.alpha
            )));
        }
        if self.apply.measures_live() && (!sample || !callback || !self.positions.at_last_token()) {
            return Err(Error::Steering(format!(
                "the {} rule needs sample-level shifts, the callback mechanism and the last or last-prompt positions",
                self.apply
            )));
        }
        Ok(())
    }
}

/// Steering settings, each optional: what the command-line flags, a server request's `cmrm`
/// object, a vector file's recommended settings (through `From<&SteerConfig>`) and a turn's own
/// settings say, laid over each other with [`over`](Self::over). Unset fields keep the
/// settings below (a turn's: the session's).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SteerOverride {
    /// Steer this turn or not.
    pub enabled: Option<bool>,
    /// Sample-level (the input's own shift) instead of dataset vectors.
    pub sample: Option<bool>,
    /// The corruption of a sample-level shift.
    pub corruption: Option<Corruption>,
    /// Scale.
    pub alpha: Option<f32>,
    /// Rule.
    pub apply: Option<Apply>,
    /// Layers.
    pub layers: Option<Layers>,
    /// Positions.
    pub positions: Option<Positions>,
    /// Steer even without an image.
    pub text_only: Option<bool>,
}

impl From<&SteerConfig> for SteerOverride {
    /// Every setting of `config` (steering and sample-level left unset).
    fn from(config: &SteerConfig) -> Self {
        Self {
            alpha: Some(config.alpha),
            apply: Some(config.apply),
            layers: Some(config.layers),
            positions: Some(config.positions),
            text_only: Some(config.text_only),
            ..Self::default()
        }
    }
}

impl SteerOverride {
    /// These settings over `base`: each setting this one sets, else `base`'s. The one way
    /// settings are laid over each other (flags over a vector file's recommended settings, a
    /// request over a server's).
    pub fn over(&self, base: &SteerOverride) -> SteerOverride {
        SteerOverride {
            enabled: self.enabled.or(base.enabled),
            sample: self.sample.or(base.sample),
            corruption: self.corruption.clone().or_else(|| base.corruption.clone()),
            alpha: self.alpha.or(base.alpha),
            apply: self.apply.or(base.apply),
            layers: self.layers.or(base.layers),
            positions: self.positions.or(base.positions),
            text_only: self.text_only.or(base.text_only),
        }
    }

    /// The configuration these settings make over `base` ([`over`](Self::over) a
    /// configuration, which sets every field).
    pub fn config(&self, base: &SteerConfig) -> SteerConfig {
        let s = self.over(&SteerOverride::from(base));
        SteerConfig {
            alpha: s.alpha.unwrap_or(base.alpha),
            apply: s.apply.unwrap_or(base.apply),
            layers: s.layers.unwrap_or(base.layers),
            positions: s.positions.unwrap_or(base.positions),
            text_only: s.text_only.unwrap_or(base.text_only),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_layer_is_at_seventy_percent_depth() {
        assert_eq!(default_layer(30), 20);
        assert_eq!(default_layer(24), 16);
        assert_eq!(SteerConfig::default().layer_range(30), (20, 20));
        assert_eq!(Layers::Range(0, 99).range(30), (0, 29));
    }

    #[test]
    fn settings_parse_and_print_back() {
        assert_eq!("5-20".parse::<Layers>(), Ok(Layers::Range(5, 20)));
        assert_eq!("12".parse::<Layers>(), Ok(Layers::Range(12, 12)));
        assert!("20-5".parse::<Layers>().is_err());
        assert!("x".parse::<Layers>().unwrap_err().contains("A-B"));
        assert_eq!(Layers::Range(5, 20).to_string(), "5-20");
        assert_eq!(
            "after-image".parse::<Positions>(),
            Ok(Positions::AfterImage)
        );
        assert_eq!(Apply::Increment.to_string(), "increment");
        let e = "totl".parse::<Apply>().unwrap_err();
        assert!(e.contains("totl") && e.contains("total"), "{e}");
    }

    fn deltas() -> LayerVectors {
        LayerVectors::from(vec![
            vec![1.0, 0.0],
            vec![3.0, 1.0],
            vec![4.0, 4.0],
            vec![10.0, 0.0],
        ])
    }

    #[test]
    fn increments_sum_to_the_total_shift() {
        let cfg = SteerConfig {
            layers: Layers::Range(1, 2),
            apply: Apply::Increment,
            ..SteerConfig::default()
        };
        let a = cfg.additions(&deltas());
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
            layers: Layers::Range(0, 9),
            ..SteerConfig::default()
        };
        let a = cfg.additions(&deltas());
        assert_eq!(a[0], vec![0.5, 0.0]);
        assert_eq!(a[3], vec![5.0, 0.0]);
        assert_eq!(
            cfg.control_rows(&deltas()),
            vec![1.5, 0.5, 2.0, 2.0, 5.0, 0.0]
        );
    }

    #[test]
    fn interpolation_is_only_offered_where_it_is_defined() {
        let cfg = SteerConfig {
            apply: Apply::Interpolate,
            ..SteerConfig::default()
        };
        assert!(cfg.check(true, true).is_ok());
        assert!(cfg.check(false, true).is_err());
        assert!(cfg.check(true, false).is_err());
    }
}
