//! Loading a VLM: the GGUF text model, its mmproj and the chat template, checked together so
//! that a wrong file is refused with an error that names it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::embeddings::{EmbeddingCache, EmbeddingStats};
use crate::error::{Error, Result};
use crate::ffi::{
    self, Batched, ComputeGate, ContextParams, FlashAttn, KvType, LoadMode, Model, Mtmd,
    MtmdParams, Placement, RpcEndpoint,
};
use crate::gguf;
use crate::template::{ChatTemplate, TemplateOptions};

/// What to load and how to run it (llama.cpp's `-m`, `--mmproj`, `-c`, `-b`, `-ub`, `-t`,
/// `-tb`, `-ngl`, `--device`, `--tensor-split`, `--rpc`, `-fa`, `-ctk`, `-ctv`, `--no-mmap`, `--mlock`, `--chat-template`).
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// The text model GGUF.
    pub model: PathBuf,
    /// The multimodal projector GGUF, if images are to be read.
    pub mmproj: Option<PathBuf>,
    /// Context length per session (0 = the model's training length).
    pub n_ctx: u32,
    /// Logical batch size for prompt processing.
    pub n_batch: u32,
    /// Physical batch (micro-batch) size.
    pub n_ubatch: u32,
    /// CPU threads for generation.
    pub n_threads: i32,
    /// CPU threads for prompt processing.
    pub n_threads_batch: i32,
    /// Layers offloaded to the GPU (negative = all).
    pub n_gpu_layers: i32,
    /// Devices to place layers on, by name (`None`: every GPU and RPC server there is).
    pub devices: Option<Vec<String>>,
    /// Proportion of the layers for each device (empty: by free memory).
    pub tensor_split: Vec<f32>,
    /// RPC servers (llama.cpp's `rpc-server`, or `cmrm rpc-server`) whose devices take layers.
    pub rpc: Vec<RpcEndpoint>,
    /// How the weights are read.
    pub load_mode: LoadMode,
    /// Flash attention.
    pub flash_attn: FlashAttn,
    /// K cache type.
    pub type_k: KvType,
    /// V cache type.
    pub type_v: KvType,
    /// Which chat template formats conversations, and how.
    pub template: TemplateOptions,
    /// Minimum image tokens (dynamic-resolution projectors).
    pub image_min_tokens: Option<u32>,
    /// Maximum image tokens (dynamic-resolution projectors).
    pub image_max_tokens: Option<u32>,
    /// Bytes of image embeddings kept for reuse (0: encode every image every time).
    pub image_cache_bytes: usize,
    /// Echo llama.cpp's log on stderr.
    pub verbose: bool,
}

/// Threads by default, as llama.cpp counts them: the physical cores (distinct sibling sets in
/// /sys), else half the logical CPUs beyond 4.
fn default_threads() -> i32 {
    let logical = std::thread::available_parallelism().map_or(4, |n| n.get());
    let mut siblings = std::collections::HashSet::new();
    for cpu in 0..logical {
        let path = format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings");
        if let Ok(s) = std::fs::read_to_string(path) {
            siblings.insert(s.trim().to_string());
        }
    }
    let n = if siblings.is_empty() {
        if logical <= 4 {
            logical
        } else {
            logical / 2
        }
    } else {
        siblings.len()
    };
    n.max(1) as i32
}

impl EngineOptions {
    /// llama.cpp's defaults for `model` and optionally `mmproj`: context 4096, batch 2048,
    /// micro-batch 512, all cores, every layer on the GPU when there is one.
    pub fn new(model: impl Into<PathBuf>, mmproj: Option<PathBuf>) -> Self {
        Self {
            model: model.into(),
            mmproj,
            n_ctx: 4096,
            n_batch: 2048,
            n_ubatch: 512,
            n_threads: default_threads(),
            n_threads_batch: default_threads(),
            n_gpu_layers: -1,
            devices: None,
            tensor_split: Vec::new(),
            rpc: Vec::new(),
            load_mode: LoadMode::default(),
            flash_attn: FlashAttn::default(),
            type_k: KvType::default(),
            type_v: KvType::default(),
            template: TemplateOptions::default(),
            image_min_tokens: None,
            image_max_tokens: None,
            image_cache_bytes: 256 << 20,
            verbose: false,
        }
    }

    /// Sets the projector.
    pub fn mmproj(mut self, path: impl Into<PathBuf>) -> Self {
        self.mmproj = Some(path.into());
        self
    }
}

/// A loaded text model with its optional projector and chat template. It can be shared
/// between threads (each with its own sessions); the projector is used by one at a time.
pub struct Engine {
    // Declared first so that it is dropped before the model it refers to.
    mtmd: Option<Mtmd>,
    model: Model,
    template: ChatTemplate,
    options: EngineOptions,
    /// Every context of the engine decodes under this gate, one at a time.
    gate: Arc<ComputeGate>,
    /// Image embeddings by content, shared by every session of the engine.
    embeddings: Mutex<EmbeddingCache>,
    /// Held while an image is encoded for the cache.
    encoding: Mutex<()>,
}

impl Engine {
    /// Loads and cross-checks the model and projector.
    pub fn load(options: EngineOptions) -> Result<Self> {
        ffi::init_backend(options.verbose);
        let model_err = |cause: String| Error::ModelFile {
            path: options.model.clone(),
            cause,
        };
        gguf::check_file(&options.model, "model").map_err(model_err)?;
        ffi::add_rpc_servers(&options.rpc)?;
        let placement = Placement {
            n_gpu_layers: options.n_gpu_layers,
            devices: options.devices.clone(),
            tensor_split: options.tensor_split.clone(),
        };
        let model = Model::load(&options.model, &placement, options.load_mode)?;
        let mtmd = match &options.mmproj {
            Some(path) => Some(load_projector(path, &model, &options)?),
            None => None,
        };
        let template = ChatTemplate::new(&options.template, &model).map_err(|e| match e {
            Error::Template(cause) => {
                Error::Template(format!("{}: {cause}", options.model.display()))
            }
            e => e,
        })?;
        Ok(Self {
            mtmd,
            model,
            template,
            embeddings: Mutex::new(EmbeddingCache::new(options.image_cache_bytes)),
            encoding: Mutex::new(()),
            options,
            gate: Arc::new(ComputeGate::default()),
        })
    }

    /// The text model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The projector, when one was loaded (it serializes its own encoding).
    pub fn mtmd(&self) -> Option<&Mtmd> {
        self.mtmd.as_ref()
    }

    /// The embeddings of the image chunk with content `key` (a SHA-256 digest): from the
    /// cache, else `encode`d and kept.
    pub fn image_embeddings(
        &self,
        key: [u8; 32],
        encode: impl FnOnce() -> Result<Vec<f32>>,
    ) -> Result<Arc<Vec<f32>>> {
        let cache = || self.embeddings.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = cache().get(key) {
            return Ok(e);
        }
        // One encode per image: sessions that ask for the same image at once (lanes of a
        // batched context) wait for the first one's embeddings instead of encoding again.
        let _one = self.encoding.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = cache().get(key) {
            return Ok(e);
        }
        let e = Arc::new(encode()?);
        cache().insert(key, e.clone());
        Ok(e)
    }

    /// How many image chunks were encoded and how many reused, since the engine loaded.
    pub fn embedding_stats(&self) -> EmbeddingStats {
        self.embeddings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats()
    }

    /// Whether a projector is loaded.
    pub fn has_projector(&self) -> bool {
        self.mtmd.is_some()
    }

    /// The options the engine was loaded with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The chat template in use.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// A context for `lanes` sessions decoded together (continuous batching), each lane of
    /// the engine's context size.
    pub fn batched(&self, lanes: usize, embeddings: bool) -> Result<Batched<'_>> {
        Batched::new(self.model(), &self.context_params(2, embeddings), lanes)
    }

    /// Parameters of a context for `n_seq` sequences.
    pub(crate) fn context_params(&self, n_seq: u32, embeddings: bool) -> ContextParams {
        let o = &self.options;
        ContextParams {
            n_ctx: o.n_ctx,
            n_batch: o.n_batch,
            n_ubatch: o.n_ubatch,
            n_threads: o.n_threads,
            n_threads_batch: o.n_threads_batch,
            n_seq,
            embeddings,
            flash_attn: o.flash_attn,
            type_k: o.type_k,
            type_v: o.type_v,
            gate: self.gate.clone(),
            abort: None,
        }
    }
}

fn load_projector(path: &Path, model: &Model, options: &EngineOptions) -> Result<Mtmd> {
    let err = |cause: String| Error::ProjectorFile {
        path: path.to_path_buf(),
        cause,
    };
    gguf::check_file(path, "mmproj").map_err(err)?;
    let width = gguf::projector_width(path).map_err(|e| err(e.to_string()))?;
    if let Some(width) = width.filter(|&w| w != model.n_embd_inp()) {
        return Err(Error::ProjectorMismatch {
            mmproj: path.to_path_buf(),
            model: options.model.clone(),
            width,
            expected: model.n_embd_inp(),
        });
    }
    let params = MtmdParams {
        n_threads: options.n_threads,
        use_gpu: options.n_gpu_layers != 0,
        flash_attn: options.flash_attn,
        image_min_tokens: options.image_min_tokens,
        image_max_tokens: options.image_max_tokens,
    };
    let mtmd = Mtmd::load(path, model, &params)?;
    if !mtmd.supports_vision() {
        return Err(err("this mmproj has no vision encoder".into()));
    }
    Ok(mtmd)
}
