//! Evaluation: running data sets under conditions (text only, image, CMRM, sample-level
//! CMRM), and the metrics that show what CMRM restores and what it costs.

pub mod fidelity;
pub mod journal;
pub mod judge;
pub mod metrics;
pub mod runner;
pub mod safety;
pub mod utility;

/// The condition that paired comparisons are made against: the image with no CMRM.
pub const BASELINE: &str = "image";

/// The condition with the image removed: what the backbone does without the shift.
pub const TEXT: &str = "text";

pub use runner::{Condition, RunOutput, Runner, Utility};
