//! Issue "turn API": one turn, one call; a failed or scored turn leaves the conversation as it
//! was; the next turn reuses the cached prefix; library errors are typed; flags are checked
//! before the model loads.

mod common;

use cmrm::media::{self, Image};
use cmrm::{Error, GenerateOptions, Session, SessionOptions, Turn};
use common::*;

fn photo_image() -> Image {
    media::load_image(s(&photo())).unwrap()
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions::greedy(n)
}

#[test]
fn a_failed_turn_leaves_the_conversation_as_it_was() {
    let engine = engine();
    let mut session = Session::new(&engine, SessionOptions::new()).unwrap();
    let first = Turn::user("What is this?").image(photo_image());
    session.send(&first, &greedy(8), &mut |_| true).unwrap();
    let history = session.history().to_vec();
    let long = Turn::user("tell me about cats. ".repeat(600));
    let err = session.send(&long, &greedy(8), &mut |_| true).unwrap_err();
    assert!(
        matches!(err, Error::ContextFull { needed, n_ctx } if needed > n_ctx),
        "{err:?}"
    );
    assert_eq!(
        session.history(),
        history.as_slice(),
        "a failed turn was recorded"
    );
    // The next turn answers as if the failed one had never been asked.
    let next = Turn::user("And the colours?");
    let after_failure = session.send(&next, &greedy(12), &mut |_| true).unwrap();
    let mut fresh = Session::new(&engine, SessionOptions::new()).unwrap();
    fresh.send(&first, &greedy(8), &mut |_| true).unwrap();
    let expected = fresh.send(&next, &greedy(12), &mut |_| true).unwrap();
    assert_eq!(after_failure.text, expected.text);
}

#[test]
fn scoring_leaves_the_conversation_as_it_was_and_the_answer_unchanged() {
    let engine = engine();
    let turn = Turn::user("Name a colour.");
    let mut plain = Session::new(&engine, SessionOptions::new()).unwrap();
    let expected = plain.send(&turn, &greedy(10), &mut |_| true).unwrap();

    let mut session = Session::new(&engine, SessionOptions::new()).unwrap();
    {
        let mut p = session.prefill(&turn).unwrap();
        let tokens = engine
            .model()
            .tokenize("Blue is a colour", false, false)
            .unwrap();
        let lp = p.score(&tokens).unwrap();
        assert_eq!(lp.len(), tokens.len());
        assert!(lp.iter().all(|x| x.is_finite() && *x <= 0.0));
        // Dropped without generating: nothing recorded.
    }
    assert!(session.history().is_empty(), "a scored turn was recorded");
    let mut p = session.prefill(&turn).unwrap();
    let tokens = engine.model().tokenize("Red", false, false).unwrap();
    p.score(&tokens).unwrap();
    let answer = p.generate(&greedy(10), &mut |_| true).unwrap();
    assert_eq!(answer.text, expected.text, "scoring changed the answer");
    assert_eq!(session.history().len(), 2);
}

#[test]
fn the_next_turn_reuses_the_cached_prefix_with_the_same_answer() {
    let engine = engine();
    let first = Turn::user("What is this?").image(photo_image());
    let second = Turn::user("Describe it in one word.");
    let mut session = Session::new(&engine, SessionOptions::new()).unwrap();
    let a = session.send(&first, &greedy(8), &mut |_| true).unwrap();
    assert_eq!(a.cached_positions, 0);
    assert_eq!(a.images, 1);
    let b = session.send(&second, &greedy(8), &mut |_| true).unwrap();
    assert!(
        b.cached_positions > 196,
        "the image of the first turn was evaluated again ({} positions reused)",
        b.cached_positions
    );
    assert_eq!(b.images, 0, "the image was encoded again");
    // The same conversation evaluated from scratch answers the same.
    let mut fresh = Session::new(&engine, SessionOptions::new()).unwrap();
    fresh.set_history(session.history()[..2].to_vec());
    let c = fresh.send(&second, &greedy(8), &mut |_| true).unwrap();
    assert_eq!(c.cached_positions, 0);
    assert_eq!(b.text, c.text);
}

#[test]
fn library_errors_are_typed() {
    let engine = engine();
    let mut session = Session::new(&engine, SessionOptions::new()).unwrap();
    let bad_marker = Turn::user("<__media__> and <__media__>").image(photo_image());
    assert!(matches!(
        session.send(&bad_marker, &greedy(4), &mut |_| true),
        Err(Error::Invalid(_))
    ));
    let err = media::load_image("/no/such/image.png").unwrap_err();
    assert!(matches!(err, Error::Image { .. }), "{err:?}");
    let mut text_only = cmrm::EngineOptions::new(model(), None);
    text_only.n_ctx = 512;
    let engine2 = cmrm::Engine::load(text_only).unwrap();
    let mut s2 = Session::new(&engine2, SessionOptions::new()).unwrap();
    let with_image = Turn::user("hi").image(photo_image());
    assert!(matches!(
        s2.send(&with_image, &greedy(4), &mut |_| true),
        Err(Error::NoProjector)
    ));
    let mut wrong = cmrm::EngineOptions::new(model(), Some(fixture("mmproj-896-synthetic.gguf")));
    wrong.n_ctx = 512;
    match cmrm::Engine::load(wrong) {
        Err(Error::ProjectorMismatch {
            width, expected, ..
        }) => assert_eq!((width, expected), (896, 576)),
        other => panic!("expected a projector mismatch, got {:?}", other.err()),
    }
}

/// Runs the binary with a model path that does not exist: a flag error must come first.
fn refused_before_loading(args: &[&str], needle: &str) {
    let mut all = args.to_vec();
    all.extend(["-m", "/nonexistent/model.gguf"]);
    let o = cmrm(&all);
    let err = String::from_utf8_lossy(&o.stderr);
    let code = o.status.code().unwrap_or(-1);
    assert!((1..=127).contains(&code), "{args:?}: exit {code}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(
        !err.contains("/nonexistent/model.gguf"),
        "{args:?}: the model was opened before the flags were checked: {err}"
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn bad_and_ignored_flags_are_refused_before_the_model_loads() {
    refused_before_loading(
        &[
            "chat",
            "-p",
            "hi",
            "--cmrm-sample",
            "--cmrm-corruption",
            "nosie",
        ],
        "nosie",
    );
    refused_before_loading(&["chat", "-p", "hi", "--cmrm-layers", "20-5"], "20-5");
    refused_before_loading(&["chat", "-p", "hi", "--cmrm-apply", "totl"], "totl");
    refused_before_loading(
        &["chat", "-p", "hi", "--cmrm-corruption", "blank"],
        "--cmrm-sample",
    );
    refused_before_loading(
        &[
            "chat",
            "-p",
            "hi",
            "--cmrm-sample",
            "--cmrm-apply",
            "interpolate",
        ],
        "interpolate",
    );
    let data = vendor("sets/harmful-eval.jsonl");
    refused_before_loading(
        &[
            "eval",
            "safety",
            "--data",
            s(&data),
            "--conditions",
            "text,image",
            "--alpha",
            "1",
        ],
        "would be ignored",
    );
    refused_before_loading(
        &["eval", "safety", "--data", s(&data), "--conditions", "txt"],
        "txt",
    );
    refused_before_loading(
        &["eval", "safety", "--data", s(&data), "--no-cmrm"],
        "--no-cmrm",
    );
    refused_before_loading(
        &[
            "eval",
            "fidelity",
            "--data",
            s(&data),
            "--conditions",
            "image,cmrm-sample",
            "--cmrm",
            "/no/vectors.gguf",
        ],
        "would be ignored",
    );
    refused_before_loading(
        &[
            "sweep",
            "--data",
            s(&data),
            "--benign",
            s(&data),
            "--alpha",
            "1",
        ],
        "--layer-grid",
    );
}

/// The log-softmax of `logits` at `token`, computed here.
fn log_softmax_at(logits: &[f32], token: i32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    logits[token as usize] - max - sum.ln() as f32
}

#[test]
fn logprobs_are_the_models_distribution_at_each_answer_token() {
    let engine = engine();
    let turn = Turn::user("Name three colours.");
    let options = GenerateOptions {
        logprobs: Some(5),
        ..greedy(12)
    };
    let mut session = Session::new(&engine, SessionOptions::new()).unwrap();
    let p = session.prefill(&turn).unwrap();
    let first = p.logits().to_vec();
    let mut streamed = Vec::new();
    let mut text = String::new();
    let g = p
        .generate_with_logprobs(&options, &mut |piece, probs| {
            text.push_str(piece);
            streamed.extend_from_slice(probs);
            true
        })
        .unwrap();
    // One entry per token, streamed with the text, and the same in the result.
    assert_eq!(g.logprobs.len(), g.tokens.len());
    assert_eq!(streamed, g.logprobs);
    assert_eq!(text, g.text);
    // The first token's log-probability is the prompt's next-token distribution.
    let lp = &g.logprobs[0];
    assert_eq!(lp.chosen.token, g.tokens[0]);
    let expected = log_softmax_at(&first, g.tokens[0]);
    assert!(
        (lp.chosen.logprob - expected).abs() < 1e-4,
        "{} vs {expected}",
        lp.chosen.logprob
    );
    for (p, &t) in g.logprobs.iter().zip(&g.tokens) {
        assert_eq!(p.chosen.token, t);
        assert_eq!(p.chosen.bytes, engine.model().token_bytes(t, true));
        // Greedy: the chosen token is the most likely; five alternatives, most likely first.
        assert_eq!(p.top.len(), 5);
        assert_eq!(p.top[0].token, t, "{p:?}");
        assert_eq!(p.top[0].logprob, p.chosen.logprob);
        assert!(
            p.top.windows(2).all(|w| w[0].logprob >= w[1].logprob),
            "{p:?}"
        );
        assert!(p.chosen.logprob <= 0.0);
        let mass: f32 = p.top.iter().map(|c| c.logprob.exp()).sum();
        assert!(mass <= 1.0 + 1e-4, "{mass}");
    }
    // The tokens' bytes are the answer.
    let bytes: Vec<u8> = g
        .logprobs
        .iter()
        .flat_map(|p| p.chosen.bytes.clone())
        .collect();
    assert_eq!(String::from_utf8_lossy(&bytes), g.text);

    // A stop string cuts the answer and the log-probabilities where it starts.
    let mut starts = Vec::new();
    let mut at = 0;
    for p in &g.logprobs {
        starts.push(at);
        at += p.chosen.bytes.len();
    }
    let (i, stop) = (2..g.tokens.len())
        .filter(|&i| !g.logprobs[i].chosen.bytes.is_empty())
        .filter_map(|i| {
            let s = g
                .text
                .get(starts[i]..starts[i] + g.logprobs[i].chosen.bytes.len())?;
            (g.text.find(s) == Some(starts[i])).then(|| (i, s.to_string()))
        })
        .next()
        .expect("no token of the answer starts a stop string");
    let mut again = Session::new(&engine, SessionOptions::new()).unwrap();
    let cut = again
        .send(
            &turn,
            &GenerateOptions {
                stop: vec![stop.clone()],
                ..options.clone()
            },
            &mut |_| true,
        )
        .unwrap();
    assert_eq!(cut.text, g.text[..starts[i]], "stop {stop:?}");
    assert_eq!(cut.logprobs, g.logprobs[..i], "stop {stop:?}");
    // Not asked for: none.
    let mut plain = Session::new(&engine, SessionOptions::new()).unwrap();
    let g = plain.send(&turn, &greedy(4), &mut |_| true).unwrap();
    assert!(g.logprobs.is_empty());
}
