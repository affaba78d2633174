//! Leader election on the real Lease of `deploy/` (`imagecache-operator` in
//! `imagecache-system`): two operator processes, one leader at every sample; SIGTERM releases
//! the Lease and the other leads within the lease duration, after letting a prune in flight
//! finish (it runs once, not cut short and not again); SIGKILL leaves the Lease to expire.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use imagecache::crd::PrunePolicy;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::fixture::Fixture;
use crate::harness::{LEASE, OPERATOR_NS, WAIT, create_prune_policy, eventually};
use crate::operator::{self, Operator, Options};

const CACHE: &str = "cache";
/// The operator's lease duration (`leader::Timings::default`).
const LEASE_DURATION: Duration = Duration::from_secs(15);

fn elected(ns: &str, identity: &str, work: &std::path::Path) -> Operator {
    Operator::start(
        Options {
            namespace: Some(ns),
            leader_elect: true,
            identity,
        },
        work,
    )
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases.get(LEASE).await.ok()?.spec?.holder_identity
}

/// The registry Pod's count of prune runs by the admin API.
async fn pod_prune_runs(fx: &Fixture) -> f64 {
    let url = format!("{}/metrics", fx.kubelet.admin_url("cache-0"));
    let text = reqwest::get(&url)
        .await
        .expect("registry metrics")
        .text()
        .await
        .expect("text");
    crate::support::metric_sum(&text, "imagecache_prune_runs_total")
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the test cluster: scripts/test runs it"]
async fn one_leader_and_clean_handovers() {
    let mut fx = Fixture::without_operator("leader", &[]).await;
    let ns = fx.ns().to_owned();
    let leases: Api<Lease> = Api::namespaced(fx.client().clone(), OPERATOR_NS);
    let work = fx.work.path().to_owned();

    let mut a = elected(&ns, "operator-a", &work);
    eventually("operator-a to lead", WAIT, || async {
        a.leads().await.then_some(())
    })
    .await;
    let mut b = elected(&ns, "operator-b", &work);
    assert_eq!(holder(&leases).await.as_deref(), Some("operator-a"));

    // One leader at every sample, for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let urls = [a.metrics_url(), b.metrics_url()];
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut samples, mut two) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let (x, y) = tokio::join!(operator::leads(&urls[0]), operator::leads(&urls[1]));
                samples += 1;
                if x && y {
                    two.push(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (samples, two)
        })
    };

    fx.create_cache(CACHE, json!({})).await;
    fx.ready(CACHE, 1).await;
    assert!(!b.leads().await, "operator-b stands by");

    // SIGTERM while a prune is in flight (the registry Pod is stopped, so the prune waits).
    let policies: Api<PrunePolicy> = Api::namespaced(fx.client().clone(), &ns);
    create_prune_policy(
        &policies,
        "handover",
        json!({"cacheRef": {"name": CACHE}, "schedule": "0 0 1 1 *", "suspend": true,
            "request": {"unusedFor": "30d"}}),
    )
    .await;
    let runs_before = pod_prune_runs(&fx).await;
    let registry_pid = fx.kubelet.pid("cache-0").expect("registry running");
    signal(registry_pid, "STOP");
    policies
        .patch(
            "handover",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"imagecache.io/run-now": "handover"}}}),
            ),
        )
        .await
        .expect("run now");
    eventually("operator-a to start the run", WAIT, || async {
        a.log().contains("PrunePolicy run").then_some(())
    })
    .await;
    a.send_term();
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(registry_pid, "CONT");
    let exit = a.wait_exit();
    let released = Instant::now();
    assert!(exit.success(), "operator-a exit {exit}");
    eventually("operator-b to lead", LEASE_DURATION, || async {
        b.leads().await.then_some(())
    })
    .await;
    let handover = released.elapsed();
    assert!(handover < LEASE_DURATION, "handover took {handover:?}");
    assert_eq!(holder(&leases).await.as_deref(), Some("operator-b"));
    // The run finished under operator-a and is recorded once; operator-b does not run it again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = policies
        .get("handover")
        .await
        .expect("policy")
        .status
        .expect("status");
    let run = status
        .last_run
        .clone()
        .expect("the run in flight was recorded");
    assert_eq!(run.result.as_deref(), Some("Succeeded"), "{run:?}");
    assert_eq!(status.last_manual_run.as_deref(), Some("handover"));
    assert!(
        status.history.is_empty(),
        "one run only: {:?}",
        status.history
    );
    assert_eq!(
        pod_prune_runs(&fx).await - runs_before,
        1.0,
        "the Pod pruned once"
    );
    eprintln!("SIGTERM handover: operator-b led {handover:?} after operator-a exited");

    // SIGKILL of the leader: the Lease is not released; operator-a (back as a standby) leads
    // once it expires.
    a.restart();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!a.leads().await, "operator-a stands by");
    b.kill();
    let killed = Instant::now();
    eventually(
        "operator-a to lead after expiry",
        LEASE_DURATION * 3,
        || async { a.leads().await.then_some(()) },
    )
    .await;
    let takeover = killed.elapsed();
    assert!(
        takeover >= LEASE_DURATION - Duration::from_secs(3) && takeover < LEASE_DURATION * 2,
        "after SIGKILL the Lease expires first: took {takeover:?}"
    );
    assert_eq!(holder(&leases).await.as_deref(), Some("operator-a"));
    eprintln!("SIGKILL takeover: operator-a led {takeover:?} after operator-b was killed");

    stop.store(true, Ordering::Relaxed);
    let (samples, two) = sampler.await.expect("sampler");
    assert!(samples > 50, "{samples} samples");
    assert!(
        two.is_empty(),
        "two leaders at {} of {samples} samples",
        two.len()
    );

    operator::assert_no_refusals("operator-b", &b.log());
    fx.operator = Some(a);
    fx.finish().await;
}
