//! Capture of per-layer residual-stream states (`l_out-<il>`) and the final-norm output
//! (`result_norm`) at the last token of a decode, through the graph hook; and [`StateReader`],
//! which reads the last-prompt-token states of single-turn prompts.

use std::sync::{Arc, Mutex};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ffi::{Batched, Busy, GraphHook, HookTensor, SharedHook};
use crate::layer_vectors::LayerVectors;
use crate::media::Image;
use crate::session::{Session, SessionOptions, Turn};

/// Name of the final-norm tensor in llama.cpp's graphs.
pub const RESULT_NORM: &str = "result_norm";

/// Whether a graph tensor is the final-norm output: `result_norm`, renamed
/// `result_embd_pooled` when the context returns embeddings without pooling.
fn is_final_norm(name: &str) -> bool {
    name == RESULT_NORM || name == "result_embd_pooled"
}

/// Parses `l_out-<il>` into `il`.
pub(crate) fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("l_out-")?.parse().ok()
}

/// Keeps, for each wanted layer, the last row (token) of the latest micro-batch that reached
/// it. After a prompt is evaluated, that is the state of the last prompt token.
#[derive(Debug)]
pub struct LayerCapture {
    wanted: Vec<bool>,
    states: Vec<Option<Vec<f32>>>,
    norm: Option<Vec<f32>>,
    want_norm: bool,
    armed: bool,
}

impl LayerCapture {
    /// Captures layers `0..n_layer` where `wanted(il)`; `norm` also captures `result_norm`.
    pub fn new(n_layer: usize, wanted: impl Fn(usize) -> bool, norm: bool) -> Self {
        Self {
            wanted: (0..n_layer).map(wanted).collect(),
            states: vec![None; n_layer],
            norm: None,
            want_norm: norm,
            armed: true,
        }
    }

    /// A capture of every layer, to share with a session.
    pub fn all_layers(n_layer: usize) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self::new(n_layer, |_| true, false)))
    }

    /// Turns capture on or off (off costs nothing per tensor beyond a name check).
    pub(crate) fn set_armed(&mut self, armed: bool) {
        self.armed = armed;
    }

    /// Forgets captured states.
    pub fn clear(&mut self) {
        self.states.iter_mut().for_each(|s| *s = None);
        self.norm = None;
    }

    /// The captured state of layer `il`.
    pub fn state(&self, il: usize) -> Option<&[f32]> {
        self.states.get(il)?.as_deref()
    }

    /// Every layer's state, or an error naming a layer that was not captured.
    pub fn all_states(&self) -> Result<LayerVectors> {
        self.states
            .iter()
            .enumerate()
            .map(|(il, s)| {
                s.clone().ok_or_else(|| {
                    Error::Invalid(format!(
                        "the state of layer {il} was not captured (an architecture without l_out tensors?)"
                    ))
                })
            })
            .collect()
    }

    /// The captured final-norm row.
    pub fn norm(&self) -> Option<&[f32]> {
        self.norm.as_deref()
    }
}

impl GraphHook for LayerCapture {
    fn wants(&self, name: &str) -> bool {
        self.armed
            && match layer_of(name) {
                Some(il) => self.wanted.get(il).copied().unwrap_or(false),
                None => self.want_norm && is_final_norm(name),
            }
    }

    fn observe(&mut self, name: &str, t: &mut HookTensor<'_>) {
        if t.n_rows() == 0 {
            return;
        }
        let row = t.read_row(t.n_rows() - 1);
        match layer_of(name) {
            Some(il) => self.states[il] = Some(row),
            None if is_final_norm(name) => self.norm = Some(row),
            None => {}
        }
    }
}

/// Locks a shared capture; a poison left by a panic in the capture is cleared and reported
/// once, as [`Error::Internal`].
pub(crate) fn lock(
    capture: &Mutex<LayerCapture>,
) -> Result<std::sync::MutexGuard<'_, LayerCapture>> {
    capture.lock().map_err(|_| {
        capture.clear_poison();
        Error::Internal(
            "a state capture panicked; the work was abandoned and the capture reset".into(),
        )
    })
}

/// Upcasts a typed capture for [`SessionOptions::observer`].
pub fn shared(capture: &Arc<Mutex<LayerCapture>>) -> SharedHook {
    capture.clone()
}

/// Reads the last-prompt-token state of every layer for single-turn prompts, on a session of
/// its own.
pub struct StateReader<'e> {
    session: Session<'e>,
    capture: Arc<Mutex<LayerCapture>>,
}

impl<'e> StateReader<'e> {
    /// A reader on `engine`.
    pub fn new(engine: &'e Engine) -> Result<Self> {
        Self::on(engine, None)
    }

    /// A reader on `engine`, on a lane of `batched` when given.
    pub fn on(engine: &'e Engine, batched: Option<Batched<'e>>) -> Result<Self> {
        let capture = LayerCapture::all_layers(engine.model().n_layer());
        let mut options = SessionOptions::new().observer(shared(&capture));
        if let Some(b) = batched {
            options = options.batched(b);
        }
        let session = Session::new(engine, options)?;
        Ok(Self { session, capture })
    }

    /// Keeps the steps of a batched context waiting for this reader until dropped (see
    /// [`Session::busy`]).
    pub fn busy(&self) -> Busy {
        self.session.busy()
    }

    /// Per-layer last-token states of a fresh single-turn prompt.
    pub fn states(
        &mut self,
        system: Option<&str>,
        text: &str,
        images: &[Image],
    ) -> Result<LayerVectors> {
        self.session.reset();
        lock(&self.capture)?.clear();
        let mut turn = Turn::user(text);
        turn.system = system.map(str::to_string);
        turn.images = images.to_vec();
        drop(self.session.prefill(&turn)?);
        let states = lock(&self.capture)?.all_states();
        states
    }

    /// `h_text - h_corrupt` per layer for one prompt.
    pub fn shift(
        &mut self,
        system: Option<&str>,
        text: &str,
        corrupt: &Image,
    ) -> Result<LayerVectors> {
        let t = self.states(system, text, &[])?;
        let c = self.states(system, text, std::slice::from_ref(corrupt))?;
        Ok(t.map(|il, a| crate::math::sub(a, &c[il])))
    }
}
