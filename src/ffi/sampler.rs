//! llama.cpp's sampler chain, built and used exactly as llama.cpp's `common_sampler` does
//! (same samplers, same order, same seed use, the same grammar rejection step), so that a seed
//! reproduces llama.cpp's sampled text.

use std::ffi::CString;
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use super::{failure, Model};
use crate::error::{Error, Result};
use crate::sampling::{Mirostat, SamplerKind, SamplingParams};

/// An owned `llama_sampler` (freed on drop).
struct Owned(NonNull<sys::llama_sampler>);

impl Owned {
    fn new(p: *mut sys::llama_sampler, what: &'static str) -> Result<Self> {
        NonNull::new(p).map(Self).ok_or_else(|| failure(what, None))
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: created by a llama_sampler_init_* function, owned here, freed once.
        unsafe { sys::llama_sampler_free(self.0.as_ptr()) }
    }
}

// SAFETY: a sampler holds plain state with no thread affinity; `&mut self` on every use
// keeps it to one thread at a time.
unsafe impl Send for Owned {}

/// A sampler chain with an optional grammar, for one generation.
pub struct Sampler {
    chain: Owned,
    grammar: Option<Owned>,
    cur: Vec<sys::llama_token_data>,
}

impl Sampler {
    /// The chain `params` describe, for `model`'s vocabulary.
    pub fn new(model: &Model, params: &SamplingParams) -> Result<Self> {
        params.check().map_err(Error::Invalid)?;
        let vocab = model.vocab();
        let n_vocab = model.n_vocab() as i32;
        // SAFETY: plain constructors; each returned sampler is owned by `chain` once added.
        let chain = unsafe {
            let mut cp = sys::llama_sampler_chain_default_params();
            cp.no_perf = true;
            Owned::new(
                sys::llama_sampler_chain_init(cp),
                "creating a sampler chain",
            )?
        };
        let add = |s: *mut sys::llama_sampler, what: &'static str| -> Result<()> {
            let s = Owned::new(s, what)?;
            // SAFETY: the chain takes ownership of `s`; it is not freed by us afterwards.
            unsafe { sys::llama_sampler_chain_add(chain.0.as_ptr(), s.0.as_ptr()) };
            std::mem::forget(s);
            Ok(())
        };
        let mut bias: Vec<sys::llama_logit_bias> = params
            .logit_bias
            .iter()
            .map(|&(token, bias)| sys::llama_logit_bias { token, bias })
            .collect();
        // The model's suppressed tokens, as llama.cpp adds them.
        // SAFETY: valid vocab; the returned array (or NULL) is owned by the vocab.
        unsafe {
            let mut n = 0i32;
            let p = sys::llama_vocab_get_suppress_tokens(vocab, &mut n);
            if !p.is_null() {
                for &t in std::slice::from_raw_parts(p, n.max(0) as usize) {
                    bias.push(sys::llama_logit_bias {
                        token: t,
                        bias: f32::NEG_INFINITY,
                    });
                }
            }
        }
        if !bias.is_empty() {
            // SAFETY: `bias` holds `len` entries for the call; llama.cpp copies them.
            add(
                unsafe {
                    sys::llama_sampler_init_logit_bias(n_vocab, bias.len() as i32, bias.as_ptr())
                },
                "creating the logit-bias sampler",
            )?;
        }
        let p = params;
        match p.mirostat {
            Mirostat::Off => {
                let breakers: Vec<CString> = p
                    .dry_sequence_breakers
                    .iter()
                    .map(|b| CString::new(b.as_str()))
                    .collect::<Result<_, _>>()
                    .map_err(|_| Error::Invalid("a DRY sequence breaker contains NUL".into()))?;
                let breaker_ptrs: Vec<*const std::ffi::c_char> =
                    breakers.iter().map(|b| b.as_ptr()).collect();
                for kind in &p.samplers {
                    // SAFETY: plain constructors with in-range arguments; `breaker_ptrs` point
                    // into `breakers`, alive for the call (llama.cpp copies them).
                    let s = unsafe {
                        match kind {
                            SamplerKind::Penalties => sys::llama_sampler_init_penalties(
                                n_vocab,
                                p.penalty_last_n,
                                p.repeat_penalty,
                                p.frequency_penalty,
                                p.presence_penalty,
                            ),
                            SamplerKind::Dry => sys::llama_sampler_init_dry(
                                vocab,
                                p.dry_multiplier,
                                p.dry_base,
                                p.dry_allowed_length,
                                p.dry_penalty_last_n,
                                breaker_ptrs.as_ptr().cast_mut(),
                                breaker_ptrs.len(),
                            ),
                            SamplerKind::TopNSigma => {
                                sys::llama_sampler_init_top_n_sigma(p.top_n_sigma)
                            }
                            SamplerKind::TopK => sys::llama_sampler_init_top_k(p.top_k),
                            SamplerKind::TypicalP => {
                                sys::llama_sampler_init_typical(p.typical_p, p.min_keep)
                            }
                            SamplerKind::TopP => sys::llama_sampler_init_top_p(p.top_p, p.min_keep),
                            SamplerKind::MinP => sys::llama_sampler_init_min_p(p.min_p, p.min_keep),
                            SamplerKind::Xtc => sys::llama_sampler_init_xtc(
                                p.xtc_probability,
                                p.xtc_threshold,
                                p.min_keep,
                                p.seed,
                            ),
                            SamplerKind::Temperature => sys::llama_sampler_init_temp_ext(
                                p.temp,
                                p.dynatemp_range,
                                p.dynatemp_exponent,
                            ),
                        }
                    };
                    add(s, "creating a sampler")?;
                }
                // SAFETY: plain constructor.
                add(
                    unsafe { sys::llama_sampler_init_dist(p.seed) },
                    "creating the dist sampler",
                )?;
            }
            Mirostat::V1 | Mirostat::V2 => {
                // SAFETY: plain constructors.
                unsafe {
                    add(sys::llama_sampler_init_temp(p.temp), "creating a sampler")?;
                    let m = if p.mirostat == Mirostat::V1 {
                        sys::llama_sampler_init_mirostat(
                            n_vocab,
                            p.seed,
                            p.mirostat_tau,
                            p.mirostat_eta,
                            100,
                        )
                    } else {
                        sys::llama_sampler_init_mirostat_v2(p.seed, p.mirostat_tau, p.mirostat_eta)
                    };
                    add(m, "creating the mirostat sampler")?;
                }
            }
        }
        let grammar = match &p.grammar {
            None => None,
            Some(g) => {
                let gc = CString::new(g.as_str())
                    .map_err(|_| Error::Invalid("the grammar contains a NUL byte".into()))?;
                let root = c"root";
                // SAFETY: valid vocab and NUL-terminated strings alive for the call; the wrapper
                // catches C++ exceptions and returns NULL on a grammar that does not parse
                // (llama.cpp logs why).
                let s = unsafe {
                    sys::llama_rs_sampler_init_grammar(vocab, gc.as_ptr(), root.as_ptr())
                };
                Some(Owned::new(s, "parsing the grammar").map_err(|e| match e {
                    Error::Llama { detail, .. } => {
                        Error::Invalid(format!("the grammar does not parse{detail}"))
                    }
                    e => e,
                })?)
            }
        };
        Ok(Self {
            chain,
            grammar,
            cur: Vec::new(),
        })
    }

    fn fill(&mut self, logits: &[f32]) -> sys::llama_token_data_array {
        self.cur.clear();
        self.cur.extend(
            logits
                .iter()
                .enumerate()
                .map(|(id, &logit)| sys::llama_token_data {
                    id: id as i32,
                    logit,
                    p: 0.0,
                }),
        );
        sys::llama_token_data_array {
            data: self.cur.as_mut_ptr(),
            size: self.cur.len(),
            selected: -1,
            sorted: false,
        }
    }

    fn selected(arr: &sys::llama_token_data_array) -> Result<i32> {
        if arr.selected < 0 || arr.selected as usize >= arr.size {
            return Err(Error::Invalid(
                "the samplers left no token to choose (check --logit-bias and the grammar)".into(),
            ));
        }
        // SAFETY: `selected` is in range of the array the samplers just worked on.
        Ok(unsafe { (*arr.data.add(arr.selected as usize)).id })
    }

    /// Picks the next token from a logits row, as llama.cpp's `common_sampler_sample` does:
    /// the chain first; with a grammar, a token it rejects is resampled with the grammar
    /// applied before the chain.
    pub fn sample(&mut self, logits: &[f32]) -> Result<i32> {
        let mut arr = self.fill(logits);
        // SAFETY: `arr` points into `self.cur`, alive and unaliased for the call.
        unsafe { sys::llama_sampler_apply(self.chain.0.as_ptr(), &mut arr) };
        let id = Self::selected(&arr)?;
        let Some(grammar) = &self.grammar else {
            return Ok(id);
        };
        let mut single = sys::llama_token_data {
            id,
            logit: 1.0,
            p: 0.0,
        };
        let mut one = sys::llama_token_data_array {
            data: &mut single,
            size: 1,
            selected: -1,
            sorted: false,
        };
        // SAFETY: `one` points to `single`, alive for the call.
        unsafe { sys::llama_sampler_apply(grammar.0.as_ptr(), &mut one) };
        if single.logit != f32::NEG_INFINITY {
            return Ok(id);
        }
        let grammar = grammar.0.as_ptr();
        let mut arr = self.fill(logits);
        // SAFETY: as above.
        unsafe {
            sys::llama_sampler_apply(grammar, &mut arr);
            sys::llama_sampler_apply(self.chain.0.as_ptr(), &mut arr);
        }
        Self::selected(&arr)
    }

    /// Records the chosen token (penalties, DRY and the grammar see it).
    pub fn accept(&mut self, token: i32) -> Result<()> {
        if let Some(g) = &self.grammar {
            // SAFETY: valid sampler; the wrapper turns a C++ exception (a token the grammar
            // cannot take) into a status instead of unwinding into Rust.
            let rc = unsafe { sys::llama_rs_sampler_accept(g.0.as_ptr(), token) };
            if rc != sys::LLAMA_RS_STATUS_OK {
                return Err(failure("advancing the grammar", Some(rc)));
            }
        }
        // SAFETY: valid chain; any token id is accepted.
        unsafe { sys::llama_sampler_accept(self.chain.0.as_ptr(), token) };
        Ok(())
    }
}

/// A GBNF grammar for JSON that follows `schema` (a JSON schema), by llama.cpp's own converter.
pub fn json_schema_to_grammar(schema: &str) -> Result<String> {
    serde_json::from_str::<serde_json::Value>(schema)
        .map_err(|e| Error::Invalid(format!("the JSON schema is not valid JSON: {e}")))?;
    llama_cpp_2::json_schema_to_grammar(schema).map_err(|e| {
        Error::Invalid(format!(
            "llama.cpp could not convert this JSON schema to a grammar ({e})"
        ))
    })
}
