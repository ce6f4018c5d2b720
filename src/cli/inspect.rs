//! `cmrm inspect`: what a vector file holds.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use cmrm::vectors::CmrmVectors;

/// Flags of `cmrm inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Vector file.
    file: PathBuf,
}

/// Prints metadata and per-layer norms.
pub fn run(args: InspectArgs) -> Result<()> {
    let v = CmrmVectors::load(&args.file)?;
    let r = &v.recommended;
    println!("file:        {}", args.file.display());
    println!(
        "model:       {} (n_embd {}, {} layers)",
        v.model.arch, v.model.n_embd, v.model.n_layer
    );
    println!(
        "fingerprint: model {} mmproj {}",
        v.model.model_fingerprint, v.model.mmproj_fingerprint
    );
    println!(
        "method:      {} over {} anchors, corruption {}",
        v.method, v.n_anchors, v.corruption
    );
    let (first, last) = r.layer_range(v.model.n_layer);
    println!(
        "recommended: alpha {} apply {} layers {first}-{last} positions {}",
        r.alpha, r.apply, r.positions
    );
    if let Some((ids, _)) = &v.anchors {
        println!(
            "per-anchor shifts kept: {} (a shard; merge with `cmrm merge`)",
            ids.len()
        );
    }
    let rows = v.control_rows(r);
    let norm = |x: &[f32]| cmrm::math::norm(x) as f32;
    println!("{:>5} {:>12} {:>14}", "layer", "|delta|", "|direction|");
    for (il, d) in v.deltas.iter().enumerate() {
        let dir = if il == 0 {
            "-".to_string()
        } else {
            format!(
                "{:.4}",
                norm(&rows[(il - 1) * v.model.n_embd..il * v.model.n_embd])
            )
        };
        println!("{il:>5} {:>12.4} {dir:>14}", norm(d));
    }
    Ok(())
}
