//! Runs one item under one condition: greedy answer, first-answer-token distribution and the
//! last-prompt-token state of every layer (after steering).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context as _, Result};
use image::RgbImage;

use crate::capture::{shared, HookChain, LayerCapture};
use crate::data::Item;
use crate::engine::Engine;
use crate::ffi::SharedHook;
use crate::media;
use crate::session::{NoHooks, PromptHooks, Session};
use crate::steer::Steerer;
use crate::SamplingParams;

/// A condition an item is run under.
pub enum Condition<'a, 'e> {
    /// The image removed: the text-only behaviour CMRM aims to restore.
    Text,
    /// The image, no steering.
    Image,
    /// The image with steering.
    Steered(&'a mut Steerer<'e>),
}

/// What one run produced.
#[derive(Clone, Debug)]
pub struct RunOutput {
    /// Log-probabilities of the first answer token.
    pub first_logprobs: Vec<f32>,
    /// Last prompt token state per layer (as steered).
    pub states: Vec<Vec<f32>>,
    /// The greedy answer.
    pub text: String,
    /// Its tokens.
    pub tokens: Vec<i32>,
    /// Wall time, ms.
    pub ms: f64,
}

/// Utility measurements of one item under one condition.
#[derive(Clone, Debug)]
pub struct Utility {
    /// The greedy answer.
    pub response: String,
    /// Sum of the reference answer's token log-probabilities, and its token count.
    pub reference: Option<(f64, usize)>,
    /// The most likely choice.
    pub choice: Option<usize>,
    /// Wall time, ms.
    pub ms: f64,
}

/// Runs items on one engine with a capturing session.
pub struct Runner<'e> {
    engine: &'e Engine,
    session: Session<'e>,
    capture: Arc<Mutex<LayerCapture>>,
    /// System message for every item.
    pub system: Option<String>,
    /// Tokens to generate per answer.
    pub n_predict: i32,
}

impl<'e> Runner<'e> {
    /// A runner on `engine`; `steer_hook` is a callback steerer's graph hook (it runs before
    /// the capture, which therefore sees steered states).
    pub fn new(
        engine: &'e Engine,
        system: Option<String>,
        n_predict: i32,
        steer_hook: Option<SharedHook>,
    ) -> Result<Self> {
        let capture = LayerCapture::all_layers(engine.model().n_layer());
        let hook: SharedHook = match steer_hook {
            Some(h) => Arc::new(Mutex::new(HookChain(vec![h, shared(&capture)]))),
            None => shared(&capture),
        };
        let session = engine.session(Some(hook))?;
        Ok(Self {
            engine,
            session,
            capture,
            system,
            n_predict,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &'e Engine {
        self.engine
    }

    /// Loads an item's image (or an error naming the item).
    pub fn image_of(item: &Item) -> Result<RgbImage> {
        let src = item
            .image
            .as_deref()
            .with_context(|| format!("item {} has no image", item.id))?;
        media::load(src).with_context(|| format!("item {}", item.id))
    }

    /// Evaluates `item`'s prompt under `condition`; returns the first-answer-token logits.
    fn begin(&mut self, item: &Item, condition: Condition<'_, 'e>) -> Result<Vec<f32>> {
        let images = match condition {
            Condition::Text => Vec::new(),
            _ => vec![Self::image_of(item)?],
        };
        let system = self.system.as_deref();
        let mut hooks: Box<dyn PromptHooks> = match condition {
            Condition::Steered(s) => s.turn(system, &item.prompt, &images)?,
            _ => Box::new(NoHooks),
        };
        self.session.reset();
        self.lock_capture()?.clear();
        self.lock_capture()?.set_armed(true);
        let prompt = self.session.prepare(system, &item.prompt, &images)?;
        self.session.eval(&prompt, hooks.as_mut())?;
        // Later decodes (answers, scoring) must not overwrite the prompt states.
        self.lock_capture()?.set_armed(false);
        Ok(self.session.context().logits().to_vec())
    }

    fn answer(&mut self) -> Result<crate::session::Generation> {
        self.session.generate(
            &SamplingParams::default(),
            self.n_predict,
            false,
            &mut |_| true,
        )
    }

    /// Runs `item` under `condition`.
    pub fn run(&mut self, item: &Item, condition: Condition<'_, 'e>) -> Result<RunOutput> {
        let start = Instant::now();
        let logits = self.begin(item, condition)?;
        let states = self
            .lock_capture()?
            .all_states()
            .context("a layer state was not captured")?;
        let g = self.answer()?;
        Ok(RunOutput {
            first_logprobs: crate::eval::metrics::log_softmax(&logits),
            states,
            text: g.text,
            tokens: g.tokens,
            ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Utility of `item` under `condition`: log-likelihood of its reference answer, its
    /// multiple-choice pick, and the greedy answer (for over-refusal).
    pub fn utility(&mut self, item: &Item, condition: Condition<'_, 'e>) -> Result<Utility> {
        let start = Instant::now();
        let logits = self.begin(item, condition)?;
        let n_past = self.session.n_past();
        let model = self.engine.model();
        let mut reference = None;
        if let Some(r) = &item.reference {
            let toks = model.tokenize(r, false, false)?;
            let lps = self.session.score(&logits, &toks)?;
            self.session.rewind(n_past)?;
            reference = Some((lps.iter().map(|&x| x as f64).sum(), toks.len()));
        }
        let mut choice = None;
        if let Some(choices) = &item.choices {
            let mut scores = Vec::new();
            for c in choices {
                let toks = model.tokenize(c, false, false)?;
                let lps = self.session.score(&logits, &toks)?;
                self.session.rewind(n_past)?;
                scores.push(lps.iter().map(|&x| x as f64).sum::<f64>());
            }
            choice = Some(super::metrics::argmax(
                &scores.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            ));
        }
        // The greedy answer continues from the prompt's logits.
        let g = self.answer_from(&logits)?;
        Ok(Utility {
            response: g.text,
            reference,
            choice,
            ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Generates after a rewind, restoring the prompt's last logits first.
    fn answer_from(&mut self, logits: &[f32]) -> Result<crate::session::Generation> {
        self.session.set_logits(logits);
        self.answer()
    }

    fn lock_capture(&self) -> Result<std::sync::MutexGuard<'_, LayerCapture>> {
        self.capture
            .lock()
            .map_err(|_| anyhow::anyhow!("capture poisoned"))
    }
}
