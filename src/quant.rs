//! Quantization names: llama.cpp's file types (`general.file_type`, what `llama-quantize`
//! takes) and ggml's tensor types, so that a file's quantization can be named from its header.

use std::fmt;
use std::str::FromStr;

use crate::gguf::Header;

/// A llama.cpp file type (`enum llama_ftype`): the quantization of a whole model file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileType(pub u32);

/// llama.cpp's file types by id and name (llama.h `LLAMA_FTYPE_*`), and whether `cmrm quantize`
/// offers them (the others need an importance matrix, which it does not take).
const FILE_TYPES: &[(u32, &str, bool)] = &[
    (0, "F32", true),
    (1, "F16", true),
    (2, "Q4_0", true),
    (3, "Q4_1", true),
    (7, "Q8_0", true),
    (8, "Q5_0", true),
    (9, "Q5_1", true),
    (10, "Q2_K", true),
    (11, "Q3_K_S", true),
    (12, "Q3_K_M", true),
    (13, "Q3_K_L", true),
    (14, "Q4_K_S", true),
    (15, "Q4_K_M", true),
    (16, "Q5_K_S", true),
    (17, "Q5_K_M", true),
    (18, "Q6_K", true),
    (19, "IQ2_XXS", false),
    (20, "IQ2_XS", false),
    (21, "Q2_K_S", false),
    (22, "IQ3_XS", true),
    (23, "IQ3_XXS", true),
    (24, "IQ1_S", false),
    (25, "IQ4_NL", true),
    (26, "IQ3_S", true),
    (27, "IQ3_M", true),
    (28, "IQ2_S", false),
    (29, "IQ2_M", false),
    (30, "IQ4_XS", true),
    (31, "IQ1_M", false),
    (32, "BF16", true),
    (36, "TQ1_0", true),
    (37, "TQ2_0", true),
    (38, "MXFP4_MOE", true),
    (39, "NVFP4", false),
    (40, "Q1_0", false),
    (41, "Q2_0", false),
];

impl FileType {
    /// Its name (`Q4_K_M`), or `ftype N` for an id this build does not know.
    pub fn name(self) -> String {
        FILE_TYPES
            .iter()
            .find(|t| t.0 == self.0)
            .map_or_else(|| format!("ftype {}", self.0), |t| t.1.to_string())
    }

    /// Whether `cmrm quantize` makes it (the others need an importance matrix).
    pub fn offered(self) -> bool {
        FILE_TYPES.iter().any(|t| t.0 == self.0 && t.2)
    }
}

impl FromStr for FileType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let up = s.to_ascii_uppercase();
        let up = match up.as_str() {
            "Q4_K" => "Q4_K_M",
            "Q5_K" => "Q5_K_M",
            other => other,
        };
        FILE_TYPES
            .iter()
            .find(|t| t.1 == up)
            .map(|t| FileType(t.0))
            .ok_or_else(|| {
                let names: Vec<&str> = FILE_TYPES.iter().filter(|t| t.2).map(|t| t.1).collect();
                format!(
                    "{s:?} is not a llama.cpp quantization type; one of: {}",
                    names.join(", ")
                )
            })
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// ggml's name of a tensor type id (`enum ggml_type`).
pub fn tensor_type_name(id: u32) -> String {
    const NAMES: &[&str] = &[
        "F32", "F16", "Q4_0", "Q4_1", "", "", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K",
        "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
        "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16", "", "", "", "TQ1_0",
        "TQ2_0", "", "", "", "MXFP4", "NVFP4", "Q1_0", "Q2_0",
    ];
    match NAMES.get(id as usize) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!("type {id}"),
    }
}

/// The quantization of a GGUF file: llama.cpp's file type when the header names one
/// (`general.file_type`), else the type most of its weight matrices have (projectors often
/// carry no file type).
pub fn describe(h: &Header) -> String {
    if let Some(t) = h.get("general.file_type").and_then(|v| v.as_u64()) {
        return FileType(t as u32).name();
    }
    let mut counts: Vec<(u32, usize)> = Vec::new();
    for t in h.tensors.iter().filter(|t| t.dims.len() >= 2) {
        match counts.iter_mut().find(|c| c.0 == t.ggml_type) {
            Some(c) => c.1 += 1,
            None => counts.push((t.ggml_type, 1)),
        }
    }
    counts
        .iter()
        .max_by_key(|c| c.1)
        .map_or_else(|| "unknown".into(), |c| tensor_type_name(c.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases() {
        assert_eq!("q4_k_m".parse::<FileType>().unwrap(), FileType(15));
        assert_eq!("Q4_K".parse::<FileType>().unwrap(), FileType(15));
        assert_eq!(FileType(7).to_string(), "Q8_0");
        assert_eq!(FileType(99).to_string(), "ftype 99");
        assert!("Q9".parse::<FileType>().unwrap_err().contains("Q8_0"));
        assert!(!FileType(19).offered() && FileType(15).offered());
        assert_eq!(tensor_type_name(12), "Q4_K");
        assert_eq!(tensor_type_name(30), "BF16");
        assert_eq!(tensor_type_name(4), "type 4");
    }
}
