//! Metrics: distribution distances, agreement, intervals and paired tests.

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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::math::log_softmax;

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
    fn shared_prefixes() {
        assert_eq!(shared_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
    }
}
