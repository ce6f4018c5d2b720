//! A rendered prompt cut into text and image pieces, and the record of what a sequence of the
//! KV cache holds, so that a new prompt reuses the prefix it shares with the last one.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ffi::{Bitmap, ChunkKind, Chunks, Context};
use crate::media::Image;

/// A piece of a prompt.
#[derive(Clone, Debug)]
pub(super) enum Piece {
    /// Text tokens.
    Text(Vec<i32>),
    /// An image chunk (an image may give several): its index among the chunks, a key that
    /// identifies its content, and the positions it takes.
    Image {
        chunk: usize,
        key: ImageKey,
        n_pos: usize,
        n_tokens: usize,
    },
}

/// What one cache entry holds: a token, or an image chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Key {
    Token(i32),
    Image(ImageKey),
}

/// An image chunk's content: SHA-256 of its image's digest, its slice and its token count.
pub(super) type ImageKey = [u8; 32];

/// One entry of a sequence in the KV cache.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cached {
    pub key: Key,
    /// Positions it takes (an image under M-RoPE takes fewer than its tokens).
    pub n_pos: usize,
    /// KV cells it takes (one per token or image embedding).
    pub n_cells: usize,
    /// The steering it was decoded under (0 = none).
    pub tag: u64,
}

impl Cached {
    /// A text token decoded under steering `tag`.
    pub fn token(t: i32, tag: u64) -> Self {
        Self {
            key: Key::Token(t),
            n_pos: 1,
            n_cells: 1,
            tag,
        }
    }
}

/// A tokenized prompt.
pub(super) struct Prompt {
    pub chunks: Option<Chunks>,
    pub pieces: Vec<Piece>,
}

impl Prompt {
    /// Cuts `text` (one media marker per image) into pieces.
    pub fn new(engine: &Engine, text: &str, images: &[&Image]) -> Result<Self> {
        let Some(mtmd) = engine.mtmd() else {
            if !images.is_empty() {
                return Err(Error::NoProjector);
            }
            let tokens = engine.model().tokenize(text, true, true)?;
            return Ok(Self {
                chunks: None,
                pieces: vec![Piece::Text(tokens)],
            });
        };
        let mut bitmaps = Vec::with_capacity(images.len());
        for im in images {
            let px = im.pixels();
            let decoded = im.encoded().and_then(|bytes| Bitmap::decode(mtmd, bytes));
            let mut b = match decoded {
                Some(b) => b,
                None => Bitmap::from_rgb(px.width(), px.height(), px.as_raw())?,
            };
            let id: String = im.digest().iter().map(|b| format!("{b:02x}")).collect();
            b.set_id(&id)?;
            bitmaps.push(b);
        }
        let chunks = mtmd.tokenize(text, &bitmaps, true)?;
        let mut pieces = Vec::with_capacity(chunks.len());
        let mut slice = 0u64;
        let mut last_id = None;
        for i in 0..chunks.len() {
            match chunks.kind(i)? {
                ChunkKind::Text(t) => pieces.push(Piece::Text(t)),
                ChunkKind::Image { n_tokens, n_pos } => {
                    let id = chunks.id(i)?;
                    slice = if id == last_id { slice + 1 } else { 0 };
                    let key: ImageKey = {
                        use sha2::{Digest, Sha256};
                        let mut h = Sha256::new();
                        h.update(id.as_deref().unwrap_or("").as_bytes());
                        h.update(slice.to_le_bytes());
                        h.update((n_tokens as u64).to_le_bytes());
                        h.finalize().into()
                    };
                    last_id = id;
                    pieces.push(Piece::Image {
                        chunk: i,
                        key,
                        n_pos,
                        n_tokens,
                    });
                }
            }
        }
        Ok(Self {
            chunks: Some(chunks),
            pieces,
        })
    }

    /// Every cache entry the prompt makes, in order, with its positions and cells.
    pub fn keys(&self) -> Vec<Cached> {
        let mut out = Vec::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.extend(t.iter().map(|&t| Cached {
                    key: Key::Token(t),
                    n_pos: 1,
                    n_cells: 1,
                    tag: 0,
                })),
                Piece::Image {
                    key,
                    n_pos,
                    n_tokens,
                    ..
                } => out.push(Cached {
                    key: Key::Image(*key),
                    n_pos: *n_pos,
                    n_cells: *n_tokens,
                    tag: 0,
                }),
            }
        }
        out
    }

    /// Positions the prompt takes.
    pub fn n_positions(&self) -> usize {
        self.keys().iter().map(|c| c.n_pos).sum()
    }

    /// KV cells the prompt takes.
    pub fn n_cells(&self) -> usize {
        self.keys().iter().map(|c| c.n_cells).sum()
    }

    /// Evaluates the whole prompt into sequence `seq` from position 0, logits for the last
    /// token (a prefill that no hook steers).
    pub fn eval_plain(&self, engine: &Engine, ctx: &mut Context<'_>, seq: i32) -> Result<()> {
        let mut pos = 0;
        let n = self.pieces.len();
        for (i, p) in self.pieces.iter().enumerate() {
            let last = i + 1 == n;
            match p {
                Piece::Text(t) => {
                    ctx.decode(t, pos, seq, last)?;
                    pos += t.len();
                }
                Piece::Image { chunk, key, .. } => {
                    pos = self.eval_image(engine, ctx, *chunk, *key, pos, seq)?;
                }
            }
        }
        Ok(())
    }

    /// Decodes image chunk `chunk` (content `key`) at `pos`, encoding it unless the engine
    /// holds its embeddings; returns the next position.
    pub fn eval_image(
        &self,
        engine: &Engine,
        ctx: &mut Context<'_>,
        chunk: usize,
        key: ImageKey,
        pos: usize,
        seq: i32,
    ) -> Result<usize> {
        let (Some(mtmd), Some(chunks)) = (engine.mtmd(), &self.chunks) else {
            return Err(Error::NoProjector);
        };
        let embd = engine.image_embeddings(key, || mtmd.encode(ctx, chunks, chunk))?;
        mtmd.decode_embeddings(ctx, chunks, chunk, &embd, pos, seq)
    }
}

/// How many leading entries of `cached` the prompt `keys` can reuse: same content, decoded
/// under steering `tag`; at least one entry is always left to evaluate (for its logits).
pub(super) fn reusable(cached: &[Cached], keys: &[Cached], tag: u64) -> usize {
    let common = cached
        .iter()
        .zip(keys)
        .take_while(|(c, k)| c.key == k.key && c.tag == tag)
        .count();
    common.min(keys.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(t: i32, tag: u64) -> Cached {
        Cached {
            key: Key::Token(t),
            n_pos: 1,
            n_cells: 1,
            tag,
        }
    }

    #[test]
    fn reuse_stops_at_the_first_difference_and_leaves_one_entry() {
        let keys: Vec<Cached> = [1, 2, 3, 4].iter().map(|&t| c(t, 0)).collect();
        assert_eq!(reusable(&[c(1, 0), c(2, 0), c(9, 0)], &keys, 0), 2);
        assert_eq!(
            reusable(&[c(1, 0), c(2, 7)], &keys, 0),
            1,
            "steered entries"
        );
        assert_eq!(reusable(&[c(1, 7), c(2, 7)], &keys, 7), 2);
        let all: Vec<Cached> = [1, 2, 3, 4].iter().map(|&t| c(t, 0)).collect();
        assert_eq!(
            reusable(&all, &keys, 0),
            3,
            "the last entry is evaluated again"
        );
    }
}
