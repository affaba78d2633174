//! Leader election on a `coordination.k8s.io/v1` Lease: one operator replica reconciles, the
//! others wait. The rules follow client-go's leaderelection: the holder renews `renewTime`
//! every retry period; anyone may take a Lease whose `renewTime + leaseDurationSeconds` has
//! passed; writes carry the read `resourceVersion`, so of two racing candidates one gets 409 and
//! goes on waiting. A leader that cannot renew within the renew deadline stops leading.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

/// Timings of the election (client-go's defaults).
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// How long a Lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// A leader that has not renewed within this gives up.
    pub renew_deadline: Duration,
    /// Between two attempts (candidates) or renewals (leader).
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What a candidate does with the Lease it read.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// No Lease yet: create it, held by us.
    Create,
    /// Ours: write a fresh `renewTime`.
    Renew,
    /// Expired or released: take it over (`leaseTransitions` + 1).
    TakeOver,
    /// Someone else holds it until about this time.
    Wait { holder: String, until: Timestamp },
}

/// The pure rule: what `identity` does with `lease` at `now`.
pub fn step(lease: Option<&Lease>, identity: &str, now: Timestamp, timings: Timings) -> Step {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return if lease.is_some() {
            Step::TakeOver
        } else {
            Step::Create
        };
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == identity {
        return Step::Renew;
    }
    if holder.is_empty() {
        return Step::TakeOver;
    }
    let duration = spec
        .lease_duration_seconds
        .map(|s| Duration::from_secs(s.max(0) as u64))
        .unwrap_or(timings.lease_duration);
    let last = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    match last.and_then(|t| t.checked_add(duration).ok()) {
        Some(until) if until > now => Step::Wait {
            holder: holder.to_string(),
            until,
        },
        _ => Step::TakeOver,
    }
}

/// The Lease after `step` was taken by `identity` at `now` (for Create, Renew, TakeOver).
pub fn next_lease(
    current: Option<&Lease>,
    step: &Step,
    name: &str,
    identity: &str,
    now: Timestamp,
    timings: Timings,
) -> Lease {
    let mut lease = current.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let mut spec = lease.spec.take().unwrap_or_default();
    let micro = MicroTime(now);
    match step {
        Step::Renew => {}
        Step::Create => {
            spec = LeaseSpec {
                lease_transitions: Some(0),
                acquire_time: Some(micro.clone()),
                ..LeaseSpec::default()
            };
        }
        Step::TakeOver => {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.acquire_time = Some(micro.clone());
        }
        Step::Wait { .. } => {}
    }
    spec.holder_identity = Some(identity.to_string());
    spec.lease_duration_seconds = Some(timings.lease_duration.as_secs() as i32);
    spec.renew_time = Some(micro);
    lease.spec = Some(spec);
    lease
}

/// A candidate for one Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
}

/// How a leadership ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown was asked for.
    Shutdown,
    /// Renewal failed for longer than the renew deadline, or someone else holds the Lease.
    Lost,
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timings: Timings) -> Elector {
        Elector {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            timings,
        }
    }

    /// One attempt: read the Lease and take the step. `Ok(true)` when we hold it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let now = Timestamp::now();
        let step = step(current.as_ref(), &self.identity, now, self.timings);
        if let Step::Wait { .. } = step {
            return Ok(false);
        }
        let lease = next_lease(
            current.as_ref(),
            &step,
            &self.name,
            &self.identity,
            now,
            self.timings,
        );
        let written = match step {
            Step::Create => self.api.create(&PostParams::default(), &lease).await,
            // `replace` sends the resourceVersion we read: a concurrent writer makes it 409.
            _ => {
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => {
                if step != Step::Renew {
                    tracing::info!(lease = %self.name, identity = %self.identity, ?step, "acquired leadership");
                }
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate leads (`true`) or shutdown is asked (`false`).
    pub async fn acquire(&self, shutdown: &CancellationToken) -> bool {
        let mut logged_wait = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return true,
                Ok(false) => {
                    if !logged_wait {
                        tracing::info!(lease = %self.name, "another replica leads; standing by");
                        logged_wait = true;
                    }
                }
                Err(e) => tracing::warn!(lease = %self.name, error = %e, "leader election"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(self.timings.retry_period) => {}
            }
        }
    }

    /// Renews while leading; returns when shutdown is asked or leadership is lost.
    pub async fn hold(&self, shutdown: &CancellationToken) -> Ended {
        let mut last_renewed = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                _ = tokio::time::sleep(self.timings.retry_period) => {}
            }
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = std::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.name, "another replica took the lease");
                    return Ended::Lost;
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "lease renewal failed");
                    if last_renewed.elapsed() > self.timings.renew_deadline {
                        return Ended::Lost;
                    }
                }
            }
        }
    }

    /// Gives the Lease up so a standby takes over at once instead of after the lease duration.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "released leadership"),
            Err(e) => tracing::warn!(lease = %self.name, error = %e, "could not release the lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::mock::mock_client;
    use axum::http::Method;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn lease(holder: Option<&str>, renewed: &str, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("op".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: Some(MicroTime(ts(renewed))),
                lease_duration_seconds: Some(seconds),
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn the_rules_of_the_lease() {
        let t = Timings::default();
        let now = ts("2026-01-01T00:00:10Z");
        assert_eq!(step(None, "a", now, t), Step::Create);
        let fresh = lease(Some("b"), "2026-01-01T00:00:00Z", 15);
        assert_eq!(
            step(Some(&fresh), "a", now, t),
            Step::Wait {
                holder: "b".into(),
                until: ts("2026-01-01T00:00:15Z")
            }
        );
        assert_eq!(step(Some(&fresh), "b", now, t), Step::Renew);
        let expired = lease(Some("b"), "2026-01-01T00:00:00Z", 5);
        assert_eq!(step(Some(&expired), "a", now, t), Step::TakeOver);
        let released = lease(None, "2026-01-01T00:00:09Z", 1);
        assert_eq!(step(Some(&released), "a", now, t), Step::TakeOver);
    }

    #[test]
    fn taking_over_counts_a_transition_and_keeps_the_resource_version() {
        let t = Timings::default();
        let now = ts("2026-01-01T00:00:10Z");
        let expired = lease(Some("b"), "2026-01-01T00:00:00Z", 5);
        let next = next_lease(Some(&expired), &Step::TakeOver, "op", "a", now, t);
        let spec = next.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(next.metadata.resource_version.as_deref(), Some("7"));
    }

    #[tokio::test]
    async fn a_candidate_creates_the_lease_and_a_lost_race_is_not_an_error() {
        let (client, mut server) = mock_client();
        let api: Api<Lease> = Api::namespaced(client, "ns");
        let elector = Elector::new(api, "op", "a", Timings::default());
        let attempt = tokio::spawn(async move {
            let first = elector.try_acquire_or_renew().await.unwrap();
            let second = elector.try_acquire_or_renew().await.unwrap();
            (first, second)
        });
        let path = "/apis/coordination.k8s.io/v1/namespaces/ns/leases";
        server
            .expect(Method::GET, &format!("{path}/op"))
            .await
            .not_found();
        let create = server.expect(Method::POST, path).await;
        assert_eq!(create.body["spec"]["holderIdentity"], "a");
        assert_eq!(create.body["spec"]["leaseTransitions"], 0);
        create.echo();
        // Second attempt: someone else's expired lease; our takeover loses the race (409).
        let theirs = lease(Some("b"), "2020-01-01T00:00:00Z", 15);
        server
            .expect(Method::GET, &format!("{path}/op"))
            .await
            .respond(200, serde_json::to_value(&theirs).unwrap());
        let put = server.expect(Method::PUT, &format!("{path}/op")).await;
        assert_eq!(put.body["metadata"]["resourceVersion"], "7");
        assert_eq!(put.body["spec"]["holderIdentity"], "a");
        put.respond(
            409,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
        );
        assert_eq!(attempt.await.unwrap(), (true, false));
    }
}
