//! A small, safe GGUF reader and writer (the file format of llama.cpp): enough to check model
//! files before llama.cpp sees them and to read and write cmrm's vector files.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, ensure, Context as _, Result};

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

/// Checks that `path` exists and starts like a GGUF file; `what` names its role in errors.
pub fn check_file(path: &Path, what: &str) -> Result<()> {
    let mut f = File::open(path)
        .with_context(|| format!("{}: cannot open the {what}: check the path", path.display()))?;
    let mut magic = [0u8; 4];
    if f.read_exact(&mut magic).is_err() || &magic != MAGIC {
        bail!(
            "{}: not a GGUF file (the {what} must be a llama.cpp .gguf file)",
            path.display()
        );
    }
    Ok(())
}

/// Reads the header of a GGUF file.
pub fn read_header(path: &Path) -> Result<Header> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = file.metadata()?.len();
    let mut r = Reader {
        inner: BufReader::new(file),
        len,
        pos: 0,
    };
    r.header()
        .with_context(|| format!("{}: corrupt or truncated GGUF file", path.display()))
}

/// Reads an F32 tensor's data.
pub fn read_f32_tensor(path: &Path, header: &Header, info: &TensorInfo) -> Result<Vec<f32>> {
    ensure!(
        info.ggml_type == TYPE_F32,
        "{}: tensor {} is not F32",
        path.display(),
        info.name
    );
    let n: u64 = info.dims.iter().product();
    let start = header.data_offset + info.offset;
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    ensure!(
        start.checked_add(n * 4).is_some_and(|end| end <= len),
        "{}: tensor {} lies past the end of the file (truncated?)",
        path.display(),
        info.name
    );
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = vec![0u8; (n * 4) as usize];
    file.read_exact(&mut bytes)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// A fingerprint of a GGUF file: FNV-1a (64-bit, hex) of its whole header (metadata and
/// tensor directory), so it changes with the weights' layout, names and quantization but costs
/// only a header read.
pub fn fingerprint(path: &Path) -> Result<String> {
    let header = read_header(path)?;
    let mut f = BufReader::new(File::open(path)?);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = [0u8; 65536];
    let mut left = header.data_offset;
    while left > 0 {
        let n = f.read(&mut buf[..left.min(65536) as usize])?;
        ensure!(n > 0, "{}: truncated header", path.display());
        for &b in &buf[..n] {
            hash = (hash ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        left -= n as u64;
    }
    Ok(format!("{hash:016x}"))
}

/// The output width of an mmproj's projector, when it can be read from its tensors.
pub fn projector_width(path: &Path) -> Result<Option<usize>> {
    let h = read_header(path)?;
    let last = [
        "mm.2.weight",
        "mm.model.fc.weight",
        "mm.input_projection.weight",
    ];
    Ok(last
        .iter()
        .find_map(|n| h.tensor(n))
        .and_then(|t| t.dims.get(1).map(|&d| d as usize)))
}

struct Reader<R> {
    inner: R,
    len: u64,
    /// Bytes consumed so far.
    pos: u64,
}

impl<R: Read> Reader<R> {
    fn fill(&mut self, b: &mut [u8]) -> Result<()> {
        self.inner.read_exact(b).context("unexpected end of file")?;
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
    /// A count that must fit in the file (each item takes at least `min_size` bytes).
    fn count(&mut self, min_size: u64) -> Result<u64> {
        let n = self.u64()?;
        ensure!(
            n.saturating_mul(min_size) <= self.len,
            "implausible count {n}"
        );
        Ok(n)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.count(1)?;
        let mut b = vec![0u8; n as usize];
        self.fill(&mut b)?;
        String::from_utf8(b).context("string is not UTF-8")
    }
    fn skip(&mut self, n: u64) -> Result<()> {
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())?;
        ensure!(copied == n, "unexpected end of file");
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
                let n = self.count(1)?;
                match et {
                    6 => Value::F32s(
                        (0..n)
                            .map(|_| Ok(f32::from_bits(self.u32()?)))
                            .collect::<Result<_>>()?,
                    ),
                    8 => Value::Strs((0..n).map(|_| self.string()).collect::<Result<_>>()?),
                    _ => {
                        let size = Self::scalar_size(et).context("unknown array type")?;
                        self.skip(n * size)?;
                        Value::Other(9)
                    }
                }
            }
            _ => {
                let size = Self::scalar_size(t).with_context(|| format!("unknown type {t}"))?;
                self.skip(size)?;
                Value::Other(t)
            }
        })
    }
    fn header(&mut self) -> Result<Header> {
        ensure!(&self.bytes::<4>()? == MAGIC, "not a GGUF file");
        let version = self.u32()?;
        ensure!(
            (2..=3).contains(&version),
            "unsupported GGUF version {version}"
        );
        let n_tensors = self.count(24)?;
        let n_kv = self.count(12)?;
        let mut h = Header::default();
        let mut alignment = ALIGNMENT;
        for _ in 0..n_kv {
            let key = self.string()?;
            let t = self.u32()?;
            let v = self.value(t)?;
            if key == "general.alignment" {
                alignment = v.as_u64().filter(|a| *a > 0).unwrap_or(ALIGNMENT);
            }
            h.kv.push((key, v));
        }
        for _ in 0..n_tensors {
            let name = self.string()?;
            let n_dims = self.u32()?;
            ensure!(n_dims <= 4, "tensor {name} has {n_dims} dimensions");
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
        h.data_offset = self.pos.div_ceil(alignment) * alignment;
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

/// Writes a GGUF file of F32 tensors atomically (temp file + rename).
pub fn write(path: &Path, kv: &[(String, Value)], tensors: &[(String, Vec<f32>)]) -> Result<()> {
    let tmp = path.with_extension("gguf.tmp");
    {
        let mut w = BufWriter::new(
            File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?,
        );
        w.write_all(MAGIC)?;
        w.write_all(&3u32.to_le_bytes())?;
        w.write_all(&(tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(kv.len() as u64).to_le_bytes())?;
        let mut pos = 24u64;
        for (k, v) in kv {
            write_str(&mut w, k)?;
            write_value(&mut w, v)?;
            pos += 8 + k.len() as u64 + 4 + value_size(v);
        }
        let mut offset = 0u64;
        for (name, data) in tensors {
            write_str(&mut w, name)?;
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
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))
}

fn write_str(w: &mut impl Write, s: &str) -> Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())?;
    Ok(())
}

fn write_value(w: &mut impl Write, v: &Value) -> Result<()> {
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
        Value::Other(t) => bail!("cannot write a value of GGUF type {t}"),
    }
    Ok(())
}
