//! Steering: adding `alpha * delta` to the residual stream while a multimodal input is read.
//!
//! [`CmrmSteering`] implements the session's [`Steering`](crate::session::Steering) for
//! dataset-level vectors and sample-level shifts, through one of two mechanisms. The default is
//! llama.cpp's in-graph control vector (`llama_set_adapter_cvec`), which runs on every backend
//! but cannot reach layer 0. The graph-callback path edits `l_out-<il>` in the eval callback:
//! it reaches layer 0 and can interpolate toward a target state, at the cost of one
//! synchronisation per steered layer and micro-batch.

mod callback;
mod cmrm;
mod cvec;

pub use callback::{CallbackPhases, CallbackSteering};
pub use cmrm::{CmrmSteering, Mechanism, Source};
pub use cvec::CvecSteering;
