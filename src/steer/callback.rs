//! Steering by editing the residual stream in llama.cpp's eval callback.

use std::sync::{Arc, Mutex};

use crate::capture::layer_of;
use crate::error::{Error, Result};
use crate::ffi::{Context, GraphHook, HookTensor};
use crate::layer_vectors::LayerVectors;
use crate::session::{Phase, Positions, SteerConfig, TurnHooks};

/// Steering by editing `l_out-<il>` in the eval callback (reaches layer 0).
///
/// Besides adding fixed per-layer shifts, it can interpolate the last prompt token's state
/// toward target states (sample-level `interpolate`): at each steered layer, as the graph
/// runs, `h <- h + alpha * (h_text - h)`, with `h` the state that earlier edits produced, so
/// nothing compounds; generated tokens then get the same per-layer additions.
pub struct CallbackSteering {
    additions: Vec<Vec<f32>>,
    targets: Option<LayerVectors>,
    range: (usize, usize),
    alpha: f32,
    positions: Positions,
    text_only: bool,
    active: bool,
    armed: bool,
    /// The decode of the last prompt token is running (interpolation measures then).
    at_last_token: bool,
    /// Per-layer directions the move toward the targets is projected on (ShiftDC), each with
    /// its squared norm (computed once, not at every steered layer of the decode).
    directions: Option<Vec<(Vec<f32>, f64)>>,
}

impl CallbackSteering {
    /// A shared hook with no shift yet, for a model of `n_layer` layers of width `n_embd`.
    pub fn shared(n_layer: usize, n_embd: usize) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            additions: vec![vec![0.0; n_embd]; n_layer],
            targets: None,
            range: (0, 0),
            alpha: 0.0,
            positions: Positions::Last,
            text_only: false,
            active: false,
            armed: false,
            at_last_token: false,
            directions: None,
        }))
    }

    /// Adds `deltas` (total shifts per layer) under `config` from the next turn on.
    pub fn set_deltas(&mut self, deltas: &LayerVectors, config: &SteerConfig) {
        self.additions = config.additions(deltas).into_rows();
        self.targets = None;
        self.directions = None;
        self.configure(config, deltas.n_layer());
    }

    /// Moves toward `targets` (per-layer states of the text-only input) instead: all the way
    /// times alpha, or with `directions` (ShiftDC's safety directions) only along them.
    pub fn set_targets(
        &mut self,
        targets: LayerVectors,
        config: &SteerConfig,
        directions: Option<LayerVectors>,
    ) {
        self.additions = LayerVectors::zeros(targets.n_layer(), targets.n_embd()).into_rows();
        self.configure(config, targets.n_layer());
        self.targets = Some(targets);
        self.directions = directions.map(|dirs| {
            dirs.into_rows()
                .into_iter()
                .map(|d| {
                    let norm2 = crate::math::dot_f32(&d, &d);
                    (d, norm2)
                })
                .collect()
        });
    }

    fn configure(&mut self, config: &SteerConfig, n_layer: usize) {
        self.range = config.layer_range(n_layer);
        self.alpha = config.alpha;
        self.positions = config.positions;
        self.text_only = config.text_only;
    }

    fn in_range(&self, il: usize) -> bool {
        il >= self.range.0 && il <= self.range.1
    }
}

impl GraphHook for CallbackSteering {
    fn wants(&self, name: &str) -> bool {
        let Some(il) = layer_of(name).filter(|&il| il < self.additions.len()) else {
            return false;
        };
        self.armed
            && if self.targets.is_some() && self.at_last_token {
                self.in_range(il)
            } else {
                self.additions[il].iter().any(|x| *x != 0.0)
            }
    }

    fn observe(&mut self, name: &str, t: &mut HookTensor<'_>) {
        let Some(il) = layer_of(name).filter(|&il| il < self.additions.len()) else {
            return;
        };
        if t.n_rows() == 0 {
            return;
        }
        if let (Some(targets), true) = (&self.targets, self.at_last_token) {
            // Measure this layer's remaining gap on the state earlier edits produced.
            let row = t.read_row(t.n_rows() - 1);
            let gap: Vec<f32> = targets[il].iter().zip(&row).map(|(t, h)| t - h).collect();
            self.additions[il] = match &self.directions {
                // ShiftDC: only the gap's component along the safety direction.
                Some(dirs) => {
                    let (s, norm2) = &dirs[il];
                    let k = if *norm2 > 0.0 {
                        self.alpha * (crate::math::dot_f32(&gap, s) / norm2) as f32
                    } else {
                        0.0
                    };
                    s.iter().map(|x| k * x).collect()
                }
                None => gap.iter().map(|g| self.alpha * g).collect(),
            };
        }
        let add = &self.additions[il];
        for r in 0..t.n_rows() {
            let mut row = t.read_row(r);
            row.iter_mut().zip(add).for_each(|(x, a)| *x += a);
            t.write_row(r, &row);
        }
    }
}

/// Drives a shared [`CallbackSteering`] through one turn's phases.
pub struct CallbackPhases(pub Arc<Mutex<CallbackSteering>>);

impl CallbackPhases {
    /// The steering, unless a panic in the hook poisoned it: then the poison is cleared (the
    /// next turn sets the steering afresh) and this turn fails with [`Error::Internal`].
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, CallbackSteering>> {
        self.0.lock().map_err(|_| {
            self.0.clear_poison();
            Error::Internal(
                "the steering hook panicked during this turn; the turn was abandoned and the hook reset".into(),
            )
        })
    }
}

impl TurnHooks for CallbackPhases {
    fn split_last_token(&self) -> bool {
        self.lock()
            .is_ok_and(|s| s.active && s.positions.at_last_token())
    }

    fn at(&mut self, _: &mut Context<'_>, phase: Phase) -> Result<()> {
        let mut s = self.lock()?;
        match (phase, s.positions) {
            (Phase::Start { has_image }, p) => {
                s.active = has_image || s.text_only;
                s.armed = s.active && p == Positions::All;
                s.at_last_token = false;
            }
            (Phase::Image, Positions::AfterImage) => s.armed = s.active,
            (Phase::LastToken, Positions::Last | Positions::LastPrompt) => {
                s.armed = s.active;
                s.at_last_token = true;
            }
            (Phase::Generation, p) => {
                s.at_last_token = false;
                if p == Positions::LastPrompt {
                    s.armed = false;
                }
            }
            (Phase::End, _) => {
                s.armed = false;
                s.active = false;
                s.at_last_token = false;
            }
            _ => {}
        }
        Ok(())
    }

    fn steering_now(&self) -> bool {
        self.lock().is_ok_and(|s| s.armed)
    }
}

#[cfg(test)]
mod poison_tests {
    use super::*;

    #[test]
    fn a_panic_in_the_hook_fails_its_turn_once_then_the_hook_works() {
        let cb = CallbackSteering::shared(2, 4);
        let poisoner = cb.clone();
        let _ = std::thread::spawn(move || {
            let _g = poisoner.lock().unwrap();
            panic!("a hook panics");
        })
        .join();
        assert!(cb.is_poisoned());
        let phases = CallbackPhases(cb.clone());
        match phases.lock() {
            Err(Error::Internal(m)) => assert!(m.contains("steering hook"), "{m}"),
            Err(e) => panic!("not an internal error: {e}"),
            Ok(_) => panic!("the poisoned turn went on"),
        }
        assert!(phases.lock().is_ok(), "the hook stays unusable");
    }
}
