//! Sampling settings with llama.cpp's names, defaults and sampler order (its `common` sampling
//! parameters); `crate::ffi::Sampler` builds llama.cpp's own sampler chain from them.

use std::fmt;
use std::str::FromStr;

/// How the next token is chosen.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Sampling {
    /// The most likely token (deterministic; what the evaluation commands use).
    #[default]
    Greedy,
    /// llama.cpp's sampler chain.
    Chain(SamplingParams),
}

/// One sampler of the chain (llama.cpp's `--samplers` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    /// Repetition, frequency and presence penalties.
    Penalties,
    /// DRY ("don't repeat yourself").
    Dry,
    /// Top-n-sigma.
    TopNSigma,
    /// Top-k.
    TopK,
    /// Locally typical sampling.
    TypicalP,
    /// Nucleus (top-p).
    TopP,
    /// Min-p.
    MinP,
    /// Exclude top choices.
    Xtc,
    /// Temperature (with dynamic temperature when its range is set).
    Temperature,
}

const KINDS: [(SamplerKind, &str, char); 9] = [
    (SamplerKind::Penalties, "penalties", 'e'),
    (SamplerKind::Dry, "dry", 'd'),
    (SamplerKind::TopNSigma, "top_n_sigma", 's'),
    (SamplerKind::TopK, "top_k", 'k'),
    (SamplerKind::TypicalP, "typ_p", 'y'),
    (SamplerKind::TopP, "top_p", 'p'),
    (SamplerKind::MinP, "min_p", 'm'),
    (SamplerKind::Xtc, "xtc", 'x'),
    (SamplerKind::Temperature, "temperature", 't'),
];

/// llama.cpp's default order.
pub const DEFAULT_SAMPLERS: [SamplerKind; 9] = [
    SamplerKind::Penalties,
    SamplerKind::Dry,
    SamplerKind::TopNSigma,
    SamplerKind::TopK,
    SamplerKind::TypicalP,
    SamplerKind::TopP,
    SamplerKind::MinP,
    SamplerKind::Xtc,
    SamplerKind::Temperature,
];

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = KINDS.iter().find(|(k, _, _)| k == self).map(|(_, n, _)| *n);
        f.write_str(name.unwrap_or("?"))
    }
}

/// Parses llama.cpp's `--samplers` list: names separated by `;` (also `top-k`, `typical`,
/// `temp`, ... as llama.cpp accepts), or its one-letter form (`edskypmxt`).
pub fn parse_samplers(s: &str) -> Result<Vec<SamplerKind>, String> {
    let by_name = |n: &str| -> Option<SamplerKind> {
        let n = n.trim().replace('-', "_");
        let alias = match n.as_str() {
            "typical" | "typical_p" => "typ_p",
            "temp" => "temperature",
            "nucleus" => "top_p",
            other => other,
        };
        KINDS
            .iter()
            .find(|(_, name, _)| *name == alias)
            .map(|(k, _, _)| *k)
    };
    if s.contains(';') || by_name(s).is_some() {
        return s
            .split(';')
            .filter(|x| !x.trim().is_empty())
            .map(|x| by_name(x).ok_or_else(|| format!("{x:?} is not a sampler name")))
            .collect();
    }
    s.chars()
        .map(|c| {
            KINDS
                .iter()
                .find(|(_, _, ch)| *ch == c)
                .map(|(k, _, _)| *k)
                .ok_or_else(|| format!("{c:?} is not a sampler letter (edskypmxt)"))
        })
        .collect()
}

/// Mirostat sampling (replaces the chain when on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mirostat {
    /// Off (the chain is used).
    #[default]
    Off,
    /// Mirostat 1.
    V1,
    /// Mirostat 2.0.
    V2,
}

/// Sampling parameters, with llama.cpp's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Random seed of the `dist` (and `xtc`, mirostat) samplers.
    pub seed: u32,
    /// Temperature (0 keeps only the most likely token).
    pub temp: f32,
    /// Dynamic temperature range (0 = off).
    pub dynatemp_range: f32,
    /// Dynamic temperature exponent.
    pub dynatemp_exponent: f32,
    /// Top-k (0 = off).
    pub top_k: i32,
    /// Top-p (1 = off).
    pub top_p: f32,
    /// Min-p (0 = off).
    pub min_p: f32,
    /// Locally typical p (1 = off).
    pub typical_p: f32,
    /// XTC probability (0 = off).
    pub xtc_probability: f32,
    /// XTC threshold.
    pub xtc_threshold: f32,
    /// Top-n-sigma (negative = off).
    pub top_n_sigma: f32,
    /// Candidates every sampler keeps at least.
    pub min_keep: usize,
    /// Tokens the penalties look back over (0 = off).
    pub penalty_last_n: i32,
    /// Repetition penalty (1 = off).
    pub repeat_penalty: f32,
    /// Frequency penalty (0 = off).
    pub frequency_penalty: f32,
    /// Presence penalty (0 = off).
    pub presence_penalty: f32,
    /// DRY multiplier (0 = off).
    pub dry_multiplier: f32,
    /// DRY base.
    pub dry_base: f32,
    /// DRY allowed length.
    pub dry_allowed_length: i32,
    /// DRY look-back (0 = off).
    pub dry_penalty_last_n: i32,
    /// DRY sequence breakers.
    pub dry_sequence_breakers: Vec<String>,
    /// Mirostat.
    pub mirostat: Mirostat,
    /// Mirostat target entropy.
    pub mirostat_tau: f32,
    /// Mirostat learning rate.
    pub mirostat_eta: f32,
    /// The chain's samplers, in order.
    pub samplers: Vec<SamplerKind>,
    /// Added to the logits of tokens before sampling (`-inf` bans a token).
    pub logit_bias: Vec<(i32, f32)>,
    /// A GBNF grammar the answer must follow.
    pub grammar: Option<String>,
}

impl Default for SamplingParams {
    /// llama.cpp's defaults (`common_params_sampling`) with seed 0 (llama.cpp's default
    /// draws a random seed; callers that want that draw one).
    fn default() -> Self {
        Self {
            seed: 0,
            temp: 0.8,
            dynatemp_range: 0.0,
            dynatemp_exponent: 1.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            typical_p: 1.0,
            xtc_probability: 0.0,
            xtc_threshold: 0.1,
            top_n_sigma: -1.0,
            min_keep: 0,
            penalty_last_n: 64,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            dry_multiplier: 0.0,
            dry_base: 1.75,
            dry_allowed_length: 2,
            dry_penalty_last_n: 64,
            dry_sequence_breakers: ["\n", ":", "\"", "*"].map(String::from).to_vec(),
            mirostat: Mirostat::Off,
            mirostat_tau: 5.0,
            mirostat_eta: 0.1,
            samplers: DEFAULT_SAMPLERS.to_vec(),
            logit_bias: Vec::new(),
            grammar: None,
        }
    }
}

impl SamplingParams {
    /// Refuses values llama.cpp would refuse or misbehave on.
    pub fn check(&self) -> Result<(), String> {
        let finite = [
            ("temperature", self.temp),
            ("top-p", self.top_p),
            ("min-p", self.min_p),
            ("typical", self.typical_p),
            ("repeat penalty", self.repeat_penalty),
            ("frequency penalty", self.frequency_penalty),
            ("presence penalty", self.presence_penalty),
            ("DRY multiplier", self.dry_multiplier),
            ("DRY base", self.dry_base),
        ];
        if let Some((name, v)) = finite.iter().find(|(_, v)| !v.is_finite()) {
            return Err(format!("the {name} is {v}, not a finite number"));
        }
        if self.repeat_penalty <= 0.0 {
            return Err(format!(
                "the repeat penalty must be above 0 (1 = off), not {}",
                self.repeat_penalty
            ));
        }
        if self.penalty_last_n < 0 || self.dry_penalty_last_n < 0 {
            return Err("the penalty look-backs must be 0 (off) or more".into());
        }
        if self.logit_bias.iter().any(|(_, b)| b.is_nan()) {
            return Err("a logit bias is NaN".into());
        }
        Ok(())
    }
}

/// One `--logit-bias` entry, `TOKEN_ID(+|-)BIAS` (e.g. `15043+1`, `15043-inf`).
pub fn parse_logit_bias(s: &str) -> Result<(i32, f32), String> {
    let bad =
        || format!("{s:?}: expected TOKEN_ID+BIAS or TOKEN_ID-BIAS, e.g. 15043+1 or 15043-inf");
    let at = s[1..].find(['+', '-']).map(|i| i + 1).ok_or_else(bad)?;
    let token: i32 = s[..at].trim().parse().map_err(|_| bad())?;
    let bias: f32 = s[at..].trim().parse().map_err(|_| bad())?;
    if bias.is_nan() {
        return Err(bad());
    }
    Ok((token, bias))
}

impl FromStr for Mirostat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "0" => Ok(Mirostat::Off),
            "1" => Ok(Mirostat::V1),
            "2" => Ok(Mirostat::V2),
            _ => Err(format!("{s:?}: mirostat is 0 (off), 1 or 2")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_lists_parse_like_llama_cpp() {
        assert_eq!(
            parse_samplers("edskypmxt").unwrap(),
            DEFAULT_SAMPLERS.to_vec()
        );
        assert_eq!(
            parse_samplers("top_k;temperature").unwrap(),
            vec![SamplerKind::TopK, SamplerKind::Temperature]
        );
        assert_eq!(
            parse_samplers("top-k;typical;temp").unwrap(),
            vec![
                SamplerKind::TopK,
                SamplerKind::TypicalP,
                SamplerKind::Temperature
            ]
        );
        assert!(parse_samplers("kq").unwrap_err().contains("'q'"));
        assert!(parse_samplers("top_k;nope").unwrap_err().contains("nope"));
    }

    #[test]
    fn logit_biases_parse_and_bad_values_are_refused() {
        assert_eq!(parse_logit_bias("15043+1").unwrap(), (15043, 1.0));
        assert_eq!(parse_logit_bias("7-inf").unwrap(), (7, f32::NEG_INFINITY));
        assert_eq!(parse_logit_bias("7-0.5").unwrap(), (7, -0.5));
        assert!(parse_logit_bias("abc").is_err());
        let p = SamplingParams {
            repeat_penalty: 0.0,
            ..SamplingParams::default()
        };
        assert!(p.check().is_err());
        assert!(SamplingParams::default().check().is_ok());
    }
}
