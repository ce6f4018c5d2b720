//! A session's steering from settings: the settings given over a vector file's recommended
//! ones, checked before the model loads and built on it once it has (what `cmrm chat` and
//! `cmrm serve` do with their `--cmrm*` flags).

use std::path::PathBuf;

use super::{CmrmSteering, CmrmSteeringBuilder, Located, Mechanism, Source, VectorQuery};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::media::Corruption;
use crate::settings::{SteerConfig, SteerOverride};
use crate::vectors::{default_path, Fit};

/// What steering settings ask for, read and checked before the model loads.
#[derive(Debug)]
pub struct SteerPlan {
    vectors: Option<Located>,
    passed_over: Vec<(PathBuf, String)>,
    source: Source,
    config: SteerConfig,
    mechanism: Mechanism,
    on: bool,
}

impl SteerPlan {
    /// Reads the vector file `query` finds and lays `settings` over its recommended settings
    /// (over the defaults without one). The plan steers nothing when `settings.enabled` is
    /// false, or when there is no vector file and `settings.sample` is not set; settings that
    /// would then be ignored are refused, as is a corruption without sample-level shifts.
    pub fn new(
        settings: &SteerOverride,
        mechanism: Mechanism,
        query: &VectorQuery,
    ) -> Result<Self> {
        let sample = settings.sample == Some(true);
        let corruption = settings.corruption.clone().unwrap_or(Corruption::Noise(0));
        let off = |passed_over| Self {
            vectors: None,
            passed_over,
            source: Source::Sample(corruption.clone()),
            config: SteerConfig::default(),
            mechanism,
            on: false,
        };
        if settings.enabled == Some(false) {
            return Ok(off(Vec::new()));
        }
        if settings.corruption.is_some() && !sample {
            return Err(Error::Invalid(
                "--cmrm-corruption applies to sample-level CMRM only: add --cmrm-sample".into(),
            ));
        }
        let found = query.find()?;
        if found.chosen.is_none() && !sample {
            let set = settings.alpha.is_some()
                || settings.apply.is_some()
                || settings.layers.is_some()
                || settings.positions.is_some()
                || mechanism != Mechanism::Cvec
                || settings.text_only == Some(true)
                || query.force;
            if set {
                return Err(Error::Invalid(format!(
                    "the --cmrm-* flags would be ignored: there is no vector file (neither {} nor a *.cmrm.gguf made for this model in its folder); pass --cmrm FILE or --cmrm-sample",
                    default_path(&query.model).display()
                )));
            }
            return Ok(off(found.passed_over));
        }
        let base = found
            .chosen
            .as_ref()
            .map(|v| v.vectors.recommended.clone())
            .unwrap_or_default();
        let config = settings.config(&base);
        config.check(sample, mechanism == Mechanism::Callback)?;
        Ok(Self {
            vectors: found.chosen,
            passed_over: found.passed_over,
            source: if sample {
                Source::Sample(corruption)
            } else {
                Source::Dataset
            },
            config,
            mechanism,
            on: true,
        })
    }

    /// Whether turns are steered by default (else the plan is plain inference).
    pub fn steers(&self) -> bool {
        self.on
    }

    /// The vector file and why it was chosen, when there is one.
    pub fn located(&self) -> Option<&Located> {
        self.vectors.as_ref()
    }

    /// The `*.cmrm.gguf` files looked at and not used, with the reason.
    pub fn passed_over(&self) -> &[(PathBuf, String)] {
        &self.passed_over
    }

    /// The settings of turns.
    pub fn config(&self) -> &SteerConfig {
        &self.config
    }

    /// Where shifts come from by default.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// How shifts are added.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Checks the vector file against the loaded model ([`Located::check`]).
    fn check(&self, engine: &Engine) -> Result<Option<Fit>> {
        self.vectors.as_ref().map(|v| v.check(engine)).transpose()
    }

    /// A builder of the plan's steering.
    fn builder<'e>(&self, engine: &'e Engine) -> CmrmSteeringBuilder<'e> {
        let mut b = CmrmSteering::builder(engine)
            .config(self.config.clone())
            .mechanism(self.mechanism);
        if let Some(v) = &self.vectors {
            b = b
                .vectors(v.vectors.deltas.clone())
                .safety(v.vectors.safety.as_ref().map(|s| s.directions.clone()));
        }
        if let Source::Sample(c) = &self.source {
            b = b.sample(c.clone());
        }
        b
    }

    /// The steering of a session on the loaded engine (none for plain inference), and how
    /// the vector file fits the model.
    pub fn steering(&self, engine: &Engine) -> Result<(Option<CmrmSteering>, Option<Fit>)> {
        if !self.on {
            return Ok((None, None));
        }
        let fit = self.check(engine)?;
        Ok((Some(self.builder(engine).build()?), fit))
    }

    /// The steering of each of a server's `slots` (each ready for sample-level requests), the
    /// settings requests start from (steering on when the plan steers), and how the vector
    /// file fits the model.
    pub fn server_steering(
        &self,
        engine: &Engine,
        slots: usize,
    ) -> Result<(Vec<CmrmSteering>, SteerOverride, Option<Fit>)> {
        let fit = self.check(engine)?;
        let steerings = (0..slots)
            .map(|_| self.builder(engine).sample_turns(true).build())
            .collect::<Result<Vec<_>>>()?;
        let defaults = SteerOverride {
            enabled: Some(self.on),
            ..SteerOverride::default()
        };
        Ok((steerings, defaults, fit))
    }
}
