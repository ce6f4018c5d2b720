//! Steering: adding `alpha * delta` to the residual stream while a multimodal input is read.
//!
//! [`CmrmSteering`] implements the session's [`Steering`](crate::session::Steering) for
//! dataset-level vectors and sample-level shifts, through one of two mechanisms. The default is
//! llama.cpp's in-graph control vector (`llama_set_adapter_cvec`), which runs on every backend
//! but cannot reach layer 0. The graph-callback path edits `l_out-<il>` in the eval callback:
//! it reaches layer 0 and can interpolate toward a target state, at the cost of one
//! synchronisation per steered layer and micro-batch.

mod builder;
mod callback;
mod cmrm;
mod cvec;
mod locate;
mod plan;

pub use builder::CmrmSteeringBuilder;
pub(crate) use callback::{CallbackPhases, CallbackSteering};
pub use cmrm::{CmrmSteering, Mechanism, Source};
pub(crate) use cvec::CvecSteering;
pub use locate::{Located, Search, VectorQuery};
pub use plan::SteerPlan;

use crate::capture::{lock, shared, LayerCapture};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::layer_vectors::LayerVectors;
use crate::session::{Session, SessionOptions, Turn};

/// How many times the model's own state at a layer a shift may measure before it is refused.
pub const MAX_SHIFT_RATIO: f64 = 50.0;

/// Refuses shifts far beyond the model's own hidden-state scale (a corrupted or hostile vector
/// file): one short prompt gives the norm of the model's state at every layer, and no layer's
/// shift may be more than [`MAX_SHIFT_RATIO`] times it.
pub(crate) fn check_scale(engine: &Engine, deltas: &LayerVectors) -> Result<()> {
    let capture = LayerCapture::all_layers(engine.model().n_layer());
    let options = SessionOptions::new()
        .observer(shared(&capture))
        .context_size(128);
    let mut session = Session::new(engine, options)?;
    drop(session.prefill(&Turn::user("Hello."))?);
    let states = lock(&capture)?.all_states()?;
    for (il, (d, h)) in deltas.iter().zip(&states).enumerate() {
        let (dn, hn) = (crate::math::norm(d), crate::math::norm(h).max(1e-3));
        if dn > MAX_SHIFT_RATIO * hn {
            return Err(Error::Steering(format!(
                "the shift at layer {il} measures {dn:.1}, {:.0} times the model's own state there ({hn:.1}): these are not shifts of this model; recalibrate",
                dn / hn
            )));
        }
    }
    Ok(())
}
