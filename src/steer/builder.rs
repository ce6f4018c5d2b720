//! [`CmrmSteeringBuilder`]: a CMRM steering put together setting by setting.

use super::{CmrmSteering, Mechanism, Source};
use crate::engine::Engine;
use crate::error::Result;
use crate::layer_vectors::LayerVectors;
use crate::media::Corruption;
use crate::settings::SteerConfig;

/// Builds a [`CmrmSteering`]: dataset-level shifts, sample-level shifts or both, the default
/// settings of turns, the mechanism and ShiftDC's safety directions.
///
/// ```no_run
/// # fn f(engine: &cmrm::Engine, vectors: &cmrm::CmrmVectors) -> cmrm::Result<()> {
/// use cmrm::steer::Mechanism;
/// let steering = cmrm::CmrmSteering::builder(engine)
///     .vectors(vectors.deltas.clone())
///     .config(vectors.recommended.clone())
///     .mechanism(Mechanism::Callback)
///     .build()?;
/// # Ok(()) }
/// ```
pub struct CmrmSteeringBuilder<'e> {
    pub(super) engine: &'e Engine,
    pub(super) vectors: Option<LayerVectors>,
    pub(super) source: Source,
    pub(super) config: SteerConfig,
    pub(super) mechanism: Mechanism,
    pub(super) sample_turns: bool,
    pub(super) safety: Option<LayerVectors>,
}

impl<'e> CmrmSteeringBuilder<'e> {
    /// Dataset-level steering with no vectors yet, under the default settings, through the
    /// control vector.
    pub(super) fn new(engine: &'e Engine) -> Self {
        Self {
            engine,
            vectors: None,
            source: Source::Dataset,
            config: SteerConfig::default(),
            mechanism: Mechanism::Cvec,
            sample_turns: false,
            safety: None,
        }
    }

    /// The dataset-level total shifts, one row of `n_embd` per layer: the default source unless
    /// [`sample`](Self::sample) is set, and what turns asking for the dataset use.
    pub fn vectors(mut self, deltas: impl Into<LayerVectors>) -> Self {
        self.vectors = Some(deltas.into());
        self
    }

    /// Makes each input's own shift against `corruption` the default source (sample-level).
    pub fn sample(mut self, corruption: Corruption) -> Self {
        self.source = Source::Sample(corruption);
        self
    }

    /// The settings of turns that set none of their own.
    pub fn config(mut self, config: SteerConfig) -> Self {
        self.config = config;
        self
    }

    /// How the shift is added.
    pub fn mechanism(mut self, mechanism: Mechanism) -> Self {
        self.mechanism = mechanism;
        self
    }

    /// Prepares sample-level turns (a capture of every layer) even when the default source is
    /// the dataset, so that turns may ask for their own shift.
    pub fn sample_turns(mut self, yes: bool) -> Self {
        self.sample_turns = yes;
        self
    }

    /// Per-layer safety directions, for ShiftDC's `project` rule.
    pub fn safety(mut self, directions: Option<LayerVectors>) -> Self {
        self.safety = directions;
        self
    }

    /// The steering; refuses shifts or directions of another shape than the model's, non-finite
    /// shifts, the dataset source without vectors, and settings that cannot work.
    pub fn build(self) -> Result<CmrmSteering> {
        CmrmSteering::assemble(self)
    }
}
