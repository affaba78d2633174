//! Query parameters, `Accept` negotiation, continue tokens and delete options of the Image
//! API. Pure: strings in, typed values or `ApiError`s out.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::table::{IncludeObject, TableFormat};

/// A watch without `timeoutSeconds` ends after this long (the API server's default is 30 to 60
/// minutes); clients reconnect from their last resourceVersion.
pub const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const MAX_WATCH_SECS: u64 = 24 * 3600;

#[derive(Debug, Default)]
pub struct Params {
    pub label_selector: LabelSelector,
    pub field_selector: FieldSelector,
    pub watch: bool,
    /// `resourceVersion` as given (empty when absent).
    pub resource_version: String,
    pub resource_version_match: Option<String>,
    pub timeout: Option<Duration>,
    /// 0: no limit.
    pub limit: usize,
    pub continue_token: Option<String>,
    pub allow_watch_bookmarks: bool,
    pub send_initial_events: Option<bool>,
    pub include_object: Option<IncludeObject>,
    pub dry_run: bool,
}

/// Go's `strconv.ParseBool`, which the API server uses.
fn parse_bool(key: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" | "" => Ok(false),
        _ => Err(ApiError::BadRequest(format!(
            "invalid value {v:?} for {key}: expected true or false"
        ))),
    }
}

impl Params {
    pub fn parse(query: Option<&str>) -> Result<Params, ApiError> {
        let mut p = Params::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let v = v.as_ref();
            match k.as_ref() {
                "labelSelector" => p.label_selector = LabelSelector::parse(v)?,
                "fieldSelector" => p.field_selector = FieldSelector::parse(v)?,
                "watch" => p.watch = parse_bool("watch", v)?,
                "resourceVersion" => p.resource_version = v.to_owned(),
                "resourceVersionMatch" => {
                    p.resource_version_match = Some(v.to_owned()).filter(|v| !v.is_empty())
                }
                "timeoutSeconds" => {
                    let secs: u64 = v.parse().map_err(|_| {
                        ApiError::BadRequest(format!("invalid timeoutSeconds {v:?}"))
                    })?;
                    // 0 means "not given"; huge values are capped (a day is plenty).
                    p.timeout = (secs > 0).then(|| Duration::from_secs(secs.min(MAX_WATCH_SECS)));
                }
                "limit" => {
                    // Negative limits mean "no limit" to the API server.
                    let n: i64 = v
                        .parse()
                        .map_err(|_| ApiError::BadRequest(format!("invalid limit {v:?}")))?;
                    p.limit = usize::try_from(n.max(0)).unwrap_or(usize::MAX);
                }
                "continue" => p.continue_token = Some(v.to_owned()).filter(|v| !v.is_empty()),
                "allowWatchBookmarks" => {
                    p.allow_watch_bookmarks = parse_bool("allowWatchBookmarks", v)?
                }
                "sendInitialEvents" => {
                    p.send_initial_events = Some(parse_bool("sendInitialEvents", v)?)
                }
                "includeObject" => {
                    p.include_object = Some(IncludeObject::parse(v).ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "invalid includeObject {v:?}: expected None, Metadata or Object"
                        ))
                    })?)
                }
                "dryRun" => p.dry_run = dry_run(std::iter::once(v))?,
                _ => {}
            }
        }
        Ok(p)
    }

    /// The revision a watch resumes after; `None` for "" and "0", which start with the
    /// current objects.
    pub fn watch_after(&self) -> Result<Option<u64>, ApiError> {
        match self.resource_version.as_str() {
            "" | "0" => Ok(None),
            v => parse_revision(v).map(Some),
        }
    }

    /// Whether a watch starts with the current objects: `sendInitialEvents`, else the legacy
    /// rule (no resourceVersion, or 0).
    pub fn initial_events(&self) -> Result<bool, ApiError> {
        Ok(match self.send_initial_events {
            Some(v) => v,
            None => self.watch_after()?.is_none(),
        })
    }
}

pub fn parse_revision(v: &str) -> Result<u64, ApiError> {
    v.parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid resource version {v:?}")))
}

fn dry_run<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<bool, ApiError> {
    let mut dry = false;
    for v in values {
        match v {
            "All" => dry = true,
            "" => {}
            other => {
                return Err(ApiError::BadRequest(format!(
                    "invalid dryRun {other:?}: only All is supported"
                )));
            }
        }
    }
    Ok(dry)
}

/// The table format asked for, when an `Accept` media range asks for a `meta.k8s.io` Table.
pub fn table_format(accept: Option<&str>, include: Option<IncludeObject>) -> Option<TableFormat> {
    for range in accept?.split(',') {
        let mut parts = range.split(';').map(str::trim);
        if parts.next() != Some("application/json") {
            continue;
        }
        let (mut as_, mut group, mut version) = (None, None, None);
        for p in parts {
            match p.split_once('=') {
                Some(("as", v)) => as_ = Some(v),
                Some(("g", v)) => group = Some(v),
                Some(("v", v)) => version = Some(v),
                _ => {}
            }
        }
        if as_ != Some("Table") || group != Some("meta.k8s.io") {
            continue;
        }
        let version = match version {
            Some("v1") => "v1",
            Some("v1beta1") => "v1beta1",
            _ => continue,
        };
        return Some(TableFormat {
            version,
            include: include.unwrap_or_default(),
        });
    }
    None
}

/// Where the next page of a list starts, and the revision of its first page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinueToken {
    pub rv: u64,
    pub start: String,
}

impl ContinueToken {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(super::types::encode_json(self))
    }

    pub fn decode(s: &str) -> Result<ContinueToken, ApiError> {
        let bad = || ApiError::BadRequest(format!("continue key is not valid: {s:?}"));
        let bytes = URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| bad())?;
        serde_json::from_slice(&bytes).map_err(|_| bad())
    }
}

/// The parts of a `DeleteOptions` body the cache honours.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteOptions {
    #[serde(default)]
    pub dry_run: Vec<String>,
    #[serde(default)]
    pub preconditions: Option<Preconditions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl DeleteOptions {
    /// An empty body is no options; anything else must be a DeleteOptions object.
    pub fn parse(body: &[u8]) -> Result<DeleteOptions, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(DeleteOptions::default());
        }
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid DeleteOptions: {e}")))
    }

    pub fn is_dry_run(&self) -> Result<bool, ApiError> {
        dry_run(self.dry_run.iter().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_and_watch_parameters() {
        let p = Params::parse(Some(
            "labelSelector=a%3Db&fieldSelector=metadata.name%3Dx&watch=1&resourceVersion=12\
             &timeoutSeconds=290&allowWatchBookmarks=true&limit=500&continue=abc\
             &includeObject=Object&unknown=1",
        ))
        .unwrap();
        assert!(!p.label_selector.is_empty());
        assert_eq!(p.field_selector.name(), Some("x"));
        assert!(p.watch && p.allow_watch_bookmarks);
        assert_eq!(p.watch_after().unwrap(), Some(12));
        assert!(!p.initial_events().unwrap());
        assert_eq!(p.timeout, Some(Duration::from_secs(290)));
        assert_eq!(p.limit, 500);
        assert_eq!(p.continue_token.as_deref(), Some("abc"));
        assert_eq!(p.include_object, Some(IncludeObject::Object));
        let empty = Params::parse(None).unwrap();
        assert!(!empty.watch);
        assert_eq!(empty.watch_after().unwrap(), None);
        assert!(empty.initial_events().unwrap());
        let zero = Params::parse(Some("resourceVersion=0&sendInitialEvents=false")).unwrap();
        assert!(!zero.initial_events().unwrap());
        assert_eq!(Params::parse(Some("limit=-1")).unwrap().limit, 0);
        assert_eq!(
            Params::parse(Some("timeoutSeconds=0")).unwrap().timeout,
            None
        );
        assert_eq!(
            Params::parse(Some("timeoutSeconds=18446744073709551615"))
                .unwrap()
                .timeout,
            Some(Duration::from_secs(MAX_WATCH_SECS))
        );
        for bad in [
            "labelSelector=a%20in",
            "fieldSelector=spec.x%3D1",
            "watch=maybe",
            "timeoutSeconds=x",
            "limit=x",
            "includeObject=All",
            "dryRun=Some",
        ] {
            assert!(
                matches!(
                    Params::parse(Some(bad)),
                    Err(ApiError::BadRequest(_) | ApiError::Selector(_))
                ),
                "{bad}"
            );
        }
        assert!(
            Params::parse(Some("resourceVersion=abc"))
                .unwrap()
                .watch_after()
                .is_err()
        );
    }

    #[test]
    fn negotiates_tables_like_kubectl_asks() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            table_format(Some(kubectl), None),
            Some(TableFormat {
                version: "v1",
                include: IncludeObject::Metadata
            })
        );
        assert_eq!(
            table_format(
                Some("application/json;as=Table;v=v1beta1;g=meta.k8s.io"),
                Some(IncludeObject::None)
            )
            .map(|f| (f.version, f.include)),
            Some(("v1beta1", IncludeObject::None))
        );
        assert_eq!(table_format(Some("application/json"), None), None);
        assert_eq!(
            table_format(Some("application/json;as=Table;v=v2;g=meta.k8s.io"), None),
            None
        );
        assert_eq!(table_format(None, None), None);
    }

    #[test]
    fn continue_tokens_round_trip() {
        let t = ContinueToken {
            rv: 42,
            start: "sha256:ab".into(),
        };
        assert_eq!(ContinueToken::decode(&t.encode()).unwrap(), t);
        assert!(ContinueToken::decode("!!").is_err());
        assert!(ContinueToken::decode("e30").is_err(), "{{}} lacks fields");
    }

    #[test]
    fn delete_options() {
        assert!(!DeleteOptions::parse(b"").unwrap().is_dry_run().unwrap());
        let o = DeleteOptions::parse(
            br#"{"kind":"DeleteOptions","apiVersion":"v1","dryRun":["All"],"preconditions":{"uid":"u"},"propagationPolicy":"Background"}"#,
        )
        .unwrap();
        assert!(o.is_dry_run().unwrap());
        assert_eq!(o.preconditions.unwrap().uid.as_deref(), Some("u"));
        assert!(DeleteOptions::parse(b"nope").is_err());
    }
}
