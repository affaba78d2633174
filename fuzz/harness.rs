//! The parser entry points each fuzz target drives, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) and the corpus replay test (`tests/fuzz_corpus.rs`) so both exercise
//! exactly the same code. Each function takes the raw input bytes; parsers may refuse the input
//! but must never panic. Where one input feeds several arguments it is split into lines.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use imagecache::digest::Digest;

/// One target: feeds the raw input to its parsers, panicking only on a parser bug.
pub type Target = fn(&[u8]);

/// Every target by name: the name of its `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("reference", reference),
    ("digest", digest),
    ("headers", headers),
    ("cmd_query", cmd_query),
    ("image_api_params", image_api_params),
    ("selector", selector),
    ("docker_query", docker_query),
    ("manifest", manifest),
    ("config", config),
    ("schedule", schedule),
    ("duration", duration),
    ("prune_request", prune_request),
    ("load_reference", load_reference),
    ("node_config", node_config),
    ("www_authenticate", www_authenticate),
];

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// The `n`th line (0-based), or "" past the end.
fn line(s: &str, n: usize) -> &str {
    s.split('\n').nth(n).unwrap_or("")
}

fn labels() -> BTreeMap<String, String> {
    [
        ("app", "web"),
        ("tier", "frontend"),
        ("example.com/team", "a-b_c.d"),
        ("count", "3"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_767_225_600).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// Line 1: a `/v2/` path (after `/v2/`); line 2: `?ns=`; line 3: the default registry.
pub fn reference(data: &[u8]) {
    use imagecache::reference::*;
    let s = text(data);
    let (path, ns, default) = (line(&s, 0), line(&s, 1), line(&s, 2));
    let default = if default.is_empty() {
        "docker.io"
    } else {
        default
    };
    let ns = (!ns.is_empty()).then_some(ns);
    if let Ok(route) = parse_route(path) {
        let name = match &route {
            Route::Base => None,
            Route::Manifest { name, reference } => {
                // A reference prints back to itself.
                let again = parse_reference(&reference.to_string());
                assert_eq!(again.as_ref(), Ok(reference), "reference round trip");
                Some(*name)
            }
            Route::Blob { name, .. }
            | Route::BlobUpload { name }
            | Route::TagsList { name }
            | Route::Referrers { name, .. } => Some(*name),
        };
        if let Some(name) = name
            && let Ok(repo) = select_upstream(name, ns, default)
        {
            let _ = repo.to_string();
        }
    }
    let _ = parse_reference(path);
    let _ = select_upstream(path, ns, default);
    let _ = (
        looks_like_host(path),
        is_host(path),
        normalize_registry(path),
    );
}

/// A digest string; a valid one prints back to itself.
pub fn digest(data: &[u8]) {
    let s = text(data);
    if let Ok(d) = Digest::from_str(&s) {
        assert_eq!(Digest::from_str(&d.to_string()).ok(), Some(d.clone()));
        let _ = d.verifies(data);
    }
    let _ = serde_json::from_slice::<Digest>(data);
}

/// Line 1: a `Range` header, line 2: the blob size; line 3: an `Accept` header (the Image API's
/// Table negotiation).
pub fn headers(data: &[u8]) {
    use imagecache::imageapi::openshift::params::table_format;
    let s = text(data);
    let (range, size, accept) = (line(&s, 0), line(&s, 1), line(&s, 2));
    let (retry_after, content_range) = (line(&s, 3), line(&s, 4));
    let size = size.trim().parse::<u64>().unwrap_or(1000);
    for size in [size, 0, 1, u64::MAX] {
        if let Ok(Some((start, end))) = imagecache::registry::parse_range(range, size) {
            assert!(start < end && end <= size, "range {start}..{end} of {size}");
        }
    }
    let _ = table_format(Some(accept), None);
    let _ = table_format(Some(&s), None);
    use imagecache::upstream::retry::{parse_retry_after, retry_after_header};
    if let Some(wait) = parse_retry_after(retry_after, std::time::SystemTime::now()) {
        let _ = retry_after_header(wait);
    }
    if let Some((first, complete)) = imagecache::registry::parse_content_range(content_range) {
        assert!(complete.is_none_or(|c| first < c), "{content_range}");
    }
}

/// A `/cmd/*` query string, parsed as axum's `Query` does, then through the handlers' parsers and
/// the prune engine's request compiler.
pub fn cmd_query(data: &[u8]) {
    let q: HashMap<String, String> = form_urlencoded::parse(data).into_owned().collect();
    if let Ok((_, _, Ok(request))) = imagecache::admin::parse_cmd_query(&q) {
        let _ = request.compile();
    }
    let _ = imagecache::listing::limit(q.get("count").and_then(|c| c.parse().ok()));
}

/// An Image API query string; line 2 (when present) is also tried as a continue token, an
/// `Accept` header and a DeleteOptions body.
pub fn image_api_params(data: &[u8]) {
    use imagecache::imageapi::openshift::params::*;
    let s = text(data);
    let query = line(&s, 0);
    if let Ok(p) = Params::parse(Some(query)) {
        let _ = p.watch_after();
        let _ = p.initial_events();
        let _ = table_format(Some(line(&s, 1)), p.include_object);
        if let Some(t) = &p.continue_token {
            let _ = ContinueToken::decode(t);
        }
    }
    let _ = parse_revision(query);
    let _ = ContinueToken::decode(line(&s, 1));
    if let Ok(d) = DeleteOptions::parse(data) {
        let _ = d.is_dry_run();
    }
}

/// A label selector and a field selector (the same text), matched against fixed objects.
pub fn selector(data: &[u8]) {
    use imagecache::imageapi::openshift::selector::*;
    let s = text(data);
    let labels = labels();
    if let Ok(sel) = LabelSelector::parse(&s) {
        let _ = (
            sel.matches(&labels),
            sel.matches(&BTreeMap::new()),
            sel.is_empty(),
        );
    }
    if let Ok(sel) = FieldSelector::parse(&s) {
        let _ = sel.matches(|_| "sha256:abc");
        let _ = (sel.name(), sel.is_empty());
    }
}

/// The Docker Engine API's `filters` JSON (line 1), `platform` JSON and image name (line 2), and
/// the glob, duration and timestamp grammars the filters use.
pub fn docker_query(data: &[u8]) {
    use imagecache::imageapi::docker::filters::*;
    let s = text(data);
    let (raw, other) = (line(&s, 0), line(&s, 1));
    let tz = jiff::tz::TimeZone::fixed(jiff::tz::offset(2));
    if let Ok(f) = Filters::parse(Some(raw)) {
        let _ = f.validate(&[
            "dangling",
            "label",
            "label!",
            "reference",
            "until",
            "before",
        ]);
        let _ = f.bool("dangling");
        let _ = f.until(now(), &tz);
        let _ = f.prune_labels_match(&labels());
        let _ = f.labels_match("label", &labels());
        if let Ok(refs) = f.references() {
            for r in refs {
                let _ = glob_match(r, "docker.io/library/alpine:3.20");
            }
        }
    }
    let _ = glob_match(raw, other);
    let _ = go_duration(other);
    let _ = parse_timestamp(other, now(), &tz);
    let _ = imagecache::imageapi::docker::parse_platform(other);
    let _ = imagecache::imageapi::docker::names::ImageName::parse(other);
}

/// A manifest or index as an upstream sends it (the content type guessed from the body), and the
/// same bytes as an image config.
pub fn manifest(data: &[u8]) {
    use imagecache::store::{parse_config, parse_manifest};
    for ct in [
        None,
        Some("application/vnd.oci.image.manifest.v1+json"),
        Some("application/vnd.oci.image.index.v1+json"),
        Some("application/vnd.docker.distribution.manifest.v2+json"),
        Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    ] {
        let _ = parse_manifest(data, ct);
    }
    let _ = parse_config(data);
}

/// A config file, validated as `serve` does, with its prune schedule.
pub fn config(data: &[u8]) {
    let s = text(data);
    if let Ok(c) = imagecache::config::Config::from_yaml(&s)
        && c.validate().is_ok()
        && let Ok(Some(sched)) = c.prune_config.schedule()
    {
        let _ = sched.next_after(now());
    }
}

/// Line 1: a cron expression; line 2: a time zone (IANA name).
pub fn schedule(data: &[u8]) {
    use imagecache::schedule::Schedule;
    let s = text(data);
    let tz = line(&s, 1);
    if let Ok(sched) = Schedule::cron(line(&s, 0), (!tz.is_empty()).then_some(tz)) {
        let _ = sched.next_after(now());
        let _ = sched.next_after(jiff::Timestamp::MAX);
    }
}

/// A human duration (`30d`, `1h30m`); a valid one formats and parses back to itself.
pub fn duration(data: &[u8]) {
    use imagecache::duration::{format, parse};
    let s = text(data);
    if let Ok(d) = parse(&s) {
        assert_eq!(parse(&format(d)), Ok(d), "duration round trip of {s:?}");
        let _ = imagecache::schedule::Schedule::every(d).map(|x| x.next_after(now()));
    }
}

/// A `POST /admin/v1/prune` body, compiled as the engine does; line-wise also label terms and
/// quantities.
pub fn prune_request(data: &[u8]) {
    use imagecache::api::prune::*;
    if let Ok(r) = serde_json::from_slice::<PruneRequest>(data)
        && let Ok(c) = r.compile()
    {
        let _ = c.has_selector();
    }
    let s = text(data);
    if let Ok(t) = LabelTerm::parse(line(&s, 0)) {
        let _ = t.matches(&labels());
    }
    if let Ok(q) = Quantity::parse("count", line(&s, 0)) {
        let _ = (q.bytes_of(0), q.bytes_of(u64::MAX), q.bytes_of(12345));
    }
}

/// `imagecache load` inputs: a list file, each of its references normalised.
pub fn load_reference(data: &[u8]) {
    use imagecache::load::parse_list;
    use imagecache::reference::parse_image_reference;
    let s = text(data);
    for (_, item) in parse_list(&s) {
        if let Ok(r) = parse_image_reference(item, "docker.io") {
            let _ = (r.to_string(), r.reference());
        }
    }
    let _ = parse_image_reference(&s, line(&s, 1));
}

/// `imagecache node-config` inputs: line 1 the mirror, line 2 a comma list of registries; the
/// files rendered from them; the whole input as an existing file's content.
pub fn node_config(data: &[u8]) {
    use imagecache::nodeconfig::render::*;
    let s = text(data);
    let regs: Vec<String> = line(&s, 1).split(',').map(str::to_owned).collect();
    if let (Ok(mirror), Ok(regs)) = (Mirror::parse(line(&s, 0)), Registry::parse_list(&regs)) {
        let _ = (mirror.url(), mirror.authority(), mirror.is_plain_http());
        for reg in &regs {
            let _ = reg.upstream_url();
            for rt in [Runtime::Containerd, Runtime::Crio] {
                let file = render(rt, reg, &mirror);
                assert!(
                    is_ours(file.content.as_bytes()),
                    "rendered file lacks the marker"
                );
            }
        }
    }
    let _ = Registry::parse(&s);
    let _ = (is_ours(data), recorded_mirror(data));
}

/// An upstream's `WWW-Authenticate` header.
pub fn www_authenticate(data: &[u8]) {
    let _ = imagecache::upstream::auth::parse_challenge(&text(data));
}
