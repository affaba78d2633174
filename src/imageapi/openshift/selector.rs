//! Kubernetes label and field selectors: parsing (with the API server's validation) and
//! matching. Pure.
//!
//! Label selectors: `key`, `!key`, `key=value`, `key==value`, `key!=value`,
//! `key in (a,b)`, `key notin (a,b)`, `key>1`, `key<1`, joined by commas (all must match).
//! Field selectors: `field=value`, `field==value`, `field!=value` on `metadata.name` and
//! `dockerImageReference`, with `\,` `\=` `\\` escapes.

use std::collections::BTreeMap;

use super::types::Field;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("unable to parse requirement: {0}")]
    Label(String),
    #[error("invalid field selector: {0}")]
    Field(String),
    #[error("field label not supported: {0} (supported: metadata.name, dockerImageReference)")]
    UnknownField(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Exists(String),
    DoesNotExist(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let int = |k: &str| labels.get(k).and_then(|v| v.parse::<i64>().ok());
        match self {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::GreaterThan(k, n) => int(k).is_some_and(|v| v > *n),
            Requirement::LessThan(k, n) => int(k).is_some_and(|v| v < *n),
        }
    }
}

/// All requirements must match; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, SelectorError> {
        Parser::new(s).selector().map(LabelSelector)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: Field,
    pub value: String,
    pub negated: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, SelectorError> {
        let mut out = Vec::new();
        for term in split_unescaped(s, ',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (key, value, negated) = if let Some(i) = find_unescaped(term, "!=") {
                (&term[..i], &term[i + 2..], true)
            } else if let Some(i) = find_unescaped(term, "==") {
                (&term[..i], &term[i + 2..], false)
            } else if let Some(i) = find_unescaped(term, "=") {
                (&term[..i], &term[i + 1..], false)
            } else {
                return Err(SelectorError::Field(format!(
                    "{term:?}: expected field=value, field==value or field!=value"
                )));
            };
            let key = key.trim();
            let field =
                Field::parse(key).ok_or_else(|| SelectorError::UnknownField(key.to_owned()))?;
            out.push(FieldRequirement {
                field,
                value: unescape(value.trim()),
                negated,
            });
        }
        Ok(FieldSelector(out))
    }

    /// `value_of` gives the value of a field of the object being tested.
    pub fn matches<'a>(&self, value_of: impl Fn(Field) -> &'a str) -> bool {
        self.0
            .iter()
            .all(|r| (value_of(r.field) == r.value) != r.negated)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name an equality on `metadata.name` pins the selector to, if any.
    pub fn name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|r| r.field == Field::Name && !r.negated)
            .map(|r| r.value.as_str())
    }
}

fn find_unescaped(s: &str, pat: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        // Bytes, not str slices: `i` may sit inside a multi-byte character.
        if b[i..].starts_with(pat.as_bytes()) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Op(&'static str),
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    input: String,
}

impl Parser {
    fn new(input: &str) -> Parser {
        let mut tokens = Vec::new();
        let mut word = String::new();
        let mut chars = input.chars().peekable();
        let flush = |word: &mut String, tokens: &mut Vec<Token>| {
            if !word.is_empty() {
                tokens.push(Token::Word(std::mem::take(word)));
            }
        };
        while let Some(c) = chars.next() {
            let op = match c {
                '=' if chars.peek() == Some(&'=') => {
                    chars.next();
                    Some("==")
                }
                '!' if chars.peek() == Some(&'=') => {
                    chars.next();
                    Some("!=")
                }
                '=' => Some("="),
                '!' => Some("!"),
                '(' => Some("("),
                ')' => Some(")"),
                ',' => Some(","),
                '<' => Some("<"),
                '>' => Some(">"),
                _ => None,
            };
            match op {
                Some(op) => {
                    flush(&mut word, &mut tokens);
                    tokens.push(Token::Op(op));
                }
                None if c.is_whitespace() => flush(&mut word, &mut tokens),
                None => word.push(c),
            }
        }
        flush(&mut word, &mut tokens);
        Parser {
            tokens,
            pos: 0,
            input: input.to_owned(),
        }
    }

    fn err(&self, what: impl std::fmt::Display) -> SelectorError {
        SelectorError::Label(format!("{what} in {:?}", self.input))
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn selector(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut out = Vec::new();
        if self.tokens.is_empty() {
            return Ok(out);
        }
        loop {
            out.push(self.requirement()?);
            match self.next() {
                None => return Ok(out),
                Some(Token::Op(",")) => {}
                Some(t) => return Err(self.err(format!("unexpected {t:?} after a requirement"))),
            }
        }
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        match self.next() {
            Some(Token::Word(k)) if k == "in" || k == "notin" => {
                Err(self.err(format!("expected a label key, found the keyword {k:?}")))
            }
            Some(Token::Word(k)) => {
                validate_key(&k).map_err(|m| self.err(m))?;
                Ok(k)
            }
            other => Err(self.err(format!("expected a label key, found {other:?}"))),
        }
    }

    /// A value, possibly empty (`key=` selects the empty value).
    fn value(&mut self) -> Result<String, SelectorError> {
        match self.peek() {
            Some(Token::Word(_)) => {
                let Some(Token::Word(v)) = self.next() else {
                    return Err(self.err("expected a value"));
                };
                validate_value(&v).map_err(|m| self.err(m))?;
                Ok(v)
            }
            _ => Ok(String::new()),
        }
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        if self.next() != Some(Token::Op("(")) {
            return Err(self.err("expected '(' after in/notin"));
        }
        let mut values = Vec::new();
        loop {
            values.push(self.value()?);
            match self.next() {
                Some(Token::Op(",")) => {}
                Some(Token::Op(")")) => break,
                other => return Err(self.err(format!("expected ',' or ')', found {other:?}"))),
            }
        }
        values.sort();
        values.dedup();
        Ok(values)
    }

    fn integer(&mut self) -> Result<i64, SelectorError> {
        match self.next() {
            Some(Token::Word(w)) => w
                .parse()
                .map_err(|_| self.err(format!("{w:?} is not an integer"))),
            other => Err(self.err(format!("expected an integer, found {other:?}"))),
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if self.peek() == Some(&Token::Op("!")) {
            self.next();
            return Ok(Requirement::DoesNotExist(self.key()?));
        }
        let key = self.key()?;
        let op = match self.peek() {
            None | Some(Token::Op(",")) => return Ok(Requirement::Exists(key)),
            Some(t) => t.clone(),
        };
        self.next();
        Ok(match op {
            Token::Op("=") | Token::Op("==") => Requirement::Equals(key, self.value()?),
            Token::Op("!=") => Requirement::NotEquals(key, self.value()?),
            Token::Op(">") => Requirement::GreaterThan(key, self.integer()?),
            Token::Op("<") => Requirement::LessThan(key, self.integer()?),
            Token::Word(w) if w == "in" => Requirement::In(key, self.set()?),
            Token::Word(w) if w == "notin" => Requirement::NotIn(key, self.set()?),
            other => {
                return Err(self.err(format!(
                    "expected one of =, ==, !=, in, notin, <, > after {key:?}, found {other:?}"
                )));
            }
        })
    }
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A qualified name: an optional DNS subdomain prefix and `/`, then a label name.
fn validate_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                let b = l.as_bytes();
                !b.is_empty()
                    && b.len() <= 63
                    && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
                    && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
                    && b.iter()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            });
        if !ok {
            return Err(format!(
                "invalid label key {k:?}: the prefix must be a DNS subdomain"
            ));
        }
    }
    if !is_label_name(name) {
        return Err(format!(
            "invalid label key {k:?}: a name must be at most 63 characters of alphanumerics, \
             '-', '_' or '.', starting and ending with an alphanumeric"
        ));
    }
    Ok(())
}

fn validate_value(v: &str) -> Result<(), String> {
    if v.is_empty() || is_label_name(v) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {v:?}: at most 63 characters of alphanumerics, '-', '_' or \
             '.', starting and ending with an alphanumeric"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_operator() {
        let s = LabelSelector::parse(
            "a, !b, c=1, d == 2, e!=3, f in (x, y,x), g notin (z), h>5, i<7, j=",
        )
        .unwrap();
        use Requirement::*;
        assert_eq!(
            s.0,
            vec![
                Exists("a".into()),
                DoesNotExist("b".into()),
                Equals("c".into(), "1".into()),
                Equals("d".into(), "2".into()),
                NotEquals("e".into(), "3".into()),
                In("f".into(), vec!["x".into(), "y".into()]),
                NotIn("g".into(), vec!["z".into()]),
                GreaterThan("h".into(), 5),
                LessThan("i".into(), 7),
                Equals("j".into(), "".into()),
            ]
        );
        assert!(LabelSelector::parse("").unwrap().is_empty());
        assert!(LabelSelector::parse("  ").unwrap().is_empty());
    }

    #[test]
    fn matches_like_kubernetes() {
        let l = labels(&[
            ("imagecache.io/registry", "docker.io"),
            ("imagecache.io/repository", "library.nginx"),
            ("n", "10"),
        ]);
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&l);
        assert!(m("imagecache.io/registry=docker.io"));
        assert!(m(
            "imagecache.io/registry==docker.io,imagecache.io/repository"
        ));
        assert!(!m("imagecache.io/registry!=docker.io"));
        assert!(m("absent!=x"), "!= matches a missing key");
        assert!(m(
            "imagecache.io/repository in (library.nginx, library.redis)"
        ));
        assert!(!m("imagecache.io/repository notin (library.nginx)"));
        assert!(m("absent notin (x)"), "notin matches a missing key");
        assert!(!m("absent in (x)"));
        assert!(m("!absent"));
        assert!(!m("!n"));
        assert!(m("n>9") && m("n<11") && !m("n>10"));
        assert!(!m("imagecache.io/registry>1"), "non-integers never compare");
        assert!(m(""));
    }

    #[test]
    fn rejects_bad_selectors() {
        for bad in [
            "a=b=c",
            "in",
            "a in b",
            "a in (b",
            "a notin",
            "=b",
            "a,",
            ",a",
            "a b",
            "a>b",
            "-a=b",
            "a=-b",
            "Example.com/a=b",
            "a/b/c",
            &format!("a={}", "x".repeat(64)),
            "a!b",
        ] {
            let e = LabelSelector::parse(bad);
            assert!(matches!(e, Err(SelectorError::Label(_))), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn field_selectors() {
        let f =
            FieldSelector::parse("metadata.name=sha256:ab,dockerImageReference!=x/y@z").unwrap();
        assert_eq!(f.name(), Some("sha256:ab"));
        let value = |name: &'static str, reference: &'static str| {
            move |field: Field| match field {
                Field::Name => name,
                Field::DockerImageReference => reference,
            }
        };
        assert!(f.matches(value("sha256:ab", "a/b@c")));
        assert!(!f.matches(value("sha256:ab", "x/y@z")));
        assert!(!f.matches(value("sha256:cd", "a/b@c")));
        assert!(FieldSelector::parse("metadata.name=ü\\ü=x").is_ok());
        let eq = FieldSelector::parse("dockerImageReference==a\\,b").unwrap();
        assert_eq!(eq.0[0].value, "a,b");
        assert!(FieldSelector::parse("").unwrap().is_empty());
        assert!(matches!(
            FieldSelector::parse("spec.foo=1"),
            Err(SelectorError::UnknownField(f)) if f == "spec.foo"
        ));
        assert!(matches!(
            FieldSelector::parse("metadata.name"),
            Err(SelectorError::Field(_))
        ));
    }
}
