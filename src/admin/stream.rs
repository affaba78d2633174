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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Row {
        n: usize,
        name: String,
    }

    fn cells(r: &Row) -> Vec<String> {
        vec![r.n.to_string(), r.name.clone()]
    }

    fn format(json: bool) -> Rows<Row> {
        Rows {
            json,
            header: &["N", "NAME"],
            cells,
        }
    }

    fn make(n: usize) -> Row {
        Row {
            n,
            name: format!("row-{n}-{}", "x".repeat(n % 7)),
        }
    }

    async fn body(r: Response) -> Vec<u8> {
        axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn many_chunks_of_json_rows_make_one_array() {
        // About 30 bytes a row: several chunks.
        let total = 30_000;
        let r = rows(format(true), move |emit| {
            (0..total).try_for_each(|n| emit(&make(n)))
        });
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = body(r).await;
        assert!(bytes.len() > 3 * CHUNK);
        let back: Vec<Row> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, (0..total).map(make).collect::<Vec<_>>());
        let empty = body(rows(format(true), |_| Ok(()))).await;
        assert_eq!(empty, b"[]");
    }

    #[tokio::test]
    async fn text_rows_come_under_the_header() {
        let r = rows(format(false), |emit| {
            emit(&make(1))?;
            emit(&Row {
                n: 2,
                name: String::new(),
            })
        });
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        assert_eq!(body(r).await, b"N NAME\n1 row-1-x\n2 -\n");
    }

    #[tokio::test]
    async fn a_client_that_goes_away_stops_the_producer() {
        use futures_util::StreamExt;
        let emitted = Arc::new(AtomicUsize::new(0));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let counter = emitted.clone();
        let r = rows(format(true), move |emit| {
            let result = (0..10_000_000).try_for_each(|n| {
                counter.fetch_add(1, Ordering::Relaxed);
                emit(&make(n))
            });
            let _ = done_tx.send(result.is_err());
            result
        });
        let mut stream = r.into_body().into_data_stream();
        assert!(stream.next().await.is_some());
        drop(stream);
        assert!(done_rx.await.unwrap(), "the producer saw the client go");
        assert!(emitted.load(Ordering::Relaxed) < 10_000_000);
    }

    #[tokio::test]
    async fn a_failing_producer_breaks_the_body() {
        let r = rows(format(true), |emit| {
            emit(&make(1))?;
            Err(io::Error::other("disk gone"))
        });
        assert!(
            axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .is_err(),
            "a cut listing must not look whole"
        );
    }
}
