//! Blob transfer: one upstream fetch per digest, streamed to every waiting client while it is
//! written to a temp file, committed to the store only after its digest verifies.
//!
//! Readers share the fetch's open file and read it with `pread`, so the rename into the store
//! (or the unlink after a failure) never pulls the file from under them.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::{Method, StatusCode, header};
use tokio::sync::watch;

use super::error::RegistryError;
use super::{AppState, upstream_failure};
use crate::digest::{Digest, Hasher};
use crate::metrics::{Kind, Outcome, RetryLabels, RetryReason};
use crate::reference::RepoPath;

/// Bytes per read from disk and per write to the temp file.
const CHUNK: usize = 1 << 20;

#[derive(Clone, Debug)]
pub enum Progress {
    Connecting,
    Streaming { written: u64, total: Option<u64> },
    Done { size: u64 },
    Failed(RegistryError),
}

/// A blob being fetched, or a cached blob opened for reading.
#[derive(Clone)]
pub struct Source {
    file: Arc<File>,
    pub(super) progress: watch::Receiver<Progress>,
}

#[derive(Default)]
pub struct BlobFetches {
    map: Mutex<HashMap<Digest, Source>>,
}

impl Source {
    /// A cached blob: complete from the start.
    pub fn cached(file: File, size: u64) -> Source {
        let (_tx, rx) = watch::channel(Progress::Done { size });
        Source {
            file: Arc::new(file),
            progress: rx,
        }
    }

    /// Waits until the upstream has answered, returning the blob's size when known.
    pub async fn ready(&mut self) -> Result<Option<u64>, RegistryError> {
        loop {
            match &*self.progress.borrow_and_update() {
                Progress::Connecting => {}
                Progress::Streaming { total, .. } => return Ok(*total),
                Progress::Done { size } => return Ok(Some(*size)),
                Progress::Failed(e) => return Err(e.clone()),
            }
            if self.progress.changed().await.is_err() {
                return Err(RegistryError::Internal("blob fetch vanished".into()));
            }
        }
    }

    /// Streams bytes `[start, end)` (end `None`: to the end), waiting for a fetch to write them.
    /// While a fetch is unverified the final byte is held back, so a blob that fails
    /// verification ends in a cut connection, never in a complete-looking response.
    pub fn stream(
        self,
        start: u64,
        end: Option<u64>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let complete = match *self.progress.borrow() {
            Progress::Done { size } => Some(size),
            _ => None,
        };
        match complete {
            Some(size) => {
                let served = metrics
                    .served_bytes
                    .get_or_create(&crate::metrics::KindLabels { kind: Kind::blob })
                    .clone();
                let end = end.map_or(size, |e| e.min(size));
                futures_util::future::Either::Left(read_ahead(self.file, start, end, served))
            }
            None => futures_util::future::Either::Right(self.follow(start, end, metrics)),
        }
    }

    /// Reads what a fetch in progress has written so far, waiting for more.
    fn follow(
        self,
        start: u64,
        end: Option<u64>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let served = metrics
            .served_bytes
            .get_or_create(&crate::metrics::KindLabels { kind: Kind::blob })
            .clone();
        futures_util::stream::unfold((self, start), move |(mut src, offset)| {
            let served = served.clone();
            async move {
                loop {
                    // An error was the last item.
                    if offset == u64::MAX {
                        return None;
                    }
                    let state = src.progress.borrow_and_update().clone();
                    let (readable, complete) = match state {
                        Progress::Connecting => (0, None),
                        Progress::Streaming { written, total } => (
                            total.map_or(written, |t| written.min(t.saturating_sub(1))),
                            None,
                        ),
                        Progress::Done { size } => (size, Some(size)),
                        Progress::Failed(e) => {
                            return Some((
                                Err(std::io::Error::other(e.to_string())),
                                (src, u64::MAX),
                            ));
                        }
                    };
                    let limit = end.map_or(readable, |e| e.min(readable));
                    if offset < limit {
                        let len = (limit - offset).min(CHUNK as u64) as usize;
                        let file = src.file.clone();
                        let read = tokio::task::spawn_blocking(move || {
                            let mut buf = BytesMut::zeroed(len);
                            file.read_exact_at(&mut buf, offset).map(|_| buf.freeze())
                        })
                        .await
                        .map_err(std::io::Error::other)
                        .and_then(|r| r);
                        return match read {
                            Ok(b) => {
                                served.inc_by(b.len() as u64);
                                let next = offset + b.len() as u64;
                                Some((Ok(b), (src, next)))
                            }
                            Err(e) => Some((Err(e), (src, u64::MAX))),
                        };
                    }
                    if let Some(size) = complete
                        && offset >= end.map_or(size, |e| e.min(size))
                    {
                        return None;
                    }
                    if src.progress.changed().await.is_err() && complete.is_none() {
                        let err = std::io::Error::other("blob fetch ended without a result");
                        return Some((Err(err), (src, u64::MAX)));
                    }
                }
            }
        })
    }
}

/// Streams `[start, end)` of a complete file: one blocking task reads ahead into a small
/// bounded queue while the connection sends, so disk reads and socket writes overlap and no
/// thread hop is paid per chunk. `read_to_end` fills fresh capacity without zeroing it first.
fn read_ahead(
    file: Arc<File>,
    start: u64,
    end: u64,
    served: prometheus_client::metrics::counter::Counter,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    use std::io::{Read, Seek, SeekFrom};
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::task::spawn_blocking(move || {
        let mut reader = &*file;
        if let Err(e) = reader.seek(SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut offset = start;
        while offset < end {
            let len = (end - offset).min(CHUNK as u64);
            let mut buf = Vec::with_capacity(len as usize);
            let read = reader.take(len).read_to_end(&mut buf).and_then(|n| {
                if n as u64 == len {
                    Ok(n)
                } else {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "cached blob is shorter than its size",
                    ))
                }
            });
            let item = read.map(|_| Bytes::from(buf));
            let failed = item.is_err();
            // The client went away: stop reading.
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
            offset += len;
        }
    });
    futures_util::stream::unfold(rx, move |mut rx| {
        let served = served.clone();
        async move {
            let item = rx.recv().await?;
            if let Ok(b) = &item {
                served.inc_by(b.len() as u64);
            }
            Some((item, rx))
        }
    })
}

impl BlobFetches {
    /// Joins the fetch of `digest`, or starts it.
    pub fn join_or_start(
        &self,
        state: &Arc<AppState>,
        repo: &RepoPath,
        digest: &Digest,
    ) -> Result<Source, RegistryError> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(src) = map.get(digest) {
            return Ok(src.clone());
        }
        let (temp, file) = state.store.temp_file()?;
        let writer = file
            .try_clone()
            .map_err(|e| RegistryError::Internal(e.to_string()))?;
        let (tx, rx) = watch::channel(Progress::Connecting);
        let src = Source {
            file: Arc::new(file),
            progress: rx,
        };
        map.insert(digest.clone(), src.clone());
        let (state, repo, digest) = (state.clone(), repo.clone(), digest.clone());
        tokio::spawn(async move {
            state.metrics.inflight_fetches.inc();
            let result = fetch(&state, &repo, &digest, writer, &temp, &tx).await;
            state.metrics.inflight_fetches.dec();
            match result {
                Ok(size) => {
                    state.metrics.upstream(Kind::blob, Outcome::ok);
                    tx.send_replace(Progress::Done { size });
                }
                Err(e) => {
                    let outcome = if e == RegistryError::BlobUnknown {
                        Outcome::not_found
                    } else {
                        Outcome::error
                    };
                    state.metrics.upstream(Kind::blob, outcome);
                    tracing::warn!(%repo, %digest, error = %e, "blob fetch failed; nothing cached");
                    let _ = std::fs::remove_file(&temp);
                    tx.send_replace(Progress::Failed(e));
                }
            }
            state
                .blob_fetches
                .map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&digest);
        });
        Ok(src)
    }

    /// The size of a blob being fetched, if the upstream has told us.
    pub fn pending_size(&self, digest: &Digest) -> Option<u64> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match &*map.get(digest)?.progress.borrow() {
            Progress::Streaming { total, .. } => *total,
            _ => None,
        }
    }
}

async fn fetch(
    state: &AppState,
    repo: &RepoPath,
    digest: &Digest,
    writer: File,
    temp: &std::path::Path,
    tx: &watch::Sender<Progress>,
) -> Result<u64, RegistryError> {
    let upstream = state.upstreams.get(&repo.registry)?;
    let suffix = format!("blobs/{digest}");
    let resp = upstream
        .send(
            Method::GET,
            &repo.repository,
            &suffix,
            header::HeaderMap::new(),
        )
        .await?;
    if resp.status() != StatusCode::OK {
        return Err(upstream_failure(&resp, RegistryError::BlobUnknown));
    }
    let total = resp.content_length();
    tx.send_replace(Progress::Streaming { written: 0, total });
    let writer = Arc::new(writer);
    let mut hasher = Hasher::new(digest.algorithm());
    let mut written: u64 = 0;
    let mut pending = BytesMut::new();
    let mut body = resp.bytes_stream();
    // Bytes at the front of a resumed body that we already have (an upstream that ignored
    // `Range` and sent the whole blob again).
    let mut skip: u64 = 0;
    let mut resumes: u32 = 0;
    let upstream_bytes = state
        .metrics
        .upstream_bytes
        .get_or_create(&crate::metrics::KindLabels { kind: Kind::blob })
        .clone();
    loop {
        let chunk = body.next().await;
        let finished = chunk.is_none();
        if let Some(chunk) = chunk {
            let mut chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let cut = RegistryError::Unavailable(format!(
                        "upstream {} cut the blob transfer: {}",
                        upstream.name(),
                        crate::upstream::error_chain(&e)
                    ));
                    // Keep what arrived and ask for the rest, within the upstream's retry
                    // budget; waiting clients just see the bytes keep coming.
                    write_out(&writer, pending.split().freeze(), &mut written, total, tx).await?;
                    resumes += 1;
                    if resumes >= upstream.retry_config().attempts {
                        return Err(cut);
                    }
                    match resume(&upstream, &repo.repository, &suffix, written, total).await {
                        Some((rest, already)) => {
                            tracing::info!(%repo, %digest, offset = written, "blob transfer cut; resuming");
                            state
                                .metrics
                                .upstream_retries
                                .get_or_create(&RetryLabels {
                                    reason: RetryReason::cut_transfer,
                                })
                                .inc();
                            body = rest.bytes_stream();
                            skip = already;
                            continue;
                        }
                        None => return Err(cut),
                    }
                }
            };
            upstream_bytes.inc_by(chunk.len() as u64);
            if skip > 0 {
                let n = skip.min(chunk.len() as u64);
                let _ = chunk.split_to(n as usize);
                skip -= n;
            }
            hasher.update(&chunk);
            pending.extend_from_slice(&chunk);
            if total.is_some_and(|t| written + pending.len() as u64 > t) {
                return Err(RegistryError::BadUpstream(format!(
                    "upstream sent more than the {} bytes it announced",
                    total.unwrap_or(0)
                )));
            }
        }
        // Batch small network chunks into large writes: one blocking call per CHUNK.
        if pending.len() >= CHUNK || (finished && !pending.is_empty()) {
            write_out(&writer, pending.split().freeze(), &mut written, total, tx).await?;
        }
        if finished {
            break;
        }
    }
    if skip > 0 {
        return Err(RegistryError::Unavailable(format!(
            "upstream {} ended the resumed transfer early",
            upstream.name()
        )));
    }
    let actual = hasher.finish();
    if &actual != digest {
        return Err(RegistryError::UpstreamDigest(format!(
            "expected {digest}, got {actual}"
        )));
    }
    if total.is_some_and(|t| t != written) {
        return Err(RegistryError::Unavailable(format!(
            "upstream sent {written} of {} bytes",
            total.unwrap_or(0)
        )));
    }
    let (store, temp, digest, w) = (
        state.store.clone(),
        temp.to_path_buf(),
        digest.clone(),
        writer,
    );
    tokio::task::spawn_blocking(move || {
        w.sync_all()?;
        store
            .commit_blob(&temp, &digest, written)
            .map_err(std::io::Error::other)
    })
    .await??;
    Ok(written)
}

/// Appends `data` to the temp file at `written` and tells the waiting clients.
async fn write_out(
    writer: &Arc<File>,
    data: Bytes,
    written: &mut u64,
    total: Option<u64>,
    tx: &watch::Sender<Progress>,
) -> Result<(), RegistryError> {
    if data.is_empty() {
        return Ok(());
    }
    let len = data.len() as u64;
    let (w, offset) = (writer.clone(), *written);
    tokio::task::spawn_blocking(move || w.write_all_at(&data, offset)).await??;
    *written += len;
    tx.send_replace(Progress::Streaming {
        written: *written,
        total,
    });
    Ok(())
}

/// Asks for a blob from `offset` on after a cut. Returns the response and how many bytes at
/// its front we already have: 0 for a matching 206, `offset` for a 200 (the upstream ignored
/// `Range`). `None` when the upstream cannot be asked or answers anything else.
async fn resume(
    upstream: &crate::upstream::Upstream,
    repository: &str,
    suffix: &str,
    offset: u64,
    total: Option<u64>,
) -> Option<(reqwest::Response, u64)> {
    let mut headers = header::HeaderMap::new();
    headers.insert(
        header::RANGE,
        header::HeaderValue::from_str(&format!("bytes={offset}-")).ok()?,
    );
    let resp = upstream
        .send(Method::GET, repository, suffix, headers)
        .await
        .ok()?;
    match resp.status() {
        StatusCode::OK => Some((resp, offset)),
        StatusCode::PARTIAL_CONTENT => {
            let range = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(super::parse_content_range)?;
            let consistent = range.0 == offset && total.is_none_or(|t| range.1 == Some(t));
            consistent.then_some((resp, 0))
        }
        _ => None,
    }
}
