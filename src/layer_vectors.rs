//! One vector per layer of a model, all of the model's width: the shape of CMRM shifts,
//! ShiftDC's safety directions and captured hidden states, with the one check every consumer
//! needs (so many layers of so many floats) and the conversions to and from the flat
//! `n_layer * n_embd` layout of files and control vectors.

use std::ops::Deref;

use crate::error::{Error, Result};

/// Per-layer vectors: row `il` belongs to layer `il`. Reading is through the rows
/// (`v[il]`, `v.iter()`, `v.len()`); [`LayerVectors::check`] says whether they fit a model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerVectors {
    rows: Vec<Vec<f32>>,
}

impl LayerVectors {
    /// `n_layer` rows of `n_embd` zeros.
    pub fn zeros(n_layer: usize, n_embd: usize) -> Self {
        Self {
            rows: vec![vec![0.0; n_embd]; n_layer],
        }
    }

    /// Rows of `n_embd` floats cut from a flat buffer (`n_layer * n_embd` floats).
    pub fn from_flat(flat: &[f32], n_embd: usize) -> Result<Self> {
        if n_embd == 0 || !flat.len().is_multiple_of(n_embd) {
            return Err(Error::Invalid(format!(
                "{} floats are not whole layers of {n_embd}",
                flat.len()
            )));
        }
        Ok(Self {
            rows: flat.chunks(n_embd).map(<[f32]>::to_vec).collect(),
        })
    }

    /// The rows one after another (`n_layer * n_embd` floats).
    pub fn flat(&self) -> Vec<f32> {
        self.rows.concat()
    }

    /// Layers.
    pub fn n_layer(&self) -> usize {
        self.rows.len()
    }

    /// Width of the first layer (0 without layers).
    pub fn n_embd(&self) -> usize {
        self.rows.first().map_or(0, Vec::len)
    }

    /// Refuses vectors that are not `n_layer` rows of `n_embd` finite floats; `what` names
    /// them in the message (`"the shifts"`).
    pub fn check(&self, what: &str, n_layer: usize, n_embd: usize) -> Result<()> {
        if self.rows.len() != n_layer || self.rows.iter().any(|r| r.len() != n_embd) {
            return Err(Error::Steering(format!(
                "{what} have {} layers of {} but the model has {n_layer} of {n_embd}",
                self.rows.len(),
                self.n_embd()
            )));
        }
        if self.rows.iter().flatten().any(|x| !x.is_finite()) {
            return Err(Error::Steering(format!(
                "{what} hold NaN or infinite values"
            )));
        }
        Ok(())
    }

    /// Each layer's row mapped by `f` (given the layer and its row).
    pub fn map(&self, mut f: impl FnMut(usize, &[f32]) -> Vec<f32>) -> Self {
        Self {
            rows: self
                .rows
                .iter()
                .enumerate()
                .map(|(il, r)| f(il, r))
                .collect(),
        }
    }

    /// The rows.
    pub fn into_rows(self) -> Vec<Vec<f32>> {
        self.rows
    }
}

/// Rows as they come; [`LayerVectors::check`] refuses ones that do not fit the model.
impl From<Vec<Vec<f32>>> for LayerVectors {
    fn from(rows: Vec<Vec<f32>>) -> Self {
        Self { rows }
    }
}

impl FromIterator<Vec<f32>> for LayerVectors {
    fn from_iter<I: IntoIterator<Item = Vec<f32>>>(iter: I) -> Self {
        Self {
            rows: iter.into_iter().collect(),
        }
    }
}

impl Deref for LayerVectors {
    type Target = [Vec<f32>];

    fn deref(&self) -> &[Vec<f32>] {
        &self.rows
    }
}

impl PartialEq<Vec<Vec<f32>>> for LayerVectors {
    fn eq(&self, other: &Vec<Vec<f32>>) -> bool {
        &self.rows == other
    }
}

impl PartialEq<LayerVectors> for Vec<Vec<f32>> {
    fn eq(&self, other: &LayerVectors) -> bool {
        self == &other.rows
    }
}

impl<'a> IntoIterator for &'a LayerVectors {
    type Item = &'a Vec<f32>;
    type IntoIter = std::slice::Iter<'a, Vec<f32>>;

    fn into_iter(self) -> Self::IntoIter {
        self.rows.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked_against_the_model() {
        let v = LayerVectors::zeros(3, 4);
        assert_eq!((v.n_layer(), v.n_embd(), v.flat().len()), (3, 4, 12));
        assert!(v.check("the shifts", 3, 4).is_ok());
        let e = v.check("the shifts", 3, 5).unwrap_err().to_string();
        assert!(e.contains("3 layers of 4 but the model has 3 of 5"), "{e}");
        let ragged = LayerVectors::from(vec![vec![0.0; 4], vec![0.0; 3]]);
        assert!(ragged.check("x", 2, 4).is_err());
        let nan = LayerVectors::from(vec![vec![f32::NAN; 4]]);
        assert!(nan
            .check("x", 1, 4)
            .unwrap_err()
            .to_string()
            .contains("NaN"));
        let flat: Vec<f32> = (0..6).map(|x| x as f32).collect();
        let v = LayerVectors::from_flat(&flat, 3).unwrap();
        assert_eq!(
            (v[1].as_slice(), v.flat()),
            (&[3.0, 4.0, 5.0][..], flat.clone())
        );
        assert!(LayerVectors::from_flat(&flat, 4).is_err());
    }
}
