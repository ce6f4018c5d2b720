//! An inference context: KV cache (one or more sequences), decoding, logits, control vectors and
//! the graph hook.

use std::ffi::c_void;
use std::fmt;
use std::ptr::NonNull;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use llama_cpp_sys_2 as sys;

use super::batch::{Busy, Cvec, Lane};
use super::compute::{ComputeGate, SendPtr};
use super::hook::{trampoline, SharedHook};
use super::{failure, Model};
use crate::error::{Error, Result};

/// When flash attention is used (llama.cpp's `-fa on|off|auto`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlashAttn {
    /// llama.cpp decides per model and device (its default).
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

impl FromStr for FlashAttn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(FlashAttn::Auto),
            "on" | "1" | "true" | "enabled" => Ok(FlashAttn::On),
            "off" | "0" | "false" | "disabled" => Ok(FlashAttn::Off),
            _ => Err(format!("{s:?}: expected on, off or auto")),
        }
    }
}

impl fmt::Display for FlashAttn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlashAttn::Auto => "auto",
            FlashAttn::On => "on",
            FlashAttn::Off => "off",
        })
    }
}

/// A KV cache element type (llama.cpp's `-ctk` / `-ctv`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// 32-bit float.
    F32,
    /// 16-bit float (llama.cpp's default).
    #[default]
    F16,
    /// bfloat16.
    Bf16,
    /// 8-bit blocks.
    Q8_0,
    /// 4-bit blocks.
    Q4_0,
    /// 4-bit blocks with offsets.
    Q4_1,
    /// 4-bit non-linear blocks.
    Iq4Nl,
    /// 5-bit blocks.
    Q5_0,
    /// 5-bit blocks with offsets.
    Q5_1,
}

const KV_TYPES: [(KvType, &str); 9] = [
    (KvType::F32, "f32"),
    (KvType::F16, "f16"),
    (KvType::Bf16, "bf16"),
    (KvType::Q8_0, "q8_0"),
    (KvType::Q4_0, "q4_0"),
    (KvType::Q4_1, "q4_1"),
    (KvType::Iq4Nl, "iq4_nl"),
    (KvType::Q5_0, "q5_0"),
    (KvType::Q5_1, "q5_1"),
];

impl KvType {
    fn ggml(self) -> sys::ggml_type {
        match self {
            KvType::F32 => sys::GGML_TYPE_F32,
            KvType::F16 => sys::GGML_TYPE_F16,
            KvType::Bf16 => sys::GGML_TYPE_BF16,
            KvType::Q8_0 => sys::GGML_TYPE_Q8_0,
            KvType::Q4_0 => sys::GGML_TYPE_Q4_0,
            KvType::Q4_1 => sys::GGML_TYPE_Q4_1,
            KvType::Iq4Nl => sys::GGML_TYPE_IQ4_NL,
            KvType::Q5_0 => sys::GGML_TYPE_Q5_0,
            KvType::Q5_1 => sys::GGML_TYPE_Q5_1,
        }
    }
}

impl FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        KV_TYPES
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(t, _)| *t)
            .ok_or_else(|| {
                let names: Vec<&str> = KV_TYPES.iter().map(|(_, n)| *n).collect();
                format!("{s:?}: expected one of {}", names.join(", "))
            })
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = KV_TYPES.iter().find(|(t, _)| t == self).map(|(_, n)| *n);
        f.write_str(name.unwrap_or("?"))
    }
}

/// Settings of a context, as llama.cpp's `-c`, `-b`, `-ub`, `-t`, `-tb`, `-fa`, `-ctk`, `-ctv`.
#[derive(Clone, Debug)]
pub struct ContextParams {
    /// Context length in tokens (0 = the model's training length), shared by all sequences.
    pub n_ctx: u32,
    /// Tokens per decode call.
    pub n_batch: u32,
    /// Tokens per micro-batch (physical batch).
    pub n_ubatch: u32,
    /// CPU threads for generation.
    pub n_threads: i32,
    /// CPU threads for prompt processing.
    pub n_threads_batch: i32,
    /// Sequences the KV cache holds at once (they share `n_ctx`).
    pub n_seq: u32,
    /// Also return final-norm embeddings for output rows.
    pub embeddings: bool,
    /// Flash attention.
    pub flash_attn: FlashAttn,
    /// K cache type.
    pub type_k: KvType,
    /// V cache type.
    pub type_v: KvType,
    /// The thread that runs every decode: contexts that share it compute one at a time (each
    /// with all its threads, in turn) instead of oversubscribing the cores.
    pub gate: Arc<ComputeGate>,
    /// When set, a decode under way stops at its next graph node and fails with
    /// [`Error::Cancelled`].
    pub abort: Option<Arc<AtomicBool>>,
}

/// llama.cpp's abort callback: `data` points to the context's flag.
unsafe extern "C" fn abort_requested(data: *mut c_void) -> bool {
    if data.is_null() {
        return false;
    }
    // SAFETY: `data` is the address of the `AtomicBool` inside the `Arc` the context that
    // registered this callback holds; it lives as long as the context.
    let flag = unsafe { &*(data as *const AtomicBool) };
    flag.load(Ordering::Relaxed)
}

/// A llama.cpp context borrowing its model.
pub struct Context<'m> {
    ptr: NonNull<sys::llama_context>,
    model: &'m Model,
    n_batch: usize,
    /// Whether a control vector is set (clearing an unset one is free).
    cvec_set: bool,
    /// Whether the last decode asked for logits.
    has_logits: bool,
    gate: Arc<ComputeGate>,
    /// Keeps the abort flag alive (at a fixed address) for the C callback; a lane checks it
    /// between steps.
    abort: Option<Arc<AtomicBool>>,
    kind: Kind,
}

/// Whose llama.cpp context it is.
enum Kind {
    /// This value's own (freed with it), with the hook kept alive at a fixed address for the C
    /// callback.
    Own { _hook: Option<Box<SharedHook>> },
    /// A lane of a context decoded in batches with other lanes.
    Lane(Lane),
}

/// Creates a llama.cpp context with `params` and `hook` (boxed at a fixed address, to be kept
/// alive as long as the context).
pub(super) fn raw_context(
    model: &Model,
    params: &ContextParams,
    hook: Option<SharedHook>,
) -> Result<(NonNull<sys::llama_context>, Option<Box<SharedHook>>)> {
    if params.n_batch == 0 || params.n_ubatch == 0 {
        return Err(Error::Invalid("batch sizes must be positive".into()));
    }
    // SAFETY: plain constructor of a parameter struct.
    let mut p = unsafe { sys::llama_context_default_params() };
    p.n_ctx = params.n_ctx;
    p.n_batch = params.n_batch;
    p.n_ubatch = params.n_ubatch.min(params.n_batch);
    p.n_seq_max = params.n_seq.max(1);
    p.kv_unified = params.n_seq > 1;
    p.n_threads = params.n_threads;
    p.n_threads_batch = params.n_threads_batch;
    p.embeddings = params.embeddings;
    p.no_perf = false;
    p.flash_attn_type = match params.flash_attn {
        FlashAttn::Auto => sys::LLAMA_FLASH_ATTN_TYPE_AUTO,
        FlashAttn::On => sys::LLAMA_FLASH_ATTN_TYPE_ENABLED,
        FlashAttn::Off => sys::LLAMA_FLASH_ATTN_TYPE_DISABLED,
    };
    // As llama.cpp's tools: a sliding-window cache only as large as the window.
    p.swa_full = false;
    p.type_k = params.type_k.ggml();
    p.type_v = params.type_v.ggml();
    if let Some(a) = &params.abort {
        p.abort_callback = Some(abort_requested);
        p.abort_callback_data = Arc::as_ptr(a).cast_mut().cast::<c_void>();
    }
    let hook = hook.map(Box::new);
    if let Some(h) = &hook {
        p.cb_eval = Some(trampoline);
        p.cb_eval_user_data = (&**h as *const SharedHook).cast_mut().cast::<c_void>();
    }
    // SAFETY: the model outlives the context (the callers borrow it for the context's life);
    // the hook box and the abort flag are kept by the callers as long as the context.
    let ptr = unsafe { sys::llama_init_from_model(model.as_ptr(), p) };
    let ptr = NonNull::new(ptr).ok_or_else(|| failure("creating a context", None))?;
    Ok((ptr, hook))
}

// SAFETY: a llama_context may be moved between threads as long as it is used by one at a
// time, which `&mut self` on every mutating method guarantees; the hook is `Send`.
unsafe impl Send for Context<'_> {}

impl<'m> Context<'m> {
    /// Creates a context; `hook` (fixed for the context's life) sees graph tensors.
    pub fn new(model: &'m Model, params: &ContextParams, hook: Option<SharedHook>) -> Result<Self> {
        let (ptr, hook) = raw_context(model, params, hook)?;
        // SAFETY: valid context.
        let n_batch = unsafe { sys::llama_n_batch(ptr.as_ptr()) } as usize;
        Ok(Self {
            ptr,
            model,
            n_batch,
            cvec_set: false,
            has_logits: false,
            gate: params.gate.clone(),
            abort: params.abort.clone(),
            kind: Kind::Own { _hook: hook },
        })
    }

    /// A lane of a batched context (see [`super::Batched::lane`]).
    pub(super) fn lane(
        model: &'m Model,
        lane: Lane,
        ptr: NonNull<sys::llama_context>,
        n_batch: usize,
        gate: Arc<ComputeGate>,
        abort: Option<Arc<AtomicBool>>,
    ) -> Self {
        Self {
            ptr,
            model,
            n_batch,
            cvec_set: false,
            has_logits: false,
            gate,
            abort,
            kind: Kind::Lane(lane),
        }
    }

    /// Marks a turn: a batched context waits for this lane's decodes until the guard is
    /// dropped (nothing for a context of its own).
    pub fn busy(&self) -> Busy {
        match &self.kind {
            Kind::Lane(lane) => lane.busy(),
            Kind::Own { .. } => Busy::none(),
        }
    }

    /// Runs `f` on the compute thread with the llama.cpp context and the context's id of
    /// sequence `seq` (a lane's hook sees every row meanwhile).
    pub(super) fn exclusive<R: Send + 'static>(
        &mut self,
        seq: i32,
        f: impl FnOnce(*mut sys::llama_context, i32) -> R + Send + 'static,
    ) -> Result<R> {
        match &self.kind {
            Kind::Lane(lane) => lane.exclusive(seq, f),
            Kind::Own { .. } => {
                let ctx = SendPtr(self.ptr.as_ptr());
                self.gate.run(move || {
                    let ctx = ctx;
                    f(ctx.0, seq)
                })
            }
        }
    }

    /// The model this context runs.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// Context length in tokens (a lane's share of a batched context).
    pub fn n_ctx(&self) -> usize {
        if let Kind::Lane(lane) = &self.kind {
            return lane.n_ctx();
        }
        // SAFETY: valid context.
        unsafe { sys::llama_n_ctx(self.ptr.as_ptr()) as usize }
    }

    /// Tokens per decode call.
    pub fn n_batch(&self) -> usize {
        self.n_batch
    }

    /// Decodes `tokens` of sequence `seq` at positions `pos0..`, in pieces of at most
    /// `n_batch`; logits are kept for the final token only when `logits_last`.
    pub fn decode(
        &mut self,
        tokens: &[i32],
        pos0: usize,
        seq: i32,
        logits_last: bool,
    ) -> Result<()> {
        if let Kind::Lane(lane) = &mut self.kind {
            if tokens.is_empty() {
                return Ok(());
            }
            let n_ctx = lane.n_ctx();
            let out = lane.decode(tokens, pos0, seq, logits_last, self.abort.clone());
            self.has_logits = out.is_ok() && logits_last;
            return out.map_err(|e| match e {
                Error::ContextFull { .. } => Error::ContextFull {
                    needed: pos0 + tokens.len(),
                    n_ctx,
                },
                e => e,
            });
        }
        let end = pos0 + tokens.len();
        let mut pos = pos0;
        for piece in tokens.chunks(self.n_batch) {
            let last_piece = pos + piece.len() == end;
            self.decode_piece(piece, pos, seq, logits_last && last_piece)?;
            pos += piece.len();
        }
        Ok(())
    }

    fn decode_piece(
        &mut self,
        tokens: &[i32],
        pos0: usize,
        seq: i32,
        logits_last: bool,
    ) -> Result<()> {
        let tokens = tokens.to_vec();
        let ctx = SendPtr(self.ptr.as_ptr());
        let rc = self.gate.run(move || {
            let ctx = ctx;
            let n = tokens.len();
            // SAFETY: allocates a batch with room for n tokens of one sequence each.
            let mut batch = unsafe { sys::llama_batch_init(n as i32, 0, 1) };
            // SAFETY: every array of the batch was allocated for n entries (seq_id rows for
            // one id).
            unsafe {
                for (i, &tok) in tokens.iter().enumerate() {
                    *batch.token.add(i) = tok;
                    *batch.pos.add(i) = (pos0 + i) as i32;
                    *batch.n_seq_id.add(i) = 1;
                    **batch.seq_id.add(i) = seq;
                    *batch.logits.add(i) = i8::from(logits_last && i + 1 == n);
                }
            }
            batch.n_tokens = n as i32;
            // SAFETY: a valid context (its owner waits for this job) and a fully initialised
            // batch.
            let rc = unsafe { sys::llama_decode(ctx.0, batch) };
            // SAFETY: the batch came from llama_batch_init and is freed once.
            unsafe { sys::llama_batch_free(batch) };
            rc
        })?;
        self.note_decode(rc, logits_last)
    }

    /// Records the outcome of a decode (here or in mtmd's helper).
    pub(super) fn note_decode(&mut self, rc: i32, logits: bool) -> Result<()> {
        self.has_logits = rc == 0 && logits;
        match rc {
            0 => Ok(()),
            1 => Err(Error::ContextFull {
                needed: 0,
                n_ctx: self.n_ctx(),
            }),
            _ if self.aborted() => Err(Error::Cancelled),
            _ => Err(failure("decode", Some(rc))),
        }
    }

    /// Logits of the last output row of the latest decode.
    pub fn logits(&self) -> Result<&[f32]> {
        if !self.has_logits {
            return Err(Error::Invalid(
                "no logits: the last decode asked for none".into(),
            ));
        }
        if let Kind::Lane(lane) = &self.kind {
            return Ok(lane.logits());
        }
        // SAFETY: valid context; -1 is the last output row, which exists because the last
        // decode succeeded with an output; the row holds n_vocab floats and stays valid until
        // the next decode, which needs `&mut self`.
        unsafe {
            let p = sys::llama_get_logits_ith(self.ptr.as_ptr(), -1);
            if p.is_null() {
                return Err(failure("reading logits", None));
            }
            Ok(std::slice::from_raw_parts(p, self.model.n_vocab()))
        }
    }

    /// Final-norm embeddings of the last output row (context created with `embeddings`).
    pub fn embeddings(&self) -> Option<&[f32]> {
        if !self.has_logits {
            return None;
        }
        if let Kind::Lane(lane) = &self.kind {
            return lane.embeddings();
        }
        // SAFETY: valid context; the row holds n_embd floats while `self` is borrowed.
        unsafe {
            let p = sys::llama_get_embeddings_ith(self.ptr.as_ptr(), -1);
            (!p.is_null()).then(|| std::slice::from_raw_parts(p, self.model.n_embd()))
        }
    }

    fn memory(&self) -> sys::llama_memory_t {
        // SAFETY: valid context; its memory handle belongs to it.
        unsafe { sys::llama_get_memory(self.ptr.as_ptr()) }
    }

    /// Forgets every token of every sequence (KV cache cleared).
    pub fn clear(&mut self) {
        self.has_logits = false;
        if let Kind::Lane(lane) = &self.kind {
            for seq in 0..2 {
                let _ = lane.truncate(seq, 0);
            }
            return;
        }
        // SAFETY: valid context and memory handle.
        unsafe { sys::llama_memory_clear(self.memory(), true) }
        self.has_logits = false;
    }

    /// Forgets the tokens of sequence `seq` at positions `pos..` (all of them for 0).
    pub fn truncate(&mut self, seq: i32, pos: usize) -> Result<()> {
        let ok = match &self.kind {
            Kind::Lane(lane) => lane.truncate(seq, pos)?,
            // SAFETY: valid context; removes a position range of one sequence from its memory.
            Kind::Own { .. } => unsafe {
                sys::llama_memory_seq_rm(self.memory(), seq, pos as i32, -1)
            },
        };
        if !ok {
            return Err(failure("rolling the cache back", None));
        }
        self.has_logits = false;
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
        let want = (self.model.n_layer() - 1) * n_embd;
        if let Kind::Lane(lane) = &self.kind {
            let cvec = match cvec {
                Some((data, _, _)) if data.len() != want => {
                    return Err(Error::Invalid(format!(
                        "control vector has {} floats, expected {want}",
                        data.len()
                    )))
                }
                Some((data, first, last)) => Some(Cvec {
                    rows: data.to_vec(),
                    n_embd,
                    first,
                    last,
                }),
                None => None,
            };
            self.cvec_set = cvec.is_some();
            lane.set_cvec(cvec);
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
                if data.len() != want {
                    return Err(Error::Invalid(format!(
                        "control vector has {} floats, expected {want}",
                        data.len()
                    )));
                }
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
        if rc != 0 {
            return Err(failure("setting the control vector", Some(rc)));
        }
        self.cvec_set = cvec.is_some();
        Ok(())
    }

    /// Prompt and generation timings as (prompt ms, prompt tokens, eval ms, eval tokens).
    pub fn timings(&self) -> (f64, i32, f64, i32) {
        // SAFETY: valid context.
        let d = unsafe { sys::llama_perf_context(self.ptr.as_ptr()) };
        (d.t_p_eval_ms, d.n_p_eval, d.t_eval_ms, d.n_eval)
    }
}

impl Context<'_> {
    /// Whether the context's abort flag is set.
    pub(super) fn aborted(&self) -> bool {
        self.abort
            .as_ref()
            .is_some_and(|a| a.load(Ordering::Relaxed))
    }

    /// The compute gate shared with the other contexts of the engine.
    pub(super) fn gate(&self) -> Arc<ComputeGate> {
        self.gate.clone()
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        if let Kind::Own { .. } = self.kind {
            // SAFETY: our own context, created by llama_init_from_model, freed once, before
            // the hook box is dropped.
            unsafe { sys::llama_free(self.ptr.as_ptr()) }
        }
    }
}
