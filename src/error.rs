//! The library's typed errors: what went wrong and with which file, in terms a caller can match
//! on. The command line turns them into messages that also name the flag to change.

use std::path::PathBuf;

/// A result with a [`cmrm::Error`](Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in cmrm.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The prompt (or generation) needs more positions than the context has.
    #[error("the context is full: {needed} positions needed, the context holds {n_ctx}")]
    ContextFull {
        /// Positions needed in all.
        needed: usize,
        /// Context length.
        n_ctx: usize,
    },
    /// A text model file cannot be used.
    #[error("{}: {cause}", path.display())]
    ModelFile {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: String,
    },
    /// A projector (mmproj) file cannot be used.
    #[error("{}: {cause}", path.display())]
    ProjectorFile {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: String,
    },
    /// The projector was made for a model of another width.
    #[error(
        "{}: this mmproj outputs {width}-wide embeddings but {} expects {expected}",
        mmproj.display(),
        model.display()
    )]
    ProjectorMismatch {
        /// The projector file.
        mmproj: PathBuf,
        /// The text model file.
        model: PathBuf,
        /// The projector's output width.
        width: usize,
        /// The model's input width.
        expected: usize,
    },
    /// An image was given but no projector is loaded.
    #[error("an image was given but no projector (mmproj) is loaded")]
    NoProjector,
    /// A vector file cannot be read or is malformed.
    #[error("{}: {cause}", path.display())]
    VectorFile {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: String,
    },
    /// A vector file made for another model.
    #[error("{}: {detail}", path.display())]
    ForeignVectors {
        /// The file.
        path: PathBuf,
        /// How the models differ.
        detail: String,
        /// Whether a deliberate override may still use it (same shape, other file).
        overridable: bool,
    },
    /// An image cannot be read.
    #[error("{source_name}: {cause}")]
    Image {
        /// The path or "data URI".
        source_name: String,
        /// Why.
        cause: String,
    },
    /// A data set (JSONL) line or file is malformed.
    #[error("{}{}: {cause}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Data {
        /// The file.
        path: PathBuf,
        /// The 1-based line, when one line is at fault.
        line: Option<usize>,
        /// Why.
        cause: String,
    },
    /// A steering configuration that cannot work.
    #[error("invalid steering: {0}")]
    Steering(String),
    /// The chat template could not be applied.
    #[error("chat template: {0}")]
    Template(String),
    /// A call into llama.cpp failed.
    #[error("llama.cpp: {op} failed{}{detail}", code.map(|c| format!(" (code {c})")).unwrap_or_default())]
    Llama {
        /// What was being done.
        op: &'static str,
        /// The return code, when there is one.
        code: Option<i32>,
        /// llama.cpp's own messages, if it logged any.
        detail: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was attempted ("read", "write", "create", ...).
        action: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// An invalid argument to a library call.
    #[error("{0}")]
    Invalid(String),
    /// The work was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
    /// A part of cmrm failed (a panic it caught, e.g. in a steering hook); the work was
    /// abandoned and the part reset.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            action,
            source,
        }
    }

    /// A malformed data line.
    pub fn data(path: impl Into<PathBuf>, line: Option<usize>, cause: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            line,
            cause: cause.into(),
        }
    }

    /// A malformed or unreadable vector file.
    pub fn vectors(path: impl Into<PathBuf>, cause: impl Into<String>) -> Self {
        Error::VectorFile {
            path: path.into(),
            cause: cause.into(),
        }
    }
}
