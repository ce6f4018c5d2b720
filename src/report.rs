//! `cmrm report`: one self-contained HTML page (tables and embedded SVG or PNG plots) from the
//! outputs of the eval, analyze and sweep commands in a folder.

use std::path::Path;

use crate::error::{Error, Result};

/// Sections: (title, summary table file, plots, what it shows).
const SECTIONS: &[(&str, &str, &[&str], &str)] = &[
    ("Safety", "safety-summary.md", &[], "Unsafe rate on harmful requests per condition (lower is safer), with Wilson 95% intervals."),
    ("Utility", "utility-summary.md", &[], "Benign data: over-refusal, perplexity of reference answers (fluency) and multiple-choice accuracy."),
    ("Fidelity", "fidelity-summary.md", &[], "How close each condition brings the model to its own text-only behaviour: first-answer-token KL, top-1 agreement, shared greedy prefix, refusal agreement, state cosine."),
    ("Representation gap", "gap-summary.md", &["gap-cosine.png", "gap-l2.png"], "Per-layer cosine similarity and L2 distance of the last prompt token's state to the text-only state."),
    ("Sweep", "sweep-summary.md", &["sweep.png"], "Unsafe rate against fluency for each method and setting, and which part of the bar for a recommended default each reaches (unsafe rate at most the text-only rate + 3 points, reference perplexity within 5% of the image run, no over-refusal added)."),
];

/// Builds the report from `dir`; returns the HTML.
pub fn build(dir: &Path) -> Result<String> {
    let mut body = String::new();
    let mut found = 0;
    for (title, table, plots, about) in SECTIONS {
        let Ok(md) = std::fs::read_to_string(dir.join(table)) else {
            continue;
        };
        found += 1;
        body.push_str(&format!(
            "<h2>{title}</h2>\n<p>{about}</p>\n{}",
            md_table(&md)
        ));
        let mut all: Vec<String> = plots.iter().map(|p| p.to_string()).collect();
        if *table == "gap-summary.md" {
            let mut pca: Vec<String> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, "read", e))?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("gap-pca-") && n.ends_with(".png"))
                .collect();
            pca.sort();
            all.extend(pca);
        }
        for p in all {
            // The vector drawing when the command wrote one (it scales and its text is text).
            if let Ok(svg) = std::fs::read_to_string(dir.join(&p).with_extension("svg")) {
                let svg = svg.find("<svg").map_or(svg.as_str(), |i| &svg[i..]);
                body.push_str(&format!(
                    "<figure>{svg}<figcaption>{p}</figcaption></figure>\n"
                ));
            } else if let Ok(bytes) = std::fs::read(dir.join(&p)) {
                body.push_str(&format!(
                    "<figure><img alt=\"{p}\" src=\"data:image/png;base64,{}\"><figcaption>{p}</figcaption></figure>\n",
                    base64(&bytes)
                ));
            }
        }
    }
    if found == 0 {
        return Err(Error::data(
            dir,
            None,
            format!(
                "no summaries found (run cmrm eval / analyze / sweep with --out {} first)",
                dir.display()
            ),
        ));
    }
    Ok(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>cmrm report</title>\n<style>\
body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}\
table{{border-collapse:collapse;margin:1em 0;font-size:14px}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
td:first-child,th:first-child{{text-align:left}}th{{background:#f3f3f3}}img{{max-width:100%;border:1px solid #eee}}\
</style></head><body>\n<h1>cmrm report</h1>\n<p>From <code>{}</code>, cmrm {}.</p>\n{body}</body></html>\n",
        html(&dir.display().to_string()),
        env!("CARGO_PKG_VERSION")
    ))
}

/// Converts a Markdown pipe table to an HTML table (other lines become paragraphs).
pub fn md_table(md: &str) -> String {
    let mut out = String::new();
    let mut in_table = false;
    let mut header = true;
    for line in md.lines() {
        let l = line.trim();
        if l.starts_with('|') {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            if cells
                .iter()
                .all(|c| !c.is_empty() && c.chars().all(|ch| "-:".contains(ch)))
            {
                continue;
            }
            if !in_table {
                out.push_str("<table>\n");
                in_table = true;
                header = true;
            }
            let tag = if header { "th" } else { "td" };
            out.push_str("<tr>");
            for c in cells {
                out.push_str(&format!("<{tag}>{}</{tag}>", html(c)));
            }
            out.push_str("</tr>\n");
            header = false;
        } else {
            if in_table {
                out.push_str("</table>\n");
                in_table = false;
            }
            if !l.is_empty() {
                out.push_str(&format!("<p>{}</p>\n", html(l)));
            }
        }
    }
    if in_table {
        out.push_str("</table>\n");
    }
    out
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let v = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            s.push(if i <= c.len() {
                T[(v >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_base64() {
        let h = md_table("| a | b |\n|---|---:|\n| 1 | <2> |\n");
        assert_eq!(h, "<table>\n<tr><th>a</th><th>b</th></tr>\n<tr><td>1</td><td>&lt;2&gt;</td></tr>\n</table>\n");
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
        assert_eq!(base64(b"M"), "TQ==");
    }
}
