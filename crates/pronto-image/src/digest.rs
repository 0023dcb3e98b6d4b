//! Content digests (`sha256:<64 hex>`) and a streaming verifier.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A sha256 content digest: the 32 bytes, written `sha256:<64 lowercase hex>` (`Display`,
/// `FromStr`, serde). Other algorithms are refused: every blob Pronto reads is verified, and a
/// digest it cannot verify is an error, not a pass.
///
/// Ordered by its bytes, which is also the order of its strings.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("unsupported digest algorithm in {0:?} (only sha256 is supported)")]
    Algorithm(String),
    #[error("malformed digest {0:?}: expected sha256: and 64 lowercase hex digits")]
    Malformed(String),
}

impl Digest {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }

    /// The digest whose sha256 bytes are `bytes`.
    pub const fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    /// The 32 bytes of the sha256.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits, without the algorithm (as in `sha256-<hex>` tags and blob
    /// paths).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(DigestError::Malformed(s.to_string()));
        };
        if alg != "sha256" {
            return Err(DigestError::Algorithm(s.to_string()));
        }
        // `hex::decode` takes uppercase too; a digest is written in lowercase only.
        let mut bytes = [0u8; 32];
        if hex.len() != 64
            || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            || hex::decode_to_slice(hex, &mut bytes).is_err()
        {
            return Err(DigestError::Malformed(s.to_string()));
        }
        Ok(Digest(bytes))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hex = [0u8; 64];
        hex::encode_to_slice(self.0, &mut hex).expect("64 digits for 32 bytes");
        f.write_str("sha256:")?;
        f.write_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Hashes and counts bytes as they stream past; [`Verifier::finish`] checks both.
#[derive(Default)]
pub struct Verifier {
    hasher: Sha256,
    len: u64,
}

/// What a verified stream turned out to be when it did not match.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    Size { expected: u64, actual: u64 },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    Digest { expected: Digest, actual: Digest },
}

impl Verifier {
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.len += data.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks the size first (a truncated blob says so) and then the digest.
    pub fn finish(self, expected: &Digest, expected_size: Option<u64>) -> Result<(), VerifyError> {
        if let Some(size) = expected_size {
            if size != self.len {
                return Err(VerifyError::Size {
                    expected: size,
                    actual: self.len,
                });
            }
        }
        let actual = Digest(self.hasher.finalize().into());
        if &actual != expected {
            return Err(VerifyError::Digest {
                expected: expected.clone(),
                actual,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_is_the_well_known_one() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parse_rejects_other_algorithms_and_bad_hex() {
        assert!(matches!(
            "sha512:00".parse::<Digest>(),
            Err(DigestError::Algorithm(_))
        ));
        assert!(matches!(
            "sha256:ABC".parse::<Digest>(),
            Err(DigestError::Malformed(_))
        ));
        assert!(matches!(
            "nocolon".parse::<Digest>(),
            Err(DigestError::Malformed(_))
        ));
        let upper = format!("sha256:{}", "A".repeat(64));
        assert!(upper.parse::<Digest>().is_err());
    }

    #[test]
    fn bytes_round_trip_through_the_string_form() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37) ^ 0xa5;
        }
        let d = Digest::from_bytes(bytes);
        assert_eq!(d.as_bytes(), &bytes);
        let s = d.to_string();
        assert_eq!(s, format!("sha256:{}", hex::encode(bytes)));
        assert_eq!(d.hex(), hex::encode(bytes));
        let back: Digest = s.parse().unwrap();
        assert_eq!(back.as_bytes(), &bytes);
        assert_eq!(back, d);
        assert_eq!(format!("{d:?}"), s);
        assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{s}\""));
        let de: Digest = serde_json::from_str(&format!("\"{s}\"")).unwrap();
        assert_eq!(de, d);
        assert_eq!(
            Digest::of(b"abc").as_bytes(),
            &<[u8; 32]>::from(Sha256::digest(b"abc"))
        );
    }

    #[test]
    fn parse_refuses_uppercase_and_wrong_lengths() {
        let lower = "ab".repeat(32);
        assert!(format!("sha256:{lower}").parse::<Digest>().is_ok());
        for bad in [
            format!("sha256:{}", "AB".repeat(32)),
            format!("sha256:{}", "aB".repeat(32)),
            format!("sha256:{}", "ab".repeat(31)),
            format!("sha256:{}a", "ab".repeat(31)),
            format!("sha256:{}", "ab".repeat(33)),
            format!("sha256:{lower}0"),
            "sha256:".to_string(),
            format!("sha256:{}g", "a".repeat(63)),
        ] {
            assert_eq!(
                bad.parse::<Digest>(),
                Err(DigestError::Malformed(bad.clone())),
                "{bad}"
            );
        }
        assert_eq!(
            "sha256:ABC".parse::<Digest>().unwrap_err().to_string(),
            "malformed digest \"sha256:ABC\": expected sha256: and 64 lowercase hex digits"
        );
        assert!(
            serde_json::from_str::<Digest>(&format!("\"sha256:{}\"", "AB".repeat(32))).is_err()
        );
    }

    #[test]
    fn order_is_the_order_of_the_strings() {
        let mut ds: Vec<Digest> = (0u8..=255)
            .step_by(15)
            .map(|n| Digest::from_bytes([n; 32]))
            .chain([Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"")])
            .collect();
        ds.sort();
        let strings: Vec<String> = ds.iter().map(Digest::to_string).collect();
        let mut sorted = strings.clone();
        sorted.sort();
        assert_eq!(strings, sorted);
    }

    #[test]
    fn verifier_reports_size_then_digest() {
        let good = Digest::of(b"hello");
        let mut v = Verifier::default();
        v.update(b"hel");
        v.update(b"lo");
        assert_eq!(v.finish(&good, Some(5)), Ok(()));

        let mut v = Verifier::default();
        v.update(b"hel");
        assert_eq!(
            v.finish(&good, Some(5)).unwrap_err().to_string(),
            "size mismatch: expected 5 bytes, got 3"
        );

        let mut v = Verifier::default();
        v.update(b"jello");
        assert!(matches!(
            v.finish(&good, Some(5)),
            Err(VerifyError::Digest { .. })
        ));
    }
}
