//! ggml's backend registry: the devices a build can compute on (CPU, CUDA, Metal, Vulkan) and
//! llama.cpp's RPC backend (ggml-rpc), which lends the devices of `rpc-server` processes on
//! other machines. Reached by name and proc address, as llama.cpp's `common/arg.cpp` does, so
//! nothing here depends on which backends a build carries.

use std::collections::BTreeSet;
use std::ffi::{c_char, c_void, CStr, CString};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;

use llama_cpp_sys_2 as sys;

use crate::error::{Error, Result};

/// What kind of device a backend offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// The host CPU.
    Cpu,
    /// A discrete GPU, or a remote device lent by an RPC server.
    Gpu,
    /// A GPU sharing the host's memory.
    IntegratedGpu,
    /// An accelerator used beside the CPU (BLAS, AMX).
    Accelerator,
}

/// One device ggml can compute on.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Its name, as llama.cpp's `--device` takes it (`CPU`, `CUDA0`, `RPC0[host:port]`...).
    pub name: String,
    /// What the backend says it is.
    pub description: String,
    /// The registry (backend) it belongs to: `CPU`, `CUDA`, `RPC`...
    pub backend: String,
    /// Its kind.
    pub kind: DeviceKind,
    /// Free and total memory in bytes.
    pub memory_free: usize,
    /// Total memory in bytes.
    pub memory_total: usize,
}

/// The backends compiled into this build, by name (`CPU`, `RPC`, `CUDA`, `Vulkan`, `Metal`...).
pub fn backends() -> Vec<String> {
    super::init_backend(false);
    // SAFETY: the registry is filled once at start (static backends) and only read here.
    let n = unsafe { sys::ggml_backend_reg_count() };
    (0..n)
        .map(|i| {
            // SAFETY: i < count; registry names are static NUL-terminated strings.
            unsafe { cstr(sys::ggml_backend_reg_name(sys::ggml_backend_reg_get(i))) }
        })
        .collect()
}

/// Every device of every registered backend, RPC servers added with [`add_rpc_servers`]
/// included.
pub fn devices() -> Vec<DeviceInfo> {
    super::init_backend(false);
    // SAFETY: as in `backends`; devices live as long as their registry (the process).
    let n = unsafe { sys::ggml_backend_dev_count() };
    (0..n)
        // SAFETY: i < count.
        .map(|i| describe(unsafe { sys::ggml_backend_dev_get(i) }))
        .collect()
}

fn describe(dev: sys::ggml_backend_dev_t) -> DeviceInfo {
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: `dev` is a registered device; its strings are NUL-terminated and live as long as
    // the device; the memory query writes two size_t we own. For an RPC device it asks the
    // server (which was reachable when it was added).
    unsafe {
        sys::ggml_backend_dev_memory(dev, &mut free, &mut total);
        DeviceInfo {
            name: cstr(sys::ggml_backend_dev_name(dev)),
            description: cstr(sys::ggml_backend_dev_description(dev)),
            backend: cstr(sys::ggml_backend_reg_name(
                sys::ggml_backend_dev_backend_reg(dev),
            )),
            kind: match sys::ggml_backend_dev_type(dev) {
                sys::GGML_BACKEND_DEVICE_TYPE_CPU => DeviceKind::Cpu,
                sys::GGML_BACKEND_DEVICE_TYPE_IGPU => DeviceKind::IntegratedGpu,
                sys::GGML_BACKEND_DEVICE_TYPE_ACCEL => DeviceKind::Accelerator,
                _ => DeviceKind::Gpu,
            },
            memory_free: free,
            memory_total: total,
        }
    }
}

/// # Safety
/// `p` is null or a NUL-terminated string valid for this call.
unsafe fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the caller's promise.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The device named `name` (as [`DeviceInfo::name`]), for llama.cpp's `--device`.
pub(super) fn device_by_name(name: &str) -> Result<sys::ggml_backend_dev_t> {
    let c = CString::new(name)
        .map_err(|_| Error::Invalid(format!("--device {name:?}: contains a NUL byte")))?;
    // SAFETY: `c` is a valid C string for the call; the registry is only read.
    let dev = unsafe { sys::ggml_backend_dev_by_name(c.as_ptr()) };
    if dev.is_null() {
        let known: Vec<String> = devices().into_iter().map(|d| d.name).collect();
        return Err(Error::Invalid(format!(
            "--device {name}: no such device; this build has: {} (`cmrm devices` lists them)",
            known.join(", ")
        )));
    }
    Ok(dev)
}

/// The RPC backend's registry, or an error saying this build lacks it.
fn rpc_registry() -> Result<sys::ggml_backend_reg_t> {
    super::init_backend(false);
    // SAFETY: a static string; the registry is only read.
    let reg = unsafe { sys::ggml_backend_reg_by_name(c"RPC".as_ptr()) };
    if reg.is_null() {
        return Err(Error::Invalid(
            "this cmrm was built without llama.cpp's RPC backend (GGML_RPC=ON in \
             .cargo/config.toml builds it in)"
                .into(),
        ));
    }
    Ok(reg)
}

/// A function of the RPC backend, found by name.
fn rpc_proc(name: &CStr) -> Result<*mut c_void> {
    let reg = rpc_registry()?;
    // SAFETY: `reg` is the RPC registry; `name` is a valid C string.
    let f = unsafe { sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr()) };
    if f.is_null() {
        return Err(Error::Invalid(format!(
            "llama.cpp's RPC backend has no {}",
            name.to_string_lossy()
        )));
    }
    Ok(f)
}

/// An RPC server's address, `HOST:PORT`, checked.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RpcEndpoint(String);

impl std::str::FromStr for RpcEndpoint {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!(
                "{s:?}: an RPC server is HOST:PORT, e.g. 127.0.0.1:50052"
            ));
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("{s:?}: the host is empty or has spaces"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(Self(s.to_string())),
            _ => Err(format!("{s:?}: the port must be a number from 1 to 65535")),
        }
    }
}

impl std::fmt::Display for RpcEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl RpcEndpoint {
    /// Whether a TCP connection to it opens within `timeout` (ggml-rpc aborts the process on a
    /// failed connect, so every endpoint is tried from here first).
    pub fn reachable(&self, timeout: Duration) -> Result<()> {
        let unreachable = |why: String| {
            Error::Invalid(format!(
                "RPC server {self}: {why}; start it there with `cmrm rpc-server --host HOST \
                 --port PORT` (or llama.cpp's rpc-server) and check the address"
            ))
        };
        let addrs: Vec<SocketAddr> = self
            .0
            .to_socket_addrs()
            .map_err(|e| unreachable(format!("cannot resolve the host ({e})")))?
            .collect();
        let mut last = String::from("no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(unreachable(format!("cannot connect ({last})")))
    }
}

/// Endpoints already added in this process (ggml registers each once).
static ADDED: Mutex<BTreeSet<RpcEndpoint>> = Mutex::new(BTreeSet::new());

/// Adds the devices of these RPC servers to ggml's registry, so that a model loaded afterwards
/// can place layers on them (llama.cpp's `--rpc`). Each server is reached first: an unreachable
/// one is an error naming it, never an abort inside ggml.
pub fn add_rpc_servers(endpoints: &[RpcEndpoint]) -> Result<()> {
    if endpoints.is_empty() {
        return Ok(());
    }
    let add = rpc_proc(c"ggml_backend_rpc_add_server")?;
    // SAFETY: ggml-rpc documents this symbol as `ggml_backend_reg_t (*)(const char *)`.
    let add: unsafe extern "C" fn(*const c_char) -> sys::ggml_backend_reg_t =
        unsafe { std::mem::transmute(add) };
    let mut added = ADDED.lock().unwrap_or_else(|e| e.into_inner());
    for e in endpoints {
        if added.contains(e) {
            continue;
        }
        e.reachable(Duration::from_secs(5))?;
        let c = CString::new(e.0.as_str())
            .map_err(|_| Error::Invalid(format!("RPC server {e}: contains a NUL byte")))?;
        // SAFETY: `c` is valid for the call; the server answered a connect just now (ggml-rpc
        // aborts on a failed handshake, which the abort hook turns into a clear exit).
        let reg = unsafe { add(c.as_ptr()) };
        if reg.is_null() {
            return Err(Error::Invalid(format!(
                "RPC server {e}: llama.cpp could not add it{}",
                super::log::reason()
            )));
        }
        // SAFETY: `reg` is the registry ggml-rpc made for this server; registering it once
        // makes its devices visible to model loading.
        unsafe { sys::ggml_backend_register(reg) };
        added.insert(e.clone());
    }
    Ok(())
}

/// Runs ggml's RPC server on `endpoint` (`HOST:PORT`), lending `devices` (names; empty: every
/// GPU, else the CPU) with `threads` CPU threads, caching tensors in `cache_dir` when given.
/// Blocks for as long as the server runs; returns only when it cannot start.
pub fn serve_rpc(
    endpoint: &str,
    cache_dir: Option<&std::path::Path>,
    threads: usize,
    devices: &[String],
) -> Result<()> {
    let start = rpc_proc(c"ggml_backend_rpc_start_server")?;
    // SAFETY: ggml-rpc documents this symbol as
    // `void (*)(const char *, const char *, size_t, size_t, ggml_backend_dev_t *)`.
    let start: unsafe extern "C" fn(
        *const c_char,
        *const c_char,
        usize,
        usize,
        *mut sys::ggml_backend_dev_t,
    ) = unsafe { std::mem::transmute(start) };
    let mut devs: Vec<sys::ggml_backend_dev_t> = if devices.is_empty() {
        default_server_devices()
    } else {
        devices
            .iter()
            .map(|d| device_by_name(d))
            .collect::<Result<_>>()?
    };
    let ep =
        CString::new(endpoint).map_err(|_| Error::Invalid("--host: contains a NUL byte".into()))?;
    let cache = match cache_dir {
        Some(d) => Some(super::c_path(d)?),
        None => None,
    };
    // SAFETY: every pointer is valid for the call, which blocks while the server runs; the
    // device handles belong to the process-wide registry.
    unsafe {
        start(
            ep.as_ptr(),
            cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            threads,
            devs.len(),
            devs.as_mut_ptr(),
        )
    };
    Err(Error::Invalid(format!(
        "the RPC server on {endpoint} stopped: the address may be in use or not local{}",
        super::log::reason()
    )))
}

/// llama.cpp's rpc-server default: every GPU, else the CPU.
fn default_server_devices() -> Vec<sys::ggml_backend_dev_t> {
    super::init_backend(false);
    // SAFETY: the registry is only read; the handles live as long as the process.
    let all: Vec<sys::ggml_backend_dev_t> = (0..unsafe { sys::ggml_backend_dev_count() })
        .map(|i| unsafe { sys::ggml_backend_dev_get(i) })
        .collect();
    let gpus: Vec<_> = all
        .iter()
        .copied()
        // SAFETY: registered devices.
        .filter(|&d| unsafe { sys::ggml_backend_dev_type(d) } == sys::GGML_BACKEND_DEVICE_TYPE_GPU)
        .collect();
    if !gpus.is_empty() {
        return gpus;
    }
    all.into_iter()
        // SAFETY: registered devices.
        .filter(|&d| unsafe { sys::ggml_backend_dev_type(d) } == sys::GGML_BACKEND_DEVICE_TYPE_CPU)
        .collect()
}

/// ggml aborts the process when an RPC server drops mid-request (no error path exists in
/// ggml-rpc). This hook replaces the core dump with one clear line, the fix, and exit code 75
/// (EX_TEMPFAIL) so that a supervisor can restart cmrm once the server is back.
pub fn install_abort_message() {
    unsafe extern "C" fn on_abort(msg: *const c_char) {
        // SAFETY: ggml passes a NUL-terminated message valid for this call.
        let msg = unsafe { cstr(msg) };
        let msg = msg.trim();
        let rpc = msg.contains("RPC") || msg.contains("rpc");
        let fix = if rpc {
            "an RPC server stopped answering: restart it (`cmrm rpc-server`) and run cmrm again"
        } else {
            "llama.cpp stopped on an internal error"
        };
        eprintln!("cmrm: {fix} (llama.cpp: {msg})");
        // SAFETY: _exit ends the process at once without running destructors that other
        // threads (blocked inside ggml) may still be using.
        unsafe { libc::_exit(if rpc { 75 } else { 70 }) };
    }
    // SAFETY: `on_abort` is a plain function valid for the process's life.
    unsafe { sys::ggml_set_abort_callback(Some(on_abort)) };
}
