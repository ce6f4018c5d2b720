//! Calibration: estimating the vision-induced shift `delta_l = h_text - h_corrupt` at the last
//! prompt token of every layer, over an anchor set, and aggregating it (mean or PCA) into a
//! vector file. Resumable (finished anchors are appended to `<out>.partial` and skipped on a
//! rerun) and shardable (`--shard i/n`, then [`merge`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure, Context as _, Result};
use image::RgbImage;

use crate::capture::{shared, LayerCapture};
use crate::data::{read_jsonl, Item};
use crate::engine::Engine;
use crate::media;
use crate::progress::Progress;
use crate::session::{NoHooks, Session};
use crate::steer::SteerConfig;
use crate::vectors::{CmrmVectors, Method, ModelId};

/// An anchor: a data-set line (its prompt, and its image for the `anchor` corruption).
pub type Anchor = Item;

/// Reads JSONL anchors (see [`crate::data::read_jsonl`]).
pub fn read_anchors(path: &Path) -> Result<Vec<Anchor>> {
    read_jsonl(path)
}

/// The meaningless image that stands in for the real one.
#[derive(Clone, Debug, PartialEq)]
pub enum Corruption {
    /// Uniform mid-grey.
    Blank,
    /// Uniform noise, seeded per anchor (seed + anchor index).
    Noise(u64),
    /// The anchor's own image (its shift against text alone).
    Anchor,
    /// One user image for every anchor.
    Image(PathBuf),
}

impl Corruption {
    /// Parses `blank`, `noise`, `noise:SEED`, `anchor` or a path.
    pub fn parse(s: &str) -> Self {
        match s {
            "blank" => Corruption::Blank,
            "noise" => Corruption::Noise(0),
            "anchor" => Corruption::Anchor,
            _ => match s.strip_prefix("noise:").and_then(|n| n.parse().ok()) {
                Some(seed) => Corruption::Noise(seed),
                None => Corruption::Image(PathBuf::from(s)),
            },
        }
    }

    /// The name stored in vector files.
    pub fn name(&self) -> String {
        match self {
            Corruption::Blank => "blank".into(),
            Corruption::Noise(seed) => format!("noise:{seed}"),
            Corruption::Anchor => "anchor".into(),
            Corruption::Image(p) => p
                .file_name()
                .map_or("image".into(), |n| n.to_string_lossy().into()),
        }
    }

    /// The image for anchor `index`.
    pub fn image(&self, anchor: &Anchor, index: u64) -> Result<RgbImage> {
        Ok(match self {
            Corruption::Blank => media::blank(224),
            Corruption::Noise(seed) => media::noise(224, seed.wrapping_add(index)),
            Corruption::Anchor => {
                let src = anchor.image.as_deref().with_context(|| {
                    format!("anchor {index} has no image (corruption `anchor`)")
                })?;
                media::load(src)?
            }
            Corruption::Image(p) => media::load(&p.to_string_lossy())?,
        })
    }
}

/// Captures last-token states of every layer for prompts, on its own hooked context.
pub struct StateReader<'e> {
    session: Session<'e>,
    capture: Arc<Mutex<LayerCapture>>,
}

impl<'e> StateReader<'e> {
    /// A reader on `engine`.
    pub fn new(engine: &'e Engine) -> Result<Self> {
        let capture = LayerCapture::all_layers(engine.model().n_layer());
        let session = engine.session(Some(shared(&capture)))?;
        Ok(Self { session, capture })
    }

    /// Per-layer last-token states of a fresh single-turn prompt.
    pub fn states(
        &mut self,
        system: Option<&str>,
        text: &str,
        images: &[RgbImage],
    ) -> Result<Vec<Vec<f32>>> {
        self.session.reset();
        self.capture
            .lock()
            .map_err(|_| anyhow::anyhow!("capture poisoned"))?
            .clear();
        let prompt = self.session.prepare(system, text, images)?;
        self.session.eval(&prompt, &mut NoHooks)?;
        let states = self
            .capture
            .lock()
            .map_err(|_| anyhow::anyhow!("capture poisoned"))?
            .all_states();
        states.context("a layer state was not captured (unsupported architecture?)")
    }

    /// `h_text - h_corrupt` per layer for one prompt.
    pub fn shift(
        &mut self,
        system: Option<&str>,
        text: &str,
        corrupt: &RgbImage,
    ) -> Result<Vec<Vec<f32>>> {
        let t = self.states(system, text, &[])?;
        let c = self.states(system, text, std::slice::from_ref(corrupt))?;
        Ok(t.iter()
            .zip(&c)
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x - y).collect())
            .collect())
    }
}

/// The identity of the engine's model, for vector files.
pub fn model_id(engine: &Engine) -> Result<ModelId> {
    let o = engine.options();
    Ok(ModelId {
        n_embd: engine.model().n_embd(),
        n_layer: engine.model().n_layer(),
        arch: engine
            .model()
            .meta("general.architecture")
            .unwrap_or_default(),
        model_fingerprint: crate::gguf::fingerprint(&o.model)?,
        mmproj_fingerprint: match &o.mmproj {
            Some(p) => crate::gguf::fingerprint(p)?,
            None => String::new(),
        },
    })
}

/// Settings of a calibration run.
#[derive(Clone, Debug)]
pub struct CalibrateOptions {
    /// Aggregation.
    pub method: Method,
    /// The meaningless image.
    pub corruption: Corruption,
    /// System message used for every anchor.
    pub system: Option<String>,
    /// `(i, n)`: only anchors with index % n == i; the output keeps per-anchor shifts.
    pub shard: Option<(usize, usize)>,
    /// Steering settings recorded as recommended.
    pub recommended: SteerConfig,
}

/// Calibrates over `anchors` and writes `out`; resumes from `<out>.partial`.
pub fn calibrate(
    engine: &Engine,
    anchors: &[Anchor],
    opts: &CalibrateOptions,
    out: &Path,
) -> Result<CmrmVectors> {
    let id = model_id(engine)?;
    let width = id.n_layer * id.n_embd;
    let partial = partial_path(out);
    let tag = format!(
        "{} {} {}",
        id.model_fingerprint,
        opts.corruption.name(),
        anchors.len()
    );
    let mut done = read_partial(&partial, &tag, width)?;
    let todo: Vec<u64> = (0..anchors.len() as u64)
        .filter(|i| opts.shard.is_none_or(|(k, n)| *i as usize % n == k))
        .collect();
    let mut file = open_partial(&partial, &tag)?;
    let mut reader = StateReader::new(engine)?;
    let mut bar = Progress::new(
        "anchors",
        todo.len(),
        todo.iter()
            .filter(|i| done.iter().any(|(d, _)| d == *i))
            .count(),
    );
    for &i in &todo {
        if done.iter().any(|(d, _)| *d == i) {
            continue;
        }
        let anchor = &anchors[i as usize];
        let corrupt = opts.corruption.image(anchor, i)?;
        let shift = reader
            .shift(opts.system.as_deref(), &anchor.prompt, &corrupt)
            .with_context(|| format!("anchor {} ({:.40}...)", i + 1, anchor.prompt))?;
        let flat = shift.concat();
        append_record(&mut file, i, &flat)?;
        done.push((i, flat));
        bar.inc();
    }
    done.retain(|(i, _)| todo.contains(i));
    let vectors = aggregate(id, opts, done)?;
    vectors.save(out)?;
    std::fs::remove_file(&partial).ok();
    Ok(vectors)
}

fn aggregate(
    model: ModelId,
    opts: &CalibrateOptions,
    mut records: Vec<(u64, Vec<f32>)>,
) -> Result<CmrmVectors> {
    records.sort_by_key(|(i, _)| *i);
    records.dedup_by_key(|(i, _)| *i);
    ensure!(!records.is_empty(), "no anchor was calibrated");
    let (n_embd, n_layer) = (model.n_embd, model.n_layer);
    let rows: Vec<&[f32]> = records.iter().map(|(_, r)| r.as_slice()).collect();
    let deltas = (0..n_layer)
        .map(|il| {
            let layer: Vec<&[f32]> = rows
                .iter()
                .map(|r| &r[il * n_embd..(il + 1) * n_embd])
                .collect();
            match opts.method {
                Method::Mean => mean(&layer),
                Method::Pca => pca(&layer),
            }
        })
        .collect();
    let anchors = opts.shard.map(|_| {
        (
            records.iter().map(|(i, _)| *i).collect(),
            records
                .iter()
                .flat_map(|(_, r)| r.iter().copied())
                .collect(),
        )
    });
    Ok(CmrmVectors {
        model,
        method: opts.method,
        corruption: opts.corruption.name(),
        n_anchors: records.len(),
        deltas,
        recommended: SteerConfig {
            layers: opts.recommended.layer_range(n_layer),
            ..opts.recommended.clone()
        },
        anchors,
    })
}

/// Merges shard files (made with `--shard`) into one vector file, equal to a single run.
pub fn merge(inputs: &[PathBuf], out: &Path, method: Option<Method>) -> Result<CmrmVectors> {
    ensure!(!inputs.is_empty(), "nothing to merge");
    let mut first: Option<CmrmVectors> = None;
    let mut records = Vec::new();
    for p in inputs {
        let v = CmrmVectors::load(p)?;
        let Some((ids, data)) = &v.anchors else {
            bail!(
                "{}: has no per-anchor shifts: make shards with `cmrm calibrate --shard i/n`",
                p.display()
            );
        };
        let width = v.model.n_embd * v.model.n_layer;
        records.extend(
            ids.iter()
                .copied()
                .zip(data.chunks(width).map(<[f32]>::to_vec)),
        );
        if let Some(f) = &first {
            ensure!(
                f.model == v.model && f.corruption == v.corruption,
                "{}: made for another model or corruption than {}",
                p.display(),
                inputs[0].display()
            );
        } else {
            first = Some(v);
        }
    }
    let f = first.expect("at least one input");
    let opts = CalibrateOptions {
        method: method.unwrap_or(f.method),
        corruption: Corruption::parse(&f.corruption),
        system: None,
        shard: None,
        recommended: f.recommended.clone(),
    };
    let mut v = aggregate(f.model.clone(), &opts, records)?;
    v.corruption = f.corruption.clone();
    v.save(out)?;
    Ok(v)
}

/// Mean of rows.
pub fn mean(rows: &[&[f32]]) -> Vec<f32> {
    let n = rows.len() as f64;
    (0..rows[0].len())
        .map(|j| (rows.iter().map(|r| r[j] as f64).sum::<f64>() / n) as f32)
        .collect()
}

/// First principal direction of the rows (the top right-singular vector of the undata
/// shift matrix: the direction that explains most of the shifts themselves, not of their
/// spread around the mean), sign aligned with the mean, scaled to the mean projection of the
/// rows onto it. A single row gives itself.
pub fn pca(rows: &[&[f32]]) -> Vec<f32> {
    let m = mean(rows);
    if rows.len() < 2 {
        return m;
    }
    let d = m.len();
    let data: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| r.iter().map(|&x| x as f64).collect())
        .collect();
    // Power iteration on C = X^T X, started from the mean direction (deterministic).
    let mut v: Vec<f64> = m.iter().map(|&x| x as f64 + 1e-3).collect();
    for _ in 0..200 {
        let proj: Vec<f64> = data.iter().map(|r| dot(r, &v)).collect();
        let mut next = vec![0f64; d];
        for (r, p) in data.iter().zip(&proj) {
            next.iter_mut().zip(r).for_each(|(n, x)| *n += p * x);
        }
        let norm = dot(&next, &next).sqrt();
        if norm == 0.0 {
            break;
        }
        next.iter_mut().for_each(|x| *x /= norm);
        let change: f64 = next.iter().zip(&v).map(|(a, b)| (a - b).abs()).sum();
        v = next;
        if change < 1e-9 {
            break;
        }
    }
    let mean64: Vec<f64> = m.iter().map(|&x| x as f64).collect();
    if dot(&v, &mean64) < 0.0 {
        v.iter_mut().for_each(|x| *x = -*x);
    }
    let scale = dot(&v, &mean64) / dot(&v, &v).sqrt().max(1e-30);
    v.iter().map(|x| (x * scale) as f32).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

const PARTIAL_MAGIC: &str = "cmrm-partial-v1";

/// Reads finished records of an earlier run with the same tag; a torn last record is dropped.
fn read_partial(path: &Path, tag: &str, width: usize) -> Result<Vec<(u64, Vec<f32>)>> {
    let Ok(mut f) = File::open(path) else {
        return Ok(Vec::new());
    };
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let header = format!("{PARTIAL_MAGIC} {tag}\n");
    if !bytes.starts_with(header.as_bytes()) {
        bail!(
            "{}: left by a calibration with other settings or another model: delete it to start over",
            path.display()
        );
    }
    let rec = 8 + 4 * width;
    let body = &bytes[header.len()..];
    let whole = body.len() / rec * rec;
    if whole != body.len() {
        // Drop the torn record so that appends stay aligned.
        OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len((header.len() + whole) as u64)?;
    }
    Ok(body[..whole]
        .chunks_exact(rec)
        .map(|r| {
            let id = u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
            let v = r[8..]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (id, v)
        })
        .collect())
}

fn open_partial(path: &Path, tag: &str) -> Result<File> {
    let exists = path.exists();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    if !exists {
        f.write_all(format!("{PARTIAL_MAGIC} {tag}\n").as_bytes())?;
    }
    Ok(f)
}

fn append_record(f: &mut File, id: u64, data: &[f32]) -> Result<()> {
    let mut buf = Vec::with_capacity(8 + data.len() * 4);
    buf.extend(id.to_le_bytes());
    data.iter().for_each(|x| buf.extend(x.to_le_bytes()));
    f.write_all(&buf)?;
    f.sync_data()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_agrees_with_mean_on_a_clear_direction() {
        // Shifts along (3, 4) with varying magnitude, plus small orthogonal noise.
        let rows: Vec<Vec<f32>> = (0..20)
            .map(|i| {
                let s = 1.0 + i as f32 * 0.5;
                let n = if i % 2 == 0 { 0.05 } else { -0.05 };
                vec![3.0 * s - 4.0 * n, 4.0 * s + 3.0 * n]
            })
            .collect();
        let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        let m = mean(&refs);
        let p = pca(&refs);
        let cos = (m[0] * p[0] + m[1] * p[1])
            / ((m[0] * m[0] + m[1] * m[1]).sqrt() * (p[0] * p[0] + p[1] * p[1]).sqrt());
        assert!(cos > 0.999, "cos {cos}");
        let (nm, np) = (
            (m[0] * m[0] + m[1] * m[1]).sqrt(),
            (p[0] * p[0] + p[1] * p[1]).sqrt(),
        );
        assert!((nm - np).abs() / nm < 0.01, "{nm} vs {np}");
    }

    #[test]
    fn partial_file_drops_a_torn_record() {
        let dir = std::env::temp_dir().join(format!("cmrm-partial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("v.gguf.partial");
        let mut f = open_partial(&p, "t").unwrap();
        append_record(&mut f, 3, &[1.0, 2.0]).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        drop(f);
        let recs = read_partial(&p, "t", 2).unwrap();
        assert_eq!(recs, vec![(3, vec![1.0, 2.0])]);
        assert!(read_partial(&p, "other", 2).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
