//! `cmrm card`: the Markdown section a model repository shows about its vector file: what it
//! is, how it was made, how to use it with cmrm and with plain llama.cpp, and what it achieved.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;

use cmrm::vectors::CmrmVectors;

/// Flags of `cmrm card`.
#[derive(Args, Debug)]
pub struct CardArgs {
    /// Vector file.
    file: PathBuf,
    /// An output folder of `cmrm eval` / `cmrm sweep` / `cmrm analyze`: its summaries
    /// (*-summary.md) become the card's measured numbers.
    #[arg(long = "eval-summary", value_name = "DIR")]
    eval_summary: Option<PathBuf>,
    /// Write the card to this file (default: standard output).
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
}

/// The summaries a card shows, in this order, with their headings.
const SUMMARIES: [(&str, &str); 5] = [
    (
        "safety-summary.md",
        "Safety (unsafe answers to harmful requests with an image)",
    ),
    (
        "fidelity-summary.md",
        "Fidelity (how close the image answer comes to the text-only answer)",
    ),
    ("utility-summary.md", "Utility (benign requests)"),
    (
        "sweep-summary.md",
        "Sweep (alpha x layers; the recommended settings were chosen here)",
    ),
    ("gap-summary.md", "Representation gap per layer"),
];

/// Writes the card.
pub fn run(args: CardArgs) -> Result<()> {
    let v = CmrmVectors::load(&args.file)?;
    let measured = match &args.eval_summary {
        Some(dir) => Some(summaries(dir)?),
        None => None,
    };
    if let Some(out) = &args.output {
        super::files::check_output_file(out)?;
    }
    let card = render(&args.file, &v, measured.as_deref());
    match &args.output {
        Some(out) => {
            cmrm::atomic::write(out, card.as_bytes())?;
            eprintln!("wrote {}", out.display());
        }
        None => print!("{card}"),
    }
    Ok(())
}

/// The `*-summary.md` files of an output folder, with their headings.
fn summaries(dir: &Path) -> Result<Vec<(String, String)>> {
    anyhow::ensure!(
        dir.is_dir(),
        "{}: --eval-summary takes the output folder of cmrm eval, sweep or analyze (--out)",
        dir.display()
    );
    let mut found = Vec::new();
    for (name, heading) in SUMMARIES {
        let p = dir.join(name);
        if p.is_file() {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("{}: cannot read", p.display()))?;
            found.push((heading.to_string(), text));
        }
    }
    anyhow::ensure!(
        !found.is_empty(),
        "{}: no summary found (expected one of {})",
        dir.display(),
        SUMMARIES.map(|s| s.0).join(", ")
    );
    Ok(found)
}

fn render(path: &Path, v: &CmrmVectors, measured: Option<&[(String, String)]>) -> String {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let m = &v.model;
    let p = &v.provenance;
    let r = &v.recommended;
    let (first, last) = r.layer_range(m.n_layer);
    let or = |s: &str, d: &str| {
        if s.is_empty() {
            d.to_string()
        } else {
            s.to_string()
        }
    };
    let model_file = or(&m.model.file, "the model");
    let mmproj_file = m
        .mmproj
        .as_ref()
        .map_or("MMPROJ.gguf".to_string(), |f| or(&f.file, "MMPROJ.gguf"));
    let mut c = String::new();
    let _ = writeln!(c, "## CMRM safety vectors: `{name}`\n");
    let _ = writeln!(
        c,
        "`{name}` restores the safety alignment of this vision-language model when it is shown \
         images. Alignment is trained into the language backbone on text; an image shifts the \
         backbone's hidden states away from the text-only distribution and refusals of harmful \
         requests collapse. The file holds that shift per layer, measured on this model (CMRM, \
         Liu et al., [arXiv 2410.09047](https://arxiv.org/abs/2410.09047)); at inference time \
         `alpha x shift` is added back into the residual stream. No training, no change to the \
         weights.\n"
    );
    let _ = writeln!(c, "### The model it is for\n");
    let _ = writeln!(
        c,
        "- Architecture `{}`, {} layers, width {}.",
        m.arch, m.n_layer, m.n_embd
    );
    let _ = writeln!(
        c,
        "- Measured on `{model_file}` ({}){}.",
        or(&m.model.quantization, "quantization not recorded"),
        m.mmproj.as_ref().map_or(String::new(), |f| format!(
            " with the projector `{}` ({})",
            or(&f.file, "not recorded"),
            or(&f.quantization, "type not recorded")
        ))
    );
    if m.model.identity.is_empty() {
        let _ = writeln!(
            c,
            "- Model identity not recorded (made by an older cmrm): cmrm accepts it for `{model_file}` only.\n"
        );
    } else {
        let _ = writeln!(
            c,
            "- Model identity `{}`: it survives quantization, so cmrm accepts this file for every \
             quantization of the same model (Q4_K_M, Q5_K_M, Q8_0, F16, ...) and says which one the \
             shifts were measured on; another model, or another fine-tune of the same \
             architecture, is refused.\n",
            m.model.identity
        );
    }
    let _ = writeln!(c, "### How it was made\n");
    let anchors = match &p.anchors {
        Some(a) => format!(
            "{} anchors of `{}` ({} items, sha256 `{}`)",
            v.n_anchors, a.name, a.size, a.sha256
        ),
        None => format!("{} anchors (anchor set not recorded)", v.n_anchors),
    };
    let _ = writeln!(
        c,
        "- `cmrm calibrate` (cmrm {}, {}): the {} over {anchors} of `h(text) - h(text + meaningless image)` at the last prompt token of every layer; meaningless image: `{}`.",
        or(&p.cmrm_version, "version not recorded"),
        or(&p.created, "date not recorded"),
        match v.method {
            cmrm::vectors::Method::Mean => "mean",
            cmrm::vectors::Method::Pca => "first principal component",
        },
        v.corruption
    );
    if let Some(sys) = &p.system_prompt {
        let _ = writeln!(c, "- System prompt used for every anchor: `{sys}`.");
    }
    let _ = writeln!(
        c,
        "- Recommended settings (stored in the file): alpha {}, layers {first}-{last}, rule `{}`, positions `{}`.\n",
        r.alpha, r.apply, r.positions
    );
    if let Some(refusal) = v.refusal_components() {
        let (first, last) = r.layer_range(m.n_layer);
        let steered: Vec<_> = refusal.get(first..=last).unwrap_or(&[]).to_vec();
        let mean = |f: fn(&cmrm::vectors::RefusalComponent) -> f32| {
            steered.iter().map(f).sum::<f32>() / steered.len().max(1) as f32
        };
        let _ = writeln!(
            c,
            "- Refusal component: the file also holds refusal directions ({} harmful vs {} \
             benign requests). At the recommended layers the shift's cosine with them is {:.2} \
             on average: {:.0}% of the shift's norm is left when that component is projected \
             out. Averaged over harmful anchors, the dataset shift carries refusal besides the \
             modality shift, so it can lower the unsafe rate below the text-only one (and risks \
             refusing benign image requests); `--cmrm-apply pure` steers with the modality \
             shift alone.\n",
            v.safety.as_ref().map_or(0, |s| s.n_harmful),
            v.safety.as_ref().map_or(0, |s| s.n_benign),
            mean(|r| r.cosine),
            mean(|r| r.remaining) * 100.0
        );
    }
    let _ = writeln!(c, "### Use it with cmrm\n");
    let _ = writeln!(
        c,
        "Put `{name}` in the folder of the model: cmrm picks up `<model>.cmrm.gguf`, or the one \
         `*.cmrm.gguf` there made for the model, so one file serves every quantization in the \
         folder (or pass `--cmrm {name}`).\n"
    );
    let _ = writeln!(
        c,
        "```sh\ncmrm chat -m {model_file} --mmproj {mmproj_file} --image photo.jpg -p \"What is in this picture?\"\n\
         cmrm serve -m {model_file} --mmproj {mmproj_file} --port 8080   # OpenAI-compatible, CMRM on by default\n```\n"
    );
    let _ = writeln!(
        c,
        "CMRM steers image turns only, at the recommended layers and tokens; requests to `cmrm \
         serve` can change it per request with `\"cmrm\": {{\"enabled\": false}}` or \
         `{{\"alpha\": 0.5}}`, and every answer reports what was applied.\n"
    );
    let _ = writeln!(c, "### Use it with plain llama.cpp\n");
    let _ = writeln!(
        c,
        "The file is also a llama.cpp control vector (its `direction.N` tensors hold the \
         recommended shifts, alpha included):\n\n```sh\nllama-mtmd-cli -m {model_file} --mmproj {mmproj_file} --image photo.jpg -p \"...\" --control-vector {name}\n\
         llama-server -m {model_file} --mmproj {mmproj_file} --control-vector-scaled {name}:0.5   # half the recommended strength\n```\n"
    );
    let _ = writeln!(
        c,
        "llama.cpp adds a control vector to every token of every request (prompt, image \
         embeddings and generated tokens, text-only conversations too), for the whole server, \
         and never at layer 0. cmrm adds it to image turns only, at the positions `{}` \
         (`last-prompt`: the last prompt token only; `last`: it and the generated ones; `all` is what llama.cpp does), \
         can reach layer 0, turns it on and off per request, and can measure each request's own \
         shift (`--cmrm-sample`).\n",
        r.positions
    );
    if let Some(found) = measured {
        let _ = writeln!(c, "### Measured\n");
        for (heading, table) in found {
            let _ = writeln!(c, "#### {heading}\n\n{}\n", table.trim_end());
        }
    } else if let Some(e) = &p.evaluation {
        let _ = writeln!(c, "### Measured\n\n{}\n", e.trim_end());
    }
    c
}
