//! Token sampling from a logits row: greedy, or temperature with top-k and top-p, seeded.

/// Sampling settings, as llama.cpp's `--temp`, `--top-k`, `--top-p`, `--seed`.
#[derive(Clone, Debug)]
pub struct SamplingParams {
    /// Temperature; 0 or below means greedy (argmax).
    pub temp: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = all).
    pub top_p: f32,
    /// Random seed.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temp: 0.0,
            top_k: 40,
            top_p: 0.95,
            seed: 0,
        }
    }
}

/// A sampler with its own random state.
pub struct Sampler {
    params: SamplingParams,
    state: u64,
}

impl Sampler {
    /// A sampler seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let state = params.seed ^ 0x9E37_79B9_7F4A_7C15;
        Self { params, state }
    }

    /// splitmix64: small, fast and reproducible across platforms.
    fn next_unit(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks a token; tokens in `banned` are never chosen.
    pub fn sample(&mut self, logits: &[f32], banned: &[i32]) -> i32 {
        let allowed = |i: usize| !banned.contains(&(i as i32));
        if self.params.temp <= 0.0 {
            let best = logits.iter().enumerate().filter(|(i, _)| allowed(*i)).fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &l)| if l > b.1 { (i, l) } else { b },
            );
            return best.0 as i32;
        }
        let mut cand: Vec<(usize, f32)> = logits
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, l)| allowed(*i) && l.is_finite())
            .collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if self.params.top_k > 0 {
            cand.truncate(self.params.top_k.max(1));
        }
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand
            .iter()
            .map(|(_, l)| (((l - max) / self.params.temp) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    acc += p;
                    acc >= self.params.top_p as f64
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.next_unit() * total;
        for (i, p) in probs.iter().enumerate() {
            r -= p;
            if r <= 0.0 {
                return cand[i].0 as i32;
            }
        }
        cand[probs.len() - 1].0 as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax_and_respects_bans() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], &[]), 1);
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], &[1]), 2);
    }

    #[test]
    fn seeded_sampling_repeats_and_top_k_one_is_greedy() {
        let p = SamplingParams {
            temp: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 7,
        };
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let a: Vec<i32> = {
            let mut s = Sampler::new(p.clone());
            (0..20).map(|_| s.sample(&logits, &[])).collect()
        };
        let mut s = Sampler::new(p.clone());
        let b: Vec<i32> = (0..20).map(|_| s.sample(&logits, &[])).collect();
        assert_eq!(a, b);
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1);
        let mut k1 = Sampler::new(SamplingParams { top_k: 1, ..p });
        assert_eq!(k1.sample(&[0.0, 5.0, 1.0], &[]), 1);
    }
}
