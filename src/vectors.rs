//! CMRM vector files: GGUF in llama.cpp's control-vector layout (`direction.<il>` for il in
//! 1..n_layer-1, so plain llama.cpp loads them with `--control-vector`), plus `cmrm.*` metadata
//! with the raw per-layer shift estimates from which any application rule can be rebuilt.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[cfg(feature = "llama")]
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::gguf::{self, Value};
pub use crate::identity::{FileId, Identity, Relation};
use crate::layer_vectors::LayerVectors;
use crate::settings::{Layers, SteerConfig};

/// How the per-anchor shifts were aggregated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Mean of the anchors' shifts.
    Mean,
    /// First principal component, sign aligned with the mean, scaled to the mean projection.
    Pca,
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mean" => Ok(Method::Mean),
            "pca" => Ok(Method::Pca),
            _ => Err(format!("{s:?} is not an aggregation method (mean, pca)")),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Mean => "mean",
            Method::Pca => "pca",
        })
    }
}

/// The model (and projector) a vector file was computed for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelId {
    /// Residual-stream width.
    pub n_embd: usize,
    /// Number of layers.
    pub n_layer: usize,
    /// Architecture (e.g. `llama`), llama.cpp's `controlvector.model_hint`.
    pub arch: String,
    /// The text model file.
    pub model: FileId,
    /// The projector file, when one was used.
    pub mmproj: Option<FileId>,
}

impl ModelId {
    /// The identity of a model and projector from their GGUF headers, without loading them
    /// (what discovery compares vector files against).
    pub fn of_files(model: &Path, mmproj: Option<&Path>) -> Result<Self> {
        let (file, h) = FileId::of_model(model).map_err(|e| Error::ModelFile {
            path: model.to_path_buf(),
            cause: e.to_string(),
        })?;
        let arch = match h.get("general.architecture") {
            Some(Value::Str(a)) => a.clone(),
            _ => String::new(),
        };
        let width = |key: &str| {
            h.get(&format!("{arch}.{key}"))
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| Error::ModelFile {
                    path: model.to_path_buf(),
                    cause: format!("no {arch}.{key} in its header: not a llama.cpp text model"),
                })
        };
        let mmproj = match mmproj {
            Some(p) => Some(FileId::of_projector(p).map_err(|e| Error::ProjectorFile {
                path: p.to_path_buf(),
                cause: e.to_string(),
            })?),
            None => None,
        };
        Ok(ModelId {
            n_embd: width("embedding_length")?,
            n_layer: width("block_count")?,
            arch,
            model: file,
            mmproj,
        })
    }

    #[cfg(feature = "llama")]
    /// The identity of the engine's model and projector.
    pub fn of(engine: &Engine) -> Result<Self> {
        let o = engine.options();
        let mut id = Self::of_files(&o.model, o.mmproj.as_deref())?;
        // The loaded model is the authority on its shape.
        id.n_embd = engine.model().n_embd();
        id.n_layer = engine.model().n_layer();
        Ok(id)
    }
}

/// How a vector file fits the model in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fit {
    /// Made on these very files.
    Exact,
    /// Made on other files of the same model (another quantization): what was measured on
    /// what, in one line.
    SameModel(String),
    /// Made for another model and used anyway (`force`): how they differ.
    Forced(String),
}

impl Fit {
    /// The line to show a user, when there is one.
    pub fn message(&self, path: &Path) -> Option<String> {
        match self {
            Fit::Exact => None,
            Fit::SameModel(m) => Some(format!("cmrm: {}: {m}", path.display())),
            Fit::Forced(d) => Some(format!(
                "cmrm: WARNING: --force: using {} although it was {d}; its shifts may not mean anything for this model",
                path.display()
            )),
        }
    }
}

/// The anchor set vectors were calibrated on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnchorSet {
    /// The file's name.
    pub name: String,
    /// Number of anchors in the file (of which `n_anchors` were used).
    pub size: usize,
    /// SHA-256 of the file, as `sha256sum` prints it.
    pub sha256: String,
}

impl AnchorSet {
    /// Describes an anchor file of `size` items.
    pub fn of_file(path: &Path, size: usize) -> Result<Self> {
        use sha2::{Digest, Sha256};
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, "read", e))?;
        Ok(AnchorSet {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            size,
            sha256: Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        })
    }
}

/// How and when a vector file was made, for the people who download it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenance {
    /// The cmrm version that made it.
    pub cmrm_version: String,
    /// When, ISO 8601 UTC.
    pub created: String,
    /// The anchor set (unknown in files made before provenance was recorded).
    pub anchors: Option<AnchorSet>,
    /// The system message every anchor was prompted with.
    pub system_prompt: Option<String>,
    /// The evaluation the recommended settings were chosen on (Markdown), when they were.
    pub evaluation: Option<String>,
}

impl Provenance {
    /// Made now (or at `SOURCE_DATE_EPOCH`), by this cmrm.
    pub fn now(anchors: Option<AnchorSet>, system_prompt: Option<String>) -> Self {
        Provenance {
            cmrm_version: env!("CARGO_PKG_VERSION").into(),
            created: crate::clock::iso8601(crate::clock::stamp_utc()),
            anchors,
            system_prompt,
            evaluation: None,
        }
    }
}

/// A set of CMRM shift vectors with the settings they were made and are meant to be used with.
#[derive(Clone, Debug, PartialEq)]
pub struct CmrmVectors {
    /// The model they belong to.
    pub model: ModelId,
    /// Aggregation method.
    pub method: Method,
    /// The meaningless image used: `blank`, `noise`, `anchor` or a file name.
    pub corruption: String,
    /// Number of anchors aggregated.
    pub n_anchors: usize,
    /// The aggregated total shift per layer, `deltas[il]` for il in 0..n_layer (h_text - h_corrupt).
    pub deltas: LayerVectors,
    /// Recommended steering settings.
    pub recommended: SteerConfig,
    /// Per-anchor shifts (ids and `n_layer * n_embd` floats each), kept for shards and merges.
    pub anchors: Option<(Vec<u64>, Vec<f32>)>,
    /// How and when it was made.
    pub provenance: Provenance,
    /// Per-layer safety directions for ShiftDC's `project` rule, when calibrated with them.
    pub safety: Option<Safety>,
}

/// ShiftDC's safety directions: per layer, the mean last-prompt-token state of text-only
/// harmful requests minus that of benign ones.
#[derive(Clone, Debug, PartialEq)]
pub struct Safety {
    /// One row of `n_embd` per layer.
    pub directions: LayerVectors,
    /// Harmful requests averaged (the anchors).
    pub n_harmful: usize,
    /// Benign requests averaged.
    pub n_benign: usize,
}

/// Each layer's shift without its component along that layer's refusal direction.
pub fn strip_refusal(shifts: &LayerVectors, directions: &LayerVectors) -> LayerVectors {
    shifts.map(|il, d| crate::math::project_out(d, &directions[il]))
}

/// How much of the dataset shift lies along the refusal direction, per layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RefusalComponent {
    /// Cosine between the layer's shift and its refusal (safety) direction.
    pub cosine: f32,
    /// Norm of the shift left when its component along the refusal direction is projected out,
    /// as a fraction of the whole shift's norm (`sqrt(1 - cosine^2)`).
    pub remaining: f32,
}

impl CmrmVectors {
    /// Per layer, the dataset shift's component along the refusal direction (ShiftDC's safety
    /// direction: the mean text-only state of harmful anchors minus that of benign requests),
    /// when the file holds directions (`calibrate --method shiftdc`). A dataset vector averaged
    /// over harmful anchors can carry refusal besides the modality shift; this measures how
    /// much.
    pub fn refusal_components(&self) -> Option<Vec<RefusalComponent>> {
        let safety = self.safety.as_ref()?;
        Some(
            self.deltas
                .iter()
                .zip(&safety.directions)
                .map(|(d, s)| {
                    let cosine = crate::math::cosine(d, s) as f32;
                    RefusalComponent {
                        cosine,
                        remaining: (1.0 - cosine * cosine).max(0.0).sqrt(),
                    }
                })
                .collect(),
        )
    }

    /// The shifts with their component along the refusal direction removed (the pure
    /// modality shift), when the file holds directions.
    pub fn without_refusal(&self) -> Option<LayerVectors> {
        let safety = self.safety.as_ref()?;
        Some(strip_refusal(&self.deltas, &safety.directions))
    }

    /// The control-vector rows (layers 1..n_layer-1) for a steering configuration.
    pub fn control_rows(&self, cfg: &SteerConfig) -> Vec<f32> {
        cfg.control_rows(&self.deltas)
    }

    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let m = &self.model;
        let r = &self.recommended;
        let p = &self.provenance;
        let str_kv = |k: &str, v: &str| (k.to_string(), Value::Str(v.to_string()));
        let mut kv: Vec<(String, Value)> = vec![
            str_kv("general.architecture", "controlvector"),
            str_kv("controlvector.model_hint", &m.arch),
            (
                "controlvector.layer_count".into(),
                Value::I32(m.n_layer as i32 - 1),
            ),
            str_kv("cmrm.version", &p.cmrm_version),
            str_kv("cmrm.created", &p.created),
            str_kv("cmrm.method", &self.method.to_string()),
            str_kv("cmrm.corruption", &self.corruption),
            ("cmrm.n_anchors".into(), Value::U32(self.n_anchors as u32)),
            ("cmrm.n_embd".into(), Value::U32(m.n_embd as u32)),
            ("cmrm.n_layer".into(), Value::U32(m.n_layer as u32)),
            str_kv("cmrm.model_fingerprint", &m.model.fingerprint),
            str_kv(
                "cmrm.mmproj_fingerprint",
                m.mmproj.as_ref().map_or("", |f| &f.fingerprint),
            ),
            str_kv("cmrm.model.file", &m.model.file),
            str_kv("cmrm.model.quantization", &m.model.quantization),
            str_kv("cmrm.model.identity", &m.model.identity.to_string()),
        ];
        if let Some(f) = &m.mmproj {
            kv.push(str_kv("cmrm.mmproj.file", &f.file));
            kv.push(str_kv("cmrm.mmproj.quantization", &f.quantization));
            kv.push(str_kv("cmrm.mmproj.identity", &f.identity.to_string()));
        }
        if let Some(a) = &p.anchors {
            kv.push(str_kv("cmrm.anchors.name", &a.name));
            kv.push(("cmrm.anchors.size".into(), Value::U32(a.size as u32)));
            kv.push(str_kv("cmrm.anchors.sha256", &a.sha256));
        }
        if let Some(sys) = &p.system_prompt {
            kv.push(str_kv("cmrm.system_prompt", sys));
        }
        if let Some(e) = &p.evaluation {
            kv.push(str_kv("cmrm.evaluation", e));
        }
        kv.extend([
            ("cmrm.alpha".into(), Value::F32(r.alpha)),
            str_kv("cmrm.apply", &r.apply.to_string()),
            str_kv("cmrm.positions", &r.positions.to_string()),
            (
                "cmrm.layer_start".into(),
                Value::U32(r.layer_range(m.n_layer).0 as u32),
            ),
            (
                "cmrm.layer_end".into(),
                Value::U32(r.layer_range(m.n_layer).1 as u32),
            ),
            ("cmrm.deltas".into(), Value::F32s(self.deltas.concat())),
        ]);
        if let Some((ids, data)) = &self.anchors {
            kv.push((
                "cmrm.anchor_ids".into(),
                Value::Strs(ids.iter().map(u64::to_string).collect()),
            ));
            kv.push(("cmrm.anchor_deltas".into(), Value::F32s(data.clone())));
        }
        if let Some(safety) = &self.safety {
            kv.push((
                "cmrm.safety.directions".into(),
                Value::F32s(safety.directions.concat()),
            ));
            kv.push((
                "cmrm.safety.n_harmful".into(),
                Value::U32(safety.n_harmful as u32),
            ));
            kv.push((
                "cmrm.safety.n_benign".into(),
                Value::U32(safety.n_benign as u32),
            ));
        }
        let rows = self.control_rows(r);
        let tensors: Vec<(String, Vec<f32>)> = rows
            .chunks(m.n_embd)
            .enumerate()
            .map(|(i, row)| (format!("direction.{}", i + 1), row.to_vec()))
            .collect();
        gguf::write(path, &kv, &tensors)
    }

    /// Reads and validates a vector file.
    pub fn load(path: &Path) -> Result<Self> {
        gguf::check_file(path, "CMRM vector file").map_err(|c| Error::vectors(path, c))?;
        let h = gguf::read_header(path)
            .map_err(|e| Error::vectors(path, format!("corrupt or truncated GGUF file: {e}")))?;
        Self::from_header(&h, |t| gguf::read_f32_tensor(path, &h, t))
            .map_err(|cause| Error::vectors(path, cause))
    }

    /// Reads and validates a vector file held in memory (`name` for messages).
    pub fn parse(bytes: &[u8], name: &Path) -> Result<Self> {
        let h = gguf::parse_header(bytes)
            .map_err(|e| Error::vectors(name, format!("corrupt or truncated GGUF file: {e}")))?;
        Self::from_header(&h, |t| gguf::f32_tensor_in(bytes, &h, t))
            .map_err(|cause| Error::vectors(name, cause))
    }

    fn from_header(
        h: &gguf::Header,
        tensor: impl Fn(&gguf::TensorInfo) -> Result<Vec<f32>, gguf::GgufError>,
    ) -> std::result::Result<Self, String> {
        let not_cmrm = "not a cmrm vector file (make one with `cmrm calibrate`)";
        let mut seen = std::collections::HashSet::new();
        if let Some((k, _)) = h.kv.iter().find(|(k, _)| !seen.insert(k.as_str())) {
            return Err(format!("the key {k} appears twice (the file was altered)"));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(t) = h.tensors.iter().find(|t| !seen.insert(t.name.as_str())) {
            return Err(format!(
                "the tensor {} appears twice (the file was altered)",
                t.name
            ));
        }
        let s = |k: &str| match h.get(k) {
            Some(Value::Str(v)) => Ok(v.clone()),
            Some(_) => Err(format!("{k} must be a string")),
            None => Err(format!("{not_cmrm}: missing {k}")),
        };
        let opt = |k: &str| match h.get(k) {
            Some(Value::Str(v)) => Ok(Some(v.clone())),
            Some(_) => Err(format!("{k} must be a string")),
            None => Ok(None),
        };
        let u = |k: &str| match h.get(k) {
            Some(v) => v
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| format!("{k} must be an unsigned integer")),
            None => Err(format!("{not_cmrm}: missing {k}")),
        };
        let finite = |name: &str, v: &[f32]| match v.iter().position(|x| !x.is_finite()) {
            Some(i) => Err(format!(
                "{name} holds {} at index {i}: a vector file must hold finite numbers",
                v[i]
            )),
            None => Ok(()),
        };
        if s("general.architecture")? != "controlvector" {
            return Err(format!("{not_cmrm}: not a control vector"));
        }
        let n_embd = u("cmrm.n_embd")?;
        let n_layer = u("cmrm.n_layer")?;
        if n_embd == 0 || n_layer < 2 || n_embd.saturating_mul(n_layer) > 1 << 28 {
            return Err(format!("bad shape: n_embd {n_embd}, {n_layer} layers"));
        }
        let deltas = match h.get("cmrm.deltas") {
            Some(Value::F32s(d)) => d,
            Some(_) => return Err("cmrm.deltas must be an array of float32".into()),
            None => return Err(format!("{not_cmrm}: missing cmrm.deltas")),
        };
        if deltas.len() != n_embd * n_layer {
            return Err(format!(
                "cmrm.deltas holds {} values, expected {n_layer} layers x {n_embd}",
                deltas.len()
            ));
        }
        finite("cmrm.deltas", deltas)?;
        let alpha = match h.get("cmrm.alpha") {
            Some(Value::F32(a)) if a.is_finite() => *a,
            Some(_) => return Err("cmrm.alpha must be a finite float32".into()),
            None => return Err(format!("{not_cmrm}: missing cmrm.alpha")),
        };
        let (start, end) = (u("cmrm.layer_start")?, u("cmrm.layer_end")?);
        if start > end || end >= n_layer {
            return Err(format!("bad recommended layer range {start}-{end}"));
        }
        let recommended = SteerConfig {
            alpha,
            apply: s("cmrm.apply")?.parse()?,
            positions: s("cmrm.positions")?.parse()?,
            layers: Layers::Range(start, end),
            text_only: false,
        };
        let anchors = match (h.get("cmrm.anchor_ids"), h.get("cmrm.anchor_deltas")) {
            (None, None) => None,
            (Some(Value::Strs(ids)), Some(Value::F32s(d))) => {
                finite("cmrm.anchor_deltas", d)?;
                let ids = ids
                    .iter()
                    .map(|i| i.parse())
                    .collect::<std::result::Result<Vec<u64>, _>>()
                    .map_err(|_| "cmrm.anchor_ids holds a non-number".to_string())?;
                if d.len() != ids.len() * n_embd * n_layer {
                    return Err("cmrm.anchor_deltas has the wrong length".into());
                }
                Some((ids, d.clone()))
            }
            _ => {
                return Err(
                    "cmrm.anchor_ids (strings) and cmrm.anchor_deltas (float32) go together".into(),
                )
            }
        };
        if let Some(t) = h.tensors.iter().find(|t| {
            t.name
                .strip_prefix("direction.")
                .and_then(|n| n.parse::<usize>().ok())
                .is_none_or(|n| n == 0 || n >= n_layer)
        }) {
            return Err(format!(
                "unexpected tensor {} (a vector file holds direction.1 to direction.{})",
                t.name,
                n_layer - 1
            ));
        }
        let rows = LayerVectors::from_flat(deltas, n_embd).map_err(|e| e.to_string())?;
        let expected = recommended.control_rows(&rows);
        for il in 1..n_layer {
            let name = format!("direction.{il}");
            let t = h
                .tensor(&name)
                .ok_or_else(|| format!("missing tensor {name}"))?;
            if t.dims != [n_embd as u64] {
                return Err(format!("{name} has the wrong shape"));
            }
            let data = tensor(t).map_err(|e| e.to_string())?;
            finite(&name, &data)?;
            let want = &expected[(il - 1) * n_embd..il * n_embd];
            let scale = want.iter().map(|x| x.abs()).fold(1e-6f32, f32::max);
            if data
                .iter()
                .zip(want)
                .any(|(a, b)| (a - b).abs() > 1e-4 * scale)
            {
                return Err(format!(
                    "{name} does not match cmrm.deltas under the recommended settings (the file was altered)"
                ));
            }
        }
        let file = |role: &str, fingerprint: String| -> std::result::Result<FileId, String> {
            let key = format!("cmrm.{role}.identity");
            Ok(FileId {
                file: opt(&format!("cmrm.{role}.file"))?.unwrap_or_default(),
                fingerprint,
                quantization: opt(&format!("cmrm.{role}.quantization"))?.unwrap_or_default(),
                identity: match opt(&key)? {
                    Some(id) => id.parse().map_err(|e| format!("{key}: {e}"))?,
                    None => Identity::default(),
                },
            })
        };
        let safety = match h.get("cmrm.safety.directions") {
            None => None,
            Some(Value::F32s(d)) => {
                if d.len() != n_embd * n_layer {
                    return Err(format!(
                        "cmrm.safety.directions holds {} values, expected {n_layer} layers x {n_embd}",
                        d.len()
                    ));
                }
                finite("cmrm.safety.directions", d)?;
                Some(Safety {
                    directions: d.chunks(n_embd).map(<[f32]>::to_vec).collect(),
                    n_harmful: u("cmrm.safety.n_harmful")?,
                    n_benign: u("cmrm.safety.n_benign")?,
                })
            }
            Some(_) => return Err("cmrm.safety.directions must be an array of float32".into()),
        };
        let mmproj_fingerprint = opt("cmrm.mmproj_fingerprint")?.unwrap_or_default();
        let anchors_set = match opt("cmrm.anchors.name")? {
            Some(name) => Some(AnchorSet {
                name,
                size: u("cmrm.anchors.size")?,
                sha256: s("cmrm.anchors.sha256")?,
            }),
            None => None,
        };
        Ok(Self {
            model: ModelId {
                n_embd,
                n_layer,
                arch: s("controlvector.model_hint")?,
                model: file("model", s("cmrm.model_fingerprint")?)?,
                mmproj: if mmproj_fingerprint.is_empty() {
                    None
                } else {
                    Some(file("mmproj", mmproj_fingerprint)?)
                },
            },
            provenance: Provenance {
                cmrm_version: s("cmrm.version")?,
                created: opt("cmrm.created")?.unwrap_or_default(),
                anchors: anchors_set,
                system_prompt: opt("cmrm.system_prompt")?,
                evaluation: opt("cmrm.evaluation")?,
            },
            method: s("cmrm.method")?.parse()?,
            corruption: s("cmrm.corruption")?,
            n_anchors: u("cmrm.n_anchors")?,
            deltas: deltas.chunks(n_embd).map(<[f32]>::to_vec).collect(),
            recommended,
            anchors,
            safety,
        })
    }

    #[cfg(feature = "llama")]
    /// Reads a vector file and checks that it was made for `engine`'s model or another
    /// quantization of it (`force` accepts another model of the same shape).
    pub fn load_for(path: &Path, engine: &Engine, force: bool) -> Result<(Self, Fit)> {
        let v = Self::load(path)?;
        let fit = v.check_model(path, &ModelId::of(engine)?, force)?;
        Ok((v, fit))
    }

    /// How these vectors fit `running`: refused for another shape always, for another model
    /// (or projector) unless `force`; accepted for another quantization of the same model.
    pub fn check_model(&self, path: &Path, running: &ModelId, force: bool) -> Result<Fit> {
        let m = &self.model;
        if m.n_embd != running.n_embd || m.n_layer != running.n_layer {
            return Err(Error::ForeignVectors {
                path: path.to_path_buf(),
                detail: format!(
                    "vectors are for a model with n_embd {} and {} layers ({}), this model has n_embd {} and {} layers",
                    m.n_embd, m.n_layer, m.model.file, running.n_embd, running.n_layer
                ),
                overridable: false,
            });
        }
        let (mut problems, mut notes) = (Vec::new(), Vec::new());
        let mut compare = |what: &str, made: &FileId, used: &FileId| {
            match made.relation(used) {
            Relation::Same => {}
            Relation::SameModel if made.quantization != used.quantization => notes.push(format!(
                "{what} shifts measured on {} ({}), running {} ({})",
                made.quantization, made.file, used.quantization, used.file
            )),
            Relation::SameModel => notes.push(format!(
                "{what} shifts measured on another file of the same model ({}, {})",
                made.file, made.quantization
            )),
            Relation::Different(parts) => problems.push(format!(
                "made for another {what} ({}): {} differ from {}",
                made.file,
                parts.join(", "),
                used.file
            )),
            Relation::Unknown => problems.push(format!(
                "made for another {what} file and written before cmrm recorded model identities, so it cannot tell whether {} is the same {what}",
                used.file
            )),
        }
        };
        compare("model", &m.model, &running.model);
        if let (Some(made), Some(used)) = (&m.mmproj, &running.mmproj) {
            compare("projector", made, used);
        }
        if !problems.is_empty() {
            let detail = problems.join("; ");
            if force {
                return Ok(Fit::Forced(detail));
            }
            return Err(Error::ForeignVectors {
                path: path.to_path_buf(),
                detail,
                overridable: true,
            });
        }
        Ok(if notes.is_empty() {
            Fit::Exact
        } else {
            Fit::SameModel(notes.join("; "))
        })
    }
}

/// `<model-file-stem>.cmrm.gguf` next to the model: where vectors are picked up by default.
pub fn default_path(model: &Path) -> PathBuf {
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    model.with_file_name(format!("{stem}.cmrm.gguf"))
}

/// A vector file chosen for a model, and why.
#[derive(Debug)]
pub struct Chosen {
    /// The file.
    pub path: PathBuf,
    /// Its vectors.
    pub vectors: CmrmVectors,
    /// Why this file, in words.
    pub reason: String,
}

/// What [`discover`] found in a model's folder.
#[derive(Debug, Default)]
pub struct Discovery {
    /// The file to use, when there is one.
    pub chosen: Option<Chosen>,
    /// `*.cmrm.gguf` files looked at and not used, with the reason.
    pub passed_over: Vec<(PathBuf, String)>,
}

/// Finds the vector file for a model where users put them: `<stem>.cmrm.gguf` beside it,
/// else the one `*.cmrm.gguf` in its folder whose model identity matches (`running`, computed
/// only when the folder must be searched), so that a folder of several quantizations needs one
/// vector file. Several matching files are an error that lists them.
pub fn discover(model: &Path, running: impl FnOnce() -> Result<ModelId>) -> Result<Discovery> {
    let named = default_path(model);
    if named.exists() {
        return Ok(Discovery {
            chosen: Some(Chosen {
                vectors: CmrmVectors::load(&named)?,
                reason: "named after the model file".into(),
                path: named,
            }),
            passed_over: Vec::new(),
        });
    }
    let dir = match model.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Discovery::default());
    };
    let mut candidates: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with(".cmrm.gguf"))
        })
        .collect();
    if candidates.is_empty() {
        return Ok(Discovery::default());
    }
    candidates.sort();
    let running = running()?;
    let mut found = Discovery::default();
    let mut matching = Vec::new();
    for p in candidates {
        let fit = CmrmVectors::load(&p).and_then(|v| {
            let fit = v.check_model(&p, &running, false)?;
            Ok((v, fit))
        });
        match fit {
            Ok((v, fit)) => matching.push((p, v, fit)),
            Err(e) => {
                let why = e.to_string();
                let why = why
                    .strip_prefix(&format!("{}: ", p.display()))
                    .unwrap_or(&why)
                    .to_string();
                found.passed_over.push((p, why));
            }
        }
    }
    if matching.len() > 1 {
        let list: Vec<String> = matching
            .iter()
            .map(|(p, _, _)| format!("  {}", p.display()))
            .collect();
        return Err(Error::Invalid(format!(
            "several vector files in {} are made for {}:\n{}\nchoose one with --cmrm FILE",
            dir.display(),
            model.display(),
            list.join("\n")
        )));
    }
    found.chosen = matching.pop().map(|(path, vectors, fit)| Chosen {
        reason: match fit {
            Fit::Exact => format!(
                "the only *.cmrm.gguf in {} made for this model file",
                dir.display()
            ),
            _ => format!(
                "the only *.cmrm.gguf in {} made for this model; measured on {} of it, {}",
                dir.display(),
                vectors.model.model.quantization,
                vectors.model.model.file
            ),
        },
        path,
        vectors,
    });
    Ok(found)
}
