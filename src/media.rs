//! Images for the projector: decoded from files or data URIs (PNG, JPEG, BMP, GIF, WebP) with
//! clear errors and bounded memory, and the meaningless images CMRM uses as corruption (blank,
//! seeded noise, a user image).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use image::RgbImage;

use crate::error::{Error, Result};

/// Largest width or height accepted, in pixels.
pub const MAX_SIDE: u32 = 16384;
/// Largest image accepted, in pixels (40 megapixels: 8000 x 5000).
pub const MAX_PIXELS: u64 = 40_000_000;
/// Largest image file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Largest decoded size accepted, in bytes (the decoder's own allocation limit).
pub const MAX_DECODED_BYTES: u64 = 512 << 20;

fn image_error(source: &str, cause: impl Into<String>) -> Error {
    Error::Image {
        source_name: source.to_string(),
        cause: cause.into(),
    }
}

/// An RGB image with a content hash, so that the same picture is recognised in a prompt cache,
/// and the file bytes it was decoded from (llama.cpp decodes those itself, for the same pixels
/// as its own tools).
#[derive(Clone, Debug)]
pub struct Image {
    pixels: RgbImage,
    hash: u64,
    encoded: Option<std::sync::Arc<Vec<u8>>>,
}

impl PartialEq for Image {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.pixels == other.pixels
    }
}

impl Eq for Image {}

impl Image {
    /// The pixels.
    pub fn pixels(&self) -> &RgbImage {
        &self.pixels
    }

    /// A hash of the size and pixels (FNV-1a, 64 bits).
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The file bytes the image was decoded from, when it came from a file or data URI.
    pub fn encoded(&self) -> Option<&[u8]> {
        self.encoded.as_deref().map(Vec::as_slice)
    }

    /// Decodes file bytes (`what` names the source in errors), keeping them.
    pub fn decode(bytes: Vec<u8>, what: &str) -> Result<Self> {
        let pixels = decode(&bytes, what)?;
        Ok(Self {
            encoded: Some(std::sync::Arc::new(bytes)),
            ..Self::from(pixels)
        })
    }
}

impl From<RgbImage> for Image {
    fn from(pixels: RgbImage) -> Self {
        let dims = [pixels.width().to_le_bytes(), pixels.height().to_le_bytes()];
        let h = crate::hash::fnv1a(dims.iter().flatten().chain(pixels.as_raw()).copied());
        Self {
            pixels,
            hash: h,
            encoded: None,
        }
    }
}

/// Reads an image file or `data:image/...;base64,` URI, keeping its bytes.
pub fn load_image(source: &str) -> Result<Image> {
    Image::decode(
        read_source(source)?,
        if source.starts_with("data:") {
            "data URI"
        } else {
            source
        },
    )
}

/// The bytes of an image file or data URI.
fn read_source(source: &str) -> Result<Vec<u8>> {
    if source.starts_with("data:") {
        return decode_data_uri(source);
    }
    let path = Path::new(source);
    if path.is_dir() {
        return Err(image_error(source, "is a folder, not an image file"));
    }
    if let Ok(m) = std::fs::metadata(path) {
        if m.len() > MAX_FILE_BYTES {
            return Err(image_error(
                source,
                format!(
                    "is larger than {} MiB, too large for an image",
                    MAX_FILE_BYTES >> 20
                ),
            ));
        }
    }
    std::fs::read(path).map_err(|e| image_error(source, format!("cannot read image file ({e})")))
}

/// Loads an image's pixels from a path or a `data:image/...;base64,` URI.
pub fn load(source: &str) -> Result<RgbImage> {
    let what = if source.starts_with("data:") {
        "data URI"
    } else {
        source
    };
    decode(&read_source(source)?, what)
}

/// The bytes of a `data:[<type>][;base64],<data>` URI (base64 only).
pub fn decode_data_uri(uri: &str) -> Result<Vec<u8>> {
    let rest = uri
        .strip_prefix("data:")
        .ok_or_else(|| image_error("data URI", "does not start with data:"))?;
    let (_, b64) = rest.split_once(";base64,").ok_or_else(|| {
        image_error(
            "data URI",
            "must be of the form data:image/<type>;base64,<data>",
        )
    })?;
    decode_base64(b64).map_err(|e| image_error("data URI", e))
}

/// Standard or URL-safe base64, padding optional, whitespace ignored.
pub fn decode_base64(text: &str) -> std::result::Result<Vec<u8>, String> {
    let clean: String = text
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(clean.trim_end_matches('='))
        .map_err(|e| format!("invalid base64 ({e})"))
}

/// Decodes image bytes (PNG, JPEG, BMP, GIF, WebP); `what` names the source in errors.
pub fn decode(bytes: &[u8], what: &str) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(image_error(what, "image file is empty (0 bytes)"));
    }
    let open = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| image_error(what, format!("cannot read image ({e})")))
    };
    let mut reader = open()?;
    if reader.format().is_none() {
        return Err(image_error(
            what,
            "not an image cmrm can read (PNG, JPEG, BMP, GIF or WebP)",
        ));
    }
    // The size the header declares, checked before a decoder allocates for it.
    let (w, h) = open()?.into_dimensions().map_err(|e| {
        image_error(
            what,
            format!("not a readable PNG, JPEG, BMP, GIF or WebP image ({e}); check the file is complete"),
        )
    })?;
    if w > MAX_SIDE || h > MAX_SIDE || w as u64 * h as u64 > MAX_PIXELS {
        return Err(image_error(
            what,
            format!(
                "the image is {w}x{h} pixels, larger than cmrm reads ({} megapixels, {MAX_SIDE} a side); scale it down",
                MAX_PIXELS / 1_000_000
            ),
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| {
        image_error(
            what,
            format!("not a readable PNG, JPEG, BMP, GIF or WebP image ({e}); check the file is complete"),
        )
    })?;
    if img.width() == 0 || img.height() == 0 {
        return Err(image_error(what, "image has zero size"));
    }
    Ok(img.to_rgb8())
}

/// A uniform mid-grey image: the "blank" corruption.
pub fn blank(size: u32) -> RgbImage {
    RgbImage::from_pixel(size, size, image::Rgb([128, 128, 128]))
}

/// Uniform random pixels from `seed`: the "noise" corruption.
pub fn noise(size: u32, seed: u64) -> RgbImage {
    let mut state = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    RgbImage::from_fn(size, size, |_, _| {
        let mut px = [0u8; 3];
        for c in &mut px {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *c = (state >> 56) as u8;
        }
        image::Rgb(px)
    })
}

/// Side of the generated corruption images, in pixels.
pub const CORRUPTION_SIZE: u32 = 224;

/// The meaningless image that stands in for the real one when CMRM estimates a shift.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// Uniform mid-grey.
    Blank,
    /// Uniform noise from a seed (calibration adds the anchor's index to it).
    Noise(u64),
    /// The input's own image: the shift against the text alone.
    Anchor,
    /// One user image for every input.
    Image(PathBuf),
}

impl Corruption {
    /// The image for input number `index` whose own image is `own`.
    pub fn image(&self, own: Option<&str>, index: u64) -> Result<RgbImage> {
        match self {
            Corruption::Blank => Ok(blank(CORRUPTION_SIZE)),
            Corruption::Noise(seed) => Ok(noise(CORRUPTION_SIZE, seed.wrapping_add(index))),
            Corruption::Anchor => load(own.ok_or_else(|| {
                Error::Invalid(format!(
                    "input {} has no image of its own (corruption `anchor` needs one)",
                    index + 1
                ))
            })?),
            Corruption::Image(p) => load(&p.to_string_lossy()),
        }
    }

    /// Whether every input gets the same image (so that it can be encoded once).
    pub fn is_fixed(&self) -> bool {
        matches!(self, Corruption::Blank | Corruption::Image(_))
    }
}

impl FromStr for Corruption {
    type Err = String;

    /// `blank`, `noise`, `noise:SEED`, `anchor`, or the path of an image file that exists.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "blank" => return Ok(Corruption::Blank),
            "noise" => return Ok(Corruption::Noise(0)),
            "anchor" => return Ok(Corruption::Anchor),
            _ => {}
        }
        if let Some(seed) = s.strip_prefix("noise:") {
            return seed
                .parse()
                .map(Corruption::Noise)
                .map_err(|_| format!("{s:?}: the seed after noise: must be a whole number"));
        }
        if Path::new(s).is_file() {
            return Ok(Corruption::Image(PathBuf::from(s)));
        }
        Err(format!(
            "{s:?} is neither blank, noise, noise:SEED, anchor nor an image file that exists"
        ))
    }
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corruption::Blank => f.write_str("blank"),
            Corruption::Noise(seed) => write!(f, "noise:{seed}"),
            Corruption::Anchor => f.write_str("anchor"),
            Corruption::Image(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Corruption {
    /// The name stored in vector files: like [`Display`](fmt::Display), with only the file
    /// name of a user image.
    pub fn file_name(&self) -> String {
        match self {
            Corruption::Image(p) => p
                .file_name()
                .map_or("image".into(), |n| n.to_string_lossy().into()),
            c => c.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_uri_roundtrip() {
        let mut png = Vec::new();
        blank(4)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        let img = load(&format!("data:image/png;base64,{b64}")).unwrap();
        assert_eq!(img.dimensions(), (4, 4));
        let e = load("data:image/png;base64,@@@").unwrap_err().to_string();
        assert!(e.contains("data URI") && e.contains("base64"), "{e}");
    }

    #[test]
    fn every_format_llama_cpp_reads_decodes() {
        for format in [
            image::ImageFormat::Png,
            image::ImageFormat::Jpeg,
            image::ImageFormat::Bmp,
            image::ImageFormat::Gif,
            image::ImageFormat::WebP,
        ] {
            let mut bytes = Vec::new();
            image::DynamicImage::ImageRgb8(noise(8, 1))
                .write_to(&mut std::io::Cursor::new(&mut bytes), format)
                .unwrap();
            assert_eq!(
                decode(&bytes, "x").unwrap().dimensions(),
                (8, 8),
                "{format:?}"
            );
        }
    }

    #[test]
    fn bad_bytes_are_clear_errors() {
        assert!(decode(&[], "x").unwrap_err().to_string().contains("empty"));
        let e = decode(b"hello", "x.png").unwrap_err().to_string();
        assert!(e.contains("x.png") && e.contains("not an image"), "{e}");
    }

    #[test]
    fn noise_is_seeded() {
        assert_eq!(noise(8, 3), noise(8, 3));
        assert_ne!(noise(8, 3), noise(8, 4));
    }

    #[test]
    fn corruptions_parse_and_misspellings_are_refused() {
        assert_eq!("noise:7".parse::<Corruption>(), Ok(Corruption::Noise(7)));
        assert_eq!("blank".parse::<Corruption>(), Ok(Corruption::Blank));
        let e = "nosie".parse::<Corruption>().unwrap_err();
        assert!(e.contains("nosie") && e.contains("noise:SEED"), "{e}");
        assert!("noise:x".parse::<Corruption>().is_err());
        assert_eq!(Corruption::Noise(3).to_string(), "noise:3");
    }
}
