//! Evaluation: running data sets under conditions (text only, image, CMRM, sample-level
//! CMRM), and the metrics that show what CMRM restores and what it costs.

mod conditions;
pub mod fidelity;
pub mod journal;
pub mod judge;
pub mod metrics;
mod plan;
pub mod runner;
pub mod safety;
pub mod tradeoff;
pub mod utility;

/// The condition that paired comparisons are made against: the image with no CMRM.
pub const BASELINE: &str = "image";

/// The condition with the image removed: what the backbone does without the shift.
pub const TEXT: &str = "text";

pub use conditions::{publish, run_fidelity, run_safety, run_utility, Conditions};
pub use plan::{ConditionPlan, Grid, Kind};
pub use runner::{Condition, RunOutput, Runner, Utility};
