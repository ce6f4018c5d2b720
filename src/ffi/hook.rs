//! The graph hook: llama.cpp's eval callback (`cb_eval`) turned into a safe trait, so that
//! capture and steering code can read and edit named graph tensors (`l_out-<il>`,
//! `result_norm`) while the model runs.

use std::ffi::{c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};

use llama_cpp_sys_2 as sys;

/// Sees the graph tensors it asks for, once per micro-batch, in graph order.
pub trait GraphHook: Send {
    /// Whether to stop at this tensor. Called for every node of every graph: keep it cheap.
    /// Each accepted node costs a backend synchronisation.
    fn wants(&self, name: &str) -> bool;
    /// Called after the tensor is computed; edits are seen by every later node.
    fn observe(&mut self, name: &str, tensor: &mut HookTensor<'_>);
}

/// A hook shared between its owner (who reads results) and the context that calls it.
pub type SharedHook = Arc<Mutex<dyn GraphHook>>;

/// A computed 2-D F32 tensor `[n_embd, n_rows]` of the graph: one row per token of the
/// micro-batch (for the last layer, only the rows that produce logits).
pub struct HookTensor<'a> {
    t: &'a sys::ggml_tensor,
    ptr: *mut sys::ggml_tensor,
    /// The rows this view shows: in a decode shared by several sequences, a hook sees only the
    /// rows of its own sequence.
    row0: usize,
    rows: usize,
}

impl<'a> HookTensor<'a> {
    fn whole(t: &'a sys::ggml_tensor, ptr: *mut sys::ggml_tensor) -> Self {
        Self {
            t,
            ptr,
            row0: 0,
            rows: t.ne[1] as usize,
        }
    }
}

impl HookTensor<'_> {
    /// Width of a row.
    pub fn n_embd(&self) -> usize {
        self.t.ne[0] as usize
    }

    /// Number of rows (tokens).
    pub fn n_rows(&self) -> usize {
        self.rows
    }

    /// The rows `range` of this view as a view of their own.
    pub(super) fn window(&mut self, range: std::ops::Range<usize>) -> HookTensor<'_> {
        assert!(
            range.end <= self.rows,
            "rows {range:?} out of {}",
            self.rows
        );
        HookTensor {
            t: self.t,
            ptr: self.ptr,
            row0: self.row0 + range.start,
            rows: range.len(),
        }
    }

    /// Copies row `i` into a new vector.
    pub fn read_row(&self, i: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.n_embd()];
        assert!(i < self.n_rows(), "row {i} out of range");
        // SAFETY: the tensor is F32 with contiguous rows (checked before it was offered), has a
        // buffer, and row i lies inside it; `out` is writable for n_embd floats.
        unsafe {
            sys::ggml_backend_tensor_get(
                self.ptr,
                out.as_mut_ptr().cast(),
                (self.row0 + i) * self.t.nb[1],
                out.len() * 4,
            )
        };
        out
    }

    /// Overwrites row `i`.
    pub fn write_row(&mut self, i: usize, row: &[f32]) {
        assert!(
            i < self.n_rows() && row.len() == self.n_embd(),
            "bad row write"
        );
        // SAFETY: as in `read_row`; `row` is readable for n_embd floats and the scheduler has
        // synchronised the backend before calling us, so nothing else writes the tensor now.
        unsafe {
            sys::ggml_backend_tensor_set(
                self.ptr,
                row.as_ptr().cast(),
                (self.row0 + i) * self.t.nb[1],
                row.len() * 4,
            )
        };
    }
}

/// A tensor the hook may see: F32, 2-D, contiguous rows, allocated.
fn is_row_tensor(t: &sys::ggml_tensor) -> bool {
    t.type_ == sys::GGML_TYPE_F32
        && t.ne[2] == 1
        && t.ne[3] == 1
        && t.nb[0] == 4
        && !t.buffer.is_null()
}

/// The `cb_eval` given to llama.cpp; `user` points to the context's boxed [`SharedHook`].
pub(super) unsafe extern "C" fn trampoline(
    t: *mut sys::ggml_tensor,
    ask: bool,
    user: *mut c_void,
) -> bool {
    if t.is_null() || user.is_null() {
        return !ask;
    }
    // SAFETY: `user` is the address of the `SharedHook` boxed in the context that owns this
    // callback; the box lives as long as the context. `t` is a live graph node for this call.
    let (hook, tensor) = unsafe { (&*(user as *const SharedHook), &*t) };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: ggml tensor names are NUL-terminated within their 64-byte array.
        let name = unsafe { CStr::from_ptr(tensor.name.as_ptr()) };
        let Ok(name) = name.to_str() else {
            return false;
        };
        // A panic in an earlier call poisoned the lock: go on with the hook, leaving the
        // poison for the hook's owner to report (e.g. `CallbackPhases` fails the turn).
        let mut hook = hook.lock().unwrap_or_else(PoisonError::into_inner);
        if ask {
            return is_row_tensor(tensor) && hook.wants(name);
        }
        let mut view = HookTensor::whole(tensor, t);
        hook.observe(name, &mut view);
        true
    }));
    // A panic in a hook must not unwind into C: refuse further tensors, keep computing.
    outcome.unwrap_or(!ask)
}

/// Several hooks on one context, called in order: e.g. callback steering, then a capture that
/// sees the steered state.
pub struct HookChain(pub Vec<SharedHook>);

impl GraphHook for HookChain {
    fn wants(&self, name: &str) -> bool {
        self.0
            .iter()
            .any(|h| h.lock().unwrap_or_else(PoisonError::into_inner).wants(name))
    }

    fn observe(&mut self, name: &str, t: &mut HookTensor<'_>) {
        for h in &self.0 {
            let mut h = h.lock().unwrap_or_else(PoisonError::into_inner);
            if h.wants(name) {
                h.observe(name, t);
            }
        }
    }
}
