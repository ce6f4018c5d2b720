//! Steering through llama.cpp's control vector (`llama_set_adapter_cvec`).

use crate::error::Result;
use crate::ffi::Context;
use crate::layer_vectors::LayerVectors;
use crate::session::{Phase, Positions, SteerConfig, TurnHooks};

/// Control-vector steering of one turn, driven by the prompt phases.
pub struct CvecSteering {
    rows: Vec<f32>,
    range: (usize, usize),
    positions: Positions,
    text_only: bool,
    active: bool,
    set: bool,
}

impl CvecSteering {
    /// Steering with `deltas` (total shifts per layer) under `config`.
    pub fn new(deltas: &LayerVectors, config: &SteerConfig) -> Self {
        let (first, last) = config.layer_range(deltas.n_layer());
        Self {
            rows: config.control_rows(deltas),
            range: (first.max(1), last.max(1)),
            positions: config.positions,
            text_only: config.text_only,
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

impl TurnHooks for CvecSteering {
    fn split_last_token(&self) -> bool {
        self.active && self.positions.at_last_token()
    }

    fn at(&mut self, ctx: &mut Context<'_>, phase: Phase) -> Result<()> {
        match (phase, self.positions) {
            (Phase::Start { has_image }, p) => {
                // The session has removed any earlier vector.
                self.active = has_image || self.text_only;
                self.set = false;
                if p == Positions::All {
                    self.apply(ctx)?;
                }
            }
            (Phase::Image, Positions::AfterImage)
            | (Phase::LastToken, Positions::Last | Positions::LastPrompt) => self.apply(ctx)?,
            (Phase::Generation, Positions::LastPrompt) => {
                ctx.set_control_vector(None)?;
                self.set = false;
            }
            (Phase::End, _) => {
                ctx.set_control_vector(None)?;
                self.set = false;
            }
            _ => {}
        }
        Ok(())
    }

    fn steering_now(&self) -> bool {
        self.set
    }
}
