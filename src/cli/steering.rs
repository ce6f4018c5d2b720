//! The `--cmrm*` flags: which vectors steer a chat and how.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use cmrm::calibrate::{model_id, Corruption};
use cmrm::steer::{Apply, Mechanism, Positions, Source, SteerConfig, Steerer};
use cmrm::vectors::{default_path, CmrmVectors};
use cmrm::Engine;

/// CMRM steering flags.
#[derive(Args, Clone, Debug)]
pub struct SteerArgs {
    /// Vector file (default: <model-stem>.cmrm.gguf next to the model, when present).
    #[arg(long = "cmrm", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Do not steer, even when a vector file sits next to the model.
    #[arg(long = "no-cmrm", conflicts_with_all = ["file", "sample"])]
    pub off: bool,
    /// Scale of the shift (default: the file's recommended alpha, else 1).
    #[arg(long = "cmrm-alpha")]
    pub alpha: Option<f32>,
    /// How per-layer total shifts are added.
    #[arg(long = "cmrm-apply", value_enum)]
    pub apply: Option<Apply>,
    /// Steered layers, `A-B` (inclusive) or a single layer (default: the file's, else one
    /// layer at ~70% depth).
    #[arg(long = "cmrm-layers", value_name = "A-B")]
    pub layers: Option<String>,
    /// Steered tokens.
    #[arg(long = "cmrm-positions", value_enum)]
    pub positions: Option<Positions>,
    /// Sample-level CMRM: compute each request's own shift (two extra prefills).
    #[arg(long = "cmrm-sample")]
    pub sample: bool,
    /// Meaningless image for sample-level: blank, noise, noise:SEED, anchor (the request's own
    /// image) or a path.
    #[arg(long = "cmrm-corruption", default_value = "noise")]
    pub corruption: String,
    /// Mechanism: llama.cpp's control vector, or edits in the graph callback (reaches layer 0).
    #[arg(long = "cmrm-path", value_enum, default_value = "cvec")]
    pub mechanism: Mechanism,
    /// Also steer turns without an image.
    #[arg(long = "cmrm-text")]
    pub text_only: bool,
    /// Use a vector file made for another model file of the same shape.
    #[arg(long)]
    pub force: bool,
}

/// Parses `A-B` or `A`.
pub fn parse_layers(s: &str) -> Result<(usize, usize)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: usize = a
        .trim()
        .parse()
        .with_context(|| format!("bad layer range {s:?} (A-B)"))?;
    let b: usize = b
        .trim()
        .parse()
        .with_context(|| format!("bad layer range {s:?} (A-B)"))?;
    if a > b {
        bail!("bad layer range {s:?}: start after end");
    }
    Ok((a, b))
}

impl SteerArgs {
    /// The configuration: `base` (a file's recommendation or the defaults) with the flags.
    pub fn config(&self, base: SteerConfig) -> Result<SteerConfig> {
        let mut c = base;
        if let Some(a) = self.alpha {
            c.alpha = a;
        }
        if let Some(a) = self.apply {
            c.apply = a;
        }
        if let Some(l) = &self.layers {
            c.layers = parse_layers(l)?;
        }
        if let Some(p) = self.positions {
            c.positions = p;
        }
        c.text_only |= self.text_only;
        Ok(c)
    }

    /// The steerer these flags ask for on `engine`, or `None` for plain inference.
    pub fn steerer<'e>(&self, engine: &'e Engine) -> Result<Option<Steerer<'e>>> {
        if self.off {
            return Ok(None);
        }
        let explicit = self.file.is_some();
        let path = self
            .file
            .clone()
            .unwrap_or_else(|| default_path(&engine.options().model));
        let vectors = if explicit || (!self.sample && path.exists()) {
            let v = CmrmVectors::load(&path)?;
            v.check_model(&path, &model_id(engine)?, self.force)?;
            Some(v)
        } else {
            None
        };
        let base = vectors
            .as_ref()
            .map(|v| v.recommended.clone())
            .unwrap_or_default();
        let config = self.config(base)?;
        let source = if self.sample {
            Source::Sample(Corruption::parse(&self.corruption))
        } else if let Some(v) = vectors {
            Source::Dataset(v.deltas)
        } else {
            return Ok(None);
        };
        if engine.options().verbose {
            let (first, last) = config.layer_range(engine.model().n_layer());
            eprintln!(
                "cmrm: steering ({}) alpha {} apply {} layers {}-{} positions {} via {:?}",
                if self.sample {
                    "sample-level".to_string()
                } else {
                    path.display().to_string()
                },
                config.alpha,
                config.apply.name(),
                first,
                last,
                config.positions.name(),
                self.mechanism
            );
        }
        Steerer::new(engine, source, config, self.mechanism).map(Some)
    }
}
