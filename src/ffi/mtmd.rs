//! The multimodal projector (mmproj) through llama.cpp's mtmd library: bitmaps, tokenizing a
//! prompt with media markers into chunks, and decoding image chunks into a context.

use std::ffi::{CStr, CString};
use std::path::Path;
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use super::compute::SendPtr;
use super::{c_path, failure, Context, FlashAttn, Model};
use crate::error::{Error, Result};

/// Settings of the projector (llama.cpp's `-t`, `-ngl`, `-fa`, `--image-min-tokens`,
/// `--image-max-tokens`).
#[derive(Clone, Debug, Default)]
pub struct MtmdParams {
    /// CPU threads for image encoding.
    pub n_threads: i32,
    /// Encode on the GPU when one is available.
    pub use_gpu: bool,
    /// Flash attention in the vision tower.
    pub flash_attn: FlashAttn,
    /// Minimum image tokens (dynamic-resolution projectors only).
    pub image_min_tokens: Option<u32>,
    /// Maximum image tokens (dynamic-resolution projectors only).
    pub image_max_tokens: Option<u32>,
}

/// A loaded mmproj bound to its text model.
pub struct Mtmd {
    ptr: NonNull<sys::mtmd_context>,
    /// Held by the calls that use the context's own buffers (tokenizing, encoding); decoding
    /// embeddings only reads the context's settings and takes no lock, so that sessions on
    /// lanes of one batched context never wait for each other's image.
    busy: std::sync::Mutex<()>,
}

// SAFETY: an mtmd context has no thread affinity.
unsafe impl Send for Mtmd {}
// SAFETY: the calls that write the context (tokenize, encode) hold `busy`; the others only
// read settings fixed at load time.
unsafe impl Sync for Mtmd {}

impl Mtmd {
    /// Loads `path` as the projector for `model`.
    pub fn load(path: &Path, model: &Model, params: &MtmdParams) -> Result<Self> {
        let c = c_path(path)?;
        // SAFETY: plain constructor of a parameter struct.
        let mut p = unsafe { sys::mtmd_context_params_default() };
        p.n_threads = params.n_threads;
        p.use_gpu = params.use_gpu;
        p.print_timings = false;
        p.warmup = false;
        p.flash_attn_type = match params.flash_attn {
            FlashAttn::Auto => sys::LLAMA_FLASH_ATTN_TYPE_AUTO,
            FlashAttn::On => sys::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttn::Off => sys::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        };
        if let Some(n) = params.image_min_tokens {
            p.image_min_tokens = n as i32;
        }
        if let Some(n) = params.image_max_tokens {
            p.image_max_tokens = n as i32;
        }
        // SAFETY: path and model are valid for the call; the model outlives the mtmd context
        // because both are owned by the engine, which drops the mtmd context first.
        let ptr = unsafe { sys::mtmd_init_from_file(c.as_ptr(), model.as_ptr(), p) };
        match NonNull::new(ptr) {
            Some(ptr) => Ok(Self {
                ptr,
                busy: std::sync::Mutex::new(()),
            }),
            None => Err(Error::ProjectorFile {
                path: path.to_path_buf(),
                cause: format!(
                    "llama.cpp could not load this mmproj{}",
                    super::log::reason()
                ),
            }),
        }
    }

    /// Whether the projector takes images.
    pub fn supports_vision(&self) -> bool {
        // SAFETY: valid mtmd context.
        unsafe { sys::mtmd_support_vision(self.ptr.as_ptr()) }
    }

    /// The media marker that stands for an image in a prompt (`<__media__>`).
    pub fn marker() -> String {
        // SAFETY: returns a static NUL-terminated string.
        unsafe { CStr::from_ptr(sys::mtmd_default_marker()) }
            .to_string_lossy()
            .into_owned()
    }

    /// Splits `prompt` (one marker per bitmap) into text and image chunks; `add_special`
    /// adds the model's BOS token (for the start of a conversation).
    pub fn tokenize(&self, prompt: &str, bitmaps: &[Bitmap], add_special: bool) -> Result<Chunks> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let markers = prompt.matches(Self::marker().as_str()).count();
        if markers != bitmaps.len() {
            return Err(Error::Invalid(format!(
                "the prompt has {markers} {} markers but {} images were given: one marker per image",
                Self::marker(),
                bitmaps.len()
            )));
        }
        let text = CString::new(prompt)
            .map_err(|_| Error::Invalid("the prompt contains a NUL byte".into()))?;
        let input = sys::mtmd_input_text {
            text: text.as_ptr(),
            text_len: prompt.len(),
            add_special,
            parse_special: true,
        };
        let ptrs: Vec<*const sys::mtmd_bitmap> = bitmaps
            .iter()
            .map(|b| b.ptr.as_ptr().cast_const())
            .collect();
        // SAFETY: allocates an empty chunk list.
        let chunks = unsafe { sys::mtmd_input_chunks_init() };
        let chunks = Chunks {
            ptr: NonNull::new(chunks).ok_or_else(|| failure("allocating chunks", None))?,
        };
        // SAFETY: every pointer is valid for the call; bitmaps are only read.
        let rc = unsafe {
            sys::mtmd_tokenize(
                self.ptr.as_ptr(),
                chunks.ptr.as_ptr(),
                &input,
                ptrs.as_ptr(),
                ptrs.len(),
            )
        };
        match rc {
            0 => Ok(chunks),
            1 => Err(Error::Invalid(format!(
                "the prompt has a different number of {} markers than images ({} images)",
                Self::marker(),
                bitmaps.len()
            ))),
            _ => Err(failure("preprocessing the image", Some(rc))),
        }
    }

    /// Runs the projector on image chunk `index`: its embeddings, `n_tokens` rows of the text
    /// model's input width.
    pub fn encode(&self, ctx: &mut Context<'_>, chunks: &Chunks, index: usize) -> Result<Vec<f32>> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let chunk = SendPtr(chunks.raw(index)?.cast_mut());
        let mtmd = SendPtr(self.ptr.as_ptr());
        let model = SendPtr(ctx.model().as_ptr());
        let out = ctx.gate().run(move || {
            let (mtmd, model, chunk) = (mtmd, model, chunk);
            // SAFETY: the projector, model and chunk outlive this job (their owners wait for
            // it); mtmd_get_output_embd points at n_tokens * n_embd_inp floats written by the
            // encode just made, copied before anything else runs on the projector.
            unsafe {
                if sys::mtmd_encode_chunk(mtmd.0, chunk.0) != 0 {
                    return None;
                }
                let width = sys::llama_model_n_embd_inp(model.0).max(0) as usize;
                let n = sys::mtmd_input_chunk_get_n_tokens(chunk.0) * width;
                let embd = sys::mtmd_get_output_embd(mtmd.0);
                (!embd.is_null()).then(|| std::slice::from_raw_parts(embd, n).to_vec())
            }
        })?;
        match out {
            Some(v) => Ok(v),
            None if ctx.aborted() => Err(Error::Cancelled),
            None => Err(failure("encoding the image", None)),
        }
    }

    /// Decodes the embeddings `embd` of image chunk `index` (from [`Mtmd::encode`]) into
    /// sequence `seq` of `ctx` at `n_past`; returns the new position (M-RoPE images take fewer
    /// positions than tokens).
    pub fn decode_embeddings(
        &self,
        ctx: &mut Context<'_>,
        chunks: &Chunks,
        index: usize,
        embd: &[f32],
        n_past: usize,
        seq: i32,
    ) -> Result<usize> {
        let chunk = SendPtr(chunks.raw(index)?.cast_mut());
        // SAFETY: the chunk belongs to `chunks`, borrowed for this call; reading its size
        // touches nothing a decode uses.
        let n_tokens = unsafe { sys::mtmd_input_chunk_get_n_tokens(chunk.0) };
        if embd.len() != n_tokens * ctx.model().n_embd_inp() {
            return Err(Error::Invalid(format!(
                "{} embedding values for an image chunk of {n_tokens} tokens",
                embd.len()
            )));
        }
        let n_batch = ctx.n_batch() as i32;
        let mtmd = SendPtr(self.ptr.as_ptr());
        let data = SendPtr(embd.as_ptr().cast_mut());
        let (rc, new_past) = ctx.exclusive(seq, move |lctx, seq| {
            let (mtmd, chunk, data) = (mtmd, chunk, data);
            let mut new_past: sys::llama_pos = 0;
            // SAFETY: all pointers are valid while their owners wait for this job (the
            // context runs it on the compute thread); `data` holds the chunk's n_tokens *
            // n_embd_inp floats (checked above), which the helper only reads; no post-decode
            // callback.
            let rc = unsafe {
                sys::mtmd_helper_decode_image_chunk(
                    mtmd.0,
                    lctx,
                    chunk.0,
                    data.0,
                    n_past as i32,
                    seq,
                    n_batch,
                    &mut new_past,
                    None,
                    std::ptr::null_mut(),
                )
            };
            (rc, new_past)
        })?;
        if rc != 0 {
            if ctx.aborted() {
                return Err(Error::Cancelled);
            }
            return Err(failure("decoding the image embeddings", Some(rc)));
        }
        ctx.note_decode(0, false)?;
        Ok(new_past as usize)
    }
}

impl Drop for Mtmd {
    fn drop(&mut self) {
        // SAFETY: created by mtmd_init_from_file and freed once.
        unsafe { sys::mtmd_free(self.ptr.as_ptr()) }
    }
}

/// An RGB image ready for the projector.
pub struct Bitmap {
    ptr: NonNull<sys::mtmd_bitmap>,
}

// SAFETY: a bitmap is plain owned pixel data.
unsafe impl Send for Bitmap {}

impl Bitmap {
    /// Wraps `rgb` (`width * height * 3` bytes, row-major).
    pub fn from_rgb(width: u32, height: u32, rgb: &[u8]) -> Result<Self> {
        if width == 0 || height == 0 || rgb.len() != width as usize * height as usize * 3 {
            return Err(Error::Invalid(format!(
                "an RGB buffer of {} bytes is not a {width}x{height} image",
                rgb.len()
            )));
        }
        // SAFETY: rgb holds width*height*3 bytes; mtmd copies them.
        let ptr = unsafe { sys::mtmd_bitmap_init(width, height, rgb.as_ptr()) };
        Ok(Self {
            ptr: NonNull::new(ptr).ok_or_else(|| failure("allocating a bitmap", None))?,
        })
    }
}

impl Bitmap {
    /// Decodes an image file's bytes as llama.cpp's own tools do (stb_image: JPEG, PNG, BMP,
    /// GIF, ...), so that the projector sees the very pixels llama-mtmd-cli gives it; `None`
    /// when stb_image cannot read them (e.g. WebP).
    pub fn decode(mtmd: &Mtmd, bytes: &[u8]) -> Option<Self> {
        let _busy = mtmd.busy.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: plain constructor of an option struct.
        let opt = unsafe { sys::mtmd_helper_init_opt_default() };
        // SAFETY: valid mtmd context (it answers the audio check); `bytes` is readable for its
        // length during the call; the helper copies what it keeps.
        let w = unsafe {
            sys::mtmd_helper_bitmap_init_from_buf(
                mtmd.ptr.as_ptr(),
                bytes.as_ptr(),
                bytes.len(),
                false,
                opt,
            )
        };
        if !w.video_ctx.is_null() {
            // SAFETY: a video context made by the helper for this call is ours to free.
            unsafe { sys::mtmd_helper_video_free(w.video_ctx) };
        }
        let b = Self {
            ptr: NonNull::new(w.bitmap)?,
        };
        // SAFETY: valid bitmap.
        let is_audio = unsafe { sys::mtmd_bitmap_is_audio(b.ptr.as_ptr()) };
        (!is_audio).then_some(b)
    }

    /// Names the bitmap; the image chunks made from it carry the name.
    pub fn set_id(&mut self, id: &str) -> Result<()> {
        let c = CString::new(id).map_err(|_| Error::Invalid("bitmap id contains NUL".into()))?;
        // SAFETY: valid bitmap; mtmd copies the string.
        unsafe { sys::mtmd_bitmap_set_id(self.ptr.as_ptr(), c.as_ptr()) };
        Ok(())
    }
}

impl Drop for Bitmap {
    fn drop(&mut self) {
        // SAFETY: created by mtmd_bitmap_init and freed once.
        unsafe { sys::mtmd_bitmap_free(self.ptr.as_ptr()) }
    }
}

/// What a chunk holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    /// Text tokens.
    Text(Vec<i32>),
    /// An image of `n_tokens` embeddings taking `n_pos` positions.
    Image {
        /// Embeddings the image turns into.
        n_tokens: usize,
        /// Positions it takes in the sequence.
        n_pos: usize,
    },
}

/// A tokenized multimodal prompt.
pub struct Chunks {
    ptr: NonNull<sys::mtmd_input_chunks>,
}

// SAFETY: owned data, no thread affinity.
unsafe impl Send for Chunks {}

impl Chunks {
    /// Number of chunks.
    pub fn len(&self) -> usize {
        // SAFETY: valid chunk list.
        unsafe { sys::mtmd_input_chunks_size(self.ptr.as_ptr()) }
    }

    /// True when there is no chunk.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn raw(&self, index: usize) -> Result<*const sys::mtmd_input_chunk> {
        if index >= self.len() {
            return Err(Error::Invalid(format!("chunk {index} out of range")));
        }
        // SAFETY: index is in range; the chunk is owned by the list.
        Ok(unsafe { sys::mtmd_input_chunks_get(self.ptr.as_ptr(), index) })
    }

    /// The id of chunk `index` (the name of the bitmap an image chunk was made from).
    pub fn id(&self, index: usize) -> Result<Option<String>> {
        let c = self.raw(index)?;
        // SAFETY: c is a valid chunk of this list; the id is a NUL-terminated string it owns.
        let p = unsafe { sys::mtmd_input_chunk_get_id(c) };
        if p.is_null() {
            return Ok(None);
        }
        // SAFETY: non-NULL, NUL-terminated, alive while the chunk list is.
        Ok(Some(
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned(),
        ))
    }

    /// The content of chunk `index`.
    pub fn kind(&self, index: usize) -> Result<ChunkKind> {
        let c = self.raw(index)?;
        // SAFETY: c is a valid chunk of this list; the token slice is owned by it and copied.
        unsafe {
            if sys::mtmd_input_chunk_get_type(c) == sys::MTMD_INPUT_CHUNK_TYPE_TEXT {
                let mut n = 0usize;
                let p = sys::mtmd_input_chunk_get_tokens_text(c, &mut n);
                let toks = if p.is_null() || n == 0 {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(p, n).to_vec()
                };
                Ok(ChunkKind::Text(toks))
            } else {
                Ok(ChunkKind::Image {
                    n_tokens: sys::mtmd_input_chunk_get_n_tokens(c),
                    n_pos: sys::mtmd_input_chunk_get_n_pos(c) as usize,
                })
            }
        }
    }
}

impl Drop for Chunks {
    fn drop(&mut self) {
        // SAFETY: created by mtmd_input_chunks_init and freed once.
        unsafe { sys::mtmd_input_chunks_free(self.ptr.as_ptr()) }
    }
}
