//! The crate's layering, checked from the source text.
//!
//! Every `src/**/*.rs` file is read as text: `use crate::...` statements (grouped ones too),
//! `crate::x::y` paths written inline, `super::` paths resolved to the module they name, and
//! `"crate::..."` paths in attribute strings (`#[serde(with = "...")]`) give the edges between
//! top-level modules (`src/foo.rs` and everything under `src/foo/` are `foo`). Test code counts
//! like any other: a test that reaches across a layer is a dependency too.
//!
//! The test fails on a cycle between top-level modules (printing it with the `use` lines that
//! close it) and on an edge or an external crate the table below forbids (printing the file and
//! line). `cargo test --test architecture -- --nocapture` prints the module graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Modules that hold plain values and their parsers; any layer may use them.
const VALUES: &[&str] = &["digest", "duration", "reference", "schedule"];

/// What a module may import: only the listed modules, or anything but them.
enum Allowed {
    Only(&'static [&'static str]),
    Never(&'static [&'static str]),
}

/// One layering rule: a module, what it may import, and why.
struct Rule {
    module: &'static str,
    allowed: Allowed,
    why: &'static str,
}

const fn only(module: &'static str, to: &'static [&'static str], why: &'static str) -> Rule {
    Rule {
        module,
        allowed: Allowed::Only(to),
        why,
    }
}

const fn never(module: &'static str, to: &'static [&'static str], why: &'static str) -> Rule {
    Rule {
        module,
        allowed: Allowed::Never(to),
        why,
    }
}

/// The layering, lowest first. Each module's `//!` doc states its rule in words.
#[rustfmt::skip]
const RULES: &[Rule] = &[
    only("digest",     &[],                                       "a value: parses, prints and hashes digests"),
    only("duration",   &[],                                       "a value grammar (`30d`, `1h30m`) and its schema pattern"),
    only("schedule",   &[],                                       "cron and frequency arithmetic over jiff"),
    only("reference",  &["digest"],                               "names, references and platforms as clients write them"),
    only("api",        &["digest", "duration"],                   "the wire shapes: a leaf, with only the values they carry"),
    only("config",     &["api", "digest", "duration", "reference", "schedule"], "a leaf every process reads: no cache, no network"),
    only("crd",        &["api", "digest", "duration", "reference", "schedule"], "resource schemas: wire shapes for the apiserver"),
    only("nodeconfig", VALUES,                                    "node files from a mirror URL: no cache, no cluster"),
    only("store",      &["digest", "reference"],                  "the disk cache knows no HTTP, Kubernetes, config or policy"),
    never("metrics",   &["registry", "upstream", "prune", "admin", "imageapi", "load", "server", "operator"], "counters, not behaviour"),
    never("prune",     &["registry", "upstream", "load", "admin", "imageapi", "listing", "server", "cli", "operator", "crd"], "the engine knows no registry or operator"),
    never("listing",   &["registry", "upstream", "load", "admin", "imageapi", "server", "cli", "operator"], "rows and columns the CLI and /cmd share"),
    never("upstream",  &["registry", "store", "prune", "load", "admin", "imageapi", "server", "cli", "operator", "crd"], "clients of other registries, below the data plane"),
    never("peers",     &["registry", "store", "prune", "load", "admin", "imageapi", "listing", "server", "cli", "operator", "crd"], "the other replicas: membership, ownership, the peer client; below the data plane"),
    never("registry",  &["prune", "load", "admin", "imageapi", "listing", "server", "cli", "operator", "crd"], "the data plane knows no admin surface and no operator"),
    never("load",      &["prune", "admin", "imageapi", "server", "cli", "operator", "crd"], "takes an Options value from the CLI, never its flags"),
    never("admin",     &["imageapi", "registry", "upstream", "load", "server", "cli", "operator", "crd"], "admin and image APIs are composed in server, not by each other"),
    never("imageapi",  &["registry", "upstream", "load", "server", "cli", "operator", "crd"], "views of the cache, mounted on the admin listener by server"),
    never("server",    &["cli", "operator", "crd", "nodeconfig"], "the wiring of `serve`, below the CLI"),
    never("operator",  &["store", "prune", "registry", "upstream", "load", "admin", "imageapi", "listing", "metrics", "server", "cli"], "talks to registry pods over HTTP; never touches the store"),
];

/// External crates (or paths in them) a module must not use, and why.
#[rustfmt::skip]
const CRATE_RULES: &[(&str, &[&str], &str)] = &[
    ("api",      &["axum", "reqwest", "tokio", "kube::runtime", "kube::Client", "kube::Api"], "wire shapes: no server, client or controller runtime"),
    ("config",   &["axum", "tokio", "kube", "k8s_openapi"],             "a file format, read before anything runs"),
    ("store",    &["axum", "reqwest", "hyper", "kube", "k8s_openapi"],  "the disk cache knows no HTTP or Kubernetes"),
    ("prune",    &["axum", "reqwest", "hyper", "kube", "k8s_openapi"],  "the engine knows no HTTP surface and no cluster"),
    ("registry", &["kube", "k8s_openapi"],                              "the data plane knows no Kubernetes"),
    ("upstream", &["kube", "k8s_openapi"],                              "clients of other registries know no cluster"),
    ("peers",    &["axum", "kube", "k8s_openapi"],                      "a client of the other replicas: no server, no cluster"),
];

// ---------------------------------------------------------------------------------------------
// Reading the source.

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
    Str(String),
}

/// Rust source as tokens with their line numbers: comments dropped, literals kept as strings.
fn tokenize(src: &str) -> Vec<(Tok, usize)> {
    let b: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let at = |i: usize| b.get(i).copied().unwrap_or('\0');
    while i < b.len() {
        let c = b[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(b[i] == '\n');
                    i += 1;
                }
            }
        } else if c == '"' || ((c == 'b' || c == 'r' || c == 'c') && is_string_start(&b, i)) {
            let start_line = line;
            let (text, next) = read_string(&b, i);
            line += text.matches('\n').count();
            out.push((Tok::Str(text), start_line));
            i = next;
        } else if c == '\'' {
            // A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a).
            if at(i + 1) == '\\' {
                i += 3;
                while i < b.len() && b[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
                while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            let mut ident: String = b[start..i].iter().collect();
            if ident == "r" && at(i) == '#' {
                // A raw identifier, r#type.
                let s = i + 1;
                i = s;
                while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                    i += 1;
                }
                ident = b[s..i].iter().collect();
            }
            out.push((Tok::Ident(ident), line));
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '.') {
                if b[i] == '.' && !at(i + 1).is_ascii_digit() {
                    break;
                }
                i += 1;
            }
        } else if c == ':' && at(i + 1) == ':' {
            out.push((Tok::Path, line));
            i += 2;
        } else {
            out.push((Tok::Punct(c), line));
            i += 1;
        }
    }
    out
}

/// Whether a `b`, `r`, `c` (or `br`, `cr`) at `i` starts a string literal.
fn is_string_start(b: &[char], i: usize) -> bool {
    if i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_') {
        return false;
    }
    let mut j = i;
    if matches!(b[j], 'b' | 'c') {
        j += 1;
    }
    if b.get(j) == Some(&'r') {
        j += 1;
        while b.get(j) == Some(&'#') {
            j += 1;
        }
    }
    j > i && b.get(j) == Some(&'"')
}

/// Reads the string literal starting at `i`: its text and the index after it.
fn read_string(b: &[char], mut i: usize) -> (String, usize) {
    while b[i] != '"' && b[i] != 'r' {
        i += 1;
    }
    if b[i] == 'r' {
        i += 1;
        let mut hashes = 0;
        while b[i] == '#' {
            hashes += 1;
            i += 1;
        }
        i += 1;
        let start = i;
        loop {
            if i >= b.len() {
                return (b[start..].iter().collect(), i);
            }
            if b[i] == '"' && (0..hashes).all(|h| b.get(i + 1 + h) == Some(&'#')) {
                return (b[start..i].iter().collect(), i + 1 + hashes);
            }
            i += 1;
        }
    }
    i += 1;
    let start = i;
    while i < b.len() && b[i] != '"' {
        i += if b[i] == '\\' { 2 } else { 1 };
    }
    (b[start..i.min(b.len())].iter().collect(), i + 1)
}

/// A path written in a file: its segments and the line it is on.
#[derive(Clone, Debug, PartialEq)]
struct Written {
    /// The module the path is written in (the file's, plus inline `mod x { }` blocks).
    module: Vec<String>,
    segments: Vec<String>,
    line: usize,
}

/// Every path in a file: `use` trees expanded, inline `a::b::c` paths, and `crate::` paths in
/// strings. `module` is the file's module path (`src/a/b.rs` is `["a", "b"]`).
fn paths(src: &str, module: &[String]) -> Vec<Written> {
    let toks = tokenize(src);
    let mut out = Vec::new();
    let mut mods: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let here = |mods: &[(String, usize)]| -> Vec<String> {
        module
            .iter()
            .cloned()
            .chain(mods.iter().map(|(m, _)| m.clone()))
            .collect()
    };
    let mut i = 0;
    while i < toks.len() {
        let (tok, line) = &toks[i];
        match tok {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if mods.last().is_some_and(|(_, d)| *d == depth) {
                    mods.pop();
                }
            }
            Tok::Ident(k) if k == "mod" => {
                if let (Some((Tok::Ident(name), _)), Some((Tok::Punct('{'), _))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    mods.push((name.clone(), depth));
                    depth += 1;
                    i += 3;
                    continue;
                }
            }
            Tok::Ident(k) if k == "use" => {
                let mut j = i + 1;
                let mut trees = Vec::new();
                use_tree(&toks, &mut j, (Vec::new(), *line), &mut trees);
                for (segments, line) in trees {
                    out.push(Written {
                        module: here(&mods),
                        segments,
                        line,
                    });
                }
                while j < toks.len() && toks[j].0 != Tok::Punct(';') {
                    j += 1;
                }
                i = j + 1;
                continue;
            }
            Tok::Ident(first)
                if !matches!(i.checked_sub(1).map(|p| &toks[p].0), Some(Tok::Path)) =>
            {
                let mut segments = vec![first.clone()];
                let mut j = i + 1;
                while let (Some((Tok::Path, _)), Some((Tok::Ident(s), _))) =
                    (toks.get(j), toks.get(j + 1))
                {
                    segments.push(s.clone());
                    j += 2;
                }
                if segments.len() > 1 {
                    out.push(Written {
                        module: here(&mods),
                        segments,
                        line: *line,
                    });
                    i = j;
                    continue;
                }
            }
            Tok::Str(text) => {
                for (k, _) in text.match_indices("crate::") {
                    let rest = &text[k + "crate::".len()..];
                    let end = rest
                        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    if end > 0 {
                        out.push(Written {
                            module: here(&mods),
                            segments: vec!["crate".into(), rest[..end].into()],
                            line: *line + text[..k].matches('\n').count(),
                        });
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// A path in a `use` tree and the line of its last segment.
type UsePath = (Vec<String>, usize);

/// Expands the use tree at `*j` (after `use`) into full paths, prefixed with `prefix`.
fn use_tree(toks: &[(Tok, usize)], j: &mut usize, prefix: UsePath, out: &mut Vec<UsePath>) {
    let (mut path, mut line) = prefix;
    loop {
        match toks.get(*j) {
            Some((Tok::Ident(s), _)) if s == "as" => {
                *j += 2;
                out.push((path, line));
                return;
            }
            Some((Tok::Ident(s), l)) => {
                path.push(s.clone());
                line = *l;
                *j += 1;
            }
            Some((Tok::Path, _)) => *j += 1,
            Some((Tok::Punct('*'), _)) => {
                *j += 1;
                out.push((path, line));
                return;
            }
            Some((Tok::Punct('{'), _)) => {
                *j += 1;
                loop {
                    match toks.get(*j).map(|t| &t.0) {
                        Some(Tok::Punct('}')) => {
                            *j += 1;
                            return;
                        }
                        Some(Tok::Punct(',')) => *j += 1,
                        None => return,
                        _ => use_tree(toks, j, (path.clone(), line), out),
                    }
                }
            }
            _ => {
                out.push((path, line));
                return;
            }
        }
    }
}

/// The top-level module a path names, seen from `module`; `None` for one inside the same
/// top-level module or outside the crate.
fn target(w: &Written, tops: &BTreeSet<String>) -> Option<String> {
    let first = w.segments.first()?;
    let named = if first == "crate" {
        w.segments.get(1)?.clone()
    } else if first == "super" {
        let ups = w.segments.iter().take_while(|s| *s == "super").count();
        let base = w.module.len().checked_sub(ups)?;
        if base == 0 {
            w.segments.get(ups)?.clone()
        } else {
            w.module[0].clone()
        }
    } else {
        return None;
    };
    (tops.contains(&named) && Some(&named) != w.module.first()).then_some(named)
}

/// The module path of a file under `src/`: `a/b.rs` and `a/b/mod.rs` are `["a", "b"]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" {
            parts.push(stem.to_owned());
        }
    }
    parts
}

#[derive(Clone, Debug)]
struct Edge {
    from: String,
    to: String,
    file: String,
    line: usize,
    path: String,
}

struct Crate {
    tops: BTreeSet<String>,
    edges: Vec<Edge>,
    /// (module, external path, file, line)
    externals: Vec<(String, String, String, usize)>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Reads a source tree given as (path under `src/`, text) pairs.
fn read_crate(files: &[(PathBuf, String)]) -> Crate {
    let tops: BTreeSet<String> = files
        .iter()
        .filter_map(|(rel, _)| module_of(rel).first().cloned())
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut edges = Vec::new();
    let mut externals = Vec::new();
    for (rel, text) in files {
        let module = module_of(rel);
        let Some(from) = module.first().filter(|m| tops.contains(*m)).cloned() else {
            continue;
        };
        for w in paths(text, &module) {
            let file = format!("src/{}", rel.display());
            if let Some(to) = target(&w, &tops) {
                edges.push(Edge {
                    from: from.clone(),
                    to,
                    file,
                    line: w.line,
                    path: w.segments.join("::"),
                });
            } else if !matches!(w.segments[0].as_str(), "crate" | "super" | "self" | "Self") {
                externals.push((from.clone(), w.segments.join("::"), file, w.line));
            }
        }
    }
    Crate {
        tops,
        edges,
        externals,
    }
}

fn this_crate() -> Crate {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let files: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.strip_prefix(&src).unwrap_or(&p).to_owned(), text)
        })
        .collect();
    read_crate(&files)
}

fn graph(c: &Crate) -> BTreeMap<&str, BTreeSet<&str>> {
    let mut g: BTreeMap<&str, BTreeSet<&str>> = c
        .tops
        .iter()
        .map(|t| (t.as_str(), BTreeSet::new()))
        .collect();
    for e in &c.edges {
        g.entry(e.from.as_str()).or_default().insert(e.to.as_str());
    }
    g
}

/// Every cycle's modules (strongly connected components of more than one module), found with
/// Tarjan's algorithm.
fn cycles<'a>(g: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<Vec<&'a str>> {
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(v: &'a str, g: &BTreeMap<&'a str, BTreeSet<&'a str>>, s: &mut State<'a>) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for &w in g.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(w, g, s);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                scc.push(w);
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.out.push(scc);
            }
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for &v in g.keys() {
        if !s.index.contains_key(v) {
            visit(v, g, &mut s);
        }
    }
    s.out
}

/// The shortest cycle inside `scc`, as the edges that make it.
fn one_cycle<'a>(c: &'a Crate, scc: &[&str]) -> Vec<&'a Edge> {
    scc.iter()
        .map(|start| cycle_from(c, scc, start))
        .filter(|cycle| !cycle.is_empty())
        .min_by_key(Vec::len)
        .unwrap_or_default()
}

/// The shortest cycle from `start` back to it inside `scc` (breadth first), or none.
fn cycle_from<'a>(c: &'a Crate, scc: &[&str], start: &str) -> Vec<&'a Edge> {
    let inside: BTreeSet<&str> = scc.iter().copied().collect();
    // Breadth-first from `start` inside the component until an edge comes back to it.
    let mut came: BTreeMap<&str, &Edge> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for e in c
            .edges
            .iter()
            .filter(|e| e.from == v && inside.contains(e.to.as_str()))
        {
            if e.to == start {
                let mut path = vec![e];
                let mut at = v;
                while at != start {
                    let prev = came[at];
                    path.push(prev);
                    at = prev.from.as_str();
                }
                path.reverse();
                return path;
            }
            if !came.contains_key(e.to.as_str()) && e.to != start {
                came.insert(e.to.as_str(), e);
                queue.push_back(e.to.as_str());
            }
        }
    }
    Vec::new()
}

/// Everything wrong with the crate's layering under `rules` and `crate_rules`, one finding each.
fn violations(c: &Crate, rules: &[Rule], crate_rules: &[(&str, &[&str], &str)]) -> Vec<String> {
    let mut out = Vec::new();
    let g = graph(c);
    for scc in cycles(&g) {
        let mut msg = format!("cycle between {}:", scc.join(", "));
        for e in one_cycle(c, &scc) {
            let _ = write!(
                msg,
                "\n    {} -> {} at {}:{} (`{}`)",
                e.from, e.to, e.file, e.line, e.path
            );
        }
        out.push(msg);
    }
    for rule in rules {
        if !c.tops.contains(rule.module) {
            out.push(format!(
                "a rule names {}, which is not a module",
                rule.module
            ));
        }
        for e in c.edges.iter().filter(|e| e.from == rule.module) {
            let allowed = match &rule.allowed {
                Allowed::Only(to) => to.contains(&e.to.as_str()),
                Allowed::Never(to) => !to.contains(&e.to.as_str()),
            };
            if !allowed {
                out.push(format!(
                    "{}:{}: {} may not import {} ({}): `{}`",
                    e.file, e.line, e.from, e.to, rule.why, e.path
                ));
            }
        }
    }
    for (module, banned, why) in crate_rules {
        for (from, path, file, line) in c.externals.iter().filter(|x| x.0 == *module) {
            if let Some(b) = banned
                .iter()
                .find(|b| path == *b || path.starts_with(&format!("{b}::")))
            {
                out.push(format!(
                    "{file}:{line}: {from} may not use {b} ({why}): `{path}`"
                ));
            }
        }
    }
    out
}

fn render(g: &BTreeMap<&str, BTreeSet<&str>>) -> String {
    let mut s = String::new();
    for (m, to) in g {
        let to: Vec<&str> = to.iter().copied().collect();
        let _ = writeln!(
            s,
            "{m:>10} -> {}",
            if to.is_empty() {
                "(nothing)".to_owned()
            } else {
                to.join(", ")
            }
        );
    }
    s
}

#[test]
fn layering_holds() {
    let c = this_crate();
    assert!(c.edges.len() > 100, "read too few edges: {}", c.edges.len());
    eprintln!(
        "module graph (top-level module -> modules it imports):\n{}",
        render(&graph(&c))
    );
    let found = violations(&c, RULES, CRATE_RULES);
    assert!(
        found.is_empty(),
        "the layering is broken:\n{}\n",
        found.join("\n")
    );
}

#[test]
fn every_module_has_a_rule_or_is_at_the_top() {
    let c = this_crate();
    let ruled: BTreeSet<&str> = RULES.iter().map(|r| r.module).collect();
    // The entry points: nothing imports them, so they need no rule.
    let top = ["cli"];
    let unruled: Vec<&String> = c
        .tops
        .iter()
        .filter(|t| !ruled.contains(t.as_str()) && !top.contains(&t.as_str()))
        .collect();
    assert!(
        unruled.is_empty(),
        "modules without a layering rule: {unruled:?}"
    );
    for v in VALUES {
        assert!(c.tops.contains(*v), "value module {v} is gone");
    }
}

// ---------------------------------------------------------------------------------------------
// The reader itself.

fn edges_of(files: &[(&str, &str)]) -> Vec<(String, String, usize)> {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    let edges: BTreeSet<(String, String, usize)> = read_crate(&files)
        .edges
        .into_iter()
        .map(|e| (e.from, e.to, e.line))
        .collect();
    edges.into_iter().collect()
}

#[test]
fn reads_grouped_nested_and_inline_paths() {
    let edges = edges_of(&[
        (
            "a.rs",
            "use crate::{b::X, c::{self, Y as Z}};\nfn f() { crate::d::g(); }\n",
        ),
        (
            "b.rs",
            "// use crate::c::Nope;\n/* crate::c::Nope */ const S: &str = \"crate::d::x\";\n",
        ),
        (
            "c.rs",
            "pub use crate::b;\nfn f() -> &'static str { let _c = 'x'; \"no crate here\" }\n",
        ),
        (
            "d.rs",
            "use crate::{\n    a::X,\n    b::{\n        Y,\n    },\n};\n",
        ),
    ]);
    assert_eq!(
        edges,
        [
            ("a".into(), "b".into(), 1),
            ("a".into(), "c".into(), 1),
            ("a".into(), "d".into(), 2),
            ("b".into(), "d".into(), 2),
            ("c".into(), "b".into(), 1),
            ("d".into(), "a".into(), 2),
            ("d".into(), "b".into(), 4),
        ]
    );
}

#[test]
fn resolves_super_to_its_module() {
    let edges = edges_of(&[
        ("a/mod.rs", "mod x;\nuse super::b::Y;\n"),
        (
            "a/x.rs",
            "use super::X;\nuse super::super::c::Z;\nmod tests { use super::super::W; use super::super::super::d::V; }\n",
        ),
        ("b.rs", ""),
        ("c.rs", ""),
        ("d.rs", ""),
    ]);
    assert_eq!(
        edges,
        [
            ("a".into(), "b".into(), 2),
            ("a".into(), "c".into(), 2),
            ("a".into(), "d".into(), 3),
        ]
    );
}

#[test]
fn finds_cycles_and_forbidden_edges() {
    let files: Vec<(PathBuf, String)> = [
        ("api/mod.rs", "use axum::Router;\n"),
        ("store/mod.rs", "use crate::registry::Handler;\n"),
        ("registry/mod.rs", "use crate::store::Store;\n"),
    ]
    .iter()
    .map(|(p, t)| (PathBuf::from(p), t.to_string()))
    .collect();
    let c = read_crate(&files);
    assert_eq!(cycles(&graph(&c)), [vec!["registry", "store"]]);
    let rules = [only("store", &[], "a leaf here")];
    let crate_rules: [(&str, &[&str], &str); 1] = [("api", &["axum"], "no server")];
    assert_eq!(
        violations(&c, &rules, &crate_rules),
        [
            "cycle between registry, store:\n    \
             registry -> store at src/registry/mod.rs:1 (`crate::store::Store`)\n    \
             store -> registry at src/store/mod.rs:1 (`crate::registry::Handler`)",
            "src/store/mod.rs:1: store may not import registry (a leaf here): \
             `crate::registry::Handler`",
            "src/api/mod.rs:1: api may not use axum (no server): `axum::Router`",
        ]
    );
}

/// One module style (`foo/mod.rs` for a module with children, `foo.rs` for one without) and one
/// test layout (a module's tests are its `tests` child: inline, or `tests.rs` in its directory).
#[test]
fn one_module_style_and_test_layout() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap_or(f).display().to_string();
        if f.with_extension("").is_dir() {
            wrong.push(format!(
                "{rel}: a module with children lives in its directory's mod.rs"
            ));
        }
        let stem = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if stem.ends_with("_tests") || stem.starts_with("tests_") {
            wrong.push(format!("{rel}: tests live in the module's tests.rs"));
        }
        let text = std::fs::read_to_string(f).unwrap_or_default();
        if text.lines().any(|l| l.trim_start().starts_with("#[path")) {
            wrong.push(format!("{rel}: #[path] hides where a module lives"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
