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

/// Identifies the model (and projector) a vector file was computed for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelId {
    /// Residual-stream width.
    pub n_embd: usize,
    /// Number of layers.
    pub n_layer: usize,
    /// Architecture (e.g. `llama`), llama.cpp's `controlvector.model_hint`.
    pub arch: String,
    /// Fingerprint of the text model's GGUF header (weights layout and quantization).
    pub model_fingerprint: String,
    /// Fingerprint of the mmproj's GGUF header, when one was used.
    pub mmproj_fingerprint: String,
}

#[cfg(feature = "llama")]
impl ModelId {
    /// The identity of the engine's model and projector, for vector files.
    pub fn of(engine: &Engine) -> Result<Self> {
        let o = engine.options();
        let fp = |p: &Path, model: bool| {
            crate::gguf::fingerprint(p).map_err(|e| {
                let (path, cause) = (p.to_path_buf(), e.to_string());
                if model {
                    Error::ModelFile { path, cause }
                } else {
                    Error::ProjectorFile { path, cause }
                }
            })
        };
        Ok(ModelId {
            n_embd: engine.model().n_embd(),
            n_layer: engine.model().n_layer(),
            arch: engine
                .model()
                .meta("general.architecture")
                .unwrap_or_default(),
            model_fingerprint: fp(&o.model, true)?,
            mmproj_fingerprint: match &o.mmproj {
                Some(p) => fp(p, false)?,
                None => String::new(),
            },
        })
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
    pub deltas: Vec<Vec<f32>>,
    /// Recommended steering settings.
    pub recommended: SteerConfig,
    /// Per-anchor shifts (ids and `n_layer * n_embd` floats each), kept for shards and merges.
    pub anchors: Option<(Vec<u64>, Vec<f32>)>,
}

impl CmrmVectors {
    /// The control-vector rows (layers 1..n_layer-1) for a steering configuration.
    pub fn control_rows(&self, cfg: &SteerConfig) -> Vec<f32> {
        cfg.control_rows(&self.deltas)
    }

    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let m = &self.model;
        let r = &self.recommended;
        let mut kv: Vec<(String, Value)> = vec![
            (
                "general.architecture".into(),
                Value::Str("controlvector".into()),
            ),
            (
                "controlvector.model_hint".into(),
                Value::Str(m.arch.clone()),
            ),
            (
                "controlvector.layer_count".into(),
                Value::I32(m.n_layer as i32 - 1),
            ),
            (
                "cmrm.version".into(),
                Value::Str(env!("CARGO_PKG_VERSION").into()),
            ),
            ("cmrm.method".into(), Value::Str(self.method.to_string())),
            (
                "cmrm.corruption".into(),
                Value::Str(self.corruption.clone()),
            ),
            ("cmrm.n_anchors".into(), Value::U32(self.n_anchors as u32)),
            ("cmrm.n_embd".into(), Value::U32(m.n_embd as u32)),
            ("cmrm.n_layer".into(), Value::U32(m.n_layer as u32)),
            (
                "cmrm.model_fingerprint".into(),
                Value::Str(m.model_fingerprint.clone()),
            ),
            (
                "cmrm.mmproj_fingerprint".into(),
                Value::Str(m.mmproj_fingerprint.clone()),
            ),
            ("cmrm.alpha".into(), Value::F32(r.alpha)),
            ("cmrm.apply".into(), Value::Str(r.apply.to_string())),
            ("cmrm.positions".into(), Value::Str(r.positions.to_string())),
            (
                "cmrm.layer_start".into(),
                Value::U32(r.layer_range(m.n_layer).0 as u32),
            ),
            (
                "cmrm.layer_end".into(),
                Value::U32(r.layer_range(m.n_layer).1 as u32),
            ),
            ("cmrm.deltas".into(), Value::F32s(self.deltas.concat())),
        ];
        if let Some((ids, data)) = &self.anchors {
            kv.push((
                "cmrm.anchor_ids".into(),
                Value::Strs(ids.iter().map(u64::to_string).collect()),
            ));
            kv.push(("cmrm.anchor_deltas".into(), Value::F32s(data.clone())));
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
        let rows: Vec<Vec<f32>> = deltas.chunks(n_embd).map(<[f32]>::to_vec).collect();
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
        Ok(Self {
            model: ModelId {
                n_embd,
                n_layer,
                arch: s("controlvector.model_hint")?,
                model_fingerprint: s("cmrm.model_fingerprint")?,
                mmproj_fingerprint: s("cmrm.mmproj_fingerprint").unwrap_or_default(),
            },
            method: s("cmrm.method")?.parse()?,
            corruption: s("cmrm.corruption")?,
            n_anchors: u("cmrm.n_anchors")?,
            deltas: deltas.chunks(n_embd).map(<[f32]>::to_vec).collect(),
            recommended,
            anchors,
        })
    }

    #[cfg(feature = "llama")]
    /// Reads a vector file and checks that it was made for `engine`'s model (`force` accepts
    /// another file of the same shape).
    pub fn load_for(path: &Path, engine: &Engine, force: bool) -> Result<Self> {
        let v = Self::load(path)?;
        v.check_model(path, &ModelId::of(engine)?, force)?;
        Ok(v)
    }

    /// Refuses vectors made for another model: shape always, fingerprint unless `force`.
    pub fn check_model(&self, path: &Path, model: &ModelId, force: bool) -> Result<()> {
        let m = &self.model;
        if m.n_embd != model.n_embd || m.n_layer != model.n_layer {
            return Err(Error::ForeignVectors {
                path: path.to_path_buf(),
                detail: format!(
                    "vectors are for a model with n_embd {} and {} layers, this model has n_embd {} and {} layers",
                    m.n_embd, m.n_layer, model.n_embd, model.n_layer
                ),
                overridable: false,
            });
        }
        if !force && m.model_fingerprint != model.model_fingerprint {
            return Err(Error::ForeignVectors {
                path: path.to_path_buf(),
                detail: format!(
                    "vectors were computed for another model file (fingerprint {} vs {})",
                    m.model_fingerprint, model.model_fingerprint
                ),
                overridable: true,
            });
        }
        Ok(())
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
