//! Calibration: estimating the vision-induced shift `delta_l = h_text - h_corrupt` at the last
//! prompt token of every layer, over an anchor set, and aggregating it (mean or PCA) into a
//! vector file. Resumable (finished anchors are appended to `<out>.partial` and skipped on a
//! rerun) and shardable (`--shard i/n`, then [`merge`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use crate::capture::StateReader;
use crate::data::Item;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ffi::{Busy, LOCKSTEP};
use crate::layer_vectors::LayerVectors;
use crate::math;
use crate::media::{Corruption, Image};
use crate::progress::Progress;
use crate::session::{Layers, SteerConfig};
use crate::vectors::{AnchorSet, CmrmVectors, Method, ModelId, Provenance, Safety};

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
    /// The anchor set, recorded in the file for the people who download it.
    pub anchor_set: Option<AnchorSet>,
    /// ShiftDC: benign requests; with them the file also holds per-layer safety directions
    /// (the anchors' mean text-only state minus the benign requests').
    pub benign: Option<Vec<Item>>,
}

/// Calibrates over `anchors` and writes `out`; resumes from `<out>.partial`.
pub fn calibrate(
    engine: &Engine,
    anchors: &[Item],
    opts: &CalibrateOptions,
    out: &Path,
) -> Result<CmrmVectors> {
    calibrate_parallel(engine, anchors, opts, out, 1)
}

/// [`calibrate`], reading `parallel` anchors at once on lanes of one batched context, in
/// lockstep (the same file every run; it may differ from one anchor at a time by rounding).
pub fn calibrate_parallel(
    engine: &Engine,
    anchors: &[Item],
    opts: &CalibrateOptions,
    out: &Path,
    parallel: usize,
) -> Result<CmrmVectors> {
    if opts.benign.is_some() && opts.shard.is_some() {
        return Err(Error::Invalid(
            "safety directions (--benign) are measured in one run: calibrate them without --shard"
                .into(),
        ));
    }
    let id = ModelId::of(engine)?;
    let width = id.n_layer * id.n_embd;
    let partial = partial_path(out);
    let tag = format!(
        "{} {} {}",
        id.model.fingerprint,
        opts.corruption.file_name(),
        anchors.len()
    );
    let mut done = read_partial(&partial, &tag, width)?;
    let todo: Vec<u64> = (0..anchors.len() as u64)
        .filter(|i| opts.shard.is_none_or(|(k, n)| *i as usize % n == k))
        .collect();
    let mut file = open_partial(&partial, &tag)?;
    let batched = match parallel {
        0 | 1 => None,
        n => {
            let b = engine.batched(n, false)?;
            b.set_gather(LOCKSTEP);
            Some(b)
        }
    };
    let mut readers = (0..parallel.max(1))
        .map(|_| StateReader::on(engine, batched.clone()))
        .collect::<Result<Vec<_>>>()?;
    let finished = |done: &[(u64, Vec<f32>)], i: u64| done.iter().any(|(d, _)| *d == i);
    let mut bar = Progress::new(
        "anchors",
        todo.len(),
        todo.iter().filter(|&&i| finished(&done, i)).count(),
    );
    let pending: Vec<u64> = todo
        .iter()
        .copied()
        .filter(|&i| !finished(&done, i))
        .collect();
    // A corruption that does not depend on the anchor is made once.
    let fixed = match pending.first() {
        Some(&i) if opts.corruption.is_fixed() => Some(Image::from(
            opts.corruption
                .image(anchors[i as usize].image.as_deref(), i)?,
        )),
        _ => None,
    };
    let corrupt = |i: u64| -> Result<Image> {
        match &fixed {
            Some(im) => Ok(im.clone()),
            None => Ok(Image::from(
                opts.corruption
                    .image(anchors[i as usize].image.as_deref(), i)?,
            )),
        }
    };
    let lanes = readers.len();
    let failed = AtomicBool::new(false);
    let mut first_error = None;
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<(u64, Result<Vec<f32>>)>();
        // Reader k takes anchors k, k + lanes, ... and is waited for from its first to its
        // last: the readers move in lockstep.
        let guards: Vec<Busy> = readers.iter().map(StateReader::busy).collect();
        for ((k, reader), guard) in readers.iter_mut().enumerate().zip(guards) {
            let (tx, pending, failed, corrupt) = (tx.clone(), &pending, &failed, &corrupt);
            s.spawn(move || {
                let _guard = guard;
                for &i in pending.iter().skip(k).step_by(lanes) {
                    if failed.load(Ordering::SeqCst) {
                        break;
                    }
                    let anchor = &anchors[i as usize];
                    let shift = corrupt(i)
                        .and_then(|im| reader.shift(opts.system.as_deref(), &anchor.prompt, &im));
                    let shift = shift.map(|s| s.concat());
                    if shift.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    if tx.send((i, shift)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for (i, shift) in rx {
            let saved = shift.and_then(|flat| {
                append_record(&mut file, &partial, i, &flat)?;
                done.push((i, flat));
                Ok(())
            });
            match saved {
                Ok(()) => bar.inc(),
                Err(e) => {
                    failed.store(true, Ordering::SeqCst);
                    first_error.get_or_insert(e);
                }
            }
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    let mut reader = readers.swap_remove(0);
    drop(readers);
    done.retain(|(i, _)| todo.contains(i));
    // In anchor order, whatever order they finished in: the sums are then the same.
    done.sort_by_key(|(i, _)| *i);
    let provenance = Provenance::now(opts.anchor_set.clone(), opts.system.clone());
    let mut vectors = aggregate(id, opts, opts.corruption.file_name(), provenance, done)?;
    if let Some(benign) = &opts.benign {
        vectors.safety = Some(safety_directions(
            &mut reader,
            opts.system.as_deref(),
            anchors,
            benign,
        )?);
    }
    vectors.save(out)?;
    std::fs::remove_file(&partial).ok();
    Ok(vectors)
}

fn aggregate(
    model: ModelId,
    opts: &CalibrateOptions,
    corruption: String,
    provenance: Provenance,
    mut records: Vec<(u64, Vec<f32>)>,
) -> Result<CmrmVectors> {
    records.sort_by_key(|(i, _)| *i);
    records.dedup_by_key(|(i, _)| *i);
    if records.is_empty() {
        return Err(Error::Invalid("no anchor was calibrated".into()));
    }
    let n_layer = model.n_layer;
    let rows: Vec<&[f32]> = records.iter().map(|(_, r)| r.as_slice()).collect();
    let deltas = per_layer(&rows, n_layer, |layer| match opts.method {
        Method::Mean => math::mean(layer),
        Method::Pca => math::principal_direction(layer),
    });
    let anchors = opts.shard.map(|_| {
        (
            records.iter().map(|(i, _)| *i).collect(),
            records
                .iter()
                .flat_map(|(_, r)| r.iter().copied())
                .collect(),
        )
    });
    let (first, last) = opts.recommended.layer_range(n_layer);
    Ok(CmrmVectors {
        model,
        method: opts.method,
        corruption,
        n_anchors: records.len(),
        deltas,
        recommended: SteerConfig {
            layers: Layers::Range(first, last),
            ..opts.recommended.clone()
        },
        anchors,
        provenance,
        safety: None,
    })
}

/// `reduce` applied to every layer's slice of `rows` (each `n_layer` layers, flattened).
fn per_layer(
    rows: &[&[f32]],
    n_layer: usize,
    reduce: impl Fn(&[&[f32]]) -> Vec<f32>,
) -> LayerVectors {
    let n_embd = rows[0].len() / n_layer;
    (0..n_layer)
        .map(|il| {
            let layer: Vec<&[f32]> = rows
                .iter()
                .map(|r| &r[il * n_embd..(il + 1) * n_embd])
                .collect();
            reduce(&layer)
        })
        .collect()
}

/// ShiftDC's safety direction of every layer: the mean last-prompt-token state of the
/// `harmful` requests minus that of the `benign` ones, both text-only (one prefill each).
pub fn safety_directions(
    reader: &mut StateReader<'_>,
    system: Option<&str>,
    harmful: &[Item],
    benign: &[Item],
) -> Result<Safety> {
    if harmful.is_empty() || benign.is_empty() {
        return Err(Error::Invalid(
            "safety directions need at least one harmful and one benign request".into(),
        ));
    }
    let mut bar = Progress::new("text-only requests", harmful.len() + benign.len(), 0);
    let mut mean_states = |items: &[Item]| -> Result<LayerVectors> {
        let mut states = Vec::with_capacity(items.len());
        for item in items {
            states.push(reader.states(system, &item.prompt, &[])?);
            bar.inc();
        }
        // Each layer's mean over the requests, straight from the rows (no flat copies).
        Ok(states[0].map(|il, _| {
            let layer: Vec<&[f32]> = states.iter().map(|s| s[il].as_slice()).collect();
            math::mean(&layer)
        }))
    };
    let unsafe_mean = mean_states(harmful)?;
    let safe_mean = mean_states(benign)?;
    Ok(Safety {
        directions: unsafe_mean.map(|il, u| math::sub(u, &safe_mean[il])),
        n_harmful: harmful.len(),
        n_benign: benign.len(),
    })
}

/// Merges shard files (made with `--shard`) into one vector file, equal to a single run.
/// Shards of another model or another corruption are refused.
pub fn merge(inputs: &[PathBuf], out: &Path, method: Option<Method>) -> Result<CmrmVectors> {
    let Some(first_path) = inputs.first() else {
        return Err(Error::Invalid("nothing to merge".into()));
    };
    let first = CmrmVectors::load(first_path)?;
    let mut records: Vec<(u64, Vec<f32>)> = Vec::new();
    for p in inputs {
        let v = if p == first_path {
            first.clone()
        } else {
            CmrmVectors::load(p)?
        };
        let Some((ids, data)) = &v.anchors else {
            return Err(Error::vectors(
                p,
                "has no per-anchor shifts: make shards with `cmrm calibrate --shard i/n`",
            ));
        };
        let set = |v: &CmrmVectors| v.provenance.anchors.as_ref().map(|a| a.sha256.clone());
        if v.model != first.model || v.corruption != first.corruption || set(&v) != set(&first) {
            return Err(Error::vectors(
                p,
                format!(
                    "made for another model, corruption or anchor set than {} (corruption {} vs {})",
                    first_path.display(),
                    v.corruption,
                    first.corruption
                ),
            ));
        }
        let width = v.model.n_embd * v.model.n_layer;
        for (id, row) in ids.iter().copied().zip(data.chunks(width)) {
            if records.iter().any(|(r, _)| *r == id) {
                return Err(Error::vectors(p, format!("anchor {id} is in two shards")));
            }
            records.push((id, row.to_vec()));
        }
    }
    let opts = CalibrateOptions {
        method: method.unwrap_or(first.method),
        corruption: Corruption::Blank,
        system: None,
        shard: None,
        recommended: first.recommended.clone(),
        anchor_set: None,
        benign: None,
    };
    let v = aggregate(
        first.model.clone(),
        &opts,
        first.corruption.clone(),
        first.provenance.clone(),
        records,
    )?;
    v.save(out)?;
    Ok(v)
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
    f.read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, "read", e))?;
    let header = format!("{PARTIAL_MAGIC} {tag}\n");
    if !bytes.starts_with(header.as_bytes()) {
        return Err(Error::data(
            path,
            None,
            "left by a calibration with other settings or another model: delete it to start over",
        ));
    }
    let rec = 8 + 4 * width;
    let body = &bytes[header.len()..];
    let whole = body.len() / rec * rec;
    if whole != body.len() {
        // Drop the torn record so that appends stay aligned.
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len((header.len() + whole) as u64))
            .map_err(|e| Error::io(path, "write", e))?;
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
        .map_err(|e| Error::io(path, "write", e))?;
    if !exists {
        f.write_all(format!("{PARTIAL_MAGIC} {tag}\n").as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| Error::io(path, "write", e))?;
    }
    Ok(f)
}

fn append_record(f: &mut File, path: &Path, id: u64, data: &[f32]) -> Result<()> {
    let mut buf = Vec::with_capacity(8 + data.len() * 4);
    buf.extend(id.to_le_bytes());
    data.iter().for_each(|x| buf.extend(x.to_le_bytes()));
    f.write_all(&buf)
        .and_then(|_| f.sync_data())
        .map_err(|e| Error::io(path, "write", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_file_drops_a_torn_record() {
        let dir = std::env::temp_dir().join(format!("cmrm-partial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("v.gguf.partial");
        let mut f = open_partial(&p, "t").unwrap();
        append_record(&mut f, &p, 3, &[1.0, 2.0]).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        drop(f);
        let recs = read_partial(&p, "t", 2).unwrap();
        assert_eq!(recs, vec![(3, vec![1.0, 2.0])]);
        assert!(read_partial(&p, "other", 2).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
