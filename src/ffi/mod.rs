//! The only place in cmrm that calls llama.cpp's C API (through `llama-cpp-sys-2`).
//!
//! Every `unsafe` block of the crate lives below this module, each with a `SAFETY:` comment.
//! What it exports is a small safe API: [`Model`], [`Context`] (with an optional graph hook
//! that sees and edits `l_out-<il>` tensors), [`Mtmd`] (the multimodal projector) and the
//! llama.cpp log capture used to turn llama.cpp's own messages into clear errors.

mod backend;
mod batch;
mod compute;
mod context;
mod hook;
mod log;
mod model;
mod mtmd;
mod quantize;
mod sampler;

pub use backend::{
    add_rpc_servers, backends, devices, install_abort_message, serve_rpc, DeviceInfo, DeviceKind,
    RpcEndpoint,
};
pub use batch::{BatchStats, Batched, Busy, LOCKSTEP};
pub use compute::ComputeGate;
pub use context::{Context, ContextParams, FlashAttn, KvType};
pub use hook::{GraphHook, HookChain, HookTensor, SharedHook};
pub use log::{init_backend, last_errors};
pub use model::{apply_builtin_template, LoadMode, Model, Placement};
pub use mtmd::{Bitmap, ChunkKind, Chunks, Mtmd, MtmdParams};
pub use quantize::{quantize, QuantizeParams};
pub use sampler::{json_schema_to_grammar, Sampler};

use std::ffi::CString;
use std::path::Path;

use crate::error::{Error, Result};

/// Lets a write to a closed pipe end the process quietly, as C tools do (`cmrm inspect | head`),
/// instead of Rust's default of ignoring SIGPIPE and panicking in `println!`.
pub fn quiet_broken_pipe() {
    // SAFETY: setting SIGPIPE's disposition to the default is async-signal-safe, done once at
    // start before any thread is spawned, and installs no Rust handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Asks process `pid` to stop (SIGTERM), as `kill` does; a process already gone is ignored.
pub fn terminate(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a positive pid and a valid signal number has no memory effects.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// A path as a C string, or an error naming the file when it contains a NUL byte.
fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.to_string_lossy().as_bytes())
        .map_err(|_| Error::Invalid(format!("{}: path contains a NUL byte", path.display())))
}

/// A llama.cpp failure of `op`, with the messages llama.cpp logged.
fn failure(op: &'static str, code: Option<i32>) -> Error {
    Error::Llama {
        op,
        code,
        detail: log::reason(),
    }
}
