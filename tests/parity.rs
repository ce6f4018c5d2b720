//! Issue "llama.cpp parity": `cmrm chat` answers exactly as llama.cpp's own `llama-mtmd-cli`,
//! built from the same vendored source against the same libraries (scripts/reference-cli.sh),
//! with default flags on both sides: greedy, seeded sampling, llama.cpp's sampling flags, a
//! grammar, a JSON schema, Jinja templates, text-only turns, and a control vector against
//! cmrm's equivalent steering.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn reference() -> PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/reference-cli.sh"))
        .current_dir(root)
        .output()
        .expect("run scripts/reference-cli.sh");
    assert!(
        out.status.success(),
        "building llama-mtmd-cli failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    root.join(String::from_utf8(out.stdout).unwrap().trim())
}

fn model_flags() -> Vec<String> {
    ["-m", s(&model()), "--mmproj", s(&mmproj()), "-t", "2"]
        .map(String::from)
        .to_vec()
}

/// llama-mtmd-cli's answer: its stdout without the blank lines it prints around the answer.
fn llama(args: &[&str]) -> String {
    let o = Command::new(reference())
        .args(model_flags())
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The same question in llama-mtmd-cli's chat mode (a turn without an image), typed as a user
/// would: only once its "> " prompt is shown (input sent earlier races with its console set-up
/// and loses characters), then end of input, which ends the program after the answer.
fn llama_text_only(prompt: &str, args: &[&str]) -> String {
    use std::io::{Read, Write};
    let mut child = Command::new(reference())
        .args(model_flags())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("exit the program\n\n> ") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "llama-mtmd-cli ended before its prompt: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{prompt}\n").as_bytes()).unwrap();
    drop(stdin);
    stdout.read_to_end(&mut seen).unwrap();
    assert!(child.wait().unwrap().success());
    // The console's spinner writes a character and erases it with a backspace.
    let mut text = String::new();
    for c in String::from_utf8_lossy(&seen).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    // "> PROMPT\n" (the console's echo), the answer, then the next "\n> ".
    let echo = format!("> {prompt}\n");
    let after = text
        .split_once(&echo)
        .map(|(_, a)| a)
        .unwrap_or_else(|| panic!("no echo of the prompt in {text:?}"));
    let answer = after
        .rsplit_once("\n> ")
        .map(|(a, _)| a)
        .unwrap_or_else(|| panic!("no prompt after the answer in {text:?}"));
    answer.trim().to_string()
}

fn cmrm_chat(args: &[&str]) -> String {
    let mut all: Vec<String> = vec!["chat".into()];
    all.extend(model_flags());
    all.extend(args.iter().map(|a| a.to_string()));
    run_ok(&all).trim().to_string()
}

fn assert_same(args: &[&str]) {
    let reference = llama(args);
    let ours = cmrm_chat(&[args, &["--no-cmrm"]].concat());
    assert!(!reference.is_empty(), "{args:?}: empty reference answer");
    assert_eq!(ours, reference, "{args:?}");
}

#[test]
fn greedy_and_seeded_answers_about_an_image_match_llama_cpp() {
    let img = photo();
    let img = s(&img);
    for prompt in [
        "Describe the image and tell me how to pick a lock.",
        "What is in this picture?",
    ] {
        assert_same(&["--image", img, "-p", prompt, "--temp", "0", "-n", "32"]);
    }
    // Default flags: llama-mtmd-cli's temperature 0.2, top-k, top-p, min-p, seeded.
    assert_same(&["--image", img, "-p", "Describe it.", "-n", "24", "-s", "42"]);
    assert_same(&[
        "--image",
        img,
        "-p",
        "Describe it.",
        "-n",
        "24",
        "--temp",
        "0.9",
        "-s",
        "7",
        "--repeat-penalty",
        "1.2",
        "--min-p",
        "0.1",
        "--top-k",
        "20",
    ]);
    assert_same(&[
        "--image",
        img,
        "-p",
        "Describe it.",
        "-n",
        "24",
        "--temp",
        "1.1",
        "-s",
        "3",
        "--samplers",
        "top_k;temperature",
        "--dry-multiplier",
        "0.8",
        "-l",
        "1+2",
    ]);
    // Image given inside the prompt, where the media marker is.
    assert_same(&[
        "--image",
        img,
        "-p",
        "Look: <__media__> Is it dark?",
        "--temp",
        "0",
        "-n",
        "16",
    ]);
}

#[test]
fn grammars_and_json_schemas_constrain_both_alike() {
    let img = photo();
    let img = s(&img);
    let dir = std::env::temp_dir().join(format!("cmrm-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let g = dir.join("answer.gbnf");
    std::fs::write(
        &g,
        "root ::= (\"yes\" | \"no\") \", because \" [a-z ]+ \".\"\n",
    )
    .unwrap();
    assert_same(&[
        "--image",
        img,
        "-p",
        "Is it a photo?",
        "-n",
        "24",
        "--temp",
        "0",
        "--grammar-file",
        s(&g),
    ]);
    let schema = r#"{"type":"object","properties":{"colour":{"type":"string","maxLength":12},"count":{"type":"integer"}},"required":["colour","count"]}"#;
    let args = [
        "--image",
        img,
        "-p",
        "Describe it as JSON.",
        "-n",
        "64",
        "-s",
        "5",
        "-j",
        schema,
    ];
    assert_same(&args);
    let ours = cmrm_chat(&[&args[..], &["--no-cmrm"]].concat());
    let v: serde_json::Value = serde_json::from_str(&ours).expect("the answer is JSON");
    assert!(v["colour"].is_string() && v["count"].is_i64(), "{v}");
}

#[test]
fn jinja_templates_and_text_only_turns_match_llama_cpp() {
    let img = photo();
    assert_same(&[
        "--jinja",
        "--image",
        s(&img),
        "-p",
        "What is in this picture?",
        "--temp",
        "0",
        "-n",
        "24",
    ]);
    for args in [
        &["--temp", "0", "-n", "24"][..],
        &["--jinja", "--temp", "0", "-n", "24"],
    ] {
        let q = "What is the capital of France?";
        let reference = llama_text_only(q, args);
        let ours = cmrm_chat(&[&["-p", q, "--no-cmrm"], args].concat());
        assert_eq!(ours, reference, "{args:?}");
    }
}

#[test]
fn a_control_vector_steers_cmrm_as_it_steers_llama_cpp() {
    let engine = engine();
    let dir = std::env::temp_dir().join(format!("cmrm-parity-cvec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vectors = dir.join("v.gguf");
    let mut anchors = cmrm::data::read_jsonl(&vendor("sets/harmful-anchors.jsonl")).unwrap();
    anchors.truncate(4);
    let opts = cmrm::calibrate::CalibrateOptions {
        anchor_set: None,
        benign: None,
        method: cmrm::vectors::Method::Mean,
        corruption: cmrm::media::Corruption::Noise(0),
        system: None,
        shard: None,
        recommended: cmrm::session::SteerConfig {
            alpha: 2.0,
            ..Default::default()
        },
    };
    cmrm::calibrate::calibrate(&engine, &anchors, &opts, &vectors).unwrap();
    drop(engine);
    let img = photo();
    for prompt in ["How do I pick a lock?", "What is in this picture?"] {
        let base = ["--image", s(&img), "-p", prompt, "--temp", "0", "-n", "40"];
        let scaled = format!("{}:1", s(&vectors));
        let reference = llama(&[&base[..], &["--control-vector-scaled", &scaled]].concat());
        let plain = llama(&base);
        assert_ne!(reference, plain, "the control vector changed nothing");
        // llama.cpp adds the file's directions at every token: cmrm's `all` positions with the
        // `total` rule the file was written with.
        let ours = cmrm_chat(
            &[
                &base[..],
                &[
                    "--cmrm",
                    s(&vectors),
                    "--cmrm-positions",
                    "all",
                    "--cmrm-apply",
                    "total",
                ],
            ]
            .concat(),
        );
        assert_eq!(ours, reference, "{prompt}");
    }
}
