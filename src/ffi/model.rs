//! A loaded text model (weights + vocabulary) and llama.cpp's built-in chat templates.

use std::ffi::{c_char, CString};
use std::path::Path;
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use super::{c_path, failure};
use crate::error::{Error, Result};

/// How the model's weights are read (llama.cpp's `--no-mmap`, `--mlock`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadMode {
    /// Memory-map the file (llama.cpp's default).
    #[default]
    Mmap,
    /// Read the file into memory.
    Read,
    /// Memory-map and lock the pages in RAM.
    MmapLocked,
    /// Read into memory and lock it in RAM.
    ReadLocked,
}

/// Where a model's layers go (llama.cpp's `-ngl`, `--device`, `--tensor-split`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Placement {
    /// Layers offloaded to devices other than the CPU (negative = all).
    pub n_gpu_layers: i32,
    /// Devices to place layers on, by name (`None`: every GPU and RPC device there is).
    pub devices: Option<Vec<String>>,
    /// Proportion of the layers for each device, in order (empty: by free memory).
    pub tensor_split: Vec<f32>,
}

/// A GGUF text model loaded by llama.cpp.
pub struct Model {
    ptr: NonNull<sys::llama_model>,
}

// SAFETY: a llama_model is immutable after loading and llama.cpp documents it as shareable
// between contexts on different threads.
unsafe impl Send for Model {}
// SAFETY: see `Send`; every method takes `&self` and only reads the model.
unsafe impl Sync for Model {}

impl Model {
    /// Loads a GGUF model; `n_gpu_layers` as llama.cpp's `-ngl` (negative = all), on the
    /// devices of ggml's registry (local GPUs and RPC servers added before).
    pub fn load(path: &Path, placement: &Placement, mode: LoadMode) -> Result<Self> {
        let c = c_path(path)?;
        // SAFETY: plain constructor of a parameter struct.
        let mut params = unsafe { sys::llama_model_default_params() };
        params.n_gpu_layers = placement.n_gpu_layers;
        params.load_mode = match mode {
            LoadMode::Mmap => sys::LLAMA_LOAD_MODE_AUTO,
            LoadMode::Read => sys::LLAMA_LOAD_MODE_NONE,
            LoadMode::MmapLocked => sys::LLAMA_LOAD_MODE_MMAP_MLOCK,
            LoadMode::ReadLocked => sys::LLAMA_LOAD_MODE_MLOCK,
        };
        // llama.cpp reads `devices` (NULL-terminated) and `tensor_split` (llama_max_devices()
        // floats) during the call only; both vectors outlive it.
        let mut devices: Vec<sys::ggml_backend_dev_t> = match &placement.devices {
            Some(names) => names
                .iter()
                .map(|n| super::backend::device_by_name(n))
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        if placement.devices.is_some() {
            devices.push(std::ptr::null_mut());
            params.devices = devices.as_mut_ptr();
        }
        // SAFETY: a plain query.
        let max = unsafe { sys::llama_max_devices() };
        if placement.tensor_split.len() > max {
            return Err(Error::Invalid(format!(
                "--tensor-split: {} proportions given, this build places on at most {max} devices",
                placement.tensor_split.len()
            )));
        }
        let mut split = placement.tensor_split.clone();
        split.resize(max, 0.0);
        if !placement.tensor_split.is_empty() {
            params.tensor_split = split.as_ptr();
        }
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call; params is valid and
        // the arrays it points to (devices, split) live until after the call.
        let ptr = unsafe { sys::llama_model_load_from_file(c.as_ptr(), params) };
        drop((devices, split));
        match NonNull::new(ptr) {
            Some(ptr) => Ok(Self { ptr }),
            None => Err(Error::ModelFile {
                path: path.to_path_buf(),
                cause: format!(
                    "llama.cpp could not load this model{}",
                    super::log::reason()
                ),
            }),
        }
    }

    pub(super) fn as_ptr(&self) -> *mut sys::llama_model {
        self.ptr.as_ptr()
    }

    pub(super) fn vocab(&self) -> *const sys::llama_vocab {
        // SAFETY: the model pointer is valid for `self`'s lifetime; the vocab belongs to it.
        unsafe { sys::llama_model_get_vocab(self.ptr.as_ptr()) }
    }

    /// Width of the residual stream.
    pub fn n_embd(&self) -> usize {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_embd(self.ptr.as_ptr()) as usize }
    }

    /// Width of the model's input embeddings (what a projector must produce).
    pub fn n_embd_inp(&self) -> usize {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_embd_inp(self.ptr.as_ptr()) as usize }
    }

    /// Number of transformer blocks.
    pub fn n_layer(&self) -> usize {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_layer(self.ptr.as_ptr()) as usize }
    }

    /// Size of the vocabulary (length of a logits row).
    pub fn n_vocab(&self) -> usize {
        // SAFETY: valid vocab pointer owned by the model.
        unsafe { sys::llama_vocab_n_tokens(self.vocab()) as usize }
    }

    /// A short description such as "llama 135M Q4_1".
    pub fn description(&self) -> String {
        let mut buf = vec![0u8; 256];
        // SAFETY: buf is writable for its length; llama.cpp NUL-terminates within it.
        let n =
            unsafe { sys::llama_model_desc(self.ptr.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        buf.truncate(n.clamp(0, 255) as usize);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// A string metadata value of the model's GGUF (e.g. `general.name`).
    pub fn meta(&self, key: &str) -> Option<String> {
        let key = CString::new(key).ok()?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: key is NUL-terminated; buf is writable for its length.
        let n = unsafe {
            sys::llama_model_meta_val_str(
                self.ptr.as_ptr(),
                key.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return None;
        }
        buf.truncate((n as usize).min(buf.len() - 1));
        Some(String::from_utf8_lossy(&buf).into_owned())
    }

    /// The chat template stored in the model file, if any.
    pub fn chat_template(&self) -> Option<String> {
        // SAFETY: valid model; a NULL name asks for the default template.
        let p = unsafe { sys::llama_model_chat_template(self.ptr.as_ptr(), std::ptr::null()) };
        if p.is_null() {
            return None;
        }
        // SAFETY: a non-NULL result is a NUL-terminated string owned by the model.
        Some(
            unsafe { std::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .into_owned(),
        )
    }

    /// Tokenizes `text`; `parse_special` turns special-token text into special tokens.
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<i32>> {
        let len = i32::try_from(text.len())
            .map_err(|_| Error::Invalid("text too long to tokenize".into()))?;
        let mut out = vec![0i32; text.len() + 8];
        loop {
            // SAFETY: text is valid for `len` bytes, out is writable for out.len() tokens.
            let n = unsafe {
                sys::llama_tokenize(
                    self.vocab(),
                    text.as_ptr() as *const c_char,
                    len,
                    out.as_mut_ptr(),
                    out.len() as i32,
                    add_special,
                    parse_special,
                )
            };
            if n >= 0 {
                out.truncate(n as usize);
                return Ok(out);
            }
            if n == i32::MIN {
                return Err(failure("tokenize", None));
            }
            out.resize((-n) as usize, 0);
        }
    }

    /// The bytes of one token (may be part of a UTF-8 character); `special` renders special
    /// tokens as their text.
    pub fn token_bytes(&self, token: i32, special: bool) -> Vec<u8> {
        // llama.cpp throws (std::out_of_range) for an id outside the vocabulary, and a C++
        // exception must not cross into Rust: such an id has no bytes.
        if token < 0 || token as usize >= self.n_vocab() {
            return Vec::new();
        }
        let mut buf = vec![0u8; 64];
        loop {
            // SAFETY: buf is writable for its length; the vocab is valid.
            let n = unsafe {
                sys::llama_token_to_piece(
                    self.vocab(),
                    token,
                    buf.as_mut_ptr().cast(),
                    buf.len() as i32,
                    0,
                    special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize((-n) as usize, 0);
        }
    }

    /// The beginning-of-sequence token, if the vocabulary has one.
    pub fn bos(&self) -> Option<i32> {
        // SAFETY: valid vocab.
        let t = unsafe { sys::llama_vocab_bos(self.vocab()) };
        (t >= 0).then_some(t)
    }

    /// The end-of-sequence token, if the vocabulary has one.
    pub fn eos(&self) -> Option<i32> {
        // SAFETY: valid vocab.
        let t = unsafe { sys::llama_vocab_eos(self.vocab()) };
        (t >= 0).then_some(t)
    }

    /// Whether tokenizing a prompt adds the BOS token.
    pub fn add_bos(&self) -> bool {
        // SAFETY: valid vocab.
        unsafe { sys::llama_vocab_get_add_bos(self.vocab()) }
    }

    /// Whether tokenizing a prompt adds the EOS token.
    pub fn add_eos(&self) -> bool {
        // SAFETY: valid vocab.
        unsafe { sys::llama_vocab_get_add_eos(self.vocab()) }
    }

    /// True for end-of-generation tokens (EOS, end-of-turn).
    pub fn is_eog(&self, token: i32) -> bool {
        // SAFETY: valid vocab; any token id is accepted.
        unsafe { sys::llama_vocab_is_eog(self.vocab(), token) }
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: the pointer came from llama_model_load_from_file and is freed once; contexts
        // borrow the model, so none outlives it.
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) }
    }
}

/// Formats `(role, content)` messages with one of llama.cpp's built-in templates (`chatml`,
/// `llama3`, `vicuna`, ...; llama.cpp's `--no-jinja` path) or a template string it recognises.
/// `add_assistant` appends the assistant prefix.
pub fn apply_builtin_template(
    template: &str,
    messages: &[(String, String)],
    add_assistant: bool,
) -> Result<String> {
    let nul = |_| Error::Template("a template or message contains a NUL byte".into());
    let tmpl = CString::new(template).map_err(nul)?;
    let owned: Vec<(CString, CString)> = messages
        .iter()
        .map(|(r, c)| Ok((CString::new(r.as_str())?, CString::new(c.as_str())?)))
        .collect::<Result<_, std::ffi::NulError>>()
        .map_err(nul)?;
    let msgs: Vec<sys::llama_chat_message> = owned
        .iter()
        .map(|(r, c)| sys::llama_chat_message {
            role: r.as_ptr(),
            content: c.as_ptr(),
        })
        .collect();
    let total: usize = messages.iter().map(|(r, c)| r.len() + c.len()).sum();
    let mut buf = vec![0u8; 2 * total + 256];
    loop {
        // SAFETY: tmpl and every message string outlive the call; buf is writable for its length.
        let n = unsafe {
            sys::llama_chat_apply_template(
                tmpl.as_ptr(),
                msgs.as_ptr(),
                msgs.len(),
                add_assistant,
                buf.as_mut_ptr().cast(),
                buf.len() as i32,
            )
        };
        if n < 0 {
            return Err(Error::Template(
                "not one of llama.cpp's built-in templates".into(),
            ));
        }
        if (n as usize) <= buf.len() {
            buf.truncate(n as usize);
            return String::from_utf8(buf)
                .map_err(|_| Error::Template("the template produced invalid UTF-8".into()));
        }
        buf.resize(n as usize, 0);
    }
}
