//! `cmrm inspect`: what a vector file holds, how it was made and for which model.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};

use cmrm::vectors::{CmrmVectors, FileId};

/// Flags of `cmrm inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Vector file.
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Prints provenance, model identity, recommended settings and per-layer norms.
pub fn run(args: InspectArgs) -> Result<()> {
    let v = CmrmVectors::load(&args.file)?;
    let (delta_norms, direction_norms) = norms(&v);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&as_json(&args, &v, &delta_norms, &direction_norms))?
        );
        return Ok(());
    }
    let r = &v.recommended;
    let p = &v.provenance;
    let unknown = |s: &str| {
        if s.is_empty() {
            "unknown".to_string()
        } else {
            s.to_string()
        }
    };
    println!("file:        {}", args.file.display());
    println!(
        "model:       {} (n_embd {}, {} layers)",
        v.model.arch, v.model.n_embd, v.model.n_layer
    );
    print_file("measured on", &v.model.model);
    if let Some(m) = &v.model.mmproj {
        print_file("projector", m);
    }
    println!(
        "made:        by cmrm {} on {}",
        unknown(&p.cmrm_version),
        unknown(&p.created)
    );
    println!(
        "method:      {} over {} anchors, corruption {}",
        v.method, v.n_anchors, v.corruption
    );
    match &p.anchors {
        Some(a) => println!(
            "anchor set:  {} ({} items, sha256 {})",
            a.name, a.size, a.sha256
        ),
        None => println!("anchor set:  not recorded (made before cmrm recorded provenance)"),
    }
    if let Some(sys) = &p.system_prompt {
        println!("system:      {sys:?}");
    }
    let (first, last) = r.layer_range(v.model.n_layer);
    println!(
        "recommended: alpha {} apply {} layers {first}-{last} positions {}",
        r.alpha, r.apply, r.positions
    );
    if let Some(safety) = &v.safety {
        println!(
            "safety directions (ShiftDC, --cmrm-apply project): {} harmful vs {} benign requests",
            safety.n_harmful, safety.n_benign
        );
    }
    if let Some((ids, _)) = &v.anchors {
        println!(
            "per-anchor shifts kept: {} (a shard; merge with `cmrm merge`)",
            ids.len()
        );
    }
    if let Some(e) = &p.evaluation {
        println!("chosen on:\n{}", e.trim_end());
    }
    let refusal = v.refusal_components();
    if refusal.is_some() {
        println!(
            "refusal component: cos(refusal) is the cosine between a layer's shift and its \
             refusal direction; 'pure' is the share of the shift's norm left when that component \
             is projected out (--cmrm-apply pure steers with it)"
        );
    }
    print!("{:>5} {:>12} {:>14}", "layer", "|delta|", "|direction|");
    if refusal.is_some() {
        print!(" {:>14} {:>6}", "cos(refusal)", "pure");
    }
    println!();
    for (il, d) in delta_norms.iter().enumerate() {
        let dir = direction_norms[il].map_or("-".to_string(), |n| format!("{n:.4}"));
        print!("{il:>5} {d:>12.4} {dir:>14}");
        if let Some(r) = refusal.as_ref().and_then(|r| r.get(il)) {
            print!(" {:>14.4} {:>5.0}%", r.cosine, r.remaining * 100.0);
        }
        println!();
    }
    Ok(())
}

fn print_file(label: &str, f: &FileId) {
    let id = f.identity.to_string();
    println!(
        "{label:<12} {} ({}), identity {}",
        if f.file.is_empty() {
            "a file not named in this vector file"
        } else {
            &f.file
        },
        if f.quantization.is_empty() {
            "quantization unknown"
        } else {
            &f.quantization
        },
        if id.is_empty() {
            "not recorded".to_string()
        } else {
            id
        }
    );
}

/// Per-layer norms of the shifts and of the control-vector rows (none for layer 0).
fn norms(v: &CmrmVectors) -> (Vec<f32>, Vec<Option<f32>>) {
    let rows = v.control_rows(&v.recommended);
    let norm = |x: &[f32]| cmrm::math::norm(x) as f32;
    let n = v.model.n_embd;
    let deltas = v.deltas.iter().map(|d| norm(d)).collect();
    let dirs = (0..v.model.n_layer)
        .map(|il| (il > 0).then(|| norm(&rows[(il - 1) * n..il * n])))
        .collect();
    (deltas, dirs)
}

fn file_json(f: &FileId) -> Value {
    json!({
        "file": f.file,
        "quantization": f.quantization,
        "fingerprint": f.fingerprint,
        "identity": f.identity.to_string(),
    })
}

fn as_json(args: &InspectArgs, v: &CmrmVectors, deltas: &[f32], dirs: &[Option<f32>]) -> Value {
    let r = &v.recommended;
    let p = &v.provenance;
    let (first, last) = r.layer_range(v.model.n_layer);
    let refusal = v.refusal_components();
    json!({
        "file": args.file,
        "model": {
            "arch": v.model.arch,
            "n_embd": v.model.n_embd,
            "n_layer": v.model.n_layer,
            "text_model": file_json(&v.model.model),
            "mmproj": v.model.mmproj.as_ref().map(file_json),
        },
        "provenance": {
            "cmrm_version": p.cmrm_version,
            "created": p.created,
            "anchor_set": p.anchors.as_ref().map(|a| json!({
                "name": a.name, "size": a.size, "sha256": a.sha256,
            })),
            "system_prompt": p.system_prompt,
            "evaluation": p.evaluation,
        },
        "method": v.method.to_string(),
        "corruption": v.corruption,
        "n_anchors": v.n_anchors,
        "shard_anchors": v.anchors.as_ref().map(|(ids, _)| ids.len()),
        "safety_directions": v.safety.as_ref().map(|s| json!({
            "n_harmful": s.n_harmful,
            "n_benign": s.n_benign,
        })),
        "recommended": {
            "alpha": r.alpha,
            "apply": r.apply.to_string(),
            "layers": [first, last],
            "positions": r.positions.to_string(),
        },
        "layers": deltas.iter().zip(dirs).enumerate().map(|(il, (d, dir))| {
            let r = refusal.as_ref().and_then(|r| r.get(il));
            json!({
                "layer": il, "delta_norm": d, "direction_norm": dir,
                "refusal_cosine": r.map(|r| r.cosine),
                "pure_fraction": r.map(|r| r.remaining),
            })
        }).collect::<Vec<_>>(),
    })
}
