//! Routes llama.cpp's and mtmd's log lines into cmrm: kept in a small ring so that a failed
//! call can say why, and echoed to stderr only when verbose.

use std::collections::VecDeque;
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use llama_cpp_sys_2 as sys;

static VERBOSE: AtomicBool = AtomicBool::new(false);
/// Told `(done, total)` for every `[ i/ n]` line llama.cpp logs while quantizing.
type TensorProgress = Box<dyn FnMut(usize, usize) + Send>;
static PROGRESS: Mutex<Option<TensorProgress>> = Mutex::new(None);
static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
static BACKEND: OnceLock<llama_cpp_2::llama_backend::LlamaBackend> = OnceLock::new();
const KEEP: usize = 16;

unsafe extern "C" fn on_log(level: sys::ggml_log_level, text: *const c_char, _user: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a valid NUL-terminated string that lives for this call.
    let line = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if VERBOSE.load(Ordering::Relaxed) {
        eprint!("{line}");
    }
    if let Some(counts) = tensor_counter(&line) {
        if let Ok(mut slot) = PROGRESS.lock() {
            if let Some(f) = slot.as_mut() {
                f(counts.0, counts.1);
            }
        }
    }
    if level >= sys::GGML_LOG_LEVEL_WARN && level != sys::GGML_LOG_LEVEL_CONT {
        if let Ok(mut recent) = RECENT.lock() {
            if recent.len() == KEEP {
                recent.pop_front();
            }
            recent.push_back(line.trim().to_string());
        }
    }
}

/// Initialises llama.cpp's backends once per process and installs the log capture. `verbose`
/// echoes llama.cpp's own log to stderr.
pub fn init_backend(verbose: bool) {
    VERBOSE.store(verbose, Ordering::Relaxed);
    BACKEND.get_or_init(|| {
        // SAFETY: `on_log` is a plain function valid for the whole process and ignores `user`.
        unsafe {
            sys::llama_log_set(Some(on_log), std::ptr::null_mut());
            sys::mtmd_log_set(Some(on_log), std::ptr::null_mut());
            sys::mtmd_helper_log_set(Some(on_log), std::ptr::null_mut());
        }
        llama_cpp_2::llama_backend::LlamaBackend::init()
            .expect("llama.cpp's backend is initialised only here, once")
    });
}

/// The warnings and errors llama.cpp logged since the last call (oldest first), drained.
pub fn last_errors() -> Vec<String> {
    RECENT
        .lock()
        .map(|mut r| r.drain(..).collect())
        .unwrap_or_default()
}

/// The drained llama.cpp messages as a suffix for an error.
pub(super) fn reason() -> String {
    let lines = last_errors();
    if lines.is_empty() {
        String::new()
    } else {
        format!(" (llama.cpp: {})", lines.join("; "))
    }
}

/// `(i, n)` from a quantization log line starting `[   i/   n] `.
fn tensor_counter(line: &str) -> Option<(usize, usize)> {
    let (counts, _) = line.strip_prefix('[')?.split_once(']')?;
    let (i, n) = counts.split_once('/')?;
    Some((i.trim().parse().ok()?, n.trim().parse().ok()?))
}

/// Runs `f` with `progress` told of every tensor llama.cpp's quantizer reports.
pub(super) fn with_tensor_progress<T>(progress: TensorProgress, f: impl FnOnce() -> T) -> T {
    if let Ok(mut slot) = PROGRESS.lock() {
        *slot = Some(progress);
    }
    let out = f();
    if let Ok(mut slot) = PROGRESS.lock() {
        *slot = None;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantizer_lines_give_counts() {
        let line =
            "[  12/ 272]                 blk.0.attn_k.weight - [  576,   192], type =   q4_1, ";
        assert_eq!(super::tensor_counter(line), Some((12, 272)));
        assert_eq!(super::tensor_counter("llama_model_quantize: done"), None);
    }
}
