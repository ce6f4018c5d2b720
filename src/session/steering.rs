//! What a session asks of its steering: the [`Steering`] trait that steering methods implement
//! (in `crate::steer`) and the per-turn [`TurnHooks`] they return. The settings every steering
//! shares (alpha, layers, positions, rules) are in `crate::settings`.

use crate::error::Result;
use std::sync::{Arc, Mutex};

use crate::ffi::{Context, HookChain, SharedHook};
use crate::media::Image;
pub use crate::settings::SteerOverride;

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

/// One hook that runs `hooks` in order: none for none, the hook itself for one.
pub(crate) fn chain(mut hooks: Vec<SharedHook>) -> Option<SharedHook> {
    match hooks.len() {
        0 => None,
        1 => hooks.pop(),
        _ => Some(Arc::new(Mutex::new(HookChain(hooks)))),
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
