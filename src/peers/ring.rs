//! Rendezvous (highest random weight) hashing: which replica owns a digest.
//!
//! Every replica ranks the members for a digest by a weight computed from the member's name and
//! the digest alone, so all replicas agree on the ranking without talking to each other, and a
//! member joining or leaving moves only the digests it takes or held: the relative order of
//! the others never changes. Pure code: no IO, no clock.

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

/// The weight of `member` for `key`: the first 64 bits of SHA-256(`member` NUL `key`). Stable
/// across processes, platforms and versions (the wire contract between replicas).
pub fn weight(member: &str, key: &Digest) -> u64 {
    let mut h = Sha256::new();
    h.update(member.as_bytes());
    h.update([0u8]);
    h.update(key.to_string().as_bytes());
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
}

/// `members` ordered for `key`, owner first: by weight, highest first, ties by name.
pub fn rank<'a, M: AsRef<str>>(members: &'a [M], key: &Digest) -> Vec<&'a M> {
    let mut weighted: Vec<(u64, &M)> = members
        .iter()
        .map(|m| (weight(m.as_ref(), key), m))
        .collect();
    weighted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.as_ref().cmp(b.1.as_ref())));
    weighted.into_iter().map(|(_, m)| m).collect()
}

/// The owner of `key` among `members`: the first of [`rank`], without sorting.
pub fn owner<'a, M: AsRef<str>>(members: &'a [M], key: &Digest) -> Option<&'a M> {
    members
        .iter()
        .map(|m| (weight(m.as_ref(), key), m))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.as_ref().cmp(a.1.as_ref())))
        .map(|(_, m)| m)
}
