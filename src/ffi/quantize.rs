//! llama.cpp's own quantizer (`llama_model_quantize`), as `llama-quantize` runs it.

use std::path::Path;

use llama_cpp_sys_2 as sys;

use super::{c_path, failure, log};
use crate::error::Result;

/// What to quantize to, and how.
#[derive(Clone, Debug)]
pub struct QuantizeParams {
    /// llama.cpp's file type id (`enum llama_ftype`, see [`crate::quant::FileType`]).
    pub ftype: u32,
    /// Accept tensors that are already quantized (the result is then a re-encoding of the
    /// quantized weights, not a quantization of the originals).
    pub allow_requantize: bool,
    /// Threads (0: all cores).
    pub threads: i32,
}

/// Quantizes `input` into `output` (written by llama.cpp at that path), telling `progress`
/// `(done, total)` tensors as it goes.
pub fn quantize(
    input: &Path,
    output: &Path,
    params: &QuantizeParams,
    progress: Box<dyn FnMut(usize, usize) + Send>,
) -> Result<()> {
    super::init_backend(false);
    let (inp, out) = (c_path(input)?, c_path(output)?);
    // SAFETY: returns a plain struct by value; no pointers are involved.
    let mut p = unsafe { sys::llama_model_quantize_default_params() };
    p.ftype = params.ftype as sys::llama_ftype;
    p.allow_requantize = params.allow_requantize;
    p.nthread = params.threads;
    // SAFETY: `inp` and `out` are NUL-terminated strings that outlive the call and `p` is a
    // fully initialised parameter struct whose pointer fields are llama.cpp's defaults (null).
    let code = log::with_tensor_progress(progress, || unsafe {
        sys::llama_model_quantize(inp.as_ptr(), out.as_ptr(), &p)
    });
    if code != 0 {
        return Err(failure("llama_model_quantize", Some(code as i32)));
    }
    Ok(())
}
