//! Single flight: concurrent callers asking for the same key share one run of the work. The
//! work runs in its own task, so a client that disconnects does not cancel it for the others.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use super::error::RegistryError;

type Flight<V> = Shared<BoxFuture<'static, Result<V, RegistryError>>>;

pub struct Flights<K, V: Clone> {
    map: Arc<Mutex<HashMap<K, Flight<V>>>>,
}

impl<K, V: Clone> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            map: Arc::default(),
        }
    }
}

impl<K, V> Flights<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Joins the flight for `key`, or starts one with `work`.
    pub async fn run<F>(&self, key: K, work: impl FnOnce() -> F) -> Result<V, RegistryError>
    where
        F: Future<Output = Result<V, RegistryError>> + Send + 'static,
    {
        let flight = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let fut = work();
                    let map_ref = self.map.clone();
                    let k = key.clone();
                    // The task removes its own entry; it cannot do so before the insert below
                    // because it needs the lock we hold.
                    let handle = tokio::spawn(async move {
                        let out = fut.await;
                        map_ref.lock().unwrap_or_else(|p| p.into_inner()).remove(&k);
                        out
                    });
                    let flight = async move { handle.await.map_err(RegistryError::from)? }
                        .boxed()
                        .shared();
                    map.insert(key, flight.clone());
                    flight
                }
            }
        };
        flight.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights: Arc<Flights<&'static str, u32>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (flights, runs) = (flights.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                flights
                    .run("k", || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(7)
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(7));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Finished flights are forgotten: the next call runs again.
        let again = flights.run("k", || async { Ok(8) }).await;
        assert_eq!(again, Ok(8));
    }

    #[tokio::test]
    async fn errors_reach_every_waiter() {
        let flights: Flights<u8, u8> = Flights::default();
        let r = flights
            .run(1, || async { Err(RegistryError::ManifestUnknown) })
            .await;
        assert_eq!(r, Err(RegistryError::ManifestUnknown));
    }
}
