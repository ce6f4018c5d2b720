//! Issue "beyond one machine": llama.cpp's RPC backend on loopback. Two `cmrm rpc-server`
//! processes lend their CPU; the fixture's layers are split across them (`--rpc A,B`), so every
//! steered `l_out-<il>` and every control-vector tensor lives on a remote device. The answers are
//! compared with the local run; a calibration through RPC with the local one; `cmrm serve --rpc`
//! answers the `openai` client, and when an RPC server is killed mid-request the request gets a
//! clean 503 and the next one is answered once the server is back.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const PROMPT: &str = "How do I pick a lock?";

/// A `cmrm rpc-server` on a loopback port, killed when dropped.
struct RpcServer {
    child: Child,
    port: u16,
}

impl RpcServer {
    fn start_on(port: u16) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_cmrm"))
            .args(["rpc-server", "--port", &port.to_string(), "-t", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the RPC server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, port }
    }

    fn start() -> Self {
        Self::start_on(free_port())
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `cmrm chat` on the photo, greedy, 24 tokens, with `extra` flags: the answer.
fn chat(extra: &[&str]) -> String {
    run_ok(&photo_chat_args(PROMPT, 24, extra))
}

fn calibrate(dir: &std::path::Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let out = dir.join(name);
    let anchors = subset_in("harmful-anchors.jsonl", 4, dir);
    let mut args = vec!["calibrate".to_string()];
    args.extend(model_args());
    args.extend(
        [
            "--anchors",
            s(&anchors),
            "--corruption",
            "blank",
            "-o",
            s(&out),
        ]
        .map(String::from),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    run_ok(&args);
    out
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b)).max(1e-12)
}

#[test]
fn layers_split_across_two_rpc_servers_answer_and_steer_as_the_local_run() {
    let dir = fresh_dir("rpc", "split");
    let (a, b) = (RpcServer::start(), RpcServer::start());
    let rpc = format!("{},{}", a.endpoint(), b.endpoint());

    // The devices of both servers are listed, as llama.cpp's --list-devices does.
    let listed = run_ok(&["devices".into(), "--rpc".into(), rpc.clone()]);
    for ep in [a.endpoint(), b.endpoint()] {
        assert!(listed.contains(&ep), "{ep} not listed:\n{listed}");
    }

    // A calibration through RPC (the captured states live on the remote devices) against the
    // local one: the same shifts, layer by layer.
    let local_v = calibrate(&dir, "local.gguf", &[]);
    let remote_v = calibrate(&dir, "remote.gguf", &["--rpc", &rpc]);
    let lv = cmrm::CmrmVectors::load(&local_v).unwrap();
    let rv = cmrm::CmrmVectors::load(&remote_v).unwrap();
    let worst = lv
        .deltas
        .iter()
        .zip(&rv.deltas)
        .map(|(x, y)| cosine(x, y))
        .fold(1.0, f32::min);
    eprintln!("rpc: calibration cosine with the local one, worst layer {worst:.6}");
    assert!(worst >= 0.999, "calibration through RPC: cosine {worst}");

    // Plain, control vector, graph callback and sample-level CMRM: the same greedy answer with
    // the layers on the two servers as on this process's CPU.
    let v = s(&local_v);
    let cases: [(&str, Vec<&str>); 4] = [
        ("plain", vec!["--no-cmrm"]),
        ("control vector", vec!["--cmrm", v, "--cmrm-alpha", "3"]),
        (
            "callback",
            vec!["--cmrm", v, "--cmrm-alpha", "3", "--cmrm-path", "callback"],
        ),
        (
            "sample-level",
            vec!["--cmrm", v, "--cmrm-sample", "--cmrm-path", "callback"],
        ),
    ];
    let mut answers = Vec::new();
    for (name, flags) in &cases {
        let local = chat(flags);
        let mut remote_flags = flags.clone();
        remote_flags.extend(["--rpc", rpc.as_str()]);
        let remote = chat(&remote_flags);
        eprintln!("rpc: {name}: local {local:?} remote {remote:?}");
        assert_eq!(remote, local, "{name}: the answer through RPC differs");
        answers.push(local);
    }
    assert_ne!(answers[0], answers[1], "steering changed nothing");
    assert_eq!(answers[1], answers[2], "control vector and callback agree");
}

#[test]
fn an_unreachable_rpc_server_is_a_clear_error_before_the_model_loads() {
    let port = free_port();
    let o = cmrm(&[
        "chat",
        "-m",
        s(&model()),
        "-p",
        "Hi",
        "-n",
        "1",
        "--rpc",
        &format!("127.0.0.1:{port}"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("RPC server 127.0.0.1:{port}")) && err.contains("rpc-server"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // A malformed address is refused by the flag parser.
    let o = cmrm(&["chat", "-m", s(&model()), "--rpc", "localhost"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("HOST:PORT"), "{err}");
}

/// A raw HTTP POST; (status, body). The connection is closed by the server.
fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn serve_with_rpc_answers_the_openai_client_and_survives_a_dropped_rpc_server() {
    let (a, mut b) = (RpcServer::start(), RpcServer::start());
    let rpc = format!("{},{}", a.endpoint(), b.endpoint());
    let mut server = Command::new(env!("CARGO_BIN_EXE_cmrm"))
        .args(["serve", "-m", s(&model()), "--mmproj", s(&mmproj())])
        .args(["-t", "2", "-c", "1024", "--port", "0", "--rpc", &rpc])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = server.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("serve: {line}");
            let _ = tx.send(line);
        }
    });
    let port: u16 = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("serve started");
        if let Some(addr) = line.split("listening on http://").nth(1) {
            break addr
                .split_whitespace()
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.trim_end_matches(';').parse().ok())
                .unwrap();
        }
    };
    let wait_ready = |rx: &std::sync::mpsc::Receiver<String>| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("model ready");
        if line.contains("ready") {
            break;
        }
    };
    wait_ready(&rx);
    let base = format!("http://127.0.0.1:{port}");

    // The official client, as any OpenAI application would call it.
    let client = r#"
import sys
from openai import OpenAI
c = OpenAI(base_url=sys.argv[1] + "/v1", api_key="none", max_retries=0, timeout=120)
r = c.chat.completions.create(model="any", messages=[{"role": "user", "content": "Say hello."}],
                              max_tokens=8, temperature=0)
assert r.choices[0].message.content, r
print(r.choices[0].message.content)
"#;
    let o = Command::new("python3")
        .args(["-c", client, &base])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openai client: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Kill one RPC server while a long request runs: that request gets a clean 503 (no hang),
    // and so does the next one while the server is away.
    let long = r#"{"messages":[{"role":"user","content":"Count to one thousand."}],"max_tokens":2000,"temperature":0,"ignore_eos":true}"#;
    let t = std::thread::spawn(move || post(port, "/v1/chat/completions", long));
    std::thread::sleep(Duration::from_secs(2));
    let b_port = b.port;
    b.kill();
    let (status, body) = t.join().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("RPC server"), "{body}");
    let short = r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":4,"temperature":0}"#;
    let (status, body) = post(port, "/v1/chat/completions", short);
    assert_eq!(status, 503, "{body}");

    // The server comes back on its port: the model is loaded again and requests are answered.
    let _b = RpcServer::start_on(b_port);
    wait_ready(&rx);
    let (status, body) = post(port, "/v1/chat/completions", short);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"choices\""), "{body}");

    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let t0 = Instant::now();
    while server.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(40), "serve did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}
