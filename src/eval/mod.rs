//! Evaluation: running data sets under conditions (text only, image, CMRM, sample-level
//! CMRM), and the metrics that show what CMRM restores and what it costs.

pub mod fidelity;
pub mod journal;
pub mod judge;
pub mod metrics;
pub mod runner;
pub mod safety;
pub mod utility;

pub use runner::{Condition, RunOutput, Runner, Utility};
