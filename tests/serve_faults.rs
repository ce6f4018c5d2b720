//! Issue 22, "A server that holds up": a real `cmrm serve` on loopback against clients that
//! misbehave — leave the queue, stall or leave a stream, send hostile bodies, headers and
//! images, point the server at addresses it must not fetch — each test checking that the server
//! gives back what the client held and keeps answering.

mod common;
#[path = "common/server.rs"]
mod server;

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server::*;

/// A text-only chat body with `extra` fields.
fn text_body(text: &str, extra: Value) -> Vec<u8> {
    let mut body = json!({
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 8,
        "temperature": 0
    });
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    serde_json::to_vec(&body).unwrap()
}

/// The value of metric `name` (the first sample line starting with it).
fn metric(server: &Server, name: &str) -> f64 {
    let (st, m) = get(&server.url("/metrics"), None);
    assert_eq!(st, 200, "{m}");
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {m}"))
}

/// Waits (at most `within`) until metric `name` equals `want`.
fn wait_metric(server: &Server, name: &str, want: f64, within: Duration) {
    let t0 = Instant::now();
    loop {
        let v = metric(server, name);
        if v == want {
            return;
        }
        assert!(
            t0.elapsed() < within,
            "{name} is {v}, not {want}, after {within:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

const PROCESSING: &str = "llamacpp:requests_processing";
const DEFERRED: &str = "llamacpp:requests_deferred";

/// A streaming request that holds a slot until it is released (its client reads the stream
/// and goes away when told).
struct Holder {
    release: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: thread::JoinHandle<u16>,
}

impl Holder {
    /// Sends the request and waits until a slot answers it.
    fn start(server: &Server) -> Self {
        let chat = server.url("/v1/chat/completions");
        let body = text_body(
            "Count from one to one thousand.",
            json!({"stream": true, "max_tokens": 4000, "ignore_eos": true}),
        );
        let busy = metric(server, PROCESSING);
        let release = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = release.clone();
        let thread = thread::spawn(move || {
            use std::io::Read;
            let unhurried: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(900)))
                .build()
                .into();
            let mut resp = unhurried
                .post(&chat)
                .header("Content-Type", "application/json")
                .send(&body[..])
                .unwrap();
            let status = resp.status().as_u16();
            let mut reader = resp.body_mut().as_reader();
            let mut buf = [0u8; 4096];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if matches!(reader.read(&mut buf), Ok(0) | Err(_)) {
                    break;
                }
            }
            status
        });
        wait_metric(server, PROCESSING, busy + 1.0, Duration::from_secs(120));
        Self { release, thread }
    }

    /// Whether the request is still answered.
    fn holding(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Goes away mid-answer; the status the request got.
    fn release(self) -> u16 {
        self.release
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

#[test]
fn a_client_that_leaves_the_queue_gives_its_place_back() {
    let server = Server::start(&[
        "--parallel",
        "1",
        "--queue",
        "1",
        "-c",
        "4096",
        "--max-tokens",
        "4000",
        "--metrics",
    ]);
    let chat = server.url("/v1/chat/completions");
    let a = Holder::start(&server);
    // B waits in the queue and gives up after 1 s.
    let impatient: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(1)))
        .build()
        .into();
    let b = impatient
        .post(&chat)
        .header("Content-Type", "application/json")
        .send(&text_body("Hello?", json!({}))[..]);
    assert!(b.is_err(), "B was answered while A held the only slot");
    wait_metric(&server, DEFERRED, 0.0, Duration::from_secs(5));
    // C, while A still answers, takes the queue place B gave back.
    assert!(a.holding());
    let c = {
        let chat = chat.clone();
        thread::spawn(move || post(&chat, None, &text_body("Hi.", json!({"max_tokens": 4}))))
    };
    wait_metric(&server, DEFERRED, 1.0, Duration::from_secs(10));
    assert!(a.holding(), "A stopped before C was queued");
    assert_eq!(a.release(), 200);
    let (st, body) = c.join().unwrap();
    assert_eq!(st, 200, "C was refused: {body}");
    wait_metric(&server, DEFERRED, 0.0, Duration::from_secs(5));
    wait_metric(&server, PROCESSING, 0.0, Duration::from_secs(5));
}

/// `host:port` of a server at `base`.
fn authority(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

/// Sends `head` (request line and headers, without the blank line) and `body` on a fresh
/// connection with `Connection: close`; the status and the body of the answer.
fn raw(server: &Server, head: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(authority(&server.base)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

#[test]
fn cross_site_requests_and_foreign_hosts_are_refused() {
    let server = Server::start(&["-c", "512"]);
    let host = authority(&server.base);
    let body = text_body("Hi.", json!({"max_tokens": 2}));
    let post_head = |host: &str, extra: &str| {
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: {host}{extra}")
    };
    // A page on another site may POST text/plain without a CORS preflight.
    let (st, b) = raw(
        &server,
        &post_head(
            &host,
            "\r\nContent-Type: text/plain\r\nOrigin: http://evil.example",
        ),
        &body,
    );
    assert_eq!(st, 403, "{b}");
    assert!(b.contains("Origin"), "{b}");
    let (st, b) = raw(
        &server,
        &post_head(&host, "\r\nContent-Type: text/plain"),
        &body,
    );
    assert_eq!(st, 415, "{b}");
    assert!(b.contains("application/json"), "{b}");
    let (st, b) = raw(
        &server,
        &post_head(
            &host,
            "\r\nContent-Type: application/json\r\nOrigin: http://evil.example",
        ),
        &body,
    );
    assert_eq!(st, 403, "{b}");
    // DNS rebinding: a foreign name resolving to loopback.
    let port = host.rsplit(':').next().unwrap();
    let (st, b) = raw(
        &server,
        &post_head(
            &format!("evil.example:{port}"),
            "\r\nContent-Type: application/json",
        ),
        &body,
    );
    assert_eq!(st, 403, "{b}");
    assert!(b.contains("Host"), "{b}");
    let (st, b) = raw(
        &server,
        &format!("GET /v1/models HTTP/1.1\r\nHost: evil.example:{port}"),
        b"",
    );
    assert_eq!(st, 403, "{b}");
    // The server's own page, loopback names and clients without Origin are served.
    let (st, b) = raw(
        &server,
        &post_head(
            &host,
            &format!("\r\nContent-Type: application/json; charset=utf-8\r\nOrigin: http://{host}"),
        ),
        &body,
    );
    assert_eq!(st, 200, "{b}");
    let (st, b) = raw(
        &server,
        &post_head(
            &format!("localhost:{port}"),
            "\r\nContent-Type: application/json\r\nOrigin: http://localhost:3000",
        ),
        &body,
    );
    assert_eq!(st, 200, "{b}");
    let (st, b) = post(&server.url("/v1/chat/completions"), None, &body);
    assert_eq!(st, 200, "{b}");
}

#[test]
fn media_fetch_never_connects_to_loopback_or_private_addresses() {
    let server = Server::start(&["-c", "512", "--media-fetch"]);
    let chat = server.url("/v1/chat/completions");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    for url in [
        format!("http://127.0.0.1:{port}/x.png"),
        format!("http://localhost:{port}/x.png"),
        format!("http://[::ffff:127.0.0.1]:{port}/x.png"),
        format!("http://2130706433:{port}/x.png"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/x.png".to_string(),
        "http://[::1]/x.png".to_string(),
    ] {
        let (st, b) = post(&chat, None, &chat_body(&url, "What is it?", json!({})));
        assert_eq!(st, 400, "{url}: {b}");
        let msg = b["error"]["message"].as_str().unwrap_or("");
        assert!(
            msg.contains("public"),
            "{url}: the refusal does not say why: {b}"
        );
        assert!(
            !msg.to_lowercase().contains("refused") && !msg.contains(&port.to_string()),
            "{url}: the error tells what the connection found: {b}"
        );
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the server connected to a loopback listener: {other:?}"),
    }
}

#[test]
fn requests_are_checked_field_by_field_as_openai_does() {
    let server = Server::start(&["-c", "512", "--max-tokens", "12"]);
    let chat = server.url("/v1/chat/completions");
    // A misspelt field is named, not ignored.
    let (st, b) = post(&chat, None, &text_body("Hi.", json!({"temprature": 0.5})));
    assert_error(
        st,
        &b,
        400,
        "Unrecognized request argument supplied: temprature",
    );
    let msg = json!({"messages": [{"role": "user", "content": "Hi.", "contnet": "x"}]});
    let (st, b) = post(&chat, None, &serde_json::to_vec(&msg).unwrap());
    assert_error(st, &b, 400, "messages[0].contnet");
    // Documented but not implemented: refused, naming the field.
    let functions = json!({"functions": [{"name": "f"}]});
    let (st, b) = post(&chat, None, &text_body("Hi.", functions));
    assert_error(st, &b, 400, "functions is not supported");
    // Informational fields pass.
    let info = json!({"user": "u-1", "metadata": {"k": "v"}, "store": false,
        "service_tier": "auto", "tools": null, "messages": [
            {"role": "user", "content": "Hi.", "name": "ann"}]});
    let (st, b) = post(&chat, None, &text_body("Hi.", info));
    assert_eq!(st, 200, "{b}");
    // At most four stop strings, each of bounded length.
    let (st, b) = post(
        &chat,
        None,
        &text_body("Hi.", json!({"stop": ["a", "b", "c", "d", "e"]})),
    );
    assert_error(st, &b, 400, "stop has 5 strings");
    let (st, b) = post(
        &chat,
        None,
        &text_body("Hi.", json!({"stop": ["x".repeat(300)]})),
    );
    assert_error(st, &b, 400, "stop[0]");
    let (st, b) = post(
        &chat,
        None,
        &text_body("Hi.", json!({"stop": ["a", "b", "c", "d"]})),
    );
    assert_eq!(st, 200, "{b}");
    // No max_tokens: the server's --max-tokens bounds the answer, not the context.
    let open = json!({"messages": [{"role": "user", "content": "Count to a hundred."}],
        "ignore_eos": true, "temperature": 0});
    let (st, b) = post(&chat, None, &serde_json::to_vec(&open).unwrap());
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["usage"]["completion_tokens"], 12, "{b}");
    assert_eq!(b["choices"][0]["finish_reason"], "length", "{b}");
}

/// A connection whose receive buffer holds a few kB only, so that a client that stops
/// reading makes the server's writes wait soon.
fn tight_connection(base: &str) -> std::net::TcpStream {
    let addr: std::net::SocketAddr = authority(base).parse().unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    sock.into()
}

#[test]
fn a_streaming_client_that_stops_reading_frees_its_slot_after_the_timeout() {
    let server = Server::start(&[
        "--parallel",
        "1",
        "--timeout",
        "3",
        "-c",
        "4096",
        "--max-tokens",
        "4000",
        "--metrics",
    ]);
    use std::io::Write;
    let mut stalled = tight_connection(&server.base);
    let body = text_body(
        "Write a very long story.",
        json!({"stream": true, "max_tokens": 4000, "ignore_eos": true}),
    );
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        authority(&server.base),
        body.len()
    );
    stalled.write_all(head.as_bytes()).unwrap();
    stalled.write_all(&body).unwrap();
    // The client reads nothing from now on.
    wait_metric(&server, PROCESSING, 1.0, Duration::from_secs(30));
    let t0 = Instant::now();
    wait_metric(&server, PROCESSING, 0.0, Duration::from_secs(240));
    let predicted = metric(&server, "llamacpp:tokens_predicted_total");
    eprintln!(
        "stalled stream: slot free after {:.1} s, {predicted} tokens generated",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        predicted < 4000.0,
        "the answer ran to its end instead of stopping at the stall"
    );
    assert_eq!(metric(&server, "cmrm:requests_stalled_total"), 1.0);
    let t1 = Instant::now();
    let (st, b) = post(
        &server.url("/v1/chat/completions"),
        None,
        &text_body("Hi.", json!({})),
    );
    assert_eq!(st, 200, "{b}");
    assert!(
        t1.elapsed() < Duration::from_secs(20),
        "the next request waited"
    );
    drop(stalled);
}

#[test]
fn a_panic_in_a_slot_fails_its_request_and_the_slot_serves_the_next() {
    let trigger = "Panic in the slot, please.";
    let server = Server::start_with(
        &["--parallel", "1", "-c", "512", "--metrics"],
        &[("CMRM_TEST_PANIC", trigger)],
    );
    let chat = server.url("/v1/chat/completions");
    let (st, b) = post(&chat, None, &text_body(trigger, json!({})));
    assert_error(st, &b, 500, "retry");
    for _ in 0..2 {
        let (st, b) = post(&chat, None, &text_body("Hi.", json!({})));
        assert_eq!(st, 200, "{b}");
    }
    assert_eq!(get(&server.url("/health"), None).0, 200);
    assert_eq!(metric(&server, "cmrm:slot_panics_total"), 1.0);
    wait_metric(&server, PROCESSING, 0.0, Duration::from_secs(5));
}

/// A PNG of one colour, `w` x `h`, as a data URI (small encoded, large decoded).
fn solid_png(w: u32, h: u32) -> String {
    use base64::Engine as _;
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([200, 30, 60]));
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    )
}

fn images_body(uri: &str, n: usize) -> Vec<u8> {
    let mut parts: Vec<Value> = (0..n)
        .map(|_| json!({"type": "image_url", "image_url": {"url": uri}}))
        .collect();
    parts.push(json!({"type": "text", "text": "What colour is it?"}));
    serde_json::to_vec(&json!({
        "messages": [{"role": "user", "content": parts}],
        "max_tokens": 2
    }))
    .unwrap()
}

#[test]
fn requests_the_server_refuses_decode_nothing_and_queued_images_are_bounded() {
    let server = Server::start(&[
        "--parallel",
        "1",
        "--queue",
        "2",
        "-c",
        "4096",
        "--max-tokens",
        "4000",
        "--max-images",
        "4",
        "--metrics",
    ]);
    let chat = server.url("/v1/chat/completions");
    // Four 2000x2000 images a request: 48 MB decoded, a few kB sent.
    let uri = solid_png(2000, 2000);
    let body = images_body(&uri, 4);
    eprintln!("image request: {} bytes", body.len());
    let a = Holder::start(&server);
    let peak0 = server.peak_rss_kb();
    // Sixteen clients; the two that get a queue place wait 20 s at most for the slot.
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (chat, body) = (chat.clone(), body.clone());
            thread::spawn(move || {
                let patient: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(20)))
                    .http_status_as_error(false)
                    .build()
                    .into();
                patient
                    .post(&chat)
                    .header("Content-Type", "application/json")
                    .send(&body[..])
                    .map_or_else(
                        |e| (0, e.to_string()),
                        |r| (r.status().as_u16(), String::new()),
                    )
            })
        })
        .collect();
    let outcomes: Vec<(u16, String)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let statuses: Vec<u16> = outcomes.iter().map(|o| o.0).collect();
    let peak = server.peak_rss_kb();
    assert!(a.holding(), "the slot was freed during the test");
    a.release();
    let busy = statuses.iter().filter(|&&s| s == 503).count();
    let waited = statuses.iter().filter(|&&s| s == 0).count();
    eprintln!(
        "16 image requests with 1 slot busy and 2 queue places: {busy} refused, {waited} queued until their client gave up; peak RSS {peak0} -> {peak} kB"
    );
    assert_eq!((busy, waited), (14, 2), "{outcomes:?}");
    // Two queued requests of 48 MB decoded each (with copies on the way), not sixteen.
    assert!(
        peak <= peak0 + 320_000,
        "peak resident memory grew from {peak0} kB to {peak} kB"
    );
    // Only the two admitted requests decoded their images.
    let decoded = metric(&server, "cmrm:images_decoded_total");
    assert_eq!(decoded, 8.0, "refused requests decoded images");
    wait_metric(&server, DEFERRED, 0.0, Duration::from_secs(10));
    wait_metric(&server, PROCESSING, 0.0, Duration::from_secs(10));
}

#[test]
fn an_image_over_the_pixel_limit_is_refused_before_it_is_decoded() {
    let server = Server::start(&["-c", "512", "--max-image-pixels", "1000000"]);
    let chat = server.url("/v1/chat/completions");
    // 36 megapixels: 108 MB decoded, under cmrm's own 40-megapixel limit.
    let uri = solid_png(6000, 6000);
    let peak0 = server.peak_rss_kb();
    let (st, b) = post(&chat, None, &images_body(&uri, 1));
    assert_error(st, &b, 400, "--max-image-pixels");
    let peak = server.peak_rss_kb();
    eprintln!("6000x6000 image refused: peak RSS {peak0} -> {peak} kB");
    assert!(
        peak < peak0 + 50_000,
        "the image was decoded: peak RSS {peak0} -> {peak} kB"
    );
}

#[test]
fn a_client_that_sends_half_a_header_is_disconnected() {
    use std::io::{Read, Write};
    let server = Server::start(&["-c", "512", "--timeout", "3"]);
    let mut s = std::net::TcpStream::connect(authority(&server.base)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        .unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 256];
    let closed = match s.read(&mut buf) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    let waited = t0.elapsed();
    eprintln!(
        "half a header: closed {closed} after {:.1} s",
        waited.as_secs_f64()
    );
    assert!(closed, "the connection is still open after {waited:?}");
    assert!(waited < Duration::from_secs(8), "closed after {waited:?}");
    let (st, b) = post(
        &server.url("/v1/chat/completions"),
        None,
        &text_body("Hi.", json!({})),
    );
    assert_eq!(st, 200, "{b}");
}

/// CRC-32 (PNG's).
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A PNG whose header declares `w` x `h` pixels, with no pixel data behind it.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    chunk(b"IEND", &[]);
    png
}

/// The kinds of misbehaving client of the fault test.
#[derive(Clone, Copy, Debug)]
enum Fault {
    QueueTimeout,
    LeaveMidStream,
    StallStream,
    Oversize,
    Truncated,
    Malformed,
    HostileImage,
    HalfHeader,
}

const FAULTS: [Fault; 8] = [
    Fault::QueueTimeout,
    Fault::LeaveMidStream,
    Fault::StallStream,
    Fault::Oversize,
    Fault::Truncated,
    Fault::Malformed,
    Fault::HostileImage,
    Fault::HalfHeader,
];

/// Writes a request head with `len` as Content-Length and `body` on a fresh connection.
fn send_raw(base: &str, stream: &mut std::net::TcpStream, len: usize, body: &[u8]) {
    use std::io::Write;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n",
        authority(base)
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

/// Runs one fault; whether the client saw what it should (a refusal, or nothing it waits for).
fn run_fault(base: &str, fault: Fault, n: usize, hostile: &[String]) {
    use std::io::Read;
    let chat = format!("{base}/v1/chat/completions");
    match fault {
        Fault::QueueTimeout => {
            let impatient: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_millis(700)))
                .http_status_as_error(false)
                .build()
                .into();
            let _ = impatient
                .post(&chat)
                .header("Content-Type", "application/json")
                .send(&text_body(&format!("Request {n}: say hello."), json!({}))[..]);
        }
        Fault::LeaveMidStream => {
            let body = text_body(
                &format!("Request {n}: tell a story."),
                json!({"stream": true, "max_tokens": 48}),
            );
            if let Ok(mut r) = agent()
                .post(&chat)
                .header("Content-Type", "application/json")
                .send(&body[..])
            {
                let mut buf = [0u8; 64];
                let _ = r.body_mut().as_reader().read(&mut buf);
            }
        }
        Fault::StallStream => {
            let mut s = tight_connection(base);
            let body = text_body(
                &format!("Request {n}: write at length."),
                json!({"stream": true, "max_tokens": 400, "ignore_eos": true}),
            );
            send_raw(base, &mut s, body.len(), &body);
            // Long enough for the server's buffers to fill and its 3 s stall limit to pass.
            thread::sleep(Duration::from_secs(15));
        }
        Fault::Oversize => {
            let big = "x".repeat(3_000_000);
            let body = text_body(&big, json!({}));
            let mut s = std::net::TcpStream::connect(authority(base)).unwrap();
            send_raw(base, &mut s, body.len(), &body);
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut out = [0u8; 64];
            let _ = s.read(&mut out);
        }
        Fault::Truncated => {
            let body = text_body(&format!("Request {n}."), json!({}));
            let mut s = std::net::TcpStream::connect(authority(base)).unwrap();
            send_raw(base, &mut s, body.len() + 100, &body[..body.len() / 2]);
            // Goes away with the body half sent.
        }
        Fault::Malformed => {
            let bad: &[&[u8]] = &[
                b"{\"messages\": [",
                b"[]",
                b"{\"messages\": \"hi\"}",
                b"\xff\xfe{}",
                b"{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
            ];
            let (st, _) = post(&chat, None, bad[n % bad.len()]);
            assert!(st == 400 || st == 503, "malformed body answered {st}");
        }
        Fault::HostileImage => {
            let uri = &hostile[n % hostile.len()];
            let (st, b) = post(&chat, None, &chat_body(uri, "What is it?", json!({})));
            assert!(st == 400 || st == 503, "hostile image answered {st}: {b}");
        }
        Fault::HalfHeader => {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(authority(base)).unwrap();
            let _ = s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0");
            thread::sleep(Duration::from_secs(4));
        }
    }
}

#[test]
fn misbehaving_clients_leave_the_server_as_they_found_it() {
    use base64::Engine as _;
    let server = Server::start(&[
        "--parallel",
        "2",
        "--queue",
        "2",
        "-c",
        "1024",
        "--timeout",
        "3",
        "--max-tokens",
        "400",
        "--max-request-bytes",
        "2000000",
        "--max-image-pixels",
        "4000000",
        "--metrics",
    ]);
    let chat = server.url("/v1/chat/completions");
    let b64 = |bytes: &[u8]| {
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    };
    let valid = {
        let uri = solid_png(64, 64);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(uri.split_once(',').unwrap().1)
            .unwrap();
        bytes
    };
    let hostile = vec![
        b64(&png_header_only(16384, 16384)),
        b64(&png_header_only(4000, 4000)),
        b64(&png_header_only(0, 0)),
        b64(&valid[..valid.len() / 2]),
        b64(b"GIF89a\xff\xff\xff\xff"),
        solid_png(2500, 2000),
        "data:image/png;base64,@@@@".to_string(),
        "file:///etc/passwd".to_string(),
        "http://127.0.0.1:9/x.png".to_string(),
    ];
    // Warm up, then the baseline.
    let (st, b) = post(&chat, None, &text_body("Hi.", json!({})));
    assert_eq!(st, 200, "{b}");
    let rss_before = server.rss_kb();
    let duration = Duration::from_secs(45);
    let t0 = Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counts = std::sync::Arc::new(std::sync::Mutex::new((0usize, 0usize, 0usize)));
    let mut threads = Vec::new();
    // Six misbehaving clients and two well-behaved ones.
    for i in 0..8 {
        let (stop, counts, hostile) = (stop.clone(), counts.clone(), hostile.clone());
        let base = server.base.clone();
        threads.push(thread::spawn(move || {
            let mut n = i;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 8;
                if i < 2 {
                    let body = text_body(&format!("Client {i}, request {n}: hello."), json!({}));
                    let (st, b) = post(&format!("{base}/v1/chat/completions"), None, &body);
                    assert!(st == 200 || st == 503, "a good request answered {st}: {b}");
                    let mut c = counts.lock().unwrap();
                    c.0 += 1;
                    if st == 200 {
                        c.2 += 1;
                    }
                    if st == 503 {
                        drop(c);
                        thread::sleep(Duration::from_millis(200));
                    }
                } else {
                    let fault = FAULTS[(n / 8 + i) % FAULTS.len()];
                    run_fault(&base, fault, n, &hostile);
                    let mut c = counts.lock().unwrap();
                    c.0 += 1;
                    c.1 += 1;
                }
            }
        }));
    }
    let mut rss_peak = rss_before;
    while t0.elapsed() < duration {
        thread::sleep(Duration::from_millis(500));
        rss_peak = rss_peak.max(server.rss_kb());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    // Everything given back: the queue and the slots.
    wait_metric(&server, DEFERRED, 0.0, Duration::from_secs(20));
    wait_metric(&server, PROCESSING, 0.0, Duration::from_secs(20));
    let t1 = Instant::now();
    let (st, b) = post(&chat, None, &text_body("Still there?", json!({})));
    let answer_s = t1.elapsed().as_secs_f64();
    assert_eq!(st, 200, "{b}");
    let rss_after = server.rss_kb();
    let (requests, faults, good_ok) = *counts.lock().unwrap();
    eprintln!(
        "fault test: {requests} requests in {:.0} s, {faults} faults, {good_ok} good requests answered; next request answered in {answer_s:.2} s; RSS before {rss_before} kB, peak {rss_peak} kB, after {rss_after} kB; stalled {}, panics {}, errors {}",
        duration.as_secs_f64(),
        metric(&server, "cmrm:requests_stalled_total"),
        metric(&server, "cmrm:slot_panics_total"),
        metric(&server, "cmrm:requests_error_total"),
    );
    assert!(good_ok >= 4, "only {good_ok} good requests answered");
    assert!(answer_s < 15.0, "the next request waited {answer_s:.1} s");
    assert!(
        rss_after <= rss_before + rss_before / 4 + 100_000,
        "resident memory grew from {rss_before} kB to {rss_after} kB"
    );
}

#[test]
fn a_client_refused_before_its_large_body_is_read_gets_the_refusal_not_a_reset() {
    let server = Server::start(&["-c", "512", "--api-key", "sk-right"]);
    let chat = server.url("/v1/chat/completions");
    // 16 MB: more than loopback's socket buffers hold, so the client is still sending when
    // the server answers.
    let big = format!(
        "{{\"messages\": [], \"pad\": \"{}\"}}",
        "x".repeat(16 << 20)
    );
    let send = |content_type: &str, key: &str| {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        agent
            .post(&chat)
            .header("Content-Type", content_type)
            .header("Authorization", &format!("Bearer {key}"))
            .send(big.as_bytes())
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    };
    assert_eq!(send("application/json", "sk-wrong"), Ok(401));
    assert_eq!(send("text/plain", "sk-right"), Ok(415));
    // And the server answers the next request.
    let (st, b) = post(
        &chat,
        Some("sk-right"),
        &text_body("Hi.", json!({"max_tokens": 2})),
    );
    assert_eq!(st, 200, "{b}");
}
