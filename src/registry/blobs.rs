//! Blob transfer: one fetch per digest, streamed to every waiting client while it is written to
//! a temp file, committed to the store only after its digest verifies.
//!
//! Readers share the fetch's open file and read it with `pread`, so the rename into the store
//! (or the unlink after a failure) never pulls the file from under them.
//!
//! With peers, a client's miss for a digest this replica does not own asks the owner (then its
//! previous owner) before the upstream: a *relayed* fetch. A transfer a peer cuts goes on from
//! the next source with a `Range` request, so the client sees the bytes keep coming. Bytes from
//! a peer are verified like the upstream's; a blob that does not hash right ends in a cut
//! connection (never in a complete response) and leaves the peer out, so the next try reads
//! the upstream. Every other fetch is *direct*: the owner's (for its clients or its peers)
//! asks the previous owner whether it holds the blob (cache only, never waiting), then reads
//! the upstream; a peer's request at a replica that does not own the digest reads only the
//! upstream. Peer requests join direct fetches only, and a relayed fetch that falls back to the
//! upstream follows the direct fetch of the digest (joined or started), so replicas never wait
//! on each other in a circle and a blob is fetched upstream once per replica at most, once in
//! the cluster when the replicas agree on its owner. What a fetch keeps: everything it read
//! from the upstream, and what a peer relayed when this replica owns the digest or
//! `peering.nonOwnerBlobs` says to keep it (`keep`; `hot` when relayed before); otherwise the
//! temp file serves the waiting clients and is dropped.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::{Method, StatusCode, header};
use tokio::sync::watch;

use super::error::RegistryError;
use super::{AppState, upstream_failure};
use crate::digest::{Digest, Hasher};
use crate::metrics::{ContentSource, Kind, Outcome, PeerFailure, RetryLabels, RetryReason};
use crate::peers::{Ask, Member, Peers};
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
    /// Where the bytes come from, once the first source has answered.
    origin: Arc<OnceLock<ContentSource>>,
}

/// The fetches in progress, one per digest: those that may relay from a peer (client misses)
/// and those that read only the upstream (peer requests, and every miss without peers).
#[derive(Default)]
pub struct BlobFetches {
    relayed: Mutex<HashMap<Digest, Source>>,
    direct: Mutex<HashMap<Digest, Source>>,
}

impl Source {
    /// A cached blob: complete from the start.
    pub fn cached(file: File, size: u64) -> Source {
        let (_tx, rx) = watch::channel(Progress::Done { size });
        Source {
            file: Arc::new(file),
            progress: rx,
            origin: Arc::new(OnceLock::from(ContentSource::cache)),
        }
    }

    /// Where the bytes come from: known once [`Source::ready`] has returned.
    pub fn origin(&self) -> ContentSource {
        self.origin
            .get()
            .copied()
            .unwrap_or(ContentSource::upstream)
    }

    fn same(&self, other: &Source) -> bool {
        Arc::ptr_eq(&self.file, &other.file)
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
        let served = Served::new(&metrics, self.origin());
        self.stream_counted(start, end, complete, served)
    }

    /// [`Source::stream`] counting into `served`.
    fn stream_counted(
        self,
        start: u64,
        end: Option<u64>,
        complete: Option<u64>,
        served: Served,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        match complete {
            Some(size) => {
                let end = end.map_or(size, |e| e.min(size));
                futures_util::future::Either::Left(read_ahead(self.file, start, end, served))
            }
            None => futures_util::future::Either::Right(self.follow(start, end, served)),
        }
    }

    /// Reads what a fetch in progress has written so far, waiting for more.
    fn follow(
        self,
        start: u64,
        end: Option<u64>,
        served: Served,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
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
                                served.add(b.len() as u64);
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

/// The byte counters of one blob response: all bytes sent, and by where they came from.
#[derive(Clone)]
struct Served {
    all: prometheus_client::metrics::counter::Counter,
    by_source: prometheus_client::metrics::counter::Counter,
}

impl Served {
    fn new(metrics: &crate::metrics::Metrics, source: ContentSource) -> Served {
        Served {
            all: metrics
                .served_bytes
                .get_or_create(&crate::metrics::KindLabels { kind: Kind::blob })
                .clone(),
            by_source: metrics
                .served_source_bytes
                .get_or_create(&crate::metrics::SourceLabels {
                    kind: Kind::blob,
                    source,
                })
                .clone(),
        }
    }

    /// Counters registered nowhere: a relayed fetch following a direct one is not a response.
    fn uncounted() -> Served {
        Served {
            all: Default::default(),
            by_source: Default::default(),
        }
    }

    fn add(&self, n: u64) {
        self.all.inc_by(n);
        self.by_source.inc_by(n);
    }
}

/// Streams `[start, end)` of a complete file: one blocking task reads ahead into a small
/// bounded queue while the connection sends, so disk reads and socket writes overlap and no
/// thread hop is paid per chunk. `read_to_end` fills fresh capacity without zeroing it first.
fn read_ahead(
    file: Arc<File>,
    start: u64,
    end: u64,
    served: Served,
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
                served.add(b.len() as u64);
            }
            Some((item, rx))
        }
    })
}

impl BlobFetches {
    /// Joins the fetch of `digest`, or starts it. With `relay` (a client's miss), a direct fetch
    /// is joined, else a relayed one when this replica does not own the digest; without (a
    /// peer's request), only a direct fetch is joined or started.
    pub fn join_or_start(
        &self,
        state: &Arc<AppState>,
        repo: &RepoPath,
        digest: &Digest,
        relay: bool,
    ) -> Result<Source, RegistryError> {
        let relay = relay && state.peers.as_ref().is_some_and(|p| !p.owns(digest));
        let mut direct = lock(&self.direct);
        if let Some(src) = direct.get(digest) {
            return Ok(src.clone());
        }
        let mut relayed = lock(&self.relayed);
        if relay && let Some(src) = relayed.get(digest) {
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
            origin: Arc::default(),
        };
        if relay {
            relayed.insert(digest.clone(), src.clone());
        } else {
            direct.insert(digest.clone(), src.clone());
        }
        drop((relayed, direct));
        let (state, repo, digest, mine) =
            (state.clone(), repo.clone(), digest.clone(), src.clone());
        tokio::spawn(async move {
            state.metrics.inflight_fetches.inc();
            let mut asked_upstream = false;
            let result = fetch(
                &state,
                &repo,
                &digest,
                writer,
                (&temp, &tx, &mine),
                relay,
                &mut asked_upstream,
            )
            .await;
            state.metrics.inflight_fetches.dec();
            if asked_upstream {
                let outcome = match &result {
                    Ok(_) => Outcome::ok,
                    Err(RegistryError::BlobUnknown) => Outcome::not_found,
                    Err(_) => Outcome::error,
                };
                state.metrics.upstream(Kind::blob, outcome);
            }
            match result {
                Ok(size) => {
                    tx.send_replace(Progress::Done { size });
                }
                Err(e) => {
                    tracing::warn!(%repo, %digest, error = %e, "blob fetch failed; nothing cached");
                    tx.send_replace(Progress::Failed(e));
                }
            }
            // Committed or not, the temp path is no longer needed: readers hold the file open.
            let _ = std::fs::remove_file(&temp);
            for map in [&state.blob_fetches.relayed, &state.blob_fetches.direct] {
                let mut map = lock(map);
                if map.get(&digest).is_some_and(|s| s.same(&mine)) {
                    map.remove(&digest);
                }
            }
        });
        Ok(src)
    }

    /// The size of a blob being fetched, if its source has told us.
    pub fn pending_size(&self, digest: &Digest) -> Option<u64> {
        [&self.direct, &self.relayed].into_iter().find_map(|m| {
            match &*lock(m).get(digest)?.progress.borrow() {
                Progress::Streaming { total, .. } => *total,
                _ => None,
            }
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The bytes of one fetch as they arrive from its sources, in order: hashed, batched and
/// written to the temp file, announced to the waiting clients.
struct Transfer<'a> {
    writer: Arc<File>,
    tx: &'a watch::Sender<Progress>,
    hasher: Hasher,
    written: u64,
    total: Option<u64>,
    pending: BytesMut,
    /// Bytes at the front of the current body that we already have (a source that ignored
    /// `Range` and sent the whole blob again).
    skip: u64,
}

impl Transfer<'_> {
    /// The blob's size as the first source announced it; a later source must agree.
    fn announce(&mut self, total: Option<u64>, first: bool) {
        if first && self.written == 0 {
            self.total = total;
        }
        self.tx.send_replace(Progress::Streaming {
            written: self.written,
            total: self.total,
        });
    }

    /// One chunk of the current body.
    fn take(&mut self, mut chunk: Bytes, source: &str) -> Result<(), RegistryError> {
        if self.skip > 0 {
            let n = self.skip.min(chunk.len() as u64);
            let _ = chunk.split_to(n as usize);
            self.skip -= n;
        }
        self.hasher.update(&chunk);
        self.pending.extend_from_slice(&chunk);
        if self
            .total
            .is_some_and(|t| self.written + self.pending.len() as u64 > t)
        {
            return Err(RegistryError::BadUpstream(format!(
                "{source} sent more than the {} bytes it announced",
                self.total.unwrap_or(0)
            )));
        }
        Ok(())
    }

    /// Writes the batched bytes out: all of them with `all`, else once a chunk is full.
    async fn flush(&mut self, all: bool) -> Result<(), RegistryError> {
        if self.pending.len() >= CHUNK || (all && !self.pending.is_empty()) {
            let data = self.pending.split().freeze();
            write_out(&self.writer, data, &mut self.written, self.total, self.tx).await?;
        }
        Ok(())
    }

    /// Reads `body` to its end. `Ok(Err(e))`: the body broke off (what arrived is written).
    async fn pump(
        &mut self,
        body: &mut (impl Stream<Item = reqwest::Result<Bytes>> + Unpin),
        source: &str,
        count: &prometheus_client::metrics::counter::Counter,
    ) -> Result<Result<(), reqwest::Error>, RegistryError> {
        loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    count.inc_by(chunk.len() as u64);
                    self.take(chunk, source)?;
                    self.flush(false).await?;
                }
                Some(Err(e)) => {
                    self.flush(true).await?;
                    return Ok(Err(e));
                }
                None => {
                    self.flush(true).await?;
                    return Ok(Ok(()));
                }
            }
        }
    }
}

/// How asking one peer ended.
enum PeerEnd {
    /// The whole blob arrived.
    Done,
    /// The peer answered 404: its upstream does not have it either.
    NotFound,
    /// The peer could not be used; the next source goes on from what arrived.
    Skip,
}

/// Fetches `digest` into the temp file: from the peers [`Peers::plan`] names (to fetch it only
/// with `relay`), then the upstream; verifies it and commits what this replica keeps. Returns
/// its size.
async fn fetch(
    state: &Arc<AppState>,
    repo: &RepoPath,
    digest: &Digest,
    writer: File,
    (temp, tx, src): (&std::path::Path, &watch::Sender<Progress>, &Source),
    relay: bool,
    asked_upstream: &mut bool,
) -> Result<u64, RegistryError> {
    let mut t = Transfer {
        writer: Arc::new(writer),
        tx,
        hasher: Hasher::new(digest.algorithm()),
        written: 0,
        total: None,
        pending: BytesMut::new(),
        skip: 0,
    };
    let peers = state.peers.as_deref();
    let mut tried: Vec<Member> = Vec::new();
    let mut contributors: Vec<Member> = Vec::new();
    let mut from_upstream = false;
    let mut followed = false;
    loop {
        let next = peers.and_then(|p| {
            p.plan(digest)
                .into_iter()
                .find(|(m, ask)| !tried.contains(m) && (relay || *ask == Ask::Cached))
        });
        let (Some(peers), Some((member, ask))) = (peers, next) else {
            if state.config.air_gapped {
                return Err(if t.written == 0 {
                    RegistryError::BlobUnknown
                } else {
                    RegistryError::Unavailable(format!(
                        "no peer could finish blob {digest} and the cache is air-gapped"
                    ))
                });
            }
            let _ = src.origin.set(ContentSource::upstream);
            if relay {
                // Peers' requests join only the direct fetch: follow it, so the upstream is
                // asked once here.
                let direct = state
                    .blob_fetches
                    .join_or_start(state, repo, digest, false)?;
                follow_direct(&mut t, direct).await?;
                followed = true;
                break;
            }
            *asked_upstream = true;
            from_upstream_source(state, &mut t, repo, digest).await?;
            from_upstream = true;
            break;
        };
        tried.push(member.clone());
        let before = t.written;
        let end = from_peer(state, peers, (&member, ask), &mut t, repo, digest, src).await?;
        if t.written > before {
            contributors.push(member.clone());
        }
        match end {
            PeerEnd::Done => break,
            PeerEnd::NotFound => return Err(RegistryError::BlobUnknown),
            PeerEnd::Skip => {}
        }
    }
    if t.skip > 0 {
        return Err(RegistryError::Unavailable(
            "upstream ended the resumed transfer early".into(),
        ));
    }
    let actual = std::mem::replace(&mut t.hasher, Hasher::new(digest.algorithm())).finish();
    if &actual != digest {
        if let Some(peers) = peers {
            for m in &contributors {
                peers.failed(
                    m,
                    PeerFailure::digest,
                    &format!("blob {digest} hashed to {actual}"),
                );
            }
        }
        return Err(RegistryError::UpstreamDigest(format!(
            "expected {digest}, got {actual}"
        )));
    }
    if t.total.is_some_and(|total| total != t.written) {
        return Err(RegistryError::Unavailable(format!(
            "upstream sent {} of {} bytes",
            t.written,
            t.total.unwrap_or(0)
        )));
    }
    // A followed direct fetch commits the blob itself.
    let keep = !followed
        && (from_upstream || peers.is_none_or(|p| p.owns(digest) || p.keep_relayed(digest)));
    let written = t.written;
    if keep {
        let (store, temp, digest, w) = (
            state.store.clone(),
            temp.to_path_buf(),
            digest.clone(),
            t.writer.clone(),
        );
        tokio::task::spawn_blocking(move || {
            w.sync_all()?;
            store
                .commit_blob(&temp, &digest, written)
                .map_err(std::io::Error::other)
        })
        .await??;
    }
    Ok(written)
}

/// Copies the rest of the blob (all of it when nothing arrived yet) from the direct fetch of
/// the same digest as it arrives.
async fn follow_direct(t: &mut Transfer<'_>, mut direct: Source) -> Result<(), RegistryError> {
    let total = direct.ready().await?;
    let first = t.written == 0;
    if !first && total.is_some_and(|n| t.total.is_some_and(|m| m != n)) {
        return Err(RegistryError::Unavailable(
            "the upstream announced another size than the peer".into(),
        ));
    }
    t.announce(total, first);
    let complete = match *direct.progress.borrow() {
        Progress::Done { size } => Some(size),
        _ => None,
    };
    let body = direct.stream_counted(t.written, None, complete, Served::uncounted());
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| RegistryError::Unavailable(format!("blob fetch: {e}")))?;
        t.take(chunk, "upstream")?;
        t.flush(false).await?;
    }
    t.flush(true).await
}

/// Reads the rest of the blob from the upstream (all of it when nothing arrived yet),
/// resuming a cut body with `Range` within the upstream's retry budget.
async fn from_upstream_source(
    state: &AppState,
    t: &mut Transfer<'_>,
    repo: &RepoPath,
    digest: &Digest,
) -> Result<(), RegistryError> {
    let upstream = state.upstreams.get(&repo.registry)?;
    let suffix = format!("blobs/{digest}");
    let resp = if t.written == 0 {
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
        t.announce(resp.content_length(), true);
        resp
    } else {
        // A peer cut the transfer and no other could go on: the upstream finishes it.
        let Some((resp, already)) =
            resume(&upstream, &repo.repository, &suffix, t.written, t.total).await
        else {
            return Err(RegistryError::Unavailable(format!(
                "upstream {} cannot finish blob {digest} from byte {}",
                upstream.name(),
                t.written
            )));
        };
        t.skip = already;
        resp
    };
    let upstream_bytes = state
        .metrics
        .upstream_bytes
        .get_or_create(&crate::metrics::KindLabels { kind: Kind::blob })
        .clone();
    let mut body = resp.bytes_stream();
    let mut resumes: u32 = 0;
    loop {
        let Err(e) = t.pump(&mut body, "upstream", &upstream_bytes).await? else {
            return Ok(());
        };
        let cut = RegistryError::Unavailable(format!(
            "upstream {} cut the blob transfer: {}",
            upstream.name(),
            crate::upstream::error_chain(&e)
        ));
        // Keep what arrived and ask for the rest, within the upstream's retry budget;
        // waiting clients just see the bytes keep coming.
        resumes += 1;
        if resumes >= upstream.retry_config().attempts {
            return Err(cut);
        }
        let Some((rest, already)) =
            resume(&upstream, &repo.repository, &suffix, t.written, t.total).await
        else {
            return Err(cut);
        };
        tracing::info!(%repo, %digest, offset = t.written, "blob transfer cut; resuming");
        state
            .metrics
            .upstream_retries
            .get_or_create(&RetryLabels {
                reason: RetryReason::cut_transfer,
            })
            .inc();
        body = rest.bytes_stream();
        t.skip = already;
    }
}

/// Reads the rest of the blob from `member` (all of it when nothing arrived yet). Local IO
/// errors are errors; everything the peer does wrong is counted and ends in [`PeerEnd::Skip`].
async fn from_peer(
    state: &AppState,
    peers: &Peers,
    (member, ask): (&Member, Ask),
    t: &mut Transfer<'_>,
    repo: &RepoPath,
    digest: &Digest,
    src: &Source,
) -> Result<PeerEnd, RegistryError> {
    let mut headers = header::HeaderMap::new();
    if t.written > 0
        && let Ok(v) = header::HeaderValue::from_str(&format!("bytes={}-", t.written))
    {
        headers.insert(header::RANGE, v);
    }
    let resp = match peers
        .send(
            member,
            Method::GET,
            repo,
            &format!("blobs/{digest}"),
            ask,
            headers,
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            if let Some(reason) = e.reason() {
                peers.failed(member, reason, &e);
            }
            return Ok(PeerEnd::Skip);
        }
    };
    let skip = match range_answer(&resp, t.written, t.total) {
        Some(skip) => skip,
        // A 404 to a cache-only ask says only that the peer does not hold the blob.
        None if resp.status() == StatusCode::NOT_FOUND && ask == Ask::Cached => {
            return Ok(PeerEnd::Skip);
        }
        None if resp.status() == StatusCode::NOT_FOUND && t.written == 0 => {
            return Ok(PeerEnd::NotFound);
        }
        None => {
            let status = resp.status();
            peers.failed(member, PeerFailure::status, &format!("answered {status}"));
            return Ok(PeerEnd::Skip);
        }
    };
    let named = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok());
    if named.is_some_and(|n| n != digest.to_string()) {
        peers.failed(
            member,
            PeerFailure::digest,
            &format!("answered blob {} for {digest}", named.unwrap_or_default()),
        );
        return Ok(PeerEnd::Skip);
    }
    let first = t.written == 0;
    if first
        && let Some(len) = resp.content_length()
        && t.total.is_some_and(|total| total != len)
    {
        peers.failed(member, PeerFailure::status, &"announced another size");
        return Ok(PeerEnd::Skip);
    }
    if first {
        let _ = src.origin.set(ContentSource::peer);
    }
    t.announce(resp.content_length(), first);
    t.skip = skip;
    let count = state
        .metrics
        .peer_bytes
        .get_or_create(&crate::metrics::KindLabels { kind: Kind::blob })
        .clone();
    let mut body = resp.bytes_stream();
    let source = format!("peer {}", member.id);
    match t.pump(&mut body, &source, &count).await {
        Ok(Ok(())) if t.skip == 0 => Ok(PeerEnd::Done),
        Ok(Ok(())) => {
            peers.failed(member, PeerFailure::cut, &"the body ended early");
            Ok(PeerEnd::Skip)
        }
        Ok(Err(e)) => {
            let reason = if e.is_timeout() {
                PeerFailure::timeout
            } else {
                PeerFailure::cut
            };
            peers.failed(member, reason, &e);
            Ok(PeerEnd::Skip)
        }
        // Too many bytes: the peer is wrong, not this replica.
        Err(RegistryError::BadUpstream(m)) => {
            peers.failed(member, PeerFailure::digest, &m);
            // What was written is suspect: start over from the next source.
            Err(RegistryError::UpstreamDigest(format!(
                "peer {}: {m}",
                member.id
            )))
        }
        Err(e) => Err(e),
    }
}

/// How many bytes at the front of `resp` we already have, when it is a usable answer for a
/// request from `offset` on: 0 for a matching 206, `offset` for a 200 (`Range` ignored).
/// `None` for anything else.
fn range_answer(resp: &reqwest::Response, offset: u64, total: Option<u64>) -> Option<u64> {
    match resp.status() {
        StatusCode::OK => Some(offset),
        StatusCode::PARTIAL_CONTENT if offset > 0 => {
            let range = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(super::parse_content_range)?;
            let consistent = range.0 == offset && total.is_none_or(|t| range.1 == Some(t));
            consistent.then_some(0)
        }
        _ => None,
    }
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
    let already = range_answer(&resp, offset, total)?;
    Some((resp, already))
}
