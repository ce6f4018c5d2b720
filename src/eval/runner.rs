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

    /// Runs `item` under `condition`.
    pub fn run(&mut self, item: &Item, condition: Condition<'_, 'e>) -> Result<RunOutput> {
        let start = Instant::now();
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
        let prompt = self.session.prepare(system, &item.prompt, &images)?;
        self.session.eval(&prompt, hooks.as_mut())?;
        let first_logprobs = crate::eval::metrics::log_softmax(self.session.context().logits());
        let states = self
            .lock_capture()?
            .all_states()
            .context("a layer state was not captured")?;
        // Generation must not overwrite the prompt states: capture is off meanwhile.
        self.lock_capture()?.set_armed(false);
        let g = self.session.generate(
            &SamplingParams::default(),
            self.n_predict,
            false,
            &mut |_| true,
        );
        self.lock_capture()?.set_armed(true);
        let g = g?;
        Ok(RunOutput {
            first_logprobs,
            states,
            text: g.text,
            tokens: g.tokens,
            ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }

    fn lock_capture(&self) -> Result<std::sync::MutexGuard<'_, LayerCapture>> {
        self.capture
            .lock()
            .map_err(|_| anyhow::anyhow!("capture poisoned"))
    }
}
