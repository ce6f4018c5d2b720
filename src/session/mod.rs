//! A conversation on one context: a [`Turn`] goes in through one call, [`Session::send`], which
//! formats the conversation with the chat template, reuses the KV prefix it shares with the last
//! prompt, lets the session's [`Steering`] plan the turn, evaluates text and image chunks,
//! generates with streaming output and records the exchange. [`Session::prefill`] stops after
//! the prompt, for scoring continuations; a failed or abandoned turn leaves the conversation as
//! it was.

mod generate;
mod prompt;
pub mod steering;
mod turn;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

pub(crate) use steering::chain;
pub use steering::{
    Applied, NoHooks, Phase, Probe, SteerOverride, Steering, TurnHooks, TurnInput, TurnPlan,
};

pub use crate::settings::{default_layer, Apply, Layers, Positions, SteerConfig};
pub use turn::{GenerateOptions, Generation, StopReason, TokenChoice, TokenLogprob, Turn};

pub use crate::template::{Message, Role};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ffi::{Batched, Busy, Context, SharedHook};
use crate::media::Image;
use crate::tools::Tool;
use prompt::{reusable, Cached, Key, Piece, Prompt};

/// The main sequence of a session's context; steering probes use [`SCRATCH`].
const MAIN: i32 = 0;
/// The scratch sequence.
const SCRATCH: i32 = 1;

/// How a session is set up.
#[derive(Default)]
pub struct SessionOptions<'e> {
    steering: Option<Box<dyn Steering + 'e>>,
    observer: Option<SharedHook>,
    embeddings: bool,
    abort: Option<Arc<AtomicBool>>,
    n_ctx: Option<u32>,
    batched: Option<Batched<'e>>,
}

impl<'e> SessionOptions<'e> {
    /// Plain inference.
    pub fn new() -> Self {
        Self::default()
    }

    /// Steers every turn with `steering` (its graph hook is installed on the context).
    pub fn steering(mut self, steering: impl Steering + 'e) -> Self {
        self.steering = Some(Box::new(steering));
        self
    }

    /// Steers with an already boxed steering, if any.
    pub fn boxed_steering(mut self, steering: Option<Box<dyn Steering + 'e>>) -> Self {
        self.steering = steering;
        self
    }

    /// A graph hook that sees every graph tensor after the steering (e.g. a state capture).
    pub fn observer(mut self, hook: SharedHook) -> Self {
        self.observer = Some(hook);
        self
    }

    /// A flag that, once set, stops the turn under way at its next step (even in the middle
    /// of a decode), which then fails with [`Error::Cancelled`]. The caller clears it.
    pub fn abort_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.abort = Some(flag);
        self
    }

    /// A context of `n` tokens instead of the engine's size.
    pub fn context_size(mut self, n: u32) -> Self {
        self.n_ctx = Some(n);
        self
    }

    /// Runs on a lane of `batched` (decoded together with the other lanes' sessions) instead
    /// of a context of its own; the context size and embeddings are the batched context's.
    pub fn batched(mut self, batched: Batched<'e>) -> Self {
        self.batched = Some(batched);
        self
    }

    /// Also compute final-norm embeddings.
    pub fn embeddings(mut self, on: bool) -> Self {
        self.embeddings = on;
        self
    }
}

/// One conversation with its KV cache.
pub struct Session<'e> {
    engine: &'e Engine,
    ctx: Context<'e>,
    steering: Option<Box<dyn Steering + 'e>>,
    /// The conversation so far.
    history: Vec<Message>,
    /// Tools offered to the model on the coming turns.
    tools: Vec<Tool>,
    /// What the main sequence of the cache holds.
    cached: Vec<Cached>,
}

impl<'e> Session<'e> {
    /// A fresh conversation on `engine`.
    pub fn new(engine: &'e Engine, options: SessionOptions<'e>) -> Result<Self> {
        let mut hooks: Vec<SharedHook> = options
            .steering
            .as_ref()
            .and_then(|s| s.graph_hook())
            .into_iter()
            .collect();
        hooks.extend(options.observer);
        let hook = chain(hooks);
        let ctx = match options.batched {
            Some(b) => b.lane(hook, options.abort)?,
            None => {
                let n_seq = if options.steering.is_some() { 2 } else { 1 };
                let mut params = engine.context_params(n_seq, options.embeddings);
                params.abort = options.abort;
                if let Some(n) = options.n_ctx {
                    params.n_ctx = n;
                }
                Context::new(engine.model(), &params, hook)?
            }
        };
        Ok(Self {
            engine,
            ctx,
            steering: options.steering,
            history: Vec::new(),
            tools: Vec::new(),
            cached: Vec::new(),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &'e Engine {
        self.engine
    }

    /// The conversation so far.
    pub fn history(&self) -> &[Message] {
        &self.history
    }

    /// Replaces the conversation (e.g. with a client's message list); the cache keeps what
    /// the new conversation shares with the old one.
    pub fn set_history(&mut self, messages: Vec<Message>) {
        self.history = messages;
    }

    /// Offers `tools` to the model on the coming turns (none: no tools), through the chat
    /// template, which must take them ([`crate::template::ChatTemplate::tool_format`]); the
    /// calls the model writes are read with [`crate::tools::ToolStream`].
    pub fn set_tools(&mut self, tools: Vec<Tool>) {
        self.tools = tools;
    }

    /// On a batched context, makes every step wait (within the gather window) for this
    /// session's decodes until the guard is dropped, also between turns: sessions that hold
    /// one from before their first turn move in lockstep. Each turn holds one by itself.
    pub fn busy(&self) -> Busy {
        self.ctx.busy()
    }

    /// Forgets the conversation and empties the cache.
    pub fn reset(&mut self) {
        self.ctx.clear();
        self.cached.clear();
        self.history.clear();
    }

    /// Positions the cache holds for the conversation.
    pub fn n_past(&self) -> usize {
        self.cached.iter().map(|c| c.n_pos).sum()
    }

    /// KV cells the conversation takes.
    pub fn n_cells(&self) -> usize {
        self.cached.iter().map(|c| c.n_cells).sum()
    }

    /// Answers `turn`: evaluates the conversation with it, generates, streams each piece of
    /// text to `sink` (which returns false to stop) and records the exchange.
    pub fn send(
        &mut self,
        turn: &Turn,
        options: &GenerateOptions,
        sink: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        self.prefill(turn)?.generate(options, sink)
    }

    /// [`Session::send`] whose sink also gets the log-probabilities of the tokens behind each
    /// piece (when [`GenerateOptions::logprobs`] asks for them; a piece may then be empty).
    pub fn send_with_logprobs(
        &mut self,
        turn: &Turn,
        options: &GenerateOptions,
        sink: &mut dyn FnMut(&str, &[TokenLogprob]) -> bool,
    ) -> Result<Generation> {
        self.prefill(turn)?.generate_with_logprobs(options, sink)
    }

    /// Evaluates the conversation with `turn` and stops before the answer: the returned
    /// [`Prefilled`] gives the next-token logits, scores continuations and generates. Dropped
    /// without generating, it leaves the conversation as it was.
    pub fn prefill(&mut self, turn: &Turn) -> Result<Prefilled<'_, 'e>> {
        let start = Instant::now();
        // On a batched context, steps wait for this session's decodes until the turn is over.
        let busy = self.ctx.busy();
        let user = turn.message();
        let mut messages = self.history.clone();
        let mut added = Vec::new();
        if messages.is_empty() {
            if let Some(system) = &turn.system {
                added.push(Message::new(Role::System, system.clone()));
            }
        }
        added.push(user);
        messages.extend(added.iter().cloned());
        let text = self
            .engine
            .template()
            .render_with_tools(&messages, &self.tools)?;
        let images: Vec<&Image> = messages.iter().flat_map(|m| &m.images).collect();
        let prompt = Prompt::new(self.engine, &text, &images)?;

        // Every turn starts unsteered: a control vector an earlier turn left on the context
        // must not leak into this one (nor into the steering's own probes).
        self.ctx.set_control_vector(None)?;
        let system = self
            .history
            .first()
            .filter(|m| m.role == Role::System)
            .map(|m| m.text.as_str())
            .or(turn.system.as_deref());
        let input = TurnInput {
            system,
            text: &turn.text,
            images: &turn.images,
            overrides: turn.steering.as_ref(),
        };
        let plan = match &mut self.steering {
            Some(s) => {
                let mut probe = ScratchProbe {
                    engine: self.engine,
                    ctx: &mut self.ctx,
                    reserved: self.cached.iter().map(|c| c.n_cells).sum(),
                };
                s.plan(&input, &mut probe)?
            }
            None => TurnPlan {
                applied: Applied::default(),
                ..TurnPlan::none("")
            },
        };
        let mut hooks = plan.hooks;
        let outcome = self.eval(
            &prompt,
            hooks.as_mut(),
            plan.tag,
            plan.prefix_tag,
            !turn.images.is_empty(),
        );
        let (evaluated, cached_positions, cached_tokens) = match outcome {
            Ok(v) => v,
            Err(e) => {
                let _ = hooks.at(&mut self.ctx, Phase::End);
                return Err(e);
            }
        };
        let logits = match self.ctx.logits() {
            Ok(l) => l.to_vec(),
            Err(e) => {
                let _ = hooks.at(&mut self.ctx, Phase::End);
                return Err(e);
            }
        };
        Ok(Prefilled {
            prompt_end: self.cached.len(),
            _busy: busy,
            session: self,
            hooks,
            added,
            logits,
            tag: plan.tag,
            applied: plan.applied,
            prompt_positions: prompt.n_positions(),
            cached_positions,
            prompt_tokens: prompt.n_cells(),
            cached_tokens,
            images: evaluated,
            prompt_ms: start.elapsed().as_secs_f64() * 1e3,
            done: false,
        })
    }

    /// Evaluates what the cache does not already hold of `prompt`; returns the number of
    /// image chunks evaluated and the positions and cells reused.
    fn eval(
        &mut self,
        prompt: &Prompt,
        hooks: &mut dyn TurnHooks,
        tag: u64,
        prefix_tag: u64,
        has_image: bool,
    ) -> Result<(usize, usize, usize)> {
        let keys = prompt.keys();
        let keep = reusable(&self.cached, &keys, prefix_tag);
        self.cached.truncate(keep);
        let mut pos = self.n_past();
        self.ctx.truncate(MAIN, pos)?;
        let reused = pos;
        let reused_cells = self.n_cells();
        let needed = reused_cells + keys[keep..].iter().map(|c| c.n_cells).sum::<usize>();
        let n_ctx = self.ctx.n_ctx();
        if needed >= n_ctx {
            return Err(Error::ContextFull { needed, n_ctx });
        }
        hooks.at(&mut self.ctx, Phase::Start { has_image })?;
        let mut skip = keep;
        let mut images = 0;
        let n = prompt.pieces.len();
        for (i, piece) in prompt.pieces.iter().enumerate() {
            let last = i + 1 == n;
            match piece {
                Piece::Text(tokens) => {
                    let from = skip.min(tokens.len());
                    skip -= from;
                    let tokens = &tokens[from..];
                    if tokens.is_empty() {
                        continue;
                    }
                    let split = last && hooks.split_last_token();
                    let (head, tail) = tokens.split_at(if split { tokens.len() - 1 } else { 0 });
                    let tag_now = |h: &dyn TurnHooks| if h.steering_now() { tag } else { 0 };
                    let t = tag_now(hooks);
                    self.ctx.decode(head, pos, MAIN, false)?;
                    pos += head.len();
                    self.cached
                        .extend(head.iter().map(|&k| Cached::token(k, t)));
                    if split {
                        hooks.at(&mut self.ctx, Phase::LastToken)?;
                    }
                    let t = tag_now(hooks);
                    self.ctx.decode(tail, pos, MAIN, last)?;
                    pos += tail.len();
                    self.cached
                        .extend(tail.iter().map(|&k| Cached::token(k, t)));
                }
                Piece::Image {
                    chunk,
                    key,
                    n_pos,
                    n_tokens,
                } => {
                    if skip > 0 {
                        skip -= 1;
                        continue;
                    }
                    hooks.at(&mut self.ctx, Phase::Image)?;
                    let t = if hooks.steering_now() { tag } else { 0 };
                    let next =
                        prompt.eval_image(self.engine, &mut self.ctx, *chunk, *key, pos, MAIN)?;
                    debug_assert_eq!(next - pos, *n_pos);
                    pos = next;
                    images += 1;
                    self.cached.push(Cached {
                        key: Key::Image(*key),
                        n_pos: *n_pos,
                        n_cells: *n_tokens,
                        tag: t,
                    });
                }
            }
        }
        hooks.at(&mut self.ctx, Phase::Generation)?;
        Ok((images, reused, reused_cells))
    }
}

/// A turn whose prompt is evaluated: the next-token distribution is known, continuations can be
/// scored, and [`Prefilled::generate`] answers. Dropped without generating, the turn is not
/// recorded.
pub struct Prefilled<'s, 'e> {
    session: &'s mut Session<'e>,
    /// The turn under way on a batched context.
    _busy: Busy,
    hooks: Box<dyn TurnHooks>,
    /// The messages this turn adds to the conversation (a first system message, the user's).
    added: Vec<Message>,
    /// Logits after the last prompt token.
    logits: Vec<f32>,
    /// Cache entries of the conversation with the prompt.
    prompt_end: usize,
    tag: u64,
    applied: Applied,
    prompt_positions: usize,
    cached_positions: usize,
    prompt_tokens: usize,
    cached_tokens: usize,
    images: usize,
    prompt_ms: f64,
    done: bool,
}

impl Prefilled<'_, '_> {
    /// Logits of the first answer token.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Final-norm embeddings of the last prompt token (sessions made with embeddings on).
    pub fn embeddings(&self) -> Option<Vec<f32>> {
        self.session.ctx.embeddings().map(<[f32]>::to_vec)
    }

    /// What the turn's steering applies.
    pub fn applied(&self) -> &Applied {
        &self.applied
    }

    /// Log-probability of each of `tokens` as the answer's beginning (teacher forcing, one
    /// decode per token, so steering acts as during generation). The cache is rolled back
    /// afterwards.
    pub fn score(&mut self, tokens: &[i32]) -> Result<Vec<f32>> {
        let start_pos = self.session.n_past();
        let cells = self.session.n_cells();
        let outcome = self.score_inner(tokens, start_pos, cells);
        self.session.cached.truncate(self.prompt_end);
        self.session.ctx.truncate(MAIN, start_pos)?;
        outcome
    }

    fn score_inner(&mut self, tokens: &[i32], mut pos: usize, cells: usize) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(tokens.len());
        let mut logits = self.logits.clone();
        let n_ctx = self.session.ctx.n_ctx();
        for (i, &t) in tokens.iter().enumerate() {
            let lp = crate::math::log_softmax(&logits);
            out.push(
                *lp.get(t as usize).ok_or_else(|| {
                    Error::Invalid(format!("token {t} is outside the vocabulary"))
                })?,
            );
            if i + 1 == tokens.len() {
                break;
            }
            if cells + i + 1 >= n_ctx {
                return Err(Error::ContextFull {
                    needed: cells + tokens.len(),
                    n_ctx,
                });
            }
            self.session.ctx.decode(&[t], pos, MAIN, true)?;
            self.session.cached.push(Cached::token(t, self.tag));
            pos += 1;
            logits.copy_from_slice(self.session.ctx.logits()?);
        }
        Ok(out)
    }

    /// Generates the answer, streaming each piece of text to `sink` (false stops), and records
    /// the exchange in the conversation.
    pub fn generate(
        self,
        options: &GenerateOptions,
        sink: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        self.generate_with_logprobs(options, &mut |piece, _| sink(piece))
    }

    /// [`Prefilled::generate`] whose sink also gets the log-probabilities of the tokens behind
    /// each piece.
    pub fn generate_with_logprobs(
        mut self,
        options: &GenerateOptions,
        sink: &mut dyn FnMut(&str, &[TokenLogprob]) -> bool,
    ) -> Result<Generation> {
        let start = Instant::now();
        let session = &mut *self.session;
        let out = generate::run(
            session.engine,
            &mut session.ctx,
            &mut session.cached,
            &self.logits,
            self.tag,
            options,
            sink,
        );
        let _ = self.hooks.at(&mut session.ctx, Phase::End);
        self.done = true;
        let generate::Generated {
            text,
            tokens,
            stop,
            logprobs,
        } = match out {
            Ok(v) => v,
            Err(e) => {
                // Generated tokens stay in the cache (tagged); the conversation is unchanged.
                return Err(e);
            }
        };
        session.history.append(&mut self.added);
        session
            .history
            .push(Message::new(Role::Assistant, text.clone()));
        Ok(Generation {
            text,
            tokens,
            stop,
            prompt_positions: self.prompt_positions,
            cached_positions: self.cached_positions,
            prompt_tokens: self.prompt_tokens,
            cached_tokens: self.cached_tokens,
            images: self.images,
            prompt_ms: self.prompt_ms,
            gen_ms: start.elapsed().as_secs_f64() * 1e3,
            steering: self.applied.clone(),
            logprobs,
        })
    }
}

impl Drop for Prefilled<'_, '_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.hooks.at(&mut self.session.ctx, Phase::End);
        }
    }
}

/// Runs steering probes on the scratch sequence of the session's context.
struct ScratchProbe<'a, 'e> {
    engine: &'e Engine,
    ctx: &'a mut Context<'e>,
    /// Positions the main sequence holds.
    reserved: usize,
}

impl Probe for ScratchProbe<'_, '_> {
    fn prefill(&mut self, system: Option<&str>, text: &str, images: &[Image]) -> Result<()> {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(Message::new(Role::System, s));
        }
        messages.push(Message {
            images: images.to_vec(),
            ..Message::new(Role::User, text)
        });
        let rendered = self.engine.template().render(&messages)?;
        let refs: Vec<&Image> = images.iter().collect();
        let prompt = Prompt::new(self.engine, &rendered, &refs)?;
        let needed = self.reserved + prompt.n_cells();
        let n_ctx = self.ctx.n_ctx();
        if needed > n_ctx {
            return Err(Error::ContextFull { needed, n_ctx });
        }
        self.ctx.truncate(SCRATCH, 0)?;
        let out = prompt.eval_plain(self.engine, self.ctx, SCRATCH);
        self.ctx.truncate(SCRATCH, 0)?;
        out
    }
}
