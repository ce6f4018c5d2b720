//! Steering by editing the residual stream in llama.cpp's eval callback.

use std::sync::{Arc, Mutex};

use anyhow::Result;

use super::{additions, Positions, SteerConfig};
use crate::capture::layer_of;
use crate::ffi::{Context, GraphHook, HookTensor};
use crate::session::{Phase, PromptHooks};

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

