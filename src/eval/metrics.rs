//! Metrics: distribution distances, state gaps, intervals.

/// Log-softmax of a logits row.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = logits
        .iter()
        .map(|l| ((l - max) as f64).exp())
        .sum::<f64>()
        .ln() as f32
        + max;
    logits.iter().map(|l| l - lse).collect()
}

/// KL(p || q) in nats from log-probabilities.
pub fn kl(logp: &[f32], logq: &[f32]) -> f64 {
    logp.iter()
        .zip(logq)
        .map(|(&a, &b)| {
            let p = (a as f64).exp();
            if p == 0.0 {
                0.0
            } else {
                p * (a as f64 - b as f64)
            }
        })
        .sum::<f64>()
        .max(0.0)
}

/// Index of the largest value.
pub fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
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

/// Length of the common prefix of two token sequences.
pub fn shared_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Mean and a normal-approximation 95% interval half-width of values.
pub fn mean_ci(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    if x.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = x.iter().sum::<f64>() / n;
    if x.len() < 2 {
        return (m, f64::NAN);
    }
    let var = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, 1.96 * (var / n).sqrt())
}

/// A rate and its interval as a table cell, in percent: `42.0% [32.8, 51.8]`.
pub fn percent_ci(rate: f64, (lo, hi): (f64, f64)) -> String {
    format!(
        "{:.1}% [{:.1}, {:.1}]",
        100.0 * rate,
        100.0 * lo,
        100.0 * hi
    )
}

/// Wilson score 95% interval for `k` successes out of `n`.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let (n, p) = (n as f64, k as f64 / n as f64);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * ((p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt()) / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Two-sided exact McNemar test for paired binary outcomes: the p-value of seeing `b` pairs
/// change one way and `c` the other if either way were equally likely (binomial, p = 1/2).
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    let mut log_term = -(n as f64) * std::f64::consts::LN_2; // ln(C(n,0) / 2^n)
    let mut tail = 0.0;
    for j in 0..=b.min(c) {
        if j > 0 {
            log_term += ((n - j + 1) as f64 / j as f64).ln();
        }
        tail += log_term.exp();
    }
    (2.0 * tail).min(1.0)
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
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
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
            let norm = dot(&next, &next).sqrt();
            if norm == 0.0 {
                break;
            }
            next.iter_mut().for_each(|a| *a /= norm);
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
    #[test]
    fn pca2_finds_the_spread_direction() {
        let rows: Vec<Vec<f32>> = (0..10)
            .map(|i| vec![i as f32, 0.01 * (i % 2) as f32, 5.0])
            .collect();
        let p = super::pca2(&rows);
        let spread1 = p.iter().map(|q| q.0.abs()).fold(0.0, f64::max);
        let spread2 = p.iter().map(|q| q.1.abs()).fold(0.0, f64::max);
        assert!(spread1 > 4.0 && spread2 < 0.1, "{spread1} {spread2}");
    }

    use super::*;

    #[test]
    fn kl_of_identical_is_zero_and_positive_otherwise() {
        let p = log_softmax(&[1.0, 2.0, 3.0]);
        let q = log_softmax(&[3.0, 2.0, 1.0]);
        assert!(kl(&p, &p).abs() < 1e-9);
        assert!(kl(&p, &q) > 0.5);
    }

    #[test]
    fn wilson_matches_known_values() {
        // Reference values (Wilson 1927; as computed by statsmodels proportion_confint).
        let (lo, hi) = wilson(8, 10);
        assert!(
            (lo - 0.4902).abs() < 1e-4 && (hi - 0.9433).abs() < 1e-4,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(0, 20);
        assert!(lo == 0.0 && (hi - 0.1611).abs() < 1e-4, "{hi}");
        let (lo, hi) = wilson(50, 100);
        assert!((lo - 0.4038).abs() < 1e-4 && (hi - 0.5962).abs() < 1e-4);
    }

    #[test]
    fn mcnemar_matches_the_binomial_tail() {
        // 11 vs 1 discordant pairs: 2 * (C(12,0) + C(12,1)) / 2^12 = 26 / 4096.
        assert!((mcnemar_exact(11, 1) - 26.0 / 4096.0).abs() < 1e-12);
        assert!((mcnemar_exact(0, 5) - 2.0 / 32.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert!(mcnemar_exact(600, 400) < 1e-9);
    }

    #[test]
    fn gaps() {
        assert!((cosine(&[1.0, 0.0], &[0.0, 2.0])).abs() < 1e-12);
        assert!((l2(&[0.0, 3.0], &[4.0, 0.0]) - 5.0).abs() < 1e-12);
        assert_eq!(shared_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
    }
}
