//! Streamed answers for the listings and prune reports: rows are written on a blocking thread
//! into chunks that go out as they fill, so a listing of half a million rows costs a few chunks
//! of memory, not the whole body (and the async workers never serialise 150 MiB).

use std::io::{self, Write};

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::listing;

/// Chunk size: large enough for few channel sends, small against the memory it saves.
const CHUNK: usize = 256 << 10;
/// Chunks written ahead of a slow reader.
const AHEAD: usize = 4;

/// Collects bytes into chunks and hands each full one to the response body. Fails once the
/// client has gone, which stops the producer.
struct ChunkWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// A 200 answer of `content_type` whose body `produce` writes on a blocking thread.
fn streamed(
    content_type: &'static str,
    produce: impl FnOnce(&mut ChunkWriter) -> io::Result<()> + Send + 'static,
) -> Response {
    let (tx, rx) = mpsc::channel(AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut w = ChunkWriter {
            buf: Vec::with_capacity(CHUNK),
            tx: tx.clone(),
        };
        let result = produce(&mut w).and_then(|_| w.flush());
        if let Err(e) = result
            && e.kind() != io::ErrorKind::BrokenPipe
        {
            tracing::warn!(error = %e, "streamed answer cut short");
            // The body ends with an error, so the client sees a broken transfer, not a
            // short list that looks whole.
            let _ = tx.blocking_send(Err(e));
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}

/// How a listing's rows are written: a JSON array, or a line of cells per row under a header.
pub struct Rows<R> {
    pub json: bool,
    pub header: &'static [&'static str],
    pub cells: fn(&R) -> Vec<String>,
}

/// Streams the rows `produce` emits, in the format `rows` says.
pub fn rows<R: Serialize + 'static>(
    rows: Rows<R>,
    produce: impl FnOnce(&mut dyn FnMut(&R) -> io::Result<()>) -> io::Result<()> + Send + 'static,
) -> Response {
    if rows.json {
        return streamed("application/json", move |w| {
            w.write_all(b"[")?;
            let mut first = true;
            produce(&mut |row: &R| {
                if !first {
                    w.write_all(b",")?;
                }
                first = false;
                serde_json::to_writer(&mut *w, row).map_err(io::Error::other)
            })?;
            w.write_all(b"]")
        });
    }
    streamed("text/plain; charset=utf-8", move |w| {
        let header: Vec<String> = rows.header.iter().map(|h| h.to_string()).collect();
        w.write_all(listing::line(&header, false).as_bytes())?;
        produce(&mut |row: &R| w.write_all(listing::line(&(rows.cells)(row), false).as_bytes()))
    })
}

/// Streams one JSON value (a prune report of 100k items is tens of MiB).
pub fn json<T: Serialize + Send + 'static>(value: T) -> Response {
    streamed("application/json", move |w| {
        serde_json::to_writer(w, &value).map_err(io::Error::other)
    })
}
