use std::fmt;
use std::str::FromStr;

use crate::errors::{CoreError, Result};

/// A hash algorithm the crate implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
    Blake3,
}

impl Algorithm {
    /// Algorithms allowed in OCI digests stored by this crate.
    pub const OCI: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

    /// Parse a lowercase algorithm name (`sha256`, `sha512`, `blake3`).
    ///
    /// Errors with [`CoreError::UnsupportedAlgorithm`] for anything else.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            "blake3" => Ok(Algorithm::Blake3),
            other => Err(CoreError::unsupported(other)),
        }
    }

    /// The canonical lowercase name, as used in digest strings.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
            Algorithm::Blake3 => "blake3",
        }
    }

    /// Length of the hex encoding of this algorithm's output.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 | Algorithm::Blake3 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// Whether this algorithm may appear in an OCI digest accepted by this crate.
    pub fn is_oci(self) -> bool {
        Self::OCI.contains(&self)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        Algorithm::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for alg in [Algorithm::Sha256, Algorithm::Sha512, Algorithm::Blake3] {
            assert_eq!(Algorithm::parse(alg.name()).unwrap(), alg);
            assert_eq!(alg.to_string(), alg.name());
        }
    }

    #[test]
    fn unknown_and_miscased_names_are_unsupported() {
        for bad in ["md5", "SHA256", "sha384", ""] {
            assert!(matches!(
                Algorithm::parse(bad),
                Err(CoreError::UnsupportedAlgorithm(_))
            ));
        }
    }

    #[test]
    fn only_sha2_is_oci() {
        assert!(Algorithm::Sha256.is_oci());
        assert!(Algorithm::Sha512.is_oci());
        assert!(!Algorithm::Blake3.is_oci());
    }
}
