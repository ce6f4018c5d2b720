//! Issue "serve": a real `cmrm serve` process on loopback, real clients — the official `openai`
//! Python package, raw HTTP for bad requests, a bounded load test, and the chat page in
//! headless Chromium.

mod common;
#[path = "common/server.rs"]
mod server;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use server::*;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cmrm-serve-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Vectors strong enough that steering changes the fixture's answers.
fn vectors(dir: &Path) -> PathBuf {
    let engine = engine();
    let path = dir.join("v.gguf");
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
            alpha: 3.0,
            ..Default::default()
        },
    };
    cmrm::calibrate::calibrate(&engine, &anchors, &opts, &path).unwrap();
    path
}

#[test]
fn the_openai_client_chats_with_images_streams_and_steers_per_request() {
    let dir = tmp("client");
    let v = vectors(&dir);
    let mut server = Server::start(&["--cmrm", s(&v), "--api-key", "sk-test", "-c", "2048"]);
    server.run_client("openai_client.py", &["sk-test", s(&photo())]);
    assert!(server.stop().success(), "the server did not stop cleanly");
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_stays_up() {
    let mut server = Server::start(&[
        "--api-key",
        "k1,k2",
        "--max-image-bytes",
        "20000",
        "--max-tokens",
        "64",
        "-c",
        "512",
        "--max-images",
        "2",
        "--metrics",
    ]);
    let chat = server.url("/v1/chat/completions");
    // 11 kB: under the 20 kB limit; the 27 kB photograph is over it.
    let photo = image_uri(&vendor("images/rocket.jpg"));
    let key = Some("k2");
    // Authentication: Bearer or X-Api-Key; /health stays public.
    let (st, b) = post(&chat, None, &chat_body(&photo, "hi", serde_json::json!({})));
    assert_error(st, &b, 401, "API Key");
    let (st, b) = post(
        &chat,
        Some("wrong"),
        &chat_body(&photo, "hi", serde_json::json!({})),
    );
    assert_error(st, &b, 401, "API Key");
    assert_eq!(get(&server.url("/health"), None).0, 200);
    assert_eq!(get(&server.url("/v1/models"), None).0, 401);
    assert_eq!(get(&server.url("/v1/models"), Some("k1")).0, 200);
    // Malformed bodies and values.
    let (st, b) = post(&chat, key, b"{\"messages\": [");
    assert_error(st, &b, 400, "not a valid chat request");
    let bad_b64 = chat_body(
        "data:image/png;base64,@@@not base64@@@",
        "hi",
        serde_json::json!({}),
    );
    let (st, b) = post(&chat, key, &bad_b64);
    assert_error(st, &b, 400, "base64");
    let text_b64 = base64::engine::general_purpose::STANDARD.encode("just some text, not an image");
    let (st, b) = post(
        &chat,
        key,
        &chat_body(
            &format!("data:image/png;base64,{text_b64}"),
            "hi",
            serde_json::json!({}),
        ),
    );
    assert_error(st, &b, 400, "image");
    let big_uri = image_uri(&common::photo());
    let (st, b) = post(
        &chat,
        key,
        &chat_body(&big_uri, "hi", serde_json::json!({})),
    );
    assert_error(st, &b, 400, "--max-image-bytes");
    let (st, b) = post(
        &chat,
        key,
        &chat_body(&photo, "hi", serde_json::json!({"max_tokens": 100000})),
    );
    assert_error(st, &b, 400, "--max-tokens");
    let long = "tell me about cats. ".repeat(120);
    let (st, b) = post(&chat, key, &chat_body(&photo, &long, serde_json::json!({})));
    assert_error(st, &b, 400, "context");
    assert_eq!(b["error"]["type"], "exceed_context_size_error");
    let (st, b) = post(
        &chat,
        key,
        &chat_body(&photo, "hi", serde_json::json!({"n": 2})),
    );
    assert_error(st, &b, 400, "n = 2");
    let three = serde_json::json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": photo}}, {"type": "image_url", "image_url": {"url": photo}},
        {"type": "image_url", "image_url": {"url": photo}}, {"type": "text", "text": "hi"}]}]});
    let (st, b) = post(&chat, key, &serde_json::to_vec(&three).unwrap());
    assert_error(st, &b, 400, "--max-images");
    let (st, b) = post(
        &chat,
        key,
        &chat_body("file:///etc/passwd", "hi", serde_json::json!({})),
    );
    assert_error(st, &b, 400, "--media-path");
    let (st, b) = post(
        &chat,
        key,
        &chat_body("http://127.0.0.1:9/x.png", "hi", serde_json::json!({})),
    );
    assert_error(st, &b, 400, "--media-fetch");
    let (st, b) = post(
        &chat,
        key,
        &chat_body(
            &photo,
            "hi",
            serde_json::json!({"cmrm": {"layers": "nine"}}),
        ),
    );
    assert_error(st, &b, 400, "cmrm.layers");
    let (st, b) = post(&server.url("/v1/nothing"), key, b"{}");
    assert_error(st, &b, 404, "Not Found");
    // Still up, and answering.
    assert!(server.alive());
    let (st, b) = post(
        &chat,
        key,
        &chat_body(&photo, "What is it?", serde_json::json!({})),
    );
    assert_eq!(st, 200, "{b}");
    assert!(b["choices"][0]["message"]["content"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    let (_, m) = get(&server.url("/metrics"), key);
    assert!(m.contains("cmrm:requests_error_total"), "{m}");
    assert!(server.stop().success());
}

#[test]
fn a_bounded_load_keeps_the_server_up_and_frees_every_slot() {
    let mut server = Server::start(&["--parallel", "2", "--queue", "4", "-c", "1024", "--metrics"]);
    let chat = server.url("/v1/chat/completions");
    let photo = image_uri(&photo());
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(Vec::<u16>::new()));
    let duration = Duration::from_secs(45);
    let t0 = Instant::now();
    let mut threads = Vec::new();
    for i in 0..8 {
        let (chat, photo, stop, statuses) =
            (chat.clone(), photo.clone(), stop.clone(), statuses.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let streaming_and_leaving = (i + n).is_multiple_of(3);
                let text = format!("Client {i}, request {n}: what is it?");
                let extra = if streaming_and_leaving {
                    serde_json::json!({"stream": true, "max_tokens": 64})
                } else {
                    serde_json::json!({})
                };
                let body = chat_body(&photo, &text, extra);
                let resp = agent()
                    .post(&chat)
                    .header("Content-Type", "application/json")
                    .send(&body[..]);
                let Ok(mut resp) = resp else {
                    statuses.lock().unwrap().push(0);
                    continue;
                };
                let status = resp.status().as_u16();
                statuses.lock().unwrap().push(status);
                if status == 503 {
                    // A client backs off when the server is busy.
                    std::thread::sleep(Duration::from_millis(200));
                }
                if streaming_and_leaving && status == 200 {
                    // Read one event, then go away mid-stream.
                    let mut buf = [0u8; 64];
                    let _ = resp.body_mut().as_reader().read(&mut buf);
                } else {
                    let _ = resp.body_mut().read_to_string();
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(10));
    let rss_early = server.rss_kb();
    while t0.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            server.alive(),
            "the server died: {}",
            server.log.lock().unwrap()
        );
    }
    let rss_late = server.rss_kb();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let busy = statuses.iter().filter(|&&s| s == 503).count();
    assert_eq!(
        ok + busy,
        statuses.len(),
        "statuses other than 200 and 503: {statuses:?}"
    );
    assert!(ok >= 8, "only {ok} answers in {duration:?}");
    println!(
        "load: {} requests, {ok} answered, {busy} busy (503); RSS {rss_early} -> {rss_late} kB",
        statuses.len()
    );
    assert!(
        rss_late <= rss_early + rss_early / 5 + 20_000,
        "resident memory grew from {rss_early} kB to {rss_late} kB"
    );
    // Every slot is free again once the clients are gone.
    let t1 = Instant::now();
    loop {
        let (_, m) = get(&server.url("/metrics"), None);
        let line = m
            .lines()
            .find(|l| l.starts_with("llamacpp:requests_processing "))
            .unwrap()
            .to_string();
        if line.ends_with(" 0") {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(30),
            "slots still busy: {line}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (st, _) = post(
        &chat,
        None,
        &chat_body(&photo, "Still there?", serde_json::json!({})),
    );
    assert_eq!(st, 200);
    assert!(server.stop().success());
}

#[test]
fn the_chat_page_streams_and_compares_in_chromium() {
    let dir = tmp("page");
    let v = vectors(&dir);
    let server = Server::start(&["--cmrm", s(&v), "-c", "2048", "-n", "24"]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let node_dir = root.join("target/node");
    assert!(
        node_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: scripts/setup.sh installs it into target/node"
    );
    std::fs::copy(
        root.join("tests/clients/page.mjs"),
        node_dir.join("page.mjs"),
    )
    .unwrap();
    let shot = dir.join("page.png");
    let out = Command::new("node")
        .arg(node_dir.join("page.mjs"))
        .args([&server.base, s(&photo()), s(&shot)])
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "page test: {}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log.lock().unwrap()
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
}
