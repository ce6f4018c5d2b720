//! What a session asks of its steering: the [`Steering`] trait that steering methods implement
//! (in `crate::steer`), the per-turn [`TurnHooks`] they return, and the settings every steering
//! shares (alpha, layers, positions, how per-layer shifts are applied).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::ffi::{Context, SharedHook};
use crate::media::{Corruption, Image};

/// Points of prompt evaluation where steering may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before anything of the turn is decoded; `has_image` tells whether it holds an image.
    Start {
        /// The turn holds at least one image.
        has_image: bool,
    },
    /// Just before an image chunk is decoded.
    Image,
    /// Just before the last prompt token is decoded (it is decoded on its own).
    LastToken,
    /// After the prompt, before the first generated token.
    Generation,
    /// The turn is over (generated, scored, or abandoned).
    End,
}

/// Drives steering through one turn: called at each [`Phase`] with the context, e.g. to set or
/// clear a control vector or to arm a graph hook.
pub trait TurnHooks: Send {
    /// Whether the last prompt token must be decoded on its own (costs one small decode).
    fn split_last_token(&self) -> bool {
        false
    }
    /// Reacts to a phase.
    fn at(&mut self, ctx: &mut Context<'_>, phase: Phase) -> Result<()>;
    /// Whether tokens decoded from now on are steered (the prompt cache records it).
    fn steering_now(&self) -> bool {
        false
    }
}

/// Hooks that do nothing: plain inference.
pub struct NoHooks;

impl TurnHooks for NoHooks {
    fn at(&mut self, _: &mut Context<'_>, _: Phase) -> Result<()> {
        Ok(())
    }
}

/// Runs single-turn prompts on a scratch sequence of the session's context, for steering that
/// needs the states of other versions of the input (the text alone, a corrupted image).
pub trait Probe {
    /// Evaluates the single-turn prompt (system, text, images) on the scratch sequence; the
    /// steering's own graph hook sees its states. Nothing of it stays in the cache.
    fn prefill(&mut self, system: Option<&str>, text: &str, images: &[Image]) -> Result<()>;
}

/// What one turn's steering will do, and the hooks that do it.
pub struct TurnPlan {
    /// The hooks that drive the turn.
    pub hooks: Box<dyn TurnHooks>,
    /// What is applied, for callers and logs to audit.
    pub applied: Applied,
    /// Identifies the steering of this turn (0 when nothing is steered), so that cached
    /// tokens decoded under other steering are not reused.
    pub tag: u64,
    /// The tag cached prompt positions before this turn must carry to be reused as they are
    /// (`tag` when every prompt token is steered, else 0).
    pub prefix_tag: u64,
}

impl TurnPlan {
    /// A plan that steers nothing, with the reason.
    pub fn none(reason: impl Into<String>) -> Self {
        Self {
            hooks: Box::new(NoHooks),
            applied: Applied {
                applied: false,
                reason: Some(reason.into()),
                ..Applied::default()
            },
            tag: 0,
            prefix_tag: 0,
        }
    }
}

/// What was applied to a turn.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Applied {
    /// Whether anything was steered.
    pub applied: bool,
    /// Why not, when nothing was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `dataset` or `sample`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The method (`cmrm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The settings used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f32>,
    /// Steered layers (first, last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<(usize, usize)>,
    /// Steered positions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub positions: Option<String>,
    /// How per-layer shifts were added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apply: Option<String>,
    /// The corruption of a sample-level shift.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corruption: Option<String>,
    /// `cvec` or `callback`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<String>,
}

/// A session's steering: decides per turn what to add to the residual stream and returns the
/// hooks that add it. Implemented by `crate::steer::CmrmSteering`.
pub trait Steering: Send {
    /// The graph hook the session's context must run with (callback steering, state capture),
    /// asked once when the session is created.
    fn graph_hook(&self) -> Option<SharedHook> {
        None
    }
    /// Plans one turn; `probe` evaluates other versions of the input when the steering needs
    /// their states (sample-level shifts).
    fn plan(&mut self, turn: &TurnInput<'_>, probe: &mut dyn Probe) -> Result<TurnPlan>;
}

/// What a steering sees of a turn.
#[derive(Clone, Copy, Debug)]
pub struct TurnInput<'a> {
    /// The system message of the conversation.
    pub system: Option<&'a str>,
    /// The user's text of this turn.
    pub text: &'a str,
    /// The images of this turn.
    pub images: &'a [Image],
    /// The turn's own steering settings, overriding the steering's defaults.
    pub overrides: Option<&'a SteerOverride>,
}

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
}

/// Which tokens are steered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positions {
    /// The last prompt token and every generated token.
    Last,
    /// The image tokens and everything after them.
    AfterImage,
    /// Every token of the turn.
    All,
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

named_enum!(Apply, "an apply rule", Apply::Total => "total", Apply::Increment => "increment", Apply::Interpolate => "interpolate");
named_enum!(Positions, "a position set", Positions::Last => "last", Positions::AfterImage => "after-image", Positions::All => "all");

/// Steered layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layers {
    /// One layer at about 70% of the depth (layer 20 of SmolLM2-135M's 30, 16 of a 24-layer
    /// model), chosen by the fidelity measurements in the README.
    #[default]
    Default,
    /// An inclusive range (clamped to the model).
    Range(usize, usize),
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
        }
    }
}

impl FromStr for Layers {
    type Err = String;
    /// `A-B` (inclusive), a single layer `A`, or `default`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "default" {
            return Ok(Layers::Default);
        }
        let bad = || format!("{s:?} is not a layer range (A-B, a single layer A, or default)");
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
    /// token and the generated tokens, alpha 1.
    fn default() -> Self {
        Self {
            alpha: 1.0,
            apply: Apply::Total,
            layers: Layers::Default,
            positions: Positions::Last,
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
    pub fn additions(&self, deltas: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let n_layer = deltas.len();
        let (first, last) = self.layer_range(n_layer);
        (0..n_layer)
            .map(|il| {
                if il < first || il > last {
                    return vec![0.0; deltas[il].len()];
                }
                let prev = (self.apply == Apply::Increment && il > first).then(|| &deltas[il - 1]);
                deltas[il]
                    .iter()
                    .enumerate()
                    .map(|(j, d)| self.alpha * (d - prev.map_or(0.0, |p| p[j])))
                    .collect()
            })
            .collect()
    }

    /// The control-vector buffer (layers 1..n_layer-1, flattened) for llama.cpp: the
    /// additions of the range with layer 0 left out (a control vector cannot reach it).
    pub fn control_rows(&self, deltas: &[Vec<f32>]) -> Vec<f32> {
        let (first, last) = self.layer_range(deltas.len());
        let cfg = SteerConfig {
            layers: Layers::Range(first.max(1), last),
            ..self.clone()
        };
        cfg.additions(deltas)[1..].concat()
    }

    /// Refuses settings that cannot work: a non-finite alpha, `interpolate` outside
    /// sample-level callback steering on the last position.
    pub fn check(&self, sample: bool, callback: bool) -> Result<()> {
        if !self.alpha.is_finite() {
            return Err(Error::Steering(format!(
                "alpha {} is not a finite number",
                self.alpha
            )));
        }
        if self.apply == Apply::Interpolate
            && (!sample || !callback || self.positions != Positions::Last)
        {
            return Err(Error::Steering(
                "the interpolate rule needs sample-level shifts, the callback mechanism and the last positions".into(),
            ));
        }
        Ok(())
    }
}

/// A turn's own steering settings; unset fields keep the session's.
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

impl SteerOverride {
    /// `base` with the fields this override sets.
    pub fn config(&self, base: &SteerConfig) -> SteerConfig {
        SteerConfig {
            alpha: self.alpha.unwrap_or(base.alpha),
            apply: self.apply.unwrap_or(base.apply),
            layers: self.layers.unwrap_or(base.layers),
            positions: self.positions.unwrap_or(base.positions),
            text_only: self.text_only.unwrap_or(base.text_only),
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
