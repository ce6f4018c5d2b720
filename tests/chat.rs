//! Issue "foundation": the fixture VLM chats about images through the real mtmd path, is
//! deterministic, and every bad input is a clear error with a non-zero exit.

mod common;

use common::*;

fn chat(extra: &[&str]) -> std::process::Output {
    let model = model();
    let mmproj = mmproj();
    let mut args = vec![
        "chat",
        "-m",
        s(&model),
        "--mmproj",
        s(&mmproj),
        "-c",
        "1024",
        "-t",
        "2",
    ];
    args.extend_from_slice(extra);
    cmrm(&args)
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn greedy_answer_about_an_image_is_deterministic() {
    let photo = photo();
    let args = [
        "--image",
        s(&photo),
        "-p",
        "What is in this picture?",
        "--temp",
        "0",
        "-n",
        "24",
    ];
    let a = chat(&args);
    assert!(a.status.success(), "{}", stderr(&a));
    let b = chat(&args);
    assert!(!stdout(&a).trim().is_empty(), "empty answer");
    assert_eq!(stdout(&a), stdout(&b));
}

#[test]
fn seeded_sampling_is_reproducible() {
    let photo = photo();
    let args = [
        "--image",
        s(&photo),
        "-p",
        "Describe it.",
        "--temp",
        "0.9",
        "--seed",
        "42",
        "-n",
        "16",
    ];
    let a = chat(&args);
    let b = chat(&args);
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(stdout(&a), stdout(&b));
}

#[test]
fn an_image_changes_the_model_state_and_answer() {
    let engine = engine();
    let photo = cmrm::media::load_image(s(&photo())).unwrap();
    let run = |images: &[cmrm::media::Image]| {
        let mut session = cmrm::Session::new(&engine, cmrm::SessionOptions::new()).unwrap();
        let turn = cmrm::Turn {
            text: "What do you see?".into(),
            images: images.to_vec(),
            ..cmrm::Turn::default()
        };
        let prefilled = session.prefill(&turn).unwrap();
        let logits = prefilled.logits().to_vec();
        let options = cmrm::GenerateOptions::greedy(16);
        let g = prefilled.generate(&options, &mut |_| true).unwrap();
        (logits, g.text)
    };
    let (text_logits, text_answer) = run(&[]);
    let (img_logits, img_answer) = run(std::slice::from_ref(&photo));
    let diff = text_logits
        .iter()
        .zip(&img_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        diff > 0.1,
        "image did not change the logits (max diff {diff})"
    );
    assert_ne!(text_answer, img_answer);
    // The same image again gives bit-identical logits.
    let (again, _) = run(std::slice::from_ref(&photo));
    assert_eq!(img_logits, again);
}

/// An interactive chat about the photo fed `input`: each answer line, and each turn's prompt
/// positions and positions reused from the cache (from `-v`'s timings).
fn interactive(input: &str) -> (Vec<String>, Vec<(usize, usize)>) {
    use std::io::Write;
    let model = model();
    let mmproj = mmproj();
    let photo = photo();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cmrm"))
        .args([
            "chat",
            "-m",
            s(&model),
            "--mmproj",
            s(&mmproj),
            "-c",
            "2048",
            "-t",
            "2",
            "-v",
        ])
        .args(["--temp", "0", "-n", "12", "--image", s(&photo)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let answers = stdout(&out).lines().map(String::from).collect();
    // "prompt: N positions (R reused, ...": one line per turn.
    let prompts = err
        .lines()
        .filter_map(|l| l.strip_prefix("prompt: "))
        .map(|l| {
            let mut words = l.split_whitespace();
            let n = words.next().unwrap().parse().unwrap();
            let reused = words
                .nth(1)
                .unwrap()
                .trim_start_matches('(')
                .parse()
                .unwrap();
            (n, reused)
        })
        .collect();
    (answers, prompts)
}

#[test]
fn interactive_chat_keeps_history() {
    let (answers, prompts) = interactive("What is this?\nAnd the colours?\n/quit\n");
    assert_eq!(answers.len(), 2, "expected two answers, got {answers:?}");
    let [(first, _), (second, reused)] = prompts[..] else {
        panic!("expected two turns, got {prompts:?}");
    };
    assert!(
        second > first && reused > 0,
        "the second turn's prompt holds the first turn (image included) and reuses its cache: {prompts:?}"
    );
    // /clear forgets: the same second message is then a short prompt of its own.
    let (_, cleared) = interactive("What is this?\n/clear\nAnd the colours?\n/quit\n");
    let [(first_again, _), (alone, 0)] = cleared[..] else {
        panic!("expected two turns, the second reusing nothing, got {cleared:?}");
    };
    assert_eq!(first_again, first);
    assert!(
        alone < first,
        "without history the second prompt is the message alone: {cleared:?} vs {prompts:?}"
    );
}

fn assert_clear_error(o: &std::process::Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success: {}",
        stdout(o)
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "not a clean exit (signal or abort?): {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}: {err}");
    }
}

#[test]
fn missing_files_are_named() {
    let mmproj = mmproj();
    let o = cmrm(&[
        "chat",
        "-m",
        "/nonexistent/model.gguf",
        "--mmproj",
        s(&mmproj),
        "-p",
        "hi",
    ]);
    assert_clear_error(&o, &["/nonexistent/model.gguf", "model"]);
    let model = model();
    let o = cmrm(&[
        "chat",
        "-m",
        s(&model),
        "--mmproj",
        "/nope/mmproj.gguf",
        "-p",
        "hi",
    ]);
    assert_clear_error(&o, &["/nope/mmproj.gguf", "mmproj"]);
}

#[test]
fn non_gguf_and_truncated_models_are_refused() {
    let photo = photo();
    let mmproj = mmproj();
    let o = cmrm(&["chat", "-m", s(&photo), "--mmproj", s(&mmproj), "-p", "hi"]);
    assert_clear_error(&o, &[s(&photo), "not a GGUF file"]);

    let dir = std::env::temp_dir().join(format!("cmrm-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let truncated = dir.join("truncated.gguf");
    let bytes = std::fs::read(model()).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let o = cmrm(&[
        "chat",
        "-m",
        s(&truncated),
        "--mmproj",
        s(&mmproj),
        "-p",
        "hi",
    ]);
    assert_clear_error(&o, &[s(&truncated)]);
    let o = cmrm(&[
        "chat",
        "-m",
        s(&model()),
        "--mmproj",
        s(&truncated),
        "-p",
        "hi",
    ]);
    assert_clear_error(&o, &[s(&truncated)]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mmproj_for_another_model_width_is_refused() {
    let model = model();
    let wrong = fixture("mmproj-896-synthetic.gguf");
    let o = cmrm(&["chat", "-m", s(&model), "--mmproj", s(&wrong), "-p", "hi"]);
    assert_clear_error(&o, &[s(&wrong), "896", "576"]);
}

#[test]
fn broken_images_are_refused() {
    for name in ["broken.jpg", "notimage.png", "empty.png"] {
        let img = fixture(name);
        let o = chat(&["--image", s(&img), "-p", "hi", "-n", "4"]);
        assert_clear_error(&o, &[s(&img)]);
    }
    let o = chat(&["--image", "/no/such/image.png", "-p", "hi"]);
    assert_clear_error(&o, &["/no/such/image.png"]);
}

#[test]
fn prompt_longer_than_context_is_refused() {
    let long = "tell me about cats. ".repeat(200);
    let model = model();
    let mmproj = mmproj();
    let o = cmrm(&[
        "chat",
        "-m",
        s(&model),
        "--mmproj",
        s(&mmproj),
        "-c",
        "256",
        "-p",
        &long,
    ]);
    assert_clear_error(&o, &["context", "-c"]);
}
