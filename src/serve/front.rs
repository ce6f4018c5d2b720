//! The front `cmrm serve --rpc` puts before its model. ggml's RPC client has no error path: when
//! an RPC server drops mid-request, llama.cpp ends the process (cmrm turns that into one clear
//! line and exit code 75). So with `--rpc` the model runs in a child process (the same command
//! line, on a loopback port) and this front holds the listening socket: it passes connections
//! through at the TCP level while the child is up, answers 503 with `Retry-After` while it is
//! down (and to a request the child dropped before answering), and starts the child again once
//! every RPC server accepts connections.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::ffi::RpcEndpoint;

/// Set in the child's environment (to the front's address): the process that runs the model.
pub const WORKER_ENV: &str = "CMRM_SERVE_WORKER";

/// Exit code of a process whose RPC server dropped (see [`crate::ffi::install_abort_message`]).
const RPC_LOST: i32 = 75;

/// How the front runs.
pub struct FrontOptions {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// The RPC servers the model needs.
    pub rpc: Vec<RpcEndpoint>,
    /// The child's command line (program and arguments); [`WORKER_ENV`] is added.
    pub worker: Vec<String>,
}

/// Runs the front until SIGINT or SIGTERM. `ready` is called with the bound address.
pub fn run_front(options: FrontOptions, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let rt = super::server::runtime()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(options.addr)
            .await
            .map_err(|e| Error::Invalid(format!("cannot listen on {}: {e}", options.addr)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        ready(addr);
        let (up_tx, up_rx) = watch::channel::<Option<SocketAddr>>(None);
        let servers = options
            .rpc
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let busy = Arc::new(format!(
            "the model is not available: its RPC server(s) {servers} stopped answering and cmrm \
             starts the model again as soon as they answer; try again shortly"
        ));
        let child = Arc::new(AtomicU32::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let mut supervisor = {
            let rpc = options.rpc.clone();
            let worker = options.worker.clone();
            let (child, stopping) = (child.clone(), stopping.clone());
            tokio::task::spawn_blocking(move || {
                supervise(&worker, addr, &rpc, &up_tx, &child, &stopping)
            })
        };
        let accept = async {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let up = *up_rx.borrow();
                let busy = busy.clone();
                tokio::spawn(async move {
                    match up {
                        Some(child) => pass_through(conn, child, &busy).await,
                        None => unavailable(conn, &busy).await,
                    }
                });
            }
        };
        tokio::select! {
            r = &mut supervisor => r.map_err(|e| Error::Invalid(e.to_string()))?,
            _ = accept => Ok(()),
            _ = super::server::shutdown_signal() => {
                eprintln!("cmrm serve: stopping the model process");
                stopping.store(true, Ordering::SeqCst);
                let pid = child.load(Ordering::SeqCst);
                if pid != 0 {
                    crate::ffi::terminate(pid);
                }
                // Its own shutdown finishes the requests under way (30 s at most).
                let _ = tokio::time::timeout(Duration::from_secs(35), supervisor).await;
                Ok(())
            }
        }
    })
}

/// Starts the model process, again whenever it ends for want of an RPC server, until it ends
/// for another reason before it was ever ready (a configuration error: returned).
fn supervise(
    worker: &[String],
    front: SocketAddr,
    rpc: &[RpcEndpoint],
    up: &watch::Sender<Option<SocketAddr>>,
    current: &AtomicU32,
    stopping: &AtomicBool,
) -> Result<()> {
    let (program, args) = worker
        .split_first()
        .ok_or_else(|| Error::Invalid("no worker command".into()))?;
    loop {
        let mut child = Command::new(program)
            .args(args)
            .env(WORKER_ENV, front.to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Invalid(format!("cannot start the model process: {e}")))?;
        let pid = child.id();
        current.store(pid, Ordering::SeqCst);
        let stderr = child.stderr.take();
        let up2 = up.clone();
        let reader = std::thread::spawn(move || {
            let mut was_ready = false;
            for line in stderr.into_iter().flat_map(|s| BufReader::new(s).lines()) {
                let Ok(line) = line else { break };
                if let Some(a) = line
                    .split("listening on http://")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    was_ready = true;
                    let _ = up2.send(Some(a));
                    eprintln!("cmrm serve: model process {pid} ready");
                } else {
                    eprintln!("{line}");
                }
            }
            was_ready
        });
        let status = child
            .wait()
            .map_err(|e| Error::Invalid(format!("model process: {e}")))?;
        current.store(0, Ordering::SeqCst);
        let _ = up.send(None);
        let was_ready = reader.join().unwrap_or(false);
        if stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        if !was_ready && status.code() != Some(RPC_LOST) {
            return Err(Error::Invalid(format!(
                "the model process ended before it was ready ({status})"
            )));
        }
        eprintln!(
            "cmrm serve: the model process ended ({status}); answering 503 until every RPC \
             server accepts connections again"
        );
        while rpc
            .iter()
            .any(|e| e.reachable(Duration::from_secs(2)).is_err())
        {
            if stopping.load(Ordering::SeqCst) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        eprintln!("cmrm serve: the RPC servers answer; starting the model again");
    }
}

/// Copies the connection to and from the model process; a 503 when it drops the request
/// before answering a byte.
async fn pass_through(conn: TcpStream, child: SocketAddr, busy: &str) {
    let Ok(upstream) = TcpStream::connect(child).await else {
        return unavailable(conn, busy).await;
    };
    let (mut cr, mut cw) = conn.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    // The client's bytes go on for as long as the client sends; the connection ends when the
    // model process stops answering (its answer is complete, or it is gone).
    let to_child = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut uw).await;
        let _ = uw.shutdown().await;
    });
    let mut sent = 0u64;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match ur.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                sent += n as u64;
            }
        }
    }
    to_child.abort();
    if sent == 0 {
        let _ = cw.write_all(response(busy).as_bytes()).await;
    }
    let _ = cw.shutdown().await;
}

/// Reads the request head (2 s, 64 KiB at most) and answers 503.
async fn unavailable(mut conn: TcpStream, busy: &str) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while head.len() < 64 << 10 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let _ = conn.write_all(response(busy).as_bytes()).await;
    let _ = conn.shutdown().await;
}

fn response(message: &str) -> String {
    let body = serde_json::json!({
        "error": {"code": 503, "type": "unavailable_error", "message": message}
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}
