//! Small numeric helpers shared by capture, steering, calibration and evaluation: argmax,
//! log-softmax, dot products and norms, and the two principal-component computations.

/// Index of the largest value (the first one on ties; 0 for an empty slice).
pub fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}

/// Log-softmax of a logits row.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let lse = log_sum_exp(logits);
    logits.iter().map(|l| l - lse).collect()
}

/// `ln(sum(exp(logits)))`, summed in f64 after subtracting the largest logit; a logit minus it
/// is that token's log-probability.
pub fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    logits
        .iter()
        .map(|l| ((l - max) as f64).exp())
        .sum::<f64>()
        .ln() as f32
        + max
}

/// Dot product in f64.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Dot product of f32 vectors, accumulated in f64.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Euclidean norm of an f32 vector (accumulated in f64).
pub fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

/// `v` without its component along `dir` (`v - (v.dir / dir.dir) dir`); `v` itself when `dir`
/// is zero.
pub fn project_out(v: &[f32], dir: &[f32]) -> Vec<f32> {
    let dd = dot_f32(dir, dir);
    if dd <= 0.0 {
        return v.to_vec();
    }
    let k = (dot_f32(v, dir) / dd) as f32;
    v.iter().zip(dir).map(|(x, y)| x - k * y).collect()
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-30)
}

/// Euclidean distance.
pub fn l2(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// `a - b`, element by element.
pub fn sub(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// Mean of rows of equal length (accumulated in f64).
pub fn mean(rows: &[&[f32]]) -> Vec<f32> {
    let n = rows.len() as f64;
    (0..rows.first().map_or(0, |r| r.len()))
        .map(|j| (rows.iter().map(|r| r[j] as f64).sum::<f64>() / n) as f32)
        .collect()
}

/// First principal direction of the rows, uncentered (the top right-singular vector of the row
/// matrix: the direction that explains most of the rows themselves, not their spread around
/// the mean), sign aligned with the mean, scaled to the mean projection of the rows onto it.
/// A single row gives itself.
pub fn principal_direction(rows: &[&[f32]]) -> Vec<f32> {
    let m = mean(rows);
    if rows.len() < 2 {
        return m;
    }
    let d = m.len();
    let data: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| r.iter().map(|&x| x as f64).collect())
        .collect();
    // Power iteration on X^T X, started from the mean direction (deterministic).
    let mut v: Vec<f64> = m.iter().map(|&x| x as f64 + 1e-3).collect();
    for _ in 0..200 {
        let mut next = vec![0f64; d];
        for r in &data {
            let p = dot(r, &v);
            next.iter_mut().zip(r).for_each(|(n, x)| *n += p * x);
        }
        let len = dot(&next, &next).sqrt();
        if len == 0.0 {
            break;
        }
        next.iter_mut().for_each(|x| *x /= len);
        let change: f64 = next.iter().zip(&v).map(|(a, b)| (a - b).abs()).sum();
        v = next;
        if change < 1e-9 {
            break;
        }
    }
    let mean64: Vec<f64> = m.iter().map(|&x| x as f64).collect();
    if dot(&v, &mean64) < 0.0 {
        v.iter_mut().for_each(|x| *x = -*x);
    }
    let scale = dot(&v, &mean64) / dot(&v, &v).sqrt().max(1e-30);
    v.iter().map(|x| (x * scale) as f32).collect()
}

/// Projects rows onto their first two principal components (rows centered on their mean).
pub fn pca2(rows: &[Vec<f32>]) -> Vec<(f64, f64)> {
    let n = rows.len();
    if n == 0 {
        return Vec::new();
    }
    let d = rows[0].len();
    let mean: Vec<f64> = (0..d)
        .map(|j| rows.iter().map(|r| r[j] as f64).sum::<f64>() / n as f64)
        .collect();
    let x: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| r.iter().zip(&mean).map(|(v, m)| *v as f64 - m).collect())
        .collect();
    let mut comps: Vec<Vec<f64>> = Vec::new();
    for k in 0..2 {
        let mut v: Vec<f64> = (0..d)
            .map(|j| 1.0 + ((j * 7 + k * 13) % 11) as f64 * 0.01)
            .collect();
        for _ in 0..300 {
            let mut next = vec![0f64; d];
            for r in &x {
                let p = dot(r, &v);
                next.iter_mut().zip(r).for_each(|(a, b)| *a += p * b);
            }
            for c in &comps {
                let p = dot(&next, c);
                next.iter_mut().zip(c).for_each(|(a, b)| *a -= p * b);
            }
            let len = dot(&next, &next).sqrt();
            if len == 0.0 {
                break;
            }
            next.iter_mut().for_each(|a| *a /= len);
            v = next;
        }
        comps.push(v);
    }
    x.iter()
        .map(|r| (dot(r, &comps[0]), dot(r, &comps[1])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca2_finds_the_spread_direction() {
        let rows: Vec<Vec<f32>> = (0..10)
            .map(|i| vec![i as f32, 0.01 * (i % 2) as f32, 5.0])
            .collect();
        let p = pca2(&rows);
        let spread1 = p.iter().map(|q| q.0.abs()).fold(0.0, f64::max);
        let spread2 = p.iter().map(|q| q.1.abs()).fold(0.0, f64::max);
        assert!(spread1 > 4.0 && spread2 < 0.1, "{spread1} {spread2}");
    }

    #[test]
    fn principal_direction_agrees_with_mean_on_a_clear_direction() {
        // Rows along (3, 4) with varying magnitude, plus small orthogonal noise.
        let rows: Vec<Vec<f32>> = (0..20)
            .map(|i| {
                let s = 1.0 + i as f32 * 0.5;
                let n = if i % 2 == 0 { 0.05 } else { -0.05 };
                vec![3.0 * s - 4.0 * n, 4.0 * s + 3.0 * n]
            })
            .collect();
        let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        let m = mean(&refs);
        let p = principal_direction(&refs);
        assert!(cosine(&m, &p) > 0.999, "cos {}", cosine(&m, &p));
        let (nm, np) = (norm(&m), norm(&p));
        assert!((nm - np).abs() / nm < 0.01, "{nm} vs {np}");
    }

    #[test]
    fn gaps() {
        assert!((cosine(&[1.0, 0.0], &[0.0, 2.0])).abs() < 1e-12);
        assert!((l2(&[0.0, 3.0], &[4.0, 0.0]) - 5.0).abs() < 1e-12);
        assert_eq!(argmax(&[0.1, 3.0, 2.0]), 1);
        let lp = log_softmax(&[1.0, 1.0]);
        assert!((lp[0] - 0.5f32.ln()).abs() < 1e-6);
    }
}
