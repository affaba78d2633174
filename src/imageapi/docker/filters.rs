//! The `filters` query parameter of the Docker Engine API and the small grammars inside it:
//! booleans, label terms, `reference` globs and `until` timestamps. Pure: no clock, no store.

use std::collections::BTreeMap;

use jiff::tz::{Offset, TimeZone};
use jiff::{SignedDuration, Timestamp, civil};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("invalid filter: {0}")]
    Json(String),
    #[error("invalid filter '{0}'")]
    Key(String),
    #[error("invalid filter '{key}={value}'")]
    Value { key: String, value: String },
    #[error("failed to parse value as time or duration: {0:?}")]
    Time(String),
    #[error("invalid reference filter pattern {0:?}: syntax error in pattern")]
    Pattern(String),
}

/// Filter key -> values. Docker clients send `{"key":{"value":true}}` (the form since API 1.22)
/// or `{"key":["value"]}`; both decode to this.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters(BTreeMap<String, Vec<String>>);

impl Filters {
    pub fn parse(raw: Option<&str>) -> Result<Filters, FilterError> {
        let raw = raw.map(str::trim).unwrap_or("");
        if raw.is_empty() {
            return Ok(Filters::default());
        }
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| FilterError::Json(e.to_string()))?;
        let serde_json::Value::Object(map) = value else {
            return Err(FilterError::Json("expected a JSON object".into()));
        };
        let mut out = BTreeMap::new();
        for (key, v) in map {
            let values: Vec<String> = match v {
                serde_json::Value::Object(set) => set
                    .into_iter()
                    // `{"v": false}` is how Go clients would spell "not v"; it is never sent.
                    .filter(|(_, on)| on.as_bool().unwrap_or(false))
                    .map(|(k, _)| k)
                    .collect(),
                serde_json::Value::Array(list) => list
                    .into_iter()
                    .map(|s| match s {
                        serde_json::Value::String(s) => Ok(s),
                        other => Err(FilterError::Json(format!(
                            "values of {key:?} must be strings, got {other}"
                        ))),
                    })
                    .collect::<Result<_, _>>()?,
                other => {
                    return Err(FilterError::Json(format!(
                        "values of {key:?} must be a list or a set, got {other}"
                    )));
                }
            };
            out.insert(key, values);
        }
        Ok(Filters(out))
    }

    /// Refuses keys this endpoint does not know, as the daemon does.
    pub fn validate(&self, allowed: &[&str]) -> Result<(), FilterError> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(FilterError::Key(k.clone())),
            None => Ok(()),
        }
    }

    pub fn get(&self, key: &str) -> &[String] {
        self.0.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// A boolean filter (`dangling`): `None` when absent; conflicting values are an error.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, FilterError> {
        let mut out = None;
        for v in self.get(key) {
            let b = match v.to_ascii_lowercase().as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(self.bad(key, v)),
            };
            if out.is_some_and(|o| o != b) {
                return Err(self.bad(key, v));
            }
            out = Some(b);
        }
        Ok(out)
    }

    fn bad(&self, key: &str, value: &str) -> FilterError {
        FilterError::Value {
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }

    /// Whether `labels` satisfy every `key` or `key=value` term under `filter` (true when there
    /// are none): the daemon's `MatchKVList`.
    pub fn labels_match(&self, filter: &str, labels: &BTreeMap<String, String>) -> bool {
        self.get(filter)
            .iter()
            .all(|term| match term.split_once('=') {
                Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
                None => labels.contains_key(term.as_str()),
            })
    }

    /// Prune's `label` and `label!`: every `label` term must match, and an image matching all
    /// `label!` terms is spared (the daemon's rule, so `label!=a --filter label!=b` spares only
    /// images carrying both).
    pub fn prune_labels_match(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels_match("label", labels)
            && !(self.contains("label!") && self.labels_match("label!", labels))
    }

    /// Every `until` value as an instant; an image must be created at or before all of them.
    pub fn until(&self, now: Timestamp, tz: &TimeZone) -> Result<Vec<Timestamp>, FilterError> {
        self.get("until")
            .iter()
            .map(|v| parse_timestamp(v, now, tz))
            .collect()
    }

    /// `reference` patterns, checked up front so a bad glob is a 400, not a silent miss.
    pub fn references(&self) -> Result<&[String], FilterError> {
        let patterns = self.get("reference");
        for p in patterns {
            glob_match(p, "")?;
        }
        Ok(patterns)
    }
}

/// Docker's `until`/`since` timestamp grammar: a Go duration before `now` (`10m`, `1h30m`,
/// `1.5h`), Unix seconds with an optional fraction (`1700000000.5`), or a date/time (`2024-01-02`,
/// `2024-01-02T15`, `2024-01-02T15:04`, `2024-01-02T15:04:05.999`) with an optional `Z` or
/// `±hh:mm` zone; without one it is local time.
pub fn parse_timestamp(
    value: &str,
    now: Timestamp,
    tz: &TimeZone,
) -> Result<Timestamp, FilterError> {
    let bad = || FilterError::Time(value.chars().take(100).collect());
    let v = value.trim();
    if v != "0"
        && let Some(d) = go_duration(v)
    {
        return now.checked_sub(d).map_err(|_| bad());
    }
    if !v.contains('-') {
        let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
        if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 9 {
            return Err(bad());
        }
        let secs: i64 = secs.parse().map_err(|_| bad())?;
        let nanos: i32 = format!("{frac:0<9}").parse().map_err(|_| bad())?;
        return Timestamp::new(secs, nanos).map_err(|_| bad());
    }
    // Split off a zone: a trailing `Z`, or `±hh:mm` after the date (the date's own dashes come
    // first, so the zone sign is the last `+`, or a `-` beyond the second one).
    let (body, offset) = if let Some(b) = v.strip_suffix(['Z', 'z']) {
        (b, Some(Offset::UTC))
    } else if let Some(i) = v
        .rfind('+')
        .or_else(|| v.match_indices('-').nth(2).map(|(i, _)| i))
    {
        (&v[..i], Some(parse_offset(&v[i..]).ok_or_else(bad)?))
    } else {
        (v, None)
    };
    let (date, time) = match body.split_once(['T', 't']) {
        Some((d, t)) => (d, Some(t)),
        None => (body, None),
    };
    let date: civil::Date = date.parse().map_err(|_| bad())?;
    let time = match time {
        None => civil::Time::midnight(),
        Some(t) => {
            let (hms, frac) = t.split_once('.').unwrap_or((t, ""));
            let parts: Vec<&str> = hms.split(':').collect();
            if parts.len() > 3
                || parts
                    .iter()
                    .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()))
                || (!frac.is_empty() && parts.len() != 3)
                || frac.len() > 9
                || !frac.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(bad());
            }
            let num = |i: usize| parts.get(i).map_or(Ok(0), |p| p.parse::<i8>());
            let nanos: i32 = format!("{frac:0<9}").parse().map_err(|_| bad())?;
            civil::Time::new(
                num(0).map_err(|_| bad())?,
                num(1).map_err(|_| bad())?,
                num(2).map_err(|_| bad())?,
                nanos,
            )
            .map_err(|_| bad())?
        }
    };
    let dt = date.to_datetime(time);
    match offset {
        Some(o) => o.to_timestamp(dt).map_err(|_| bad()),
        None => dt
            .to_zoned(tz.clone())
            .map(|z| z.timestamp())
            .map_err(|_| bad()),
    }
}

fn parse_offset(s: &str) -> Option<Offset> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let secs = h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60;
    Offset::from_seconds(sign * secs).ok()
}

/// Go's `time.ParseDuration`: `[-+]` then one or more `<decimal><unit>` with units ns, us, µs,
/// ms, s, m, h (no days: Docker has none either).
pub fn go_duration(s: &str) -> Option<SignedDuration> {
    let (neg, mut rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(SignedDuration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..n];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit: f64 = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[u..];
        nanos += value * unit;
    }
    if !nanos.is_finite() || nanos > i64::MAX as f64 {
        return None;
    }
    let d = SignedDuration::from_nanos(nanos.round() as i64);
    Some(if neg { -d } else { d })
}

/// Go's `path.Match`: `*` (any run of non-`/`), `?` (one non-`/`), `[...]` classes with ranges
/// and `^` negation, `\` escapes. A malformed pattern is an error even when it cannot match.
pub fn glob_match(pattern: &str, name: &str) -> Result<bool, FilterError> {
    let bad = || FilterError::Pattern(pattern.chars().take(100).collect());
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Validate the whole pattern first: Go reports a bad class even past a mismatch.
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' if i + 1 >= p.len() => return Err(bad()),
            '\\' => {
                tokens.push(Token::Char(p[i + 1]));
                i += 2;
            }
            '[' => {
                let class = parse_class(&p, i).ok_or_else(bad)?;
                i = class.end;
                tokens.push(Token::Class(class));
            }
            '*' => {
                tokens.push(Token::Star);
                i += 1;
            }
            '?' => {
                tokens.push(Token::Any);
                i += 1;
            }
            c => {
                tokens.push(Token::Char(c));
                i += 1;
            }
        }
    }
    Ok(glob_tokens(&tokens, &n))
}

enum Token {
    Star,
    Any,
    Class(Class),
    Char(char),
}

/// Matches by tracking every name position the pattern so far can end at (sorted, no
/// duplicates): at most the pattern's length times the name's, where backtracking over stars is
/// exponential (a client's `reference=***...` filter could pin a core) and recursion per
/// character can overflow the stack.
fn glob_tokens(tokens: &[Token], n: &[char]) -> bool {
    let mut at = vec![0];
    for token in tokens {
        let mut next = Vec::with_capacity(at.len());
        match token {
            // The star swallows any run of non-separators.
            Token::Star => {
                for &j in &at {
                    let mut k = match next.last() {
                        Some(&last) if last >= j => continue,
                        _ => j,
                    };
                    next.push(k);
                    while k < n.len() && n[k] != '/' {
                        k += 1;
                        next.push(k);
                    }
                }
            }
            one => {
                for &j in &at {
                    let Some(&c) = n.get(j) else { continue };
                    let hit = match one {
                        Token::Any => c != '/',
                        Token::Char(want) => c == *want,
                        Token::Class(class) => {
                            class.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != class.negated
                        }
                        Token::Star => false,
                    };
                    if hit {
                        next.push(j + 1);
                    }
                }
            }
        }
        if next.is_empty() {
            return false;
        }
        at = next;
    }
    at.last() == Some(&n.len())
}

struct Class {
    negated: bool,
    ranges: Vec<(char, char)>,
    /// Index just past the closing `]`.
    end: usize,
}

/// Parses the class starting at `p[start] == '['` with Go's rules: `-` and `]` must be escaped
/// unless they close a range or the class, and a class is never empty.
fn parse_class(p: &[char], start: usize) -> Option<Class> {
    let mut i = start + 1;
    let negated = p.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if p.get(i) == Some(&']') && !ranges.is_empty() {
            return Some(Class {
                negated,
                ranges,
                end: i + 1,
            });
        }
        let lo = class_char(p, &mut i)?;
        let hi = if p.get(i) == Some(&'-') {
            i += 1;
            class_char(p, &mut i)?
        } else {
            lo
        };
        ranges.push((lo, hi));
    }
}

/// One possibly escaped character of a class; something must follow it.
fn class_char(p: &[char], i: &mut usize) -> Option<char> {
    let mut c = *p.get(*i)?;
    if c == '-' || c == ']' {
        return None;
    }
    if c == '\\' {
        *i += 1;
        c = *p.get(*i)?;
    }
    *i += 1;
    p.get(*i)?;
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn both_wire_forms() {
        let a = Filters::parse(Some(r#"{"dangling":{"true":true},"label":{"a=b":true}}"#)).unwrap();
        let b = Filters::parse(Some(r#"{"dangling":["true"],"label":["a=b"]}"#)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.bool("dangling"), Ok(Some(true)));
        assert_eq!(Filters::parse(None).unwrap(), Filters::default());
        assert_eq!(Filters::parse(Some("")).unwrap(), Filters::default());
        assert!(Filters::parse(Some("{")).is_err());
        assert!(Filters::parse(Some("[]")).is_err());
        assert!(Filters::parse(Some(r#"{"a":[1]}"#)).is_err());
        assert!(Filters::parse(Some(r#"{"a":"x"}"#)).is_err());
    }

    #[test]
    fn validation_and_booleans() {
        let f = Filters::parse(Some(r#"{"dangling":["1"],"colour":["red"]}"#)).unwrap();
        assert_eq!(
            f.validate(&["dangling"]),
            Err(FilterError::Key("colour".into()))
        );
        assert_eq!(f.bool("dangling"), Ok(Some(true)));
        assert_eq!(f.bool("absent"), Ok(None));
        let f = Filters::parse(Some(r#"{"dangling":["maybe"]}"#)).unwrap();
        assert!(f.bool("dangling").is_err());
        let f = Filters::parse(Some(r#"{"dangling":["true","false"]}"#)).unwrap();
        assert!(f.bool("dangling").is_err());
        let f = Filters::parse(Some(r#"{"dangling":["FALSE","0"]}"#)).unwrap();
        assert_eq!(f.bool("dangling"), Ok(Some(false)));
    }

    #[test]
    fn label_terms() {
        let l = labels(&[("team", "a"), ("tier", "web")]);
        let f = Filters::parse(Some(r#"{"label":["team","tier=web"]}"#)).unwrap();
        assert!(f.labels_match("label", &l));
        let f = Filters::parse(Some(r#"{"label":["team=b"]}"#)).unwrap();
        assert!(!f.labels_match("label", &l));
        assert!(Filters::default().labels_match("label", &l));
        // label!: spared only when all terms match.
        let f = Filters::parse(Some(r#"{"label!":["team=a"]}"#)).unwrap();
        assert!(!f.prune_labels_match(&l));
        assert!(f.prune_labels_match(&labels(&[("team", "b")])));
        let f = Filters::parse(Some(r#"{"label!":["team=a","missing"]}"#)).unwrap();
        assert!(f.prune_labels_match(&l));
        let f = Filters::parse(Some(r#"{"label":["tier"],"label!":["team"]}"#)).unwrap();
        assert!(!f.prune_labels_match(&l));
        assert!(f.prune_labels_match(&labels(&[("tier", "x")])));
    }

    #[test]
    fn go_durations() {
        let s = |n: i64| Some(SignedDuration::from_secs(n));
        assert_eq!(go_duration("24h"), s(86400));
        assert_eq!(go_duration("1h30m"), s(5400));
        assert_eq!(go_duration("1.5h"), s(5400));
        assert_eq!(go_duration("-10m"), s(-600));
        assert_eq!(go_duration("300ms"), Some(SignedDuration::from_millis(300)));
        assert_eq!(go_duration("2µs"), Some(SignedDuration::from_micros(2)));
        assert_eq!(go_duration("0"), Some(SignedDuration::ZERO));
        for bad in ["", "h", "10", "1d", "1.2.3s", "-", "5x", "1h 2m"] {
            assert_eq!(go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps() {
        let now: Timestamp = "2025-06-01T12:00:00Z".parse().unwrap();
        let utc = TimeZone::UTC;
        let t = |v: &str| parse_timestamp(v, now, &utc).map(|t| t.to_string());
        assert_eq!(t("24h").unwrap(), "2025-05-31T12:00:00Z");
        assert_eq!(t("1700000000").unwrap(), "2023-11-14T22:13:20Z");
        assert_eq!(t("1700000000.5").unwrap(), "2023-11-14T22:13:20.5Z");
        assert_eq!(t("0").unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(t("2024-01-02").unwrap(), "2024-01-02T00:00:00Z");
        assert_eq!(t("2024-01-02T15").unwrap(), "2024-01-02T15:00:00Z");
        assert_eq!(t("2024-01-02T15:04").unwrap(), "2024-01-02T15:04:00Z");
        assert_eq!(t("2024-01-02T15:04:05").unwrap(), "2024-01-02T15:04:05Z");
        assert_eq!(
            t("2024-01-02T15:04:05.25Z").unwrap(),
            "2024-01-02T15:04:05.25Z"
        );
        assert_eq!(
            t("2024-01-02T15:04:05+02:00").unwrap(),
            "2024-01-02T13:04:05Z"
        );
        assert_eq!(t("2024-01-02-01:00").unwrap(), "2024-01-02T01:00:00Z");
        assert_eq!(t("2024-01-02T10:00-01:00").unwrap(), "2024-01-02T11:00:00Z");
        // Local time when no zone is given.
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(
            parse_timestamp("2024-01-02T10:00", now, &berlin)
                .unwrap()
                .to_string(),
            "2024-01-02T09:00:00Z"
        );
        for bad in [
            "yesterday",
            "2024-13-01",
            "2024-01-02T25",
            "2024-01-02T1",
            "12a",
            "-5",
            "2024-01-02+1",
            "1.2.3",
        ] {
            assert!(t(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn globs() {
        let m = |p: &str, n: &str| glob_match(p, n).unwrap();
        assert!(m("nginx", "nginx"));
        assert!(m("ngi*", "nginx"));
        assert!(m("*", "nginx"));
        assert!(!m("*", "team/app"));
        assert!(m("team/*", "team/app"));
        assert!(m("*/*:1", "team/app:1"));
        assert!(m("app?", "app1"));
        assert!(!m("app?", "app"));
        assert!(m("app[0-9]", "app7"));
        assert!(!m("app[^0-9]", "app7"));
        assert!(m("app[^0-9]", "appx"));
        assert!(m("a[\\]]b", "a]b"));
        assert!(m("a\\*", "a*"));
        assert!(!m("a\\*", "ab"));
        assert!(m("*.test/*/*:?", "upstream.test/team/app:1"));
        assert!(!m("upstream.test/*", "upstream.test/team/app"));
        for bad in ["[", "a[", "a\\", "[]", "[a-", "[-a]", "[a-]"] {
            assert!(glob_match(bad, "x").is_err(), "{bad}");
        }
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy/c"));
        assert!(m("", ""));
        assert!(!m("", "a"));
    }

    /// Found by the `docker_query` fuzz target: many stars against a non-matching name took
    /// seconds with backtracking, and a long pattern recursed once per character.
    #[test]
    fn globs_stay_linear() {
        let stars = format!("{}x", "*".repeat(60));
        assert!(!glob_match(&stars, &"a".repeat(60)).unwrap());
        assert!(glob_match(&stars, &format!("{}x", "a".repeat(60))).unwrap());
        let long = "a".repeat(200_000);
        assert!(glob_match(&long, &long).unwrap());
        assert!(!glob_match(&format!("{long}*b"), &long).unwrap());
        assert!(!glob_match(&"*a".repeat(50_000), "docker.io/library/alpine:3.20").unwrap());
    }
}
