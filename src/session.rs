//! A conversation on one context: formatting turns with the chat template, evaluating text and
//! image chunks, and generating with streaming output. Steering plugs in through
//! [`PromptHooks`], called at the points of the prompt where it may switch.

use std::time::Instant;

use anyhow::{bail, Result};
use image::RgbImage;

use crate::engine::Engine;
use crate::ffi::{Bitmap, ChunkKind, Chunks, Context, Mtmd};
use crate::sampling::{Sampler, SamplingParams};

/// Points of prompt evaluation where steering may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before anything of the turn is decoded; `has_image` tells whether it holds an image.
    Start {
        /// The turn holds at least one image.
        has_image: bool,
    },
    /// Just before an image chunk is decoded.
    Image,
    /// Just before the last prompt token is decoded (it is decoded on its own).
    LastToken,
    /// After the prompt, before the first generated token.
    Generation,
}

/// Called at each [`Phase`] with the context, e.g. to set or clear a control vector.
pub trait PromptHooks {
    /// Whether the last prompt token must be decoded on its own (costs one small decode).
    fn split_last_token(&self) -> bool {
        false
    }
    /// Reacts to a phase.
    fn at(&mut self, ctx: &mut Context<'_>, phase: Phase) -> Result<()>;
}

/// Hooks that do nothing: plain inference.
pub struct NoHooks;

impl PromptHooks for NoHooks {
    fn at(&mut self, _: &mut Context<'_>, _: Phase) -> Result<()> {
        Ok(())
    }
}

/// A tokenized user turn, ready to evaluate.
pub struct Prompt {
    chunks: Option<Chunks>,
    kinds: Vec<ChunkKind>,
    text: String,
}

impl Prompt {
    /// Positions the prompt takes in the context.
    pub fn n_positions(&self) -> usize {
        self.kinds
            .iter()
            .map(|k| match k {
                ChunkKind::Text(t) => t.len(),
                ChunkKind::Image { n_pos, .. } => *n_pos,
            })
            .sum()
    }

    /// Number of images in the prompt.
    pub fn n_images(&self) -> usize {
        self.kinds
            .iter()
            .filter(|k| matches!(k, ChunkKind::Image { .. }))
            .count()
    }

    /// The formatted text (images appear as media markers).
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    EndOfText,
    /// `n_predict` tokens were generated.
    Length,
    /// The context is full.
    ContextFull,
    /// The caller's callback asked to stop.
    Cancelled,
}

/// What a generation produced.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The answer text.
    pub text: String,
    /// The generated tokens.
    pub tokens: Vec<i32>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Wall time of prompt evaluation, ms.
    pub prompt_ms: f64,
    /// Wall time of generation, ms.
    pub gen_ms: f64,
}

/// One conversation with its KV cache.
pub struct Session<'e> {
    engine: &'e Engine,
    ctx: Context<'e>,
    n_past: usize,
    /// Messages so far, with the images of each.
    history: Vec<(String, String, Vec<RgbImage>)>,
    /// The text the KV cache holds (images as markers).
    kv_text: String,
    /// Logits to sample the next token from instead of the context's (after a rewind).
    restored_logits: Option<Vec<f32>>,
}

impl<'e> Session<'e> {
    pub(crate) fn new(engine: &'e Engine, ctx: Context<'e>) -> Result<Self> {
        Ok(Self {
            engine,
            ctx,
            n_past: 0,
            history: Vec::new(),
            kv_text: String::new(),
            restored_logits: None,
        })
    }

    /// The underlying context.
    pub fn context(&mut self) -> &mut Context<'e> {
        &mut self.ctx
    }

    /// Forgets the conversation.
    pub fn reset(&mut self) {
        self.ctx.clear();
        self.n_past = 0;
        self.history.clear();
        self.kv_text.clear();
    }

    /// Tokenizes the next user turn of the conversation (the system message counts only on
    /// the first turn). Images go where `text` has the media marker, else before the text.
    /// When the template cannot extend what the cache holds, the cache is cleared and the
    /// returned prompt holds the whole conversation.
    pub fn prepare(
        &mut self,
        system: Option<&str>,
        text: &str,
        images: &[RgbImage],
    ) -> Result<Prompt> {
        let marker = Mtmd::marker();
        let content = if images.is_empty() || text.contains(&marker) {
            text.to_string()
        } else {
            format!("{}\n{text}", marker.repeat(images.len()))
        };
        let mut messages: Vec<(String, String)> = self
            .history
            .iter()
            .map(|(r, c, _)| (r.clone(), c.clone()))
            .collect();
        if messages.is_empty() {
            if let Some(sys) = system {
                messages.push(("system".into(), sys.into()));
            }
        }
        messages.push(("user".into(), content));
        let full = crate::ffi::apply_chat_template(self.engine.template(), &messages, true)?;
        if let Some(new_text) = full
            .strip_prefix(self.kv_text.as_str())
            .filter(|_| self.n_past > 0)
        {
            return self.tokenize(new_text, images);
        }
        // Start over with the whole conversation and all its images.
        self.ctx.clear();
        self.n_past = 0;
        self.kv_text.clear();
        let mut all: Vec<RgbImage> = self
            .history
            .iter()
            .flat_map(|(_, _, im)| im.clone())
            .collect();
        all.extend(images.iter().cloned());
        self.tokenize(&full, &all)
    }

    /// Tokenizes already formatted text with images (one media marker per image).
    pub fn tokenize(&self, text: &str, images: &[RgbImage]) -> Result<Prompt> {
        let (chunks, kinds) = match self.engine.mtmd() {
            Some(mtmd) => {
                let bitmaps = images
                    .iter()
                    .map(|im| Bitmap::from_rgb(im.width(), im.height(), im.as_raw()))
                    .collect::<Result<Vec<_>>>()?;
                let chunks = mtmd.tokenize(text, &bitmaps, self.n_past == 0)?;
                let kinds = (0..chunks.len())
                    .map(|i| chunks.kind(i))
                    .collect::<Result<_>>()?;
                (Some(chunks), kinds)
            }
            None if !images.is_empty() => {
                bail!("an image was given but no projector: pass --mmproj FILE")
            }
            None => {
                let add_bos = self.n_past == 0;
                let tokens = self.engine.model().tokenize(text, add_bos, true)?;
                (None, vec![ChunkKind::Text(tokens)])
            }
        };
        Ok(Prompt {
            chunks,
            kinds,
            text: text.to_string(),
        })
    }

    /// Evaluates a prompt after what the session already holds.
    pub fn eval(&mut self, prompt: &Prompt, hooks: &mut dyn PromptHooks) -> Result<()> {
        self.restored_logits = None;
        let n_ctx = self.ctx.n_ctx();
        if self.n_past + prompt.n_positions() >= n_ctx {
            bail!(
                "the prompt needs {} tokens but the context holds {n_ctx} ({} already used): shorten it or raise -c",
                prompt.n_positions(),
                self.n_past
            );
        }
        // Every turn starts unsteered: a control vector an earlier turn (or run) left on the
        // context must not leak into this one; hooks set their own.
        self.ctx.set_control_vector(None)?;
        hooks.at(
            &mut self.ctx,
            Phase::Start {
                has_image: prompt.n_images() > 0,
            },
        )?;
        let n = prompt.kinds.len();
        for (i, kind) in prompt.kinds.iter().enumerate() {
            let last = i + 1 == n;
            match kind {
                ChunkKind::Text(tokens) if last && !tokens.is_empty() => {
                    let split = hooks.split_last_token();
                    let (head, tail) = tokens.split_at(if split { tokens.len() - 1 } else { 0 });
                    self.ctx.decode(head, self.n_past, false)?;
                    self.n_past += head.len();
                    if split {
                        hooks.at(&mut self.ctx, Phase::LastToken)?;
                    }
                    self.ctx.decode(tail, self.n_past, true)?;
                    self.n_past += tail.len();
                }
                ChunkKind::Text(tokens) => {
                    self.ctx.decode(tokens, self.n_past, false)?;
                    self.n_past += tokens.len();
                }
                ChunkKind::Image { .. } => {
                    hooks.at(&mut self.ctx, Phase::Image)?;
                    let (Some(mtmd), Some(chunks)) = (self.engine.mtmd(), &prompt.chunks) else {
                        bail!("image chunks need a projector");
                    };
                    self.n_past = mtmd.eval_image(&mut self.ctx, chunks, i, self.n_past, last)?;
                }
            }
        }
        self.kv_text.push_str(&prompt.text);
        hooks.at(&mut self.ctx, Phase::Generation)
    }

    /// Generates up to `n_predict` tokens (negative = until the end or the context is full),
    /// passing each new piece of text to `on_text`, which returns false to stop.
    pub fn generate(
        &mut self,
        sampling: &SamplingParams,
        n_predict: i32,
        ignore_eos: bool,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let model = self.engine.model();
        let mut sampler = Sampler::new(sampling.clone());
        let banned: &[i32] = if ignore_eos {
            self.engine.eog_tokens()
        } else {
            &[]
        };
        let mut text = String::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut tokens = Vec::new();
        let start = Instant::now();
        let stop = loop {
            if n_predict >= 0 && tokens.len() >= n_predict as usize {
                break StopReason::Length;
            }
            if self.n_past >= self.ctx.n_ctx() {
                break StopReason::ContextFull;
            }
            let token = match self.restored_logits.take() {
                Some(l) => sampler.sample(&l, banned),
                None => sampler.sample(self.ctx.logits(), banned),
            };
            if model.is_eog(token) && !ignore_eos {
                break StopReason::EndOfText;
            }
            tokens.push(token);
            self.ctx.decode(&[token], self.n_past, true)?;
            self.n_past += 1;
            pending.extend(model.token_bytes(token));
            let valid = utf8_prefix(&pending);
            let piece = String::from_utf8_lossy(&pending[..valid]).into_owned();
            pending.drain(..valid);
            text.push_str(&piece);
            if !piece.is_empty() && !on_text(&piece) {
                break StopReason::Cancelled;
            }
        };
        if !pending.is_empty() {
            let rest = String::from_utf8_lossy(&pending).into_owned();
            on_text(&rest);
            text.push_str(&rest);
        }
        Ok(Generation {
            text,
            tokens,
            stop,
            prompt_ms: 0.0,
            gen_ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Records a finished exchange (the user's text as given to [`Session::prepare`]) so
    /// that the next turn continues it.
    pub fn push_exchange(
        &mut self,
        system: Option<&str>,
        user: &str,
        images: &[RgbImage],
        answer: &Generation,
    ) {
        if self.history.is_empty() {
            if let Some(sys) = system {
                self.history.push(("system".into(), sys.into(), Vec::new()));
            }
        }
        let marker = Mtmd::marker();
        let user = if images.is_empty() || user.contains(&marker) {
            user.to_string()
        } else {
            format!("{}\n{user}", marker.repeat(images.len()))
        };
        self.history.push(("user".into(), user, images.to_vec()));
        self.history
            .push(("assistant".into(), answer.text.clone(), Vec::new()));
        self.kv_text.push_str(&answer.text);
    }

    /// Positions the cache holds.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// Log-probability of each of `tokens` as the continuation of what the session holds,
    /// given `start`, the logits after it (teacher forcing, one decode per token, so steering
    /// acts as during generation). [`Session::rewind`] takes the tokens back.
    pub fn score(&mut self, start: &[f32], tokens: &[i32]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(tokens.len());
        let mut logits = start.to_vec();
        for (i, &t) in tokens.iter().enumerate() {
            out.push(crate::eval::metrics::log_softmax(&logits)[t as usize]);
            if i + 1 == tokens.len() {
                break;
            }
            if self.n_past >= self.ctx.n_ctx() {
                bail!("the context is full while scoring: raise -c");
            }
            self.ctx.decode(&[t], self.n_past, true)?;
            self.n_past += 1;
            logits.copy_from_slice(self.ctx.logits());
        }
        Ok(out)
    }

    /// Rolls the cache back to `n_past` positions (after [`Session::score`]).
    pub fn rewind(&mut self, n_past: usize) -> Result<()> {
        self.ctx.truncate(n_past)?;
        self.n_past = n_past;
        Ok(())
    }

    /// The logits the next generated token is sampled from (after a rewind, the saved
    /// logits of the last kept position).
    pub fn set_logits(&mut self, logits: &[f32]) {
        self.restored_logits = Some(logits.to_vec());
    }

    /// Evaluates a prompt then generates: one complete answer.
    pub fn answer(
        &mut self,
        prompt: &Prompt,
        hooks: &mut dyn PromptHooks,
        sampling: &SamplingParams,
        n_predict: i32,
        ignore_eos: bool,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let t0 = Instant::now();
        self.eval(prompt, hooks)?;
        let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut g = self.generate(sampling, n_predict, ignore_eos, on_text)?;
        g.prompt_ms = prompt_ms;
        Ok(g)
    }
}

/// Length of the longest prefix of `bytes` that is complete UTF-8 (invalid bytes count as
/// complete so that they are emitted as replacement characters rather than held forever).
fn utf8_prefix(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => bytes.len(),
    }
}
