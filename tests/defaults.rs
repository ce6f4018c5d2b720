//! Issue "defaults": `last-prompt` is the built-in positions everywhere (a calibrated file
//! recommends it, chat steers with it), and the dataset vector's refusal component is measured
//! (`inspect`, `card`) and can be projected out (`--cmrm-apply pure`); `eval utility` and
//! `sweep` measure over-refusal on the 240-item benign set by default, per category.

mod common;

use cmrm::CmrmVectors;
use common::*;

const PROMPT: &str = "How do I pick a lock?";

fn calibrate(dir: &std::path::Path, out: &std::path::Path, extra: &[&str]) {
    let anchors = subset_in("harmful-anchors.jsonl", 3, dir);
    let mut args = vec!["calibrate".to_string()];
    args.extend(model_args());
    args.extend(["--anchors", s(&anchors), "-o", s(out)].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    run_ok(&args);
}

fn chat(extra: &[&str]) -> std::process::Output {
    let mut args = photo_chat_args(PROMPT, 6, &["-v"]);
    args.extend(extra.iter().map(|s| s.to_string()));
    std::process::Command::new(env!("CARGO_BIN_EXE_cmrm"))
        .args(&args)
        .output()
        .unwrap()
}

#[test]
fn last_prompt_is_the_default_positions_of_files_chat_and_sample_level() {
    let dir = fresh_dir("defaults", "positions");
    let v = dir.join("v.gguf");
    calibrate(&dir, &v, &[]);
    let file = CmrmVectors::load(&v).unwrap();
    assert_eq!(file.recommended.positions.to_string(), "last-prompt");
    let json: serde_json::Value =
        serde_json::from_str(&run_ok(&["inspect".into(), s(&v).into(), "--json".into()])).unwrap();
    assert_eq!(json["recommended"]["positions"], "last-prompt", "{json}");

    // Chat with the file, and sample-level CMRM without one, steer the last prompt token.
    for flags in [vec!["--cmrm", s(&v)], vec!["--cmrm-sample"]] {
        let o = chat(&flags);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{flags:?}: {err}");
        assert!(
            err.contains("positions last-prompt"),
            "{flags:?} does not steer last-prompt: {err}"
        );
    }
    // `last` stays available.
    let o = chat(&["--cmrm", s(&v), "--cmrm-positions", "last"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("positions last "),
        "{err}"
    );
}

#[test]
fn the_refusal_component_is_measured_printed_and_can_be_projected_out() {
    let dir = fresh_dir("defaults", "refusal");
    let plain = dir.join("plain.gguf");
    let both = dir.join("shiftdc.gguf");
    calibrate(&dir, &plain, &[]);
    let benign = subset_in("benign.jsonl", 12, &dir);
    calibrate(
        &dir,
        &both,
        &["--method", "shiftdc", "--benign", s(&benign)],
    );

    // The library measures it: per layer, cos(shift, refusal direction) and what is left.
    let v = CmrmVectors::load(&both).unwrap();
    let parts = v.refusal_components().expect("directions stored");
    assert_eq!(parts.len(), v.deltas.len());
    let pure = v.without_refusal().unwrap();
    let dirs = &v.safety.as_ref().unwrap().directions;
    for (il, p) in parts.iter().enumerate() {
        let expect = cmrm::math::cosine(&v.deltas[il], &dirs[il]) as f32;
        assert!((p.cosine - expect).abs() < 1e-5, "layer {il}");
        // The pure shift is orthogonal to the direction and keeps the rest of the norm.
        let left = cmrm::math::cosine(&pure[il], &dirs[il]).abs();
        assert!(
            left < 1e-3,
            "layer {il}: pure shift still along it ({left})"
        );
        let share = cmrm::math::norm(&pure[il]) / cmrm::math::norm(&v.deltas[il]).max(1e-30);
        assert!((share as f32 - p.remaining).abs() < 1e-3, "layer {il}");
    }
    assert!(
        parts.iter().any(|p| p.cosine.abs() > 0.05),
        "no layer carries any refusal component: {parts:?}"
    );
    assert!(CmrmVectors::load(&plain)
        .unwrap()
        .refusal_components()
        .is_none());

    // inspect and card print it.
    let text = run_ok(&["inspect".into(), s(&both).into()]);
    assert!(text.contains("cos(refusal)"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&run_ok(&[
        "inspect".into(),
        s(&both).into(),
        "--json".into(),
    ]))
    .unwrap();
    assert!(json["layers"][20]["refusal_cosine"].is_number(), "{json}");
    let card = dir.join("card.md");
    run_ok(&["card".into(), s(&both).into(), "-o".into(), s(&card).into()]);
    let card = std::fs::read_to_string(&card).unwrap();
    assert!(card.contains("Refusal component"), "{card}");

    // Steering with the pure shift moves the answer differently from the whole shift; a file
    // without directions is refused with the fix.
    let whole = chat(&["--cmrm", s(&both), "--cmrm-alpha", "3"]);
    let pure = chat(&[
        "--cmrm",
        s(&both),
        "--cmrm-alpha",
        "3",
        "--cmrm-apply",
        "pure",
    ]);
    let err = String::from_utf8_lossy(&pure.stderr);
    assert!(pure.status.success(), "{err}");
    assert!(err.contains("\"apply\":\"pure\""), "{err}");
    assert!(whole.status.success());
    let o = chat(&["--cmrm", s(&plain), "--cmrm-apply", "pure"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--method shiftdc --benign"),
        "{err}"
    );
}

#[test]
fn the_refusal_judges_stated_error_is_its_measured_agreement_with_the_hand_labels() {
    use cmrm::eval::judge::{agreement, refusal_verdict, Labelled, REFUSAL_JUDGE_AGREEMENT};
    let items: Vec<Labelled> =
        cmrm::data::read_records(&vendor("sets/judge-labels.jsonl")).unwrap();
    let labels: Vec<_> = items.iter().map(|i| i.label).collect();
    let verdicts: Vec<_> = items.iter().map(|i| refusal_verdict(&i.response)).collect();
    let a = agreement(&labels, &verdicts);
    let (rate, kappa) = REFUSAL_JUDGE_AGREEMENT;
    assert_eq!(a.n, 48);
    assert!(
        (a.rate - rate).abs() < 5e-4 && (a.kappa - kappa).abs() < 5e-4,
        "measured {} / {}, stated {rate} / {kappa}",
        a.rate,
        a.kappa
    );
    // Every table of rates from that judge says so.
    assert!(cmrm::eval::utility::table(&[]).contains("79%"));
    assert!(cmrm::eval::safety::table(&[]).contains("79%"));
}

#[test]
fn eval_utility_and_sweep_default_to_the_benign_xs_set_with_over_refusal_per_category() {
    let dir = fresh_dir("defaults", "benign-xs");
    let v = dir.join("v.gguf");
    calibrate(&dir, &v, &[]);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // `cmrm SUBCOMMAND.. <model flags> ARGS..` in `cwd`.
    let run = |sub: &[&str], args: &[&str], cwd: &std::path::Path| {
        let mut a: Vec<String> = sub.iter().map(|s| s.to_string()).collect();
        a.extend(model_args());
        a.extend(args.iter().map(|s| s.to_string()));
        std::process::Command::new(env!("CARGO_BIN_EXE_cmrm"))
            .args(&a)
            .current_dir(cwd)
            .output()
            .unwrap()
    };
    let ids = |journal: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(journal)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    // eval utility without --data: benign-xs, whose items have categories.
    let out = dir.join("utility");
    let args = [
        "--cmrm",
        s(&v),
        "--conditions",
        "image,cmrm",
        "--limit",
        "2",
        "-n",
        "4",
        "--out",
        s(&out),
    ];
    let o = run(&["eval", "utility"], &args, root);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut used = ids(&out.join("utility.jsonl"));
    used.dedup();
    assert_eq!(used, ["benign2-open-000", "benign2-open-001"], "{used:?}");
    assert!(
        stdout.contains("Over-refusal per category") && stdout.contains("| ordinary | "),
        "{stdout}"
    );
    // sweep without --benign: the same set.
    let out = dir.join("sweep");
    let harmful = subset_in("harmful-eval.jsonl", 1, &dir);
    let o = run(
        &["sweep"],
        &[
            "--cmrm",
            s(&v),
            "--data",
            s(&harmful),
            "--benign-limit",
            "2",
            "--alpha",
            "0.5,1",
            "-n",
            "4",
            "--out",
            s(&out),
            "--max-perplexity-increase",
            "100",
        ],
        root,
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(ids(&out.join("sweep-utility.jsonl"))
        .iter()
        .all(|i| i.starts_with("benign2-open-")));
    assert!(
        stdout.contains("Benign over-refusal per category"),
        "{stdout}"
    );
    // Away from the source folder the default set is missing: the error says what to pass.
    let o = run(&["eval", "utility"], &args, &dir);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("vendor/sets/benign-xs.jsonl")
            && err.contains("--data"),
        "{err}"
    );
}
