//! Which model a vector file belongs to, in a form that survives quantization.
//!
//! A model repository publishes one model as many files (Q4_K_M, Q5_K_M, Q8_0, F16) and one
//! mmproj. What quantization changes is the tensors' types and data; what it keeps is the
//! architecture and its widths, the vocabulary, the tensors' names and shapes, and the 1-D
//! tensors (norms and biases), which llama.cpp stores as F32 in every file type. The
//! [`Identity`] of a GGUF file is a digest of each of those parts, so that one vector file
//! serves every quantization of its model, while another model, or another fine-tune of the
//! same architecture (whose norms differ), is told apart and named.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::gguf::{self, Header, Value, TYPE_F32};

/// Reads an F32 tensor's values.
pub type TensorReader<'a> = &'a dyn Fn(&gguf::TensorInfo) -> gguf::Result<Vec<f32>>;

/// Digests of what quantization keeps of a GGUF file, part by part (hex, 12 digits each;
/// empty when the part does not apply, e.g. a projector's vocabulary).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// Architecture and widths: layers, embedding and feed-forward widths, head counts (for a
    /// projector: its type and its vision tower's widths).
    pub hparams: String,
    /// The vocabulary: tokenizer model, tokens and merges.
    pub vocab: String,
    /// Tensor names and shapes (not their types).
    pub tensors: String,
    /// The F32 1-D tensors' values (norms, biases), copied unchanged by quantization.
    pub weights: String,
}

/// The parts of an identity, in order, by the names used in files and messages.
const PARTS: [&str; 4] = ["hparams", "vocab", "tensors", "weights"];

impl Identity {
    fn parts(&self) -> [&String; 4] {
        [&self.hparams, &self.vocab, &self.tensors, &self.weights]
    }

    /// The parts that differ from `other` (a part empty on either side is not compared), by
    /// what they mean to a user.
    pub fn differences(&self, other: &Identity) -> Vec<&'static str> {
        let meaning = [
            "the architecture or its widths",
            "the vocabulary",
            "the tensor names or shapes",
            "the weights (norms and biases: another fine-tune of the same architecture)",
        ];
        self.parts()
            .iter()
            .zip(other.parts())
            .zip(meaning)
            .filter(|((a, b), _)| !a.is_empty() && !b.is_empty() && *a != b)
            .map(|(_, m)| m)
            .collect()
    }

    /// Whether nothing was recorded (a file made before identities existed).
    pub fn is_empty(&self) -> bool {
        self.parts().iter().all(|p| p.is_empty())
    }

    /// The identity of a text model from its header; `tensor` reads an F32 tensor's values
    /// (from the file, or from bytes in memory).
    pub fn of_model(h: &Header, tensor: TensorReader<'_>) -> gguf::Result<Self> {
        let arch = string(h, "general.architecture");
        let mut hp = Sha256::new();
        hp.update(arch.as_bytes());
        for key in [
            "block_count",
            "embedding_length",
            "feed_forward_length",
            "attention.head_count",
            "attention.head_count_kv",
            "attention.key_length",
            "attention.value_length",
        ] {
            hp.update(format!("\0{key}={:?}", h.get(&format!("{arch}.{key}"))));
        }
        let mut vocab = Sha256::new();
        vocab.update(string(h, "tokenizer.ggml.model").as_bytes());
        for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.merges"] {
            vocab.update(format!("\0{key}"));
            if let Some(Value::Strs(items)) = h.get(key) {
                for item in items {
                    vocab.update((item.len() as u64).to_le_bytes());
                    vocab.update(item.as_bytes());
                }
            }
        }
        Ok(Identity {
            hparams: short(hp),
            vocab: short(vocab),
            tensors: tensors_digest(h),
            weights: weights_digest(h, tensor)?,
        })
    }

    /// The identity of a multimodal projector (mmproj) from its header.
    pub fn of_projector(h: &Header, tensor: TensorReader<'_>) -> gguf::Result<Self> {
        let mut hp = Sha256::new();
        for key in [
            "clip.projector_type",
            "clip.vision.projector_type",
            "clip.vision.embedding_length",
            "clip.vision.block_count",
            "clip.vision.image_size",
            "clip.vision.patch_size",
            "clip.vision.projection_dim",
        ] {
            hp.update(format!("\0{key}={:?}", h.get(key)));
        }
        Ok(Identity {
            hparams: short(hp),
            vocab: String::new(),
            tensors: tensors_digest(h),
            weights: weights_digest(h, tensor)?,
        })
    }
}

impl fmt::Display for Identity {
    /// `hparams:… vocab:… tensors:… weights:…`, the form stored in vector files.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = PARTS
            .iter()
            .zip(self.parts())
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        f.write_str(&parts.join(" "))
    }
}

impl std::str::FromStr for Identity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut id = Identity::default();
        for part in s.split_whitespace() {
            let (k, v) = part
                .split_once(':')
                .ok_or_else(|| format!("{part:?} is not name:digest"))?;
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{part:?}: the digest must be hexadecimal"));
            }
            let slot = match k {
                "hparams" => &mut id.hparams,
                "vocab" => &mut id.vocab,
                "tensors" => &mut id.tensors,
                "weights" => &mut id.weights,
                _ => return Err(format!("unknown identity part {k:?}")),
            };
            *slot = v.to_string();
        }
        Ok(id)
    }
}

/// A GGUF model or projector file as a vector file records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileId {
    /// The file's name, without its folder.
    pub file: String,
    /// This exact file: FNV-1a of its whole header (metadata and tensor directory).
    pub fingerprint: String,
    /// Its quantization (`Q4_K_M`, or the type of most weights when the file names none).
    pub quantization: String,
    /// What quantization keeps.
    pub identity: Identity,
}

impl FileId {
    /// Reads a text model file's header.
    pub fn of_model(path: &Path) -> gguf::Result<(Self, Header)> {
        Self::of(path, Identity::of_model)
    }

    /// Reads a projector file's header.
    pub fn of_projector(path: &Path) -> gguf::Result<Self> {
        Ok(Self::of(path, Identity::of_projector)?.0)
    }

    fn of(
        path: &Path,
        identity: fn(&Header, TensorReader<'_>) -> gguf::Result<Identity>,
    ) -> gguf::Result<(Self, Header)> {
        let h = gguf::read_header(path)?;
        let id = FileId {
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            fingerprint: gguf::fingerprint(path)?,
            quantization: crate::quant::describe(&h),
            identity: identity(&h, &|t| gguf::read_f32_tensor(path, &h, t))?,
        };
        Ok((id, h))
    }

    /// How a file recorded as `self` relates to `running`: by identity when both have one
    /// (the header fingerprint alone misses a file whose weights changed under the same
    /// header), else by fingerprint.
    pub fn relation(&self, running: &FileId) -> Relation {
        let same_file = self.fingerprint == running.fingerprint;
        if self.identity.is_empty() || running.identity.is_empty() {
            return if same_file {
                Relation::Same
            } else {
                Relation::Unknown
            };
        }
        let diff = self.identity.differences(&running.identity);
        match (diff.is_empty(), same_file) {
            (false, _) => Relation::Different(diff),
            (true, true) => Relation::Same,
            (true, false) => Relation::SameModel,
        }
    }
}

/// How a recorded file relates to the one in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Relation {
    /// The very same file.
    Same,
    /// Another file of the same model: another quantization, or the same one re-made.
    SameModel,
    /// Another model; the parts that differ.
    Different(Vec<&'static str>),
    /// Another file, and the vector file predates identities: cannot tell.
    Unknown,
}

fn string(h: &Header, key: &str) -> String {
    match h.get(key) {
        Some(Value::Str(s)) => s.clone(),
        _ => String::new(),
    }
}

fn short(hasher: Sha256) -> String {
    let digest = hasher.finalize();
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

fn tensors_digest(h: &Header) -> String {
    let mut list: Vec<(&str, &[u64])> = h
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.dims.as_slice()))
        .collect();
    list.sort();
    let mut d = Sha256::new();
    for (name, dims) in list {
        d.update(format!("{name}{dims:?}\0"));
    }
    short(d)
}

/// More bytes of 1-D tensors than any real model holds (a 70B model: about 5 MB).
const MAX_WEIGHT_BYTES: u64 = 256 << 20;

/// Digest of the F32 1-D tensors (sorted by name); empty when there are none.
fn weights_digest(h: &Header, tensor: TensorReader<'_>) -> gguf::Result<String> {
    let mut ones: Vec<&gguf::TensorInfo> = h
        .tensors
        .iter()
        .filter(|t| t.dims.len() == 1 && t.ggml_type == TYPE_F32)
        .collect();
    if ones.is_empty() {
        return Ok(String::new());
    }
    ones.sort_by(|a, b| a.name.cmp(&b.name));
    let total: u64 = ones
        .iter()
        .map(|t| t.dims[0].saturating_mul(4))
        .fold(0, u64::saturating_add);
    if total > MAX_WEIGHT_BYTES {
        return Err(gguf::GgufError::Format(format!(
            "its 1-D tensors declare {total} bytes, more than any model has (corrupt?)"
        )));
    }
    let mut d = Sha256::new();
    for t in ones {
        d.update(t.name.as_bytes());
        for x in tensor(t)? {
            d.update(x.to_le_bytes());
        }
    }
    Ok(short(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_print_parse_and_compare_by_part() {
        let a = Identity {
            hparams: "0a".into(),
            vocab: "0b".into(),
            tensors: "0c".into(),
            weights: "0d".into(),
        };
        let text = a.to_string();
        assert_eq!(text, "hparams:0a vocab:0b tensors:0c weights:0d");
        assert_eq!(text.parse::<Identity>().unwrap(), a);
        let mut b = a.clone();
        b.weights = "ff".into();
        assert_eq!(a.differences(&b).len(), 1);
        assert!(a.differences(&b)[0].contains("fine-tune"));
        b.weights.clear();
        assert!(
            a.differences(&b).is_empty(),
            "an empty part is not compared"
        );
        assert!("hparams:xyz".parse::<Identity>().is_err());
        assert!("colour:00".parse::<Identity>().is_err());
        assert!(Identity::default().is_empty());
    }
}
