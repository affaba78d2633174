//! Compact value types for the in-memory index. A large cache holds 100k records and more for
//! the life of the process, so their strings, maps and sets are laid out to cost as few bytes
//! and allocations as possible: well-known strings are shared, not allocated, maps and sets are
//! one sorted boxed slice. Each serialises exactly as the `String`/`BTreeMap`/`BTreeSet` it
//! replaces, so record files are unchanged. Pure.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::{Arc, LazyLock};

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// Strings that recur in nearly every record: media types, platforms, and the label and
/// annotation keys of the OCI image spec and common builders. Sorted, for binary search.
const WELL_KNOWN: &[&str] = &[
    "386",
    "amd64",
    "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
    "application/vnd.cncf.helm.config.v1+json",
    "application/vnd.dev.cosign.simplesigning.v1+json",
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.in-toto+json",
    "application/vnd.oci.empty.v1+json",
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.manifest.v1+json",
    "arm",
    "arm64",
    "attestation-manifest",
    "com.docker.official-images.bashbrew.arch",
    "darwin",
    "freebsd",
    "io.containerd.image.name",
    "linux",
    "maintainer",
    "mips64le",
    "org.opencontainers.image.authors",
    "org.opencontainers.image.base.digest",
    "org.opencontainers.image.base.name",
    "org.opencontainers.image.created",
    "org.opencontainers.image.description",
    "org.opencontainers.image.documentation",
    "org.opencontainers.image.licenses",
    "org.opencontainers.image.ref.name",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.source",
    "org.opencontainers.image.title",
    "org.opencontainers.image.url",
    "org.opencontainers.image.vendor",
    "org.opencontainers.image.version",
    "ppc64le",
    "riscv64",
    "s390x",
    "unknown",
    "v5",
    "v6",
    "v7",
    "v8",
    "vnd.docker.reference.digest",
    "vnd.docker.reference.type",
    "windows",
];

/// An immutable, cheaply cloned string; one of the well-known ones costs no allocation (it
/// shares the table's). 16 bytes, where a `String` takes 24 plus its allocation.
#[derive(Clone)]
pub struct Atom(Arc<str>);

/// The shared instances of [`WELL_KNOWN`], in the same order.
static KNOWN: LazyLock<Box<[Arc<str>]>> =
    LazyLock::new(|| WELL_KNOWN.iter().map(|s| Arc::from(*s)).collect());

impl Atom {
    pub fn new(s: &str) -> Atom {
        match WELL_KNOWN.binary_search(&s) {
            Ok(i) => Atom(KNOWN[i].clone()),
            Err(_) => Atom(Arc::from(s)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a shared well-known string.
    #[cfg(test)]
    fn is_well_known(&self) -> bool {
        WELL_KNOWN
            .binary_search(&self.as_str())
            .is_ok_and(|i| Arc::ptr_eq(&KNOWN[i], &self.0))
    }
}

impl Default for Atom {
    fn default() -> Atom {
        Atom::new("")
    }
}

impl Deref for Atom {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Atom {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Atom {
    fn from(s: &str) -> Atom {
        Atom::new(s)
    }
}

impl From<String> for Atom {
    fn from(s: String) -> Atom {
        Atom::new(&s)
    }
}

impl PartialEq for Atom {
    fn eq(&self, other: &Atom) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Atom {}

impl PartialEq<&str> for Atom {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for Atom {
    fn partial_cmp(&self, other: &Atom) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Atom {
    fn cmp(&self, other: &Atom) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for Atom {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Debug for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Atom {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Atom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Atom, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Atom;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Atom, E> {
                Ok(Atom::new(s))
            }
        }
        d.deserialize_str(V)
    }
}

/// A string map (labels, annotations) as one sorted slice: a handful of entries cost one
/// allocation for the slice plus one per value, where a `BTreeMap` node alone takes 544 bytes.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct StrMap(Box<[(Atom, Box<str>)]>);

impl StrMap {
    pub fn new() -> StrMap {
        StrMap::default()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + Clone {
        self.0.iter().map(|(k, v)| (k.as_str(), &**v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_btree(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl<K: Into<Atom>, V: Into<Box<str>>> FromIterator<(K, V)> for StrMap {
    /// Sorted by key; of repeated keys the last wins, as in a map.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> StrMap {
        let mut v: Vec<(Atom, Box<str>)> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        v.reverse();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        StrMap(v.into_boxed_slice())
    }
}

impl From<BTreeMap<String, String>> for StrMap {
    fn from(m: BTreeMap<String, String>) -> StrMap {
        m.into_iter().collect()
    }
}

impl fmt::Debug for StrMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for StrMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for StrMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StrMap, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<StrMap, A::Error> {
                let mut v: Vec<(Atom, Box<str>)> = Vec::with_capacity(a.size_hint().unwrap_or(0));
                while let Some((k, val)) = a.next_entry::<Atom, Box<str>>()? {
                    v.push((k, val));
                }
                Ok(v.into_iter().collect())
            }
        }
        d.deserialize_map(V)
    }
}

/// A small set as one sorted slice (the repositories a manifest was pulled through: nearly
/// always one). Inserting reallocates, which is fine for sets that rarely change.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SmallSet<T>(Box<[T]>);

impl<T> Default for SmallSet<T> {
    fn default() -> SmallSet<T> {
        SmallSet(Box::new([]))
    }
}

impl<T: Ord + Clone> SmallSet<T> {
    pub fn new() -> SmallSet<T> {
        SmallSet::default()
    }

    pub fn contains(&self, item: &T) -> bool {
        self.0.binary_search(item).is_ok()
    }

    /// Whether the item was new.
    pub fn insert(&mut self, item: T) -> bool {
        match self.0.binary_search(&item) {
            Ok(_) => false,
            Err(at) => {
                let mut v = std::mem::take(&mut self.0).into_vec();
                v.insert(at, item);
                self.0 = v.into_boxed_slice();
                true
            }
        }
    }

    pub fn clear(&mut self) {
        self.0 = Box::new([]);
    }
}

impl<T> SmallSet<T> {
    /// Items in order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T: Ord> FromIterator<T> for SmallSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> SmallSet<T> {
        let mut v: Vec<T> = iter.into_iter().collect();
        v.sort();
        v.dedup();
        SmallSet(v.into_boxed_slice())
    }
}

impl<T: Ord, const N: usize> From<[T; N]> for SmallSet<T> {
    fn from(items: [T; N]) -> SmallSet<T> {
        items.into_iter().collect()
    }
}

impl<T: Ord> From<BTreeSet<T>> for SmallSet<T> {
    fn from(s: BTreeSet<T>) -> SmallSet<T> {
        SmallSet(s.into_iter().collect())
    }
}

impl<'a, T> IntoIterator for &'a SmallSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: fmt::Debug> fmt::Debug for SmallSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.iter()).finish()
    }
}

impl<T: Serialize> Serialize for SmallSet<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for item in self.0.iter() {
            seq.serialize_element(item)?;
        }
        seq.end()
    }
}

impl<'de, T: Deserialize<'de> + Ord> Deserialize<'de> for SmallSet<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SmallSet<T>, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Ord> Visitor<'de> for V<T> {
            type Value = SmallSet<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<SmallSet<T>, A::Error> {
                let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0).min(64));
                while let Some(item) = a.next_element()? {
                    v.push(item);
                }
                Ok(v.into_iter().collect())
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_table_is_sorted_and_unique() {
        assert!(WELL_KNOWN.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn atoms_of_well_known_strings_share_one_instance() {
        assert!(Atom::new("amd64").is_well_known());
        assert!(Atom::from(super::super::OCI_MANIFEST.to_owned()).is_well_known());
        let other = Atom::new("application/x-custom");
        assert!(!other.is_well_known());
        assert_eq!(other, "application/x-custom");
        assert_eq!(Atom::new("linux"), Atom::from("linux".to_owned()));
    }

    #[test]
    fn atoms_round_trip_as_json_strings() {
        let a: Atom = serde_json::from_str(r#""arm64""#).unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), r#""arm64""#);
        let escaped: Atom = serde_json::from_str(r#""a\"b""#).unwrap();
        assert_eq!(escaped.as_str(), "a\"b");
    }

    #[test]
    fn str_map_reads_and_writes_like_a_btree_map() {
        let json = r#"{"z":"1","maintainer":"me","a":"x\ny"}"#;
        let m: StrMap = serde_json::from_str(json).unwrap();
        let b: BTreeMap<String, String> = serde_json::from_str(json).unwrap();
        assert_eq!(m.to_btree(), b);
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_eq!(m.get("maintainer"), Some("me"));
        assert_eq!(m.get("b"), None);
        assert_eq!(
            m.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["a", "maintainer", "z"]
        );
        assert!(StrMap::new().is_empty());
    }

    #[test]
    fn str_map_keeps_the_last_of_repeated_keys() {
        let m: StrMap = serde_json::from_str(r#"{"k":"1","j":"0","k":"2"}"#).unwrap();
        let b: BTreeMap<String, String> =
            serde_json::from_str(r#"{"k":"1","j":"0","k":"2"}"#).unwrap();
        assert_eq!(m.to_btree(), b);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn small_set_behaves_like_a_btree_set() {
        let mut s = SmallSet::from([3, 1, 2, 3]);
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert!(!s.insert(2));
        assert!(s.insert(0));
        assert!(s.contains(&0));
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
        let json = serde_json::to_string(&s).unwrap();
        let back: SmallSet<i32> = serde_json::from_str("[3,0,1,2,2]").unwrap();
        assert_eq!(json, "[0,1,2,3]");
        assert_eq!(back, s);
        s.clear();
        assert!(s.is_empty());
    }
}
