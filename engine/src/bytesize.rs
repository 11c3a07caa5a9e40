//! A byte count as configuration gives it: a plain number or one with a binary suffix
//! (`64KiB`, `2M`), from the command line, the environment or TOML (a number or a string).
//! A leaf: the continuity history rules parse it too, without depending on the whole config.

use serde::{Deserialize, Serialize};

/// A byte count given as a plain number or with a suffix; every suffix is binary, as memory
/// limits are: `K`/`KiB` = 1024, `M`/`MiB` = 1024², `G`/`GiB` = 1024³.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, suffix) = s.split_at(digits);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a byte count (e.g. 65536, 64K, 64MiB, 2G)"))?;
        let shift = match suffix.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            _ => {
                return Err(format!(
                    "{s:?}: unknown suffix (use K, M, G, KiB, MiB, GiB)"
                ))
            }
        };
        n.checked_mul(1 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}
