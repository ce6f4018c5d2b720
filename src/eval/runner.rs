//! Runs one item under one condition on one session: the greedy answer, the first-answer-token
//! distribution and the last-prompt-token state of every layer (after steering).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::capture::{lock, shared, LayerCapture};
use crate::data::Item;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ffi::{Batched, Busy};
use crate::layer_vectors::LayerVectors;
use crate::media::{self, Image};
use crate::session::{GenerateOptions, Generation, Session, SessionOptions, SteerOverride, Turn};
use crate::steer::CmrmSteering;

/// A condition an item is run under.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// The image removed: the text-only behaviour CMRM aims to restore.
    Text,
    /// The image, no steering.
    Image,
    /// The image with the runner's steering under these settings.
    Steered(SteerOverride),
}

/// What one run produced.
#[derive(Clone, Debug)]
pub struct RunOutput {
    /// Log-probabilities of the first answer token.
    pub first_logprobs: Vec<f32>,
    /// Last prompt token state per layer (as steered).
    pub states: LayerVectors,
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

/// Runs items on one session with a state capture.
pub struct Runner<'e> {
    engine: &'e Engine,
    session: Session<'e>,
    capture: Arc<Mutex<LayerCapture>>,
    steered: bool,
    /// System message for every item.
    pub system: Option<String>,
    /// Tokens to generate per answer.
    pub n_predict: usize,
}

impl<'e> Runner<'e> {
    /// A runner on `engine`; `steering` serves the steered conditions (each through its own
    /// per-turn settings).
    pub fn new(
        engine: &'e Engine,
        steering: Option<CmrmSteering>,
        system: Option<String>,
        n_predict: usize,
    ) -> Result<Self> {
        Self::on(engine, steering, system, n_predict, None)
    }

    /// A runner as [`Runner::new`], on a lane of `batched` when given.
    pub fn on(
        engine: &'e Engine,
        steering: Option<CmrmSteering>,
        system: Option<String>,
        n_predict: usize,
        batched: Option<Batched<'e>>,
    ) -> Result<Self> {
        let capture = LayerCapture::all_layers(engine.model().n_layer());
        let steered = steering.is_some();
        let mut options = SessionOptions::new()
            .boxed_steering(steering.map(|s| Box::new(s) as _))
            .observer(shared(&capture));
        if let Some(b) = batched {
            options = options.batched(b);
        }
        Ok(Self {
            engine,
            session: Session::new(engine, options)?,
            capture,
            steered,
            system,
            n_predict,
        })
    }

    /// Keeps the steps of a batched context waiting for this runner until dropped (see
    /// [`Session::busy`]).
    pub fn busy(&self) -> Busy {
        self.session.busy()
    }

    /// The engine.
    pub fn engine(&self) -> &'e Engine {
        self.engine
    }

    /// Loads an item's image (or an error naming the item).
    pub(crate) fn image_of(item: &Item) -> Result<Image> {
        let src = item
            .image
            .as_deref()
            .ok_or_else(|| Error::Invalid(format!("item {} has no image", item.id)))?;
        media::load_image(src).map_err(|e| match e {
            Error::Image { source_name, cause } => Error::Image {
                source_name,
                cause: format!("{cause} (item {})", item.id),
            },
            e => e,
        })
    }

    fn turn(&self, item: &Item, condition: &Condition) -> Result<Turn> {
        let mut turn = Turn::user(&item.prompt);
        turn.system = self.system.clone();
        if *condition != Condition::Text {
            turn.images.push(Self::image_of(item)?);
        }
        turn.steering = match condition {
            Condition::Steered(o) if !self.steered => {
                return Err(Error::Steering(format!(
                    "a steered condition ({o:?}) on a runner without steering"
                )))
            }
            Condition::Steered(o) => Some(o.clone()),
            _ if self.steered => Some(SteerOverride {
                enabled: Some(false),
                ..SteerOverride::default()
            }),
            _ => None,
        };
        Ok(turn)
    }

    /// Runs `item` under `condition`.
    pub fn run(&mut self, item: &Item, condition: &Condition) -> Result<RunOutput> {
        let start = Instant::now();
        let turn = self.turn(item, condition)?;
        self.session.reset();
        {
            let mut c = lock(&self.capture)?;
            c.clear();
            c.set_armed(true);
        }
        let prefilled = self.session.prefill(&turn);
        // Later decodes (the answer) must not overwrite the prompt states.
        let states = {
            let mut c = lock(&self.capture)?;
            c.set_armed(false);
            c.all_states()
        };
        let prefilled = prefilled?;
        let states = states?;
        let first_logprobs = crate::math::log_softmax(prefilled.logits());
        let g = prefilled.generate(&GenerateOptions::greedy(self.n_predict), &mut |_| true)?;
        Ok(RunOutput {
            first_logprobs,
            states,
            text: g.text,
            tokens: g.tokens,
            ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Utility of `item` under `condition`: log-likelihood of its reference answer, its
    /// multiple-choice pick, and the greedy answer (for over-refusal).
    pub fn utility(&mut self, item: &Item, condition: &Condition) -> Result<Utility> {
        let start = Instant::now();
        let turn = self.turn(item, condition)?;
        self.session.reset();
        lock(&self.capture)?.set_armed(false);
        let model = self.engine.model();
        let mut prefilled = self.session.prefill(&turn)?;
        let mut reference = None;
        if let Some(r) = &item.reference {
            let toks = model.tokenize(r, false, false)?;
            let lps = prefilled.score(&toks)?;
            reference = Some((lps.iter().map(|&x| x as f64).sum(), toks.len()));
        }
        let mut choice = None;
        if let Some(choices) = &item.choices {
            let mut scores = Vec::new();
            for c in choices {
                let toks = model.tokenize(c, false, false)?;
                let lps = prefilled.score(&toks)?;
                scores.push(lps.iter().map(|&x| x as f64).sum::<f64>() as f32);
            }
            choice = Some(crate::math::argmax(&scores));
        }
        let g: Generation =
            prefilled.generate(&GenerateOptions::greedy(self.n_predict), &mut |_| true)?;
        Ok(Utility {
            response: g.text,
            reference,
            choice,
            ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }
}
