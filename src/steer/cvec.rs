//! Steering through llama.cpp's control vector (`llama_set_adapter_cvec`).

use anyhow::Result;

use super::{control_rows, Positions, SteerConfig};
use crate::ffi::Context;
use crate::session::{Phase, PromptHooks};

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
                // The session has removed any earlier vector.
                self.active = has_image || self.config.text_only;
                self.set = false;
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
