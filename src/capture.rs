//! Capture of per-layer residual-stream states (`l_out-<il>`) and the final-norm output
//! (`result_norm`) at the last token of a decode, through the graph hook.

use std::sync::{Arc, Mutex};

use crate::ffi::{GraphHook, HookTensor, SharedHook};

/// Name of the final-norm tensor in llama.cpp's graphs.
pub const RESULT_NORM: &str = "result_norm";

/// Whether a graph tensor is the final-norm output: `result_norm`, renamed
/// `result_embd_pooled` when the context returns embeddings without pooling.
pub fn is_final_norm(name: &str) -> bool {
    name == RESULT_NORM || name == "result_embd_pooled"
}

/// Parses `l_out-<il>` into `il`.
pub fn layer_of(name: &str) -> Option<usize> {
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

    /// A capture of every layer, shared with a context.
    pub fn all_layers(n_layer: usize) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self::new(n_layer, |_| true, false)))
    }

    /// Turns capture on or off (off costs nothing per tensor beyond a name check).
    pub fn set_armed(&mut self, armed: bool) {
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

    /// Every layer's state, or `None` if one is missing.
    pub fn all_states(&self) -> Option<Vec<Vec<f32>>> {
        self.states.iter().cloned().collect()
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

/// Several hooks on one context, called in order: e.g. callback steering then a capture
/// that sees the steered state.
pub struct HookChain(pub Vec<SharedHook>);

impl GraphHook for HookChain {
    fn wants(&self, name: &str) -> bool {
        self.0.iter().any(|h| h.lock().is_ok_and(|h| h.wants(name)))
    }

    fn observe(&mut self, name: &str, t: &mut HookTensor<'_>) {
        for h in &self.0 {
            if let Ok(mut h) = h.lock() {
                if h.wants(name) {
                    h.observe(name, t);
                }
            }
        }
    }
}

/// Upcasts a typed capture for [`crate::Engine::session`].
pub fn shared(capture: &Arc<Mutex<LayerCapture>>) -> SharedHook {
    capture.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names_parse() {
        assert_eq!(layer_of("l_out-0"), Some(0));
        assert_eq!(layer_of("l_out-29"), Some(29));
        assert_eq!(layer_of("l_out"), None);
        assert_eq!(layer_of("attn_norm-3"), None);
    }

    #[test]
    fn wants_only_armed_wanted_layers() {
        let mut c = LayerCapture::new(4, |il| il >= 2, true);
        assert!(!c.wants("l_out-1") && c.wants("l_out-2") && c.wants(RESULT_NORM));
        assert!(!c.wants("l_out-9"));
        c.set_armed(false);
        assert!(!c.wants("l_out-3"));
    }
}
