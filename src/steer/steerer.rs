//! Per-request steering: dataset-level vectors or a sample-level shift computed for each
//! request (two extra prefills: the text alone, the text with a meaningless image), applied
//! through the control vector or the graph callback.

use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use image::RgbImage;

use super::{Apply, CallbackPhases, CallbackSteering, CvecSteering, Positions, SteerConfig};
use crate::calibrate::{Anchor, Corruption, StateReader};
use crate::engine::Engine;
use crate::ffi::SharedHook;
use crate::session::{NoHooks, PromptHooks};

/// Where the shift comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Dataset-level total shifts per layer (from a vector file).
    Dataset(Vec<Vec<f32>>),
    /// Sample-level: the shift of each request, against this corruption (`anchor` = the
    /// request's own image, i.e. steer toward its text-only state).
    Sample(Corruption),
}

/// How the shift is added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mechanism {
    /// llama.cpp's control vector (every backend; layers 1..n_layer-1).
    Cvec,
    /// Edit `l_out-<il>` in the eval callback (reaches layer 0).
    Callback,
}

/// Steering for a conversation.
pub struct Steerer<'e> {
    config: SteerConfig,
    source: Source,
    mechanism: Mechanism,
    reader: Option<StateReader<'e>>,
    callback: Option<Arc<Mutex<CallbackSteering>>>,
}

impl<'e> Steerer<'e> {
    /// Steering on `engine`; sample-level sources get their own capture context.
    pub fn new(
        engine: &'e Engine,
        source: Source,
        config: SteerConfig,
        mechanism: Mechanism,
    ) -> Result<Self> {
        let n_layer = engine.model().n_layer();
        if config.apply == Apply::Interpolate
            && (mechanism != Mechanism::Callback
                || !matches!(source, Source::Sample(_))
                || config.positions != Positions::Last)
        {
            bail!("--cmrm-apply interpolate needs --cmrm-sample, --cmrm-path callback and --cmrm-positions last");
        }
        let reader = match source {
            Source::Sample(_) => Some(StateReader::new(engine)?),
            Source::Dataset(_) => None,
        };
        let zero = vec![vec![0.0; engine.model().n_embd()]; n_layer];
        let callback = (mechanism == Mechanism::Callback).then(|| {
            let deltas = match &source {
                Source::Dataset(d) => d,
                Source::Sample(_) => &zero,
            };
            CallbackSteering::new(deltas, &config)
        });
        Ok(Self {
            config,
            source,
            mechanism,
            reader,
            callback,
        })
    }

    /// The graph hook the session's context must be created with (callback mechanism).
    pub fn graph_hook(&self) -> Option<SharedHook> {
        self.callback.clone().map(|c| c as SharedHook)
    }

    /// The configuration.
    pub fn config(&self) -> &SteerConfig {
        &self.config
    }

    /// Hooks for one turn. Sample-level sources first compute this turn's shift.
    pub fn turn(
        &mut self,
        system: Option<&str>,
        text: &str,
        images: &[RgbImage],
    ) -> Result<Box<dyn PromptHooks>> {
        let unsteered = images.is_empty() && !self.config.text_only;
        if unsteered && self.mechanism == Mechanism::Cvec {
            return Ok(Box::new(NoHooks));
        }
        if self.config.apply == Apply::Interpolate && !unsteered {
            let reader = self
                .reader
                .as_mut()
                .expect("sample-level steering has a reader");
            let targets = reader.states(system, text, &[])?;
            let phases = self.callback_phases()?;
            lock(&phases)?.set_targets(targets);
            return Ok(Box::new(phases));
        }
        let sample;
        let deltas = match (&self.source, &mut self.reader) {
            (Source::Dataset(d), _) => d,
            // The callback hooks switch themselves off for this turn.
            (Source::Sample(_), _) if unsteered => return Ok(Box::new(self.callback_phases()?)),
            (Source::Sample(corruption), Some(reader)) => {
                let corrupt = match (corruption, images.first()) {
                    (Corruption::Anchor, Some(own)) => own.clone(),
                    (c, _) => c.image(&Anchor::default(), 0)?,
                };
                sample = reader.shift(system, text, &corrupt)?;
                &sample
            }
            (Source::Sample(_), None) => unreachable!("sample-level steering has a reader"),
        };
        if self.mechanism == Mechanism::Cvec {
            return Ok(Box::new(CvecSteering::new(deltas, self.config.clone())));
        }
        let phases = self.callback_phases()?;
        lock(&phases)?.set_deltas(deltas, &self.config);
        Ok(Box::new(phases))
    }

    fn callback_phases(&self) -> Result<CallbackPhases> {
        let cb = self.callback.clone();
        cb.map(CallbackPhases)
            .ok_or_else(|| anyhow::anyhow!("callback steering without its hook"))
    }
}

fn lock(p: &CallbackPhases) -> Result<std::sync::MutexGuard<'_, CallbackSteering>> {
    p.0.lock()
        .map_err(|_| anyhow::anyhow!("steering hook poisoned"))
}
