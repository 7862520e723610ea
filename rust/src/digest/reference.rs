use std::fmt;
use std::str::FromStr;

use super::Algorithm;
use crate::errors::{CoreError, Result};

/// A validated OCI digest: `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`.
///
/// Grammar (OCI image-spec, descriptor.md):
/// ```text
/// digest                ::= algorithm ":" encoded
/// algorithm             ::= algorithm-component (algorithm-separator algorithm-component)*
/// algorithm-component   ::= [a-z0-9]+
/// algorithm-separator   ::= [+._-]
/// encoded               ::= [a-zA-Z0-9=_-]+
/// ```
/// On top of the grammar only the registered algorithms sha256 and sha512 are accepted, each
/// with its fixed-length lowercase hex encoding.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Parse and validate a digest string.
    ///
    /// Errors: [`CoreError::InvalidDigest`] when the string breaks the grammar or the encoding
    /// does not fit the algorithm; [`CoreError::UnsupportedAlgorithm`] for a well-formed digest
    /// whose algorithm is not sha256 or sha512 (blake3 included).
    pub fn parse(s: &str) -> Result<Self> {
        let Some((alg, encoded)) = s.split_once(':') else {
            return Err(CoreError::invalid_digest(
                s,
                "expected <algorithm>:<encoded>",
            ));
        };
        if !is_algorithm(alg) {
            return Err(CoreError::invalid_digest(s, "malformed algorithm"));
        }
        if encoded.is_empty() || !encoded.bytes().all(is_encoded_byte) {
            return Err(CoreError::invalid_digest(s, "malformed encoded part"));
        }
        let algorithm = match Algorithm::parse(alg) {
            Ok(a) if a.is_oci() => a,
            _ => return Err(CoreError::unsupported(alg)),
        };
        if encoded.len() != algorithm.hex_len() {
            return Err(CoreError::invalid_digest(
                s,
                match algorithm {
                    Algorithm::Sha512 => "sha512 needs 128 hex characters",
                    _ => "sha256 needs 64 hex characters",
                },
            ));
        }
        if !encoded
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(CoreError::invalid_digest(
                s,
                "encoded part must be lowercase hex",
            ));
        }
        Ok(Digest {
            algorithm,
            hex: encoded.to_owned(),
        })
    }

    /// Build from a freshly computed hex string (trusted: produced by a [`super::Digester`]).
    pub(crate) fn from_parts(algorithm: Algorithm, hex: String) -> Self {
        debug_assert!(algorithm.is_oci() && hex.len() == algorithm.hex_len());
        Digest { algorithm, hex }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex encoding.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

impl FromStr for Digest {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        Digest::parse(s)
    }
}

/// Validate `s` and split it into `(algorithm, hex)`. See [`Digest::parse`].
pub fn validate_digest(s: &str) -> Result<(String, String)> {
    let d = Digest::parse(s)?;
    Ok((d.algorithm.name().to_owned(), d.hex))
}

fn is_algorithm(s: &str) -> bool {
    // components of [a-z0-9]+ joined by single separators from [+._-]
    !s.is_empty()
        && s.split(['+', '.', '_', '-']).all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

fn is_encoded_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const H64: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn valid_digests() {
        let d = Digest::parse(&format!("sha256:{H64}")).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.hex(), H64);
        assert_eq!(d.to_string(), format!("sha256:{H64}"));

        let h128 = H64.repeat(2);
        let (alg, hex) = validate_digest(&format!("sha512:{h128}")).unwrap();
        assert_eq!((alg.as_str(), hex.as_str()), ("sha512", h128.as_str()));
    }

    #[test]
    fn invalid_digests() {
        let upper = H64.to_uppercase();
        let cases = [
            String::new(),
            "sha256".to_owned(),
            format!("sha256{H64}"),
            "sha256:".to_owned(),
            format!(":{H64}"),
            format!("SHA256:{H64}"),
            format!("sha256:{upper}"),
            format!("sha256:{}", &H64[..63]),
            format!("sha256:{H64}0"),
            format!("sha256:{}", H64.repeat(2)),
            format!("sha512:{H64}"),
            format!("sha256:{}g", &H64[..63]),
            format!("sha256:{H64}:"),
            format!("sha256: {H64}"),
            format!("sha--256:{H64}"),
            format!("sha256+:{H64}"),
            format!("sha256:../../{}", &H64[..58]),
        ];
        for case in cases {
            assert!(
                matches!(Digest::parse(&case), Err(CoreError::InvalidDigest { .. })),
                "{case:?} -> {:?}",
                Digest::parse(&case)
            );
        }
    }

    #[test]
    fn unsupported_algorithms() {
        for case in [
            format!("blake3:{H64}"),
            format!("md5:{}", &H64[..32]),
            format!("sha384:{H64}"),
            format!("multihash+base58:{H64}"),
        ] {
            assert!(
                matches!(
                    Digest::parse(&case),
                    Err(CoreError::UnsupportedAlgorithm(_))
                ),
                "{case:?}"
            );
        }
    }
}
