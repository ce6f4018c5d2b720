//! CMRM vector files: GGUF in llama.cpp's control-vector layout (`direction.<il>` for il in
//! 1..n_layer-1, so plain llama.cpp loads them with `--control-vector`), plus `cmrm.*` metadata
//! with the raw per-layer shift estimates from which any application rule can be rebuilt.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context as _, Result};

use crate::gguf::{self, Value};
use crate::steer::{Apply, Positions, SteerConfig};

/// How the per-anchor shifts were aggregated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// Mean of the anchors' shifts.
    Mean,
    /// First principal component, sign aligned with the mean, scaled to the mean projection.
    Pca,
}

impl Method {
    /// The name stored in files.
    pub fn name(self) -> &'static str {
        match self {
            Method::Mean => "mean",
            Method::Pca => "pca",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Method::Mean),
            "pca" => Ok(Method::Pca),
            _ => bail!("unknown method {s:?}"),
        }
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
        crate::steer::control_rows(&self.deltas, cfg)
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
            ("cmrm.method".into(), Value::Str(self.method.name().into())),
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
            ("cmrm.apply".into(), Value::Str(r.apply.name().into())),
            (
                "cmrm.positions".into(),
                Value::Str(r.positions.name().into()),
            ),
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
        gguf::check_file(path, "CMRM vector file")?;
        let h = gguf::read_header(path)?;
        let ctx = || {
            format!(
                "{}: not a cmrm vector file (make one with `cmrm calibrate`)",
                path.display()
            )
        };
        let s = |k: &str| match h.get(k) {
            Some(Value::Str(v)) => Ok(v.clone()),
            _ => Err(anyhow::anyhow!("missing {k}")),
        };
        let u = |k: &str| {
            h.get(k)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| anyhow::anyhow!("missing {k}"))
        };
        let parsed = (|| -> Result<Self> {
            ensure!(
                s("general.architecture")? == "controlvector",
                "not a control vector"
            );
            let n_embd = u("cmrm.n_embd")?;
            let n_layer = u("cmrm.n_layer")?;
            ensure!(n_embd > 0 && n_layer > 1, "bad shape {n_embd}x{n_layer}");
            let Some(Value::F32s(deltas)) = h.get("cmrm.deltas") else {
                bail!("missing cmrm.deltas");
            };
            ensure!(
                deltas.len() == n_embd * n_layer,
                "cmrm.deltas has the wrong length"
            );
            let alpha = match h.get("cmrm.alpha") {
                Some(Value::F32(a)) => *a,
                _ => bail!("missing cmrm.alpha"),
            };
            let recommended = SteerConfig {
                alpha,
                apply: Apply::parse(&s("cmrm.apply")?)?,
                positions: Positions::parse(&s("cmrm.positions")?)?,
                layers: (u("cmrm.layer_start")?, u("cmrm.layer_end")?),
                ..SteerConfig::default()
            };
            ensure!(
                recommended.layers.0 <= recommended.layers.1 && recommended.layers.1 < n_layer,
                "bad layer range"
            );
            let anchors = match (h.get("cmrm.anchor_ids"), h.get("cmrm.anchor_deltas")) {
                (Some(Value::Strs(ids)), Some(Value::F32s(d))) => {
                    let ids = ids
                        .iter()
                        .map(|i| i.parse())
                        .collect::<Result<Vec<u64>, _>>()?;
                    ensure!(
                        d.len() == ids.len() * n_embd * n_layer,
                        "anchor deltas have the wrong length"
                    );
                    Some((ids, d.clone()))
                }
                _ => None,
            };
            for il in 1..n_layer {
                let t = h
                    .tensor(&format!("direction.{il}"))
                    .with_context(|| format!("missing tensor direction.{il}"))?;
                ensure!(
                    t.dims == [n_embd as u64],
                    "direction.{il} has the wrong shape"
                );
                gguf::read_f32_tensor(path, &h, t)?;
            }
            Ok(Self {
                model: ModelId {
                    n_embd,
                    n_layer,
                    arch: s("controlvector.model_hint")?,
                    model_fingerprint: s("cmrm.model_fingerprint")?,
                    mmproj_fingerprint: s("cmrm.mmproj_fingerprint").unwrap_or_default(),
                },
                method: Method::parse(&s("cmrm.method")?)?,
                corruption: s("cmrm.corruption")?,
                n_anchors: u("cmrm.n_anchors")?,
                deltas: deltas.chunks(n_embd).map(<[f32]>::to_vec).collect(),
                recommended,
                anchors,
            })
        })();
        parsed.with_context(ctx)
    }

    /// Refuses vectors made for another model: shape always, fingerprint unless `force`.
    pub fn check_model(&self, path: &Path, model: &ModelId, force: bool) -> Result<()> {
        let m = &self.model;
        if m.n_embd != model.n_embd || m.n_layer != model.n_layer {
            bail!(
                "{}: vectors are for a model with n_embd {} and {} layers, this model has n_embd {} and {} layers: calibrate vectors for this model",
                path.display(), m.n_embd, m.n_layer, model.n_embd, model.n_layer
            );
        }
        if !force && m.model_fingerprint != model.model_fingerprint {
            bail!(
                "{}: vectors were computed for another model file (fingerprint {} vs {}): calibrate for this model, or pass --force to use them anyway (e.g. another quantization of the same model)",
                path.display(), m.model_fingerprint, model.model_fingerprint
            );
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
