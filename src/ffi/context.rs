//! An inference context: KV cache, decoding, logits, control vectors and the graph hook.

use std::ffi::c_void;
use std::ptr::NonNull;

use anyhow::{bail, ensure, Result};
use llama_cpp_sys_2 as sys;

use super::hook::{trampoline, SharedHook};
use super::log::reason;
use super::Model;

/// Settings of a context, as llama.cpp's `-c`, `-b`, `-t`.
#[derive(Clone, Debug)]
pub struct ContextParams {
    /// Context length in tokens (0 = the model's training length).
    pub n_ctx: u32,
    /// Tokens per decode call (also the micro-batch size).
    pub n_batch: u32,
    /// CPU threads.
    pub n_threads: i32,
    /// Also return final-norm embeddings for output rows.
    pub embeddings: bool,
}

/// A llama.cpp context borrowing its model.
pub struct Context<'m> {
    ptr: NonNull<sys::llama_context>,
    model: &'m Model,
    n_batch: usize,
    /// Whether a control vector is set (clearing an unset one is free).
    cvec_set: bool,
    /// Keeps the hook alive at a fixed address for the C callback.
    _hook: Option<Box<SharedHook>>,
}

// SAFETY: a llama_context may be moved between threads as long as it is used by one at a
// time, which `&mut self` on every mutating method guarantees; the hook is `Send`.
unsafe impl Send for Context<'_> {}

impl<'m> Context<'m> {
    /// Creates a context; `hook` (fixed for the context's life) sees graph tensors.
    pub fn new(model: &'m Model, params: &ContextParams, hook: Option<SharedHook>) -> Result<Self> {
        ensure!(params.n_batch > 0, "batch size must be positive");
        // SAFETY: plain constructor of a parameter struct.
        let mut p = unsafe { sys::llama_context_default_params() };
        p.n_ctx = params.n_ctx;
        p.n_batch = params.n_batch;
        p.n_ubatch = params.n_batch;
        p.n_threads = params.n_threads;
        p.n_threads_batch = params.n_threads;
        p.embeddings = params.embeddings;
        p.no_perf = false;
        let hook = hook.map(Box::new);
        if let Some(h) = &hook {
            p.cb_eval = Some(trampoline);
            p.cb_eval_user_data = (&**h as *const SharedHook).cast_mut().cast::<c_void>();
        }
        // SAFETY: the model outlives the context (borrow); the hook box outlives it too (field).
        let ptr = unsafe { sys::llama_init_from_model(model.as_ptr(), p) };
        let Some(ptr) = NonNull::new(ptr) else {
            bail!("llama.cpp could not create a context{}", reason());
        };
        // SAFETY: valid context.
        let n_batch = unsafe { sys::llama_n_batch(ptr.as_ptr()) } as usize;
        Ok(Self {
            ptr,
            model,
            n_batch,
            cvec_set: false,
            _hook: hook,
        })
    }

    pub(super) fn as_ptr(&mut self) -> *mut sys::llama_context {
        self.ptr.as_ptr()
    }

    /// The model this context runs.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// Context length in tokens.
    pub fn n_ctx(&self) -> usize {
        // SAFETY: valid context.
        unsafe { sys::llama_n_ctx(self.ptr.as_ptr()) as usize }
    }

    /// Tokens per decode call.
    pub fn n_batch(&self) -> usize {
        self.n_batch
    }

    /// Decodes `tokens` at positions `pos0..`, in pieces of at most `n_batch`; logits are
    /// kept for the final token only when `logits_last`.
    pub fn decode(&mut self, tokens: &[i32], pos0: usize, logits_last: bool) -> Result<()> {
        let end = pos0 + tokens.len();
        ensure!(
            end <= self.n_ctx(),
            "context is full ({end} tokens needed, context is {}): raise -c",
            self.n_ctx()
        );
        let mut pos = pos0;
        for piece in tokens.chunks(self.n_batch) {
            let last_piece = pos + piece.len() == end;
            self.decode_piece(piece, pos, logits_last && last_piece)?;
            pos += piece.len();
        }
        Ok(())
    }

    fn decode_piece(&mut self, tokens: &[i32], pos0: usize, logits_last: bool) -> Result<()> {
        let n = tokens.len();
        // SAFETY: allocates a batch with room for n tokens of one sequence each.
        let batch = unsafe { sys::llama_batch_init(n as i32, 0, 1) };
        // SAFETY: every array of the batch was allocated for n entries (seq_id rows for 1 id).
        unsafe {
            for (i, &tok) in tokens.iter().enumerate() {
                *batch.token.add(i) = tok;
                *batch.pos.add(i) = (pos0 + i) as i32;
                *batch.n_seq_id.add(i) = 1;
                **batch.seq_id.add(i) = 0;
                *batch.logits.add(i) = i8::from(logits_last && i + 1 == n);
            }
        }
        let mut batch = batch;
        batch.n_tokens = n as i32;
        // SAFETY: valid context and a fully initialised batch.
        let rc = unsafe { sys::llama_decode(self.ptr.as_ptr(), batch) };
        // SAFETY: the batch came from llama_batch_init and is freed once.
        unsafe { sys::llama_batch_free(batch) };
        if rc != 0 {
            bail!("llama_decode failed with code {rc}{}", reason());
        }
        Ok(())
    }

    /// Logits of the last output row of the latest decode.
    pub fn logits(&self) -> &[f32] {
        // SAFETY: valid context; -1 is the last output row; the row holds n_vocab floats and
        // stays valid until the next decode, which needs `&mut self`.
        unsafe {
            let p = sys::llama_get_logits_ith(self.ptr.as_ptr(), -1);
            assert!(!p.is_null(), "no logits: the last decode asked for none");
            std::slice::from_raw_parts(p, self.model.n_vocab())
        }
    }

    /// Final-norm embeddings of the last output row (context created with `embeddings`).
    pub fn embeddings(&self) -> Option<&[f32]> {
        // SAFETY: valid context; the row holds n_embd floats while `self` is borrowed.
        unsafe {
            let p = sys::llama_get_embeddings_ith(self.ptr.as_ptr(), -1);
            (!p.is_null()).then(|| std::slice::from_raw_parts(p, self.model.n_embd()))
        }
    }

    /// Forgets every token (KV cache cleared).
    pub fn clear(&mut self) {
        // SAFETY: valid context; its memory handle belongs to it.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ptr.as_ptr()), true) }
    }

    /// Forgets the tokens at positions `pos..` (rolls the KV cache back).
    pub fn truncate(&mut self, pos: usize) -> Result<()> {
        // SAFETY: valid context; removing a position range of sequence 0 from its memory.
        let ok = unsafe {
            sys::llama_memory_seq_rm(sys::llama_get_memory(self.ptr.as_ptr()), 0, pos as i32, -1)
        };
        ensure!(
            ok,
            "llama.cpp could not roll the cache back to position {pos}"
        );
        Ok(())
    }

    /// Sets llama.cpp's control vector: `data` holds rows for layers 1..n_layer-1
    /// (`(n_layer-1) * n_embd` floats), added to `l_out-<il>` for `il` in `layers`
    /// (inclusive). `None` removes it. Each change costs a scheduler re-reserve at the next
    /// decode; removing an absent vector costs nothing.
    pub fn set_control_vector(&mut self, cvec: Option<(&[f32], usize, usize)>) -> Result<()> {
        let n_embd = self.model.n_embd();
        if cvec.is_none() && !self.cvec_set {
            return Ok(());
        }
        let rc = match cvec {
            None => {
                // SAFETY: NULL data clears the control vector.
                unsafe {
                    sys::llama_set_adapter_cvec(
                        self.ptr.as_ptr(),
                        std::ptr::null(),
                        0,
                        n_embd as i32,
                        0,
                        0,
                    )
                }
            }
            Some((data, first, last)) => {
                ensure!(
                    data.len() == (self.model.n_layer() - 1) * n_embd,
                    "control vector has {} floats, expected {}",
                    data.len(),
                    (self.model.n_layer() - 1) * n_embd
                );
                // SAFETY: data holds len floats and is only read during the call.
                unsafe {
                    sys::llama_set_adapter_cvec(
                        self.ptr.as_ptr(),
                        data.as_ptr(),
                        data.len(),
                        n_embd as i32,
                        first as i32,
                        last as i32,
                    )
                }
            }
        };
        ensure!(rc == 0, "llama.cpp refused the control vector{}", reason());
        self.cvec_set = cvec.is_some();
        Ok(())
    }

    /// Prompt and generation timings as (prompt ms, prompt tokens, eval ms, eval tokens).
    pub fn timings(&self) -> (f64, i32, f64, i32) {
        // SAFETY: valid context.
        let d = unsafe { sys::llama_perf_context(self.ptr.as_ptr()) };
        (d.t_p_eval_ms, d.n_p_eval, d.t_eval_ms, d.n_eval)
    }

    /// Resets the timings.
    pub fn reset_timings(&mut self) {
        // SAFETY: valid context.
        unsafe { sys::llama_perf_context_reset(self.ptr.as_ptr()) }
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        // SAFETY: created by llama_init_from_model, freed once, before the hook box is dropped.
        unsafe { sys::llama_free(self.ptr.as_ptr()) }
    }
}
