//! A `cmrm serve` process for the server tests, and HTTP helpers (tests/serve.rs,
//! tests/serve_faults.rs include this file with `#[path]`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::common::{bin, mmproj, model, s};

/// A server process, stopped with SIGTERM when dropped.
pub struct Server {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its standard error so far.
    pub log: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with(extra, &[])
    }

    /// Starts `cmrm serve` with `extra` flags and `env` variables. The binary is the one cargo
    /// built, or `$CMRM_TEST_BIN` (to run a test against another build, e.g. an older one).
    pub fn start_with(extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_model(&model(), &mmproj(), extra, env)
    }

    /// [`Server::start_with`] on another model and projector.
    pub fn start_model(model: &Path, mmproj: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let bin = std::env::var_os("CMRM_TEST_BIN").unwrap_or_else(|| bin().into());
        let mut child = Command::new(bin)
            .args([
                "serve",
                "-m",
                s(model),
                "--mmproj",
                s(mmproj),
                "-t",
                "2",
                "--port",
                "0",
            ])
            .args(extra)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
                }
                log2.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the server did not start: {}", log.lock().unwrap()));
        Self { child, base, log }
    }

    /// Runs the Python client `tests/clients/SCRIPT` with this server's base URL and `args`;
    /// panics with its output and the server's log unless it succeeds; prints what it printed.
    pub fn run_client(&self, script: &str, args: &[&str]) {
        let out = Command::new("python3")
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/clients")
                    .join(script),
            )
            .arg(&self.base)
            .args(args)
            .output()
            .expect("run python3 (scripts/setup.sh installs the openai package)");
        assert!(
            out.status.success(),
            "{script}: {}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log.lock().unwrap()
        );
        println!("{}", String::from_utf8_lossy(&out.stdout));
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn rss_kb(&self) -> u64 {
        self.status_kb("VmRSS:")
    }

    /// Peak resident memory so far, kB.
    pub fn peak_rss_kb(&self) -> u64 {
        self.status_kb("VmHWM:")
    }

    fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM and waits; the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(40),
                "the server did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// POSTs `body` (raw bytes) with an optional key; (status, JSON body).
pub fn post(url: &str, key: Option<&str>, body: &[u8]) -> (u16, serde_json::Value) {
    let mut req = agent().post(url).header("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.header("Authorization", &format!("Bearer {k}"));
    }
    let mut resp = req.send(body).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

pub fn get(url: &str, key: Option<&str>) -> (u16, String) {
    let mut req = agent().get(url);
    if let Some(k) = key {
        req = req.header("X-Api-Key", k);
    }
    let mut resp = req.call().unwrap();
    (
        resp.status().as_u16(),
        resp.body_mut().read_to_string().unwrap_or_default(),
    )
}

pub fn image_uri(path: &Path) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap());
    format!("data:image/jpeg;base64,{b64}")
}

pub fn chat_body(url: &str, text: &str, extra: serde_json::Value) -> Vec<u8> {
    let mut body = serde_json::json!({
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": text}]}],
        "max_tokens": 8,
        "temperature": 0
    });
    if let (Some(b), serde_json::Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    serde_json::to_vec(&body).unwrap()
}

pub fn assert_error(status: u16, body: &serde_json::Value, want: u16, needle: &str) {
    assert_eq!(status, want, "{body}");
    let e = &body["error"];
    assert_eq!(e["code"], want, "{body}");
    assert!(e["type"].is_string(), "{body}");
    let msg = e["message"].as_str().unwrap_or("");
    assert!(msg.contains(needle), "{needle:?} not in {body}");
}
