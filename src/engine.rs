//! Loading a VLM: the GGUF text model, its mmproj, the chat template, checked together so that
//! a wrong file is refused with a message that names it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use crate::ffi::{self, ContextParams, Model, Mtmd, SharedHook};
use crate::gguf;
use crate::session::Session;

/// What to load and how to run it (llama.cpp's `-m`, `--mmproj`, `-c`, `-b`, `-t`, `-ngl`,
/// `--chat-template`).
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// The text model GGUF.
    pub model: PathBuf,
    /// The multimodal projector GGUF, if images are to be read.
    pub mmproj: Option<PathBuf>,
    /// Context length.
    pub n_ctx: u32,
    /// Batch size for prompt processing.
    pub n_batch: u32,
    /// CPU threads.
    pub n_threads: i32,
    /// Layers offloaded to the GPU (negative = all).
    pub n_gpu_layers: i32,
    /// A llama.cpp built-in template name or a template string; default: the model's own.
    pub chat_template: Option<String>,
    /// Echo llama.cpp's log on stderr.
    pub verbose: bool,
}

impl EngineOptions {
    /// Defaults for `model` (and optionally `mmproj`): 4096 context, 512 batch, all cores.
    pub fn new(model: impl Into<PathBuf>, mmproj: Option<PathBuf>) -> Self {
        Self {
            model: model.into(),
            mmproj,
            n_ctx: 4096,
            n_batch: 512,
            n_threads: std::thread::available_parallelism().map_or(4, |n| n.get() as i32),
            n_gpu_layers: -1,
            chat_template: None,
            verbose: false,
        }
    }
}

/// A loaded text model with its optional projector.
pub struct Engine {
    // Declared first so that it is dropped before the model it refers to.
    mtmd: Option<Mtmd>,
    model: Model,
    template: String,
    eog_tokens: Vec<i32>,
    options: EngineOptions,
}

impl Engine {
    /// Loads and cross-checks the model and projector.
    pub fn load(options: EngineOptions) -> Result<Self> {
        ffi::init_backend(options.verbose);
        gguf::check_file(&options.model, "model (-m)")?;
        let model = Model::load(&options.model, options.n_gpu_layers)?;
        let mtmd = match &options.mmproj {
            Some(path) => Some(load_projector(path, &model, &options)?),
            None => None,
        };
        let template = match &options.chat_template {
            Some(t) => t.clone(),
            None => model
                .chat_template()
                .unwrap_or_else(|| "chatml".to_string()),
        };
        // Fail early on a template llama.cpp cannot apply.
        ffi::apply_chat_template(&template, &[("user".into(), "hi".into())], true)
            .with_context(|| format!("{}: chat template", options.model.display()))?;
        let eog_tokens = (0..model.n_vocab() as i32)
            .filter(|&t| model.is_eog(t))
            .collect();
        Ok(Self {
            mtmd,
            model,
            template,
            eog_tokens,
            options,
        })
    }

    /// The text model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The projector, when one was loaded.
    pub fn mtmd(&self) -> Option<&Mtmd> {
        self.mtmd.as_ref()
    }

    /// The options the engine was loaded with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The chat template in use.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// End-of-generation tokens of the vocabulary.
    pub fn eog_tokens(&self) -> &[i32] {
        &self.eog_tokens
    }

    /// A fresh conversation; `hook` sees graph tensors (capture, callback steering).
    pub fn session(&self, hook: Option<SharedHook>) -> Result<Session<'_>> {
        self.session_with(hook, false)
    }

    /// Like [`Engine::session`], also returning final-norm embeddings when `embeddings`.
    pub fn session_with(&self, hook: Option<SharedHook>, embeddings: bool) -> Result<Session<'_>> {
        let params = ContextParams {
            n_ctx: self.options.n_ctx,
            n_batch: self.options.n_batch,
            n_threads: self.options.n_threads,
            embeddings,
        };
        Session::new(self, ffi::Context::new(&self.model, &params, hook)?)
    }
}

fn load_projector(path: &Path, model: &Model, options: &EngineOptions) -> Result<Mtmd> {
    gguf::check_file(path, "mmproj (--mmproj)")?;
    if let Some(width) = gguf::projector_width(path)? {
        if width != model.n_embd_inp() {
            bail!(
                "{}: this mmproj outputs {width}-wide embeddings but {} expects {}: use the mmproj made for this model",
                path.display(),
                options.model.display(),
                model.n_embd_inp()
            );
        }
    }
    let mtmd = Mtmd::load(path, model, options.n_threads, options.n_gpu_layers != 0)?;
    if !mtmd.supports_vision() {
        bail!("{}: this mmproj has no vision encoder", path.display());
    }
    Ok(mtmd)
}
