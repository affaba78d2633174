//! Content digests (`algorithm:hex`) and incremental verification.
//!
//! Layer: a value module every layer may use; it imports no other module.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// The digest algorithms the cache accepts; anything else is `DIGEST_INVALID`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest, held as its raw bytes: a sha256 digest lives inline (no allocation,
/// 40 bytes), so the index of a large cache holds millions of them cheaply and hashes and
/// compares them without chasing pointers. Ordering is the order of the text form.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Digest(Bytes);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Variant order and byte order give the text order: `sha256:` before `sha512:`, then the hex.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Bytes {
    Sha256([u8; 32]),
    Sha512(Box<[u8; 64]>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid digest {0:?}: expected sha256:<64 hex> or sha512:<128 hex>")]
pub struct InvalidDigest(pub String);

/// The hex part of a digest, formatted on the stack; derefs to `str`.
#[derive(Clone, Copy)]
pub struct Hex {
    buf: [u8; 128],
    len: usize,
}

impl Hex {
    pub fn as_str(&self) -> &str {
        // Only ever filled by `hex::encode_to_slice`, which writes ASCII.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::ops::Deref for Hex {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        match self.0 {
            Bytes::Sha256(_) => Algorithm::Sha256,
            Bytes::Sha512(_) => Algorithm::Sha512,
        }
    }

    fn bytes(&self) -> &[u8] {
        match &self.0 {
            Bytes::Sha256(b) => b,
            Bytes::Sha512(b) => &b[..],
        }
    }

    /// The lowercase hex part (after `algorithm:`).
    pub fn hex(&self) -> Hex {
        let bytes = self.bytes();
        let mut hex = Hex {
            buf: [0; 128],
            len: bytes.len() * 2,
        };
        // The buffer is sized for the longest digest, so this cannot fail.
        let _ = hex::encode_to_slice(bytes, &mut hex.buf[..bytes.len() * 2]);
        hex
    }

    /// The sha256 digest of `data`.
    pub fn sha256_of(data: &[u8]) -> Digest {
        Digest(Bytes::Sha256(Sha256::digest(data).into()))
    }

    /// The digest of `data` computed with this digest's algorithm.
    pub fn verifies(&self, data: &[u8]) -> bool {
        let mut h = Hasher::new(self.algorithm());
        h.update(data);
        h.finish() == *self
    }
}

/// Hashes the first 64 bits of the digest instead of all of it: digests are uniformly random,
/// and the prune planner hashes millions of them. Equality still compares everything.
impl std::hash::Hash for Digest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let b = self.bytes();
        state.write_u64(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]));
    }
}

/// The hasher for maps keyed by digests: the digest's first 8 bytes (see `Hash` above) are
/// the hash. They are uniformly distributed already, and picking digests that collide would
/// mean breaking SHA-256, so SipHash's protection buys nothing here and costs the prune
/// planner a third of its time at 100k manifests.
#[derive(Clone, Copy, Default)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    /// Only for keys that are not digests (FNV-1a): a `DigestMap` never gets here.
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

pub type BuildDigestHasher = std::hash::BuildHasherDefault<DigestHasher>;
/// A map keyed by digests (or references to them), hashed by [`DigestHasher`].
pub type DigestMap<K, V> = std::collections::HashMap<K, V, BuildDigestHasher>;
pub type DigestSet<K> = std::collections::HashSet<K, BuildDigestHasher>;

impl FromStr for Digest {
    type Err = InvalidDigest;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidDigest(s.chars().take(200).collect());
        let (alg, hex) = s.split_once(':').ok_or_else(bad)?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(bad()),
        };
        if hex.len() != algorithm.hex_len() {
            return Err(bad());
        }
        let bytes = match algorithm {
            Algorithm::Sha256 => {
                let mut b = [0u8; 32];
                decode_lower_hex(hex, &mut b).ok_or_else(bad)?;
                Bytes::Sha256(b)
            }
            Algorithm::Sha512 => {
                let mut b = Box::new([0u8; 64]);
                decode_lower_hex(hex, &mut b[..]).ok_or_else(bad)?;
                Bytes::Sha512(b)
            }
        };
        Ok(Digest(bytes))
    }
}

/// Lowercase hex only: the hex is a file name, and one digest has one spelling. (Opening a
/// large cache parses a million digests, so this is a table lookup per character.)
fn decode_lower_hex(hex: &str, out: &mut [u8]) -> Option<()> {
    const INVALID: u8 = 0xff;
    const NIBBLE: [u8; 256] = {
        let mut t = [INVALID; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let (hi, lo) = (NIBBLE[pair[0] as usize], NIBBLE[pair[1] as usize]);
        // Checked once at the end: the loop has no branch per character.
        bad |= (hi | lo) & 0xf0;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad == 0).then_some(())
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm().as_str(), self.hex())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The pattern a digest matches on the wire, for schemas (CRDs validate it at apply time).
pub const DIGEST_PATTERN: &str = "^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$";

/// On the wire a digest is a string `sha256:<64 hex>` or `sha512:<128 hex>`.
impl schemars::JsonSchema for Digest {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Digest".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DIGEST_PATTERN,
        })
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental hashing for streamed content.
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest(Bytes::Sha256(h.finalize().into())),
            Hasher::Sha512(h) => Digest(Bytes::Sha512(Box::new(h.finalize().into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let s = format!("sha256:{}", "a".repeat(64));
        let d: Digest = s.parse().unwrap();
        assert_eq!(d.to_string(), s);
        assert!(
            format!("sha512:{}", "0".repeat(128))
                .parse::<Digest>()
                .is_ok()
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "sha256:xyz",
            "sha256:",
            "md5:abc",
            "sha256",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "a".repeat(63)),
            &format!("sha256:{}/..", "a".repeat(64)),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn accepts_exactly_lowercase_hex_in_every_position() {
        for c in (0u8..128).map(char::from) {
            for at in [0, 1, 31, 62, 63] {
                let mut hex: Vec<char> = "0123456789abcdef".repeat(4).chars().collect();
                hex[at] = c;
                let s = format!("sha256:{}", hex.iter().collect::<String>());
                let ok = c.is_ascii_digit() || ('a'..='f').contains(&c);
                assert_eq!(s.parse::<Digest>().is_ok(), ok, "{c:?} at {at}");
                if ok {
                    assert_eq!(s.parse::<Digest>().unwrap().to_string(), s);
                }
            }
        }
    }

    /// The Image API cuts and sorts pages on digests but names images by their text.
    #[test]
    fn orders_as_its_text() {
        let mut digests: Vec<Digest> = ["0", "f", "a", "5"]
            .iter()
            .flat_map(|c| {
                [
                    format!("sha256:{}", c.repeat(64)),
                    format!("sha512:{}", c.repeat(128)),
                ]
            })
            .map(|s| s.parse().unwrap())
            .collect();
        digests.push(Digest::sha256_of(b"x"));
        let mut by_text = digests.clone();
        by_text.sort_by_key(|d| d.to_string());
        digests.sort();
        assert_eq!(digests, by_text);
    }

    #[test]
    fn verifies_content() {
        let d = Digest::sha256_of(b"hello");
        assert!(d.verifies(b"hello"));
        assert!(!d.verifies(b"hellO"));
        assert_eq!(
            d.hex().as_str(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }
}
