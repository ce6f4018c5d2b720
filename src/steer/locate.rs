//! Which vector file steers a model: the one given, else `<model-stem>.cmrm.gguf` beside the
//! model, else the one `*.cmrm.gguf` in its folder made for this model or another quantization
//! of it; read before the model loads and checked against it once it has.

use std::path::PathBuf;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::vectors::{default_path, discover, CmrmVectors, Fit, ModelId};

/// Where to look for a model's vector file.
#[derive(Clone, Debug, Default)]
pub struct VectorQuery {
    /// The model file (its folder is searched).
    pub model: PathBuf,
    /// The projector file (part of the model's identity).
    pub mmproj: Option<PathBuf>,
    /// A file given explicitly: no search.
    pub file: Option<PathBuf>,
    /// Accept a file made for another model of the same shape.
    pub force: bool,
}

/// A vector file found for a model.
#[derive(Debug)]
pub struct Located {
    /// The file.
    pub path: PathBuf,
    /// Its vectors.
    pub vectors: CmrmVectors,
    /// Why this file, in words.
    pub reason: String,
    force: bool,
}

/// What a search found.
#[derive(Debug, Default)]
pub struct Search {
    /// The file to use, when there is one.
    pub chosen: Option<Located>,
    /// `*.cmrm.gguf` files looked at and not used, with the reason.
    pub passed_over: Vec<(PathBuf, String)>,
}

impl VectorQuery {
    /// The query for `model` (and `mmproj`), searching its folder.
    pub fn new(model: impl Into<PathBuf>, mmproj: Option<PathBuf>) -> Self {
        Self {
            model: model.into(),
            mmproj,
            ..Self::default()
        }
    }

    /// Uses `file` instead of searching (none: search).
    pub fn file(mut self, file: Option<PathBuf>) -> Self {
        self.file = file;
        self
    }

    /// Accepts a file made for another model of the same shape.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// The vector file, when there is one, and the files passed over. Several matching files
    /// in the folder are an error that lists them.
    pub fn find(&self) -> Result<Search> {
        if let Some(p) = &self.file {
            return Ok(Search {
                chosen: Some(Located {
                    vectors: CmrmVectors::load(p)?,
                    path: p.clone(),
                    reason: "given explicitly".into(),
                    force: self.force,
                }),
                passed_over: Vec::new(),
            });
        }
        let running = || ModelId::of_files(&self.model, self.mmproj.as_deref());
        let found = discover(&self.model, running)?;
        Ok(Search {
            chosen: found.chosen.map(|c| Located {
                path: c.path,
                vectors: c.vectors,
                reason: c.reason,
                force: self.force,
            }),
            passed_over: found.passed_over,
        })
    }

    /// The error of a search that found nothing: where it looked and what it passed over.
    pub fn not_found(&self, passed_over: &[(PathBuf, String)]) -> Error {
        let mut msg = format!(
            "no vector file for {}: neither {} nor a *.cmrm.gguf made for this model in its folder; make one with `cmrm calibrate` or pass --cmrm FILE",
            self.model.display(),
            default_path(&self.model).display()
        );
        for (p, why) in passed_over {
            msg.push_str(&format!("\n  passed over {}: {why}", p.display()));
        }
        Error::Invalid(msg)
    }
}

impl Located {
    /// Checks that the vectors were made for the loaded model (or another quantization of it:
    /// [`Fit::message`] says so in one line; another model of its shape with `force`) and that
    /// their shifts are of its scale.
    pub fn check(&self, engine: &Engine) -> Result<Fit> {
        let fit = self
            .vectors
            .check_model(&self.path, &ModelId::of(engine)?, self.force)?;
        super::check_scale(engine, &self.vectors.deltas)
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.path.display())))?;
        Ok(fit)
    }
}
