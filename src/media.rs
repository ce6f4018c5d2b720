//! Images for the projector: decoded from files or data URIs with clear errors, and the
//! meaningless images CMRM uses as corruption (blank, seeded noise).

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use image::RgbImage;

/// Loads an image from a path or a `data:image/...;base64,` URI.
pub fn load(source: &str) -> Result<RgbImage> {
    if let Some(rest) = source.strip_prefix("data:") {
        let b64 = rest
            .split_once(";base64,")
            .map(|(_, b)| b)
            .context("data URI must be of the form data:image/<type>;base64,<data>")?;
        let bytes = base64_decode(b64).context("data URI: invalid base64")?;
        return decode(&bytes, "data URI");
    }
    let path = Path::new(source);
    let bytes = std::fs::read(path)
        .with_context(|| format!("{}: cannot read image file", path.display()))?;
    decode(&bytes, &path.display().to_string())
}

/// Decodes image bytes (PNG, JPEG); `what` names the source in errors.
pub fn decode(bytes: &[u8], what: &str) -> Result<RgbImage> {
    if bytes.is_empty() {
        bail!("{what}: image file is empty (0 bytes)");
    }
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .with_context(|| format!("{what}: cannot read image"))?
        .decode()
        .map_err(|e| {
            anyhow::anyhow!(
                "{what}: not a readable PNG or JPEG image ({e}); check the file is complete"
            )
        })?;
    if img.width() == 0 || img.height() == 0 {
        bail!("{what}: image has zero size");
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

fn base64_decode(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => bail!("invalid character {:?}", c as char),
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
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
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for c in png.chunks(3) {
            let n = c.len();
            let v = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                b64.push(if i <= n {
                    T[(v >> (18 - 6 * i)) as usize & 63] as char
                } else {
                    '='
                });
            }
        }
        let img = load(&format!("data:image/png;base64,{b64}")).unwrap();
        assert_eq!(img.dimensions(), (4, 4));
    }

    #[test]
    fn bad_bytes_are_clear_errors() {
        assert!(decode(&[], "x").unwrap_err().to_string().contains("empty"));
        let e = decode(b"hello", "x.png").unwrap_err().to_string();
        assert!(e.contains("x.png") && e.contains("not a readable"), "{e}");
    }

    #[test]
    fn noise_is_seeded() {
        assert_eq!(noise(8, 3), noise(8, 3));
        assert_ne!(noise(8, 3), noise(8, 4));
    }
}
