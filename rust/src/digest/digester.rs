use sha2::Digest as _;

use super::Algorithm;

/// A streaming hasher for one [`Algorithm`].
///
/// `update` as often as needed; `hexdigest`/`digest` may be called at any point and do not
/// consume or reset the state.
#[derive(Clone)]
pub struct Digester {
    state: State,
}

#[derive(Clone)]
enum State {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
    // boxed: blake3's hasher is ~2 KiB, the sha2 states are ~100-200 bytes
    Blake3(Box<blake3::Hasher>),
}

impl Digester {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        let state = match algorithm {
            Algorithm::Sha256 => State::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => State::Sha512(sha2::Sha512::new()),
            Algorithm::Blake3 => State::Blake3(Box::new(blake3::Hasher::new())),
        };
        Digester { state }
    }

    /// The algorithm this hasher computes.
    pub fn algorithm(&self) -> Algorithm {
        match self.state {
            State::Sha256(_) => Algorithm::Sha256,
            State::Sha512(_) => Algorithm::Sha512,
            State::Blake3(_) => Algorithm::Blake3,
        }
    }

    /// Feed more bytes.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Sha256(h) => h.update(data),
            State::Sha512(h) => h.update(data),
            State::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// Lowercase hex of the hash of everything fed so far.
    pub fn hexdigest(&self) -> String {
        match &self.state {
            State::Sha256(h) => hex::encode(h.clone().finalize()),
            State::Sha512(h) => hex::encode(h.clone().finalize()),
            State::Blake3(h) => h.finalize().to_hex().to_string(),
        }
    }

    /// `"<algorithm>:<hex>"` of everything fed so far.
    pub fn digest(&self) -> String {
        format!("{}:{}", self.algorithm(), self.hexdigest())
    }
}

impl std::fmt::Debug for Digester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Digester")
            .field("algorithm", &self.algorithm())
            .finish()
    }
}

/// `"<algorithm>:<hex>"` of `data`.
pub fn digest_bytes(data: &[u8], algorithm: Algorithm) -> String {
    let mut d = Digester::new(algorithm);
    d.update(data);
    d.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256_EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const SHA512_ABC: &str = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                              2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";
    const BLAKE3_EMPTY: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    #[test]
    fn known_vectors() {
        assert_eq!(
            digest_bytes(b"", Algorithm::Sha256),
            format!("sha256:{SHA256_EMPTY}")
        );
        assert_eq!(
            digest_bytes(b"abc", Algorithm::Sha256),
            format!("sha256:{SHA256_ABC}")
        );
        assert_eq!(
            digest_bytes(b"abc", Algorithm::Sha512),
            format!("sha512:{SHA512_ABC}")
        );
        assert_eq!(
            digest_bytes(b"", Algorithm::Blake3),
            format!("blake3:{BLAKE3_EMPTY}")
        );
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..200_003u32).map(|i| (i * 31 % 251) as u8).collect();
        for alg in [Algorithm::Sha256, Algorithm::Sha512, Algorithm::Blake3] {
            let mut d = Digester::new(alg);
            for chunk in data.chunks(4099) {
                d.update(chunk);
            }
            assert_eq!(d.digest(), digest_bytes(&data, alg));
            assert_eq!(d.hexdigest().len(), alg.hex_len());
        }
    }

    #[test]
    fn hexdigest_does_not_consume() {
        let mut d = Digester::new(Algorithm::Sha256);
        d.update(b"a");
        let _ = d.hexdigest();
        d.update(b"bc");
        assert_eq!(d.hexdigest(), SHA256_ABC);
        assert_eq!(d.hexdigest(), SHA256_ABC);
    }
}
