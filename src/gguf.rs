//! A small, safe GGUF reader and writer (the file format of llama.cpp): enough to check model
//! files before llama.cpp sees them and to read and write cmrm's vector files.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::atomic::AtomicFile;
use crate::error::Error;

/// Why a GGUF file cannot be read.
#[derive(Debug)]
pub enum GgufError {
    /// The file cannot be opened or read.
    Io(std::io::Error),
    /// The bytes are not a well-formed GGUF file.
    Format(String),
}

impl std::fmt::Display for GgufError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GgufError::Io(e) => write!(f, "cannot read: {e}"),
            GgufError::Format(m) => f.write_str(m),
        }
    }
}

impl From<std::io::Error> for GgufError {
    fn from(e: std::io::Error) -> Self {
        GgufError::Io(e)
    }
}

/// A result of reading GGUF.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;

fn format_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(GgufError::Format(msg.into()))
}

const MAGIC: &[u8; 4] = b"GGUF";
const ALIGNMENT: u64 = 32;
/// ggml type id of F32 tensors.
pub const TYPE_F32: u32 = 0;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Unsigned 32-bit integer.
    U32(u32),
    /// Signed 32-bit integer.
    I32(i32),
    /// Unsigned 64-bit integer.
    U64(u64),
    /// 32-bit float.
    F32(f32),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Array of 32-bit floats.
    F32s(Vec<f32>),
    /// Array of strings.
    Strs(Vec<String>),
    /// Any other scalar or array type, kept only as its GGUF type id.
    Other(u32),
}

impl Value {
    /// The value as an unsigned integer, when it is an integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U32(v) => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::U64(v) => Some(v),
            _ => None,
        }
    }
}

/// Where a tensor is and what it holds.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Dimensions in ggml order (`ne`).
    pub dims: Vec<u64>,
    /// ggml type id.
    pub ggml_type: u32,
    /// Offset inside the data section.
    pub offset: u64,
}

/// The header of a GGUF file: metadata and tensor directory.
#[derive(Clone, Debug, Default)]
pub struct Header {
    /// Key/value metadata, in file order.
    pub kv: Vec<(String, Value)>,
    /// The tensors.
    pub tensors: Vec<TensorInfo>,
    /// Absolute file offset of the tensor data section.
    pub data_offset: u64,
}

impl Header {
    /// Looks a key up.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Looks a tensor up.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Checks that `path` is a readable file that starts like a GGUF file; the error is a cause to
/// put after the file's name. `what` names its role ("model", "mmproj", ...).
pub fn check_file(path: &Path, what: &str) -> std::result::Result<(), String> {
    if path.is_dir() {
        return Err(format!("is a folder, not a {what} file"));
    }
    let mut f =
        File::open(path).map_err(|e| format!("cannot open the {what} ({e}): check the path"))?;
    let mut magic = [0u8; 4];
    if f.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Err(format!(
            "not a GGUF file (the {what} must be a llama.cpp .gguf file)"
        ));
    }
    Ok(())
}

/// Reads the header of a GGUF file.
pub fn read_header(path: &Path) -> Result<Header> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    Reader::new(BufReader::new(file), len).header()
}

/// Reads the header of a GGUF file held in memory.
pub fn parse_header(bytes: &[u8]) -> Result<Header> {
    Reader::new(bytes, bytes.len() as u64).header()
}

/// Where an F32 tensor's data lies in the file: (start, byte length), checked against `len`.
fn f32_span(header: &Header, info: &TensorInfo, len: u64) -> Result<(u64, u64)> {
    if info.ggml_type != TYPE_F32 {
        return format_err(format!("tensor {} is not F32", info.name));
    }
    let bytes = info
        .dims
        .iter()
        .try_fold(4u64, |acc, &d| acc.checked_mul(d))
        .filter(|&b| b <= len);
    let start = header.data_offset.checked_add(info.offset);
    match (start, bytes) {
        (Some(s), Some(b)) if s.checked_add(b).is_some_and(|end| end <= len) => Ok((s, b)),
        _ => format_err(format!(
            "tensor {} lies past the end of the file (truncated?)",
            info.name
        )),
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Reads an F32 tensor's data from a file.
pub fn read_f32_tensor(path: &Path, header: &Header, info: &TensorInfo) -> Result<Vec<f32>> {
    let mut file = File::open(path)?;
    let (start, n) = f32_span(header, info, file.metadata()?.len())?;
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = vec![0u8; n as usize];
    file.read_exact(&mut bytes)?;
    Ok(f32s(&bytes))
}

/// Reads an F32 tensor's data from a file held in memory.
pub fn f32_tensor_in(bytes: &[u8], header: &Header, info: &TensorInfo) -> Result<Vec<f32>> {
    let (start, n) = f32_span(header, info, bytes.len() as u64)?;
    Ok(f32s(&bytes[start as usize..(start + n) as usize]))
}

/// A fingerprint of a GGUF file: FNV-1a (64-bit, hex) of its whole header (metadata and
/// tensor directory), so it changes with the weights' layout, names and quantization but costs
/// only a header read.
pub fn fingerprint(path: &Path) -> Result<String> {
    let header = read_header(path)?;
    let mut f = BufReader::new(File::open(path)?);
    let mut hash = crate::hash::FNV_OFFSET;
    let mut buf = [0u8; 65536];
    let mut left = header.data_offset;
    while left > 0 {
        let n = f.read(&mut buf[..left.min(65536) as usize])?;
        if n == 0 {
            return format_err("truncated header");
        }
        hash = crate::hash::fnv1a_from(hash, buf[..n].iter().copied());
        left -= n as u64;
    }
    Ok(format!("{hash:016x}"))
}

/// The output width of an mmproj's projector, when it can be read from its tensors.
pub fn projector_width(path: &Path) -> Result<Option<usize>> {
    Ok(projector_width_of(&read_header(path)?))
}

/// The output width of a projector from its header's tensors, when it can be read.
pub fn projector_width_of(h: &Header) -> Option<usize> {
    let last = [
        "mm.2.weight",
        "mm.model.fc.weight",
        "mm.input_projection.weight",
    ];
    last.iter()
        .find_map(|n| h.tensor(n))
        .and_then(|t| t.dims.get(1))
        .and_then(|&d| usize::try_from(d).ok())
}

struct Reader<R> {
    inner: R,
    len: u64,
    /// Bytes consumed so far.
    pos: u64,
}

impl<R: Read> Reader<R> {
    fn new(inner: R, len: u64) -> Self {
        Self { inner, len, pos: 0 }
    }
    fn fill(&mut self, b: &mut [u8]) -> Result<()> {
        if self.inner.read_exact(b).is_err() {
            return format_err("unexpected end of file (truncated?)");
        }
        self.pos += b.len() as u64;
        Ok(())
    }
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.fill(&mut b)?;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    /// A count that must fit in the rest of the file (each item takes at least `min_size`
    /// bytes), checked before anything is allocated for it.
    fn count(&mut self, min_size: u64) -> Result<u64> {
        let n = self.u64()?;
        let left = self.len.saturating_sub(self.pos);
        if n.saturating_mul(min_size) > left {
            return format_err(format!(
                "a count of {n} does not fit in the {left} bytes left (corrupt or truncated?)"
            ));
        }
        Ok(n)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.count(1)?;
        let mut b = vec![0u8; n as usize];
        self.fill(&mut b)?;
        String::from_utf8(b).or_else(|_| format_err("a string is not UTF-8"))
    }
    fn skip(&mut self, n: u64) -> Result<()> {
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())?;
        if copied != n {
            return format_err("unexpected end of file (truncated?)");
        }
        self.pos += n;
        Ok(())
    }
    fn scalar_size(t: u32) -> Option<u64> {
        match t {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        }
    }
    fn value(&mut self, t: u32) -> Result<Value> {
        Ok(match t {
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => Value::Bool(self.bytes::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            10 => Value::U64(self.u64()?),
            9 => {
                let et = self.u32()?;
                match et {
                    6 => {
                        let n = self.count(4)?;
                        let mut b = vec![0u8; n as usize * 4];
                        self.fill(&mut b)?;
                        Value::F32s(f32s(&b))
                    }
                    8 => {
                        let n = self.count(8)?;
                        Value::Strs((0..n).map(|_| self.string()).collect::<Result<_>>()?)
                    }
                    _ => {
                        let Some(size) = Self::scalar_size(et) else {
                            return format_err(format!("unknown array element type {et}"));
                        };
                        let n = self.count(size)?;
                        self.skip(n * size)?;
                        Value::Other(9)
                    }
                }
            }
            _ => {
                let Some(size) = Self::scalar_size(t) else {
                    return format_err(format!("unknown value type {t}"));
                };
                self.skip(size)?;
                Value::Other(t)
            }
        })
    }
    fn header(&mut self) -> Result<Header> {
        if &self.bytes::<4>()? != MAGIC {
            return format_err("not a GGUF file");
        }
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return format_err(format!("unsupported GGUF version {version}"));
        }
        let n_tensors = self.count(24)?;
        let n_kv = self.count(12)?;
        let mut h = Header::default();
        let mut alignment = ALIGNMENT;
        for _ in 0..n_kv {
            let key = self.string()?;
            let t = self.u32()?;
            let v = self.value(t)?;
            if key == "general.alignment" {
                alignment = v
                    .as_u64()
                    .filter(|a| *a > 0 && a.is_power_of_two())
                    .unwrap_or(ALIGNMENT);
            }
            h.kv.push((key, v));
        }
        for _ in 0..n_tensors {
            let name = self.string()?;
            let n_dims = self.u32()?;
            if n_dims > 4 {
                return format_err(format!("tensor {name} has {n_dims} dimensions"));
            }
            let dims = (0..n_dims)
                .map(|_| self.u64())
                .collect::<Result<Vec<_>>>()?;
            let ggml_type = self.u32()?;
            let offset = self.u64()?;
            h.tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        h.data_offset = self
            .pos
            .div_ceil(alignment)
            .checked_mul(alignment)
            .map_or_else(|| format_err("bad alignment"), Ok)?;
        Ok(h)
    }
}

/// Encoded size of a value (without key and type) as this module writes it.
fn value_size(v: &Value) -> u64 {
    match v {
        Value::U32(_) | Value::I32(_) | Value::F32(_) => 4,
        Value::U64(_) => 8,
        Value::Bool(_) => 1,
        Value::Str(s) => 8 + s.len() as u64,
        Value::F32s(a) => 4 + 8 + 4 * a.len() as u64,
        Value::Strs(a) => 4 + 8 + a.iter().map(|s| 8 + s.len() as u64).sum::<u64>(),
        Value::Other(_) => 0,
    }
}

/// Writes a GGUF file of F32 tensors atomically.
pub fn write(
    path: &Path,
    kv: &[(String, Value)],
    tensors: &[(String, Vec<f32>)],
) -> Result<(), Error> {
    let mut w = AtomicFile::create(path)?;
    encode(&mut w, kv, tensors).map_err(|e| Error::io(path, "write", e))?;
    w.commit()
}

fn encode(
    w: &mut impl Write,
    kv: &[(String, Value)],
    tensors: &[(String, Vec<f32>)],
) -> std::io::Result<()> {
    w.write_all(MAGIC)?;
    w.write_all(&3u32.to_le_bytes())?;
    w.write_all(&(tensors.len() as u64).to_le_bytes())?;
    w.write_all(&(kv.len() as u64).to_le_bytes())?;
    let mut pos = 24u64;
    for (k, v) in kv {
        write_str(w, k)?;
        write_value(w, v)?;
        pos += 8 + k.len() as u64 + 4 + value_size(v);
    }
    let mut offset = 0u64;
    for (name, data) in tensors {
        write_str(w, name)?;
        w.write_all(&1u32.to_le_bytes())?;
        w.write_all(&(data.len() as u64).to_le_bytes())?;
        w.write_all(&TYPE_F32.to_le_bytes())?;
        w.write_all(&offset.to_le_bytes())?;
        pos += 8 + name.len() as u64 + 4 + 8 + 4 + 8;
        offset += (data.len() as u64 * 4).div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    let pad = pos.div_ceil(ALIGNMENT) * ALIGNMENT - pos;
    w.write_all(&vec![0u8; pad as usize])?;
    for (_, data) in tensors {
        for x in data {
            w.write_all(&x.to_le_bytes())?;
        }
        let n = data.len() as u64 * 4;
        w.write_all(&vec![0u8; (n.div_ceil(ALIGNMENT) * ALIGNMENT - n) as usize])?;
    }
    Ok(())
}

fn write_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())?;
    Ok(())
}

fn write_value(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U32(x) => {
            w.write_all(&4u32.to_le_bytes())?;
            w.write_all(&x.to_le_bytes())?;
        }
        Value::I32(x) => {
            w.write_all(&5u32.to_le_bytes())?;
            w.write_all(&x.to_le_bytes())?;
        }
        Value::F32(x) => {
            w.write_all(&6u32.to_le_bytes())?;
            w.write_all(&x.to_le_bytes())?;
        }
        Value::Bool(x) => {
            w.write_all(&7u32.to_le_bytes())?;
            w.write_all(&[u8::from(*x)])?;
        }
        Value::Str(s) => {
            w.write_all(&8u32.to_le_bytes())?;
            write_str(w, s)?;
        }
        Value::U64(x) => {
            w.write_all(&10u32.to_le_bytes())?;
            w.write_all(&x.to_le_bytes())?;
        }
        Value::F32s(a) => {
            w.write_all(&9u32.to_le_bytes())?;
            w.write_all(&6u32.to_le_bytes())?;
            w.write_all(&(a.len() as u64).to_le_bytes())?;
            for x in a {
                w.write_all(&x.to_le_bytes())?;
            }
        }
        Value::Strs(a) => {
            w.write_all(&9u32.to_le_bytes())?;
            w.write_all(&8u32.to_le_bytes())?;
            w.write_all(&(a.len() as u64).to_le_bytes())?;
            for s in a {
                write_str(w, s)?;
            }
        }
        Value::Other(t) => {
            return Err(std::io::Error::other(format!(
                "cannot write a value of GGUF type {t}"
            )))
        }
    }
    Ok(())
}
