//! PrunePolicies on the real control plane: a cron schedule, the run-now annotation, suspend,
//! a time zone and dry runs, what the status and Events record, the printer columns as kubectl
//! prints them, and the image of every kind of workload surviving a run that would otherwise
//! prune it.

use std::time::Duration;

use imagecache::crd::{PrunePolicy, PrunePolicyStatus};
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::fixture::{Fixture, UPSTREAM};
use crate::harness::{
    WAIT, create_prune_policy, event_count, eventually, kubectl, policy_status, rows, run_now,
    wait_event,
};

const CACHE: &str = "cache";
/// One image per workload kind that protects images, and two nothing uses.
const WORKLOAD_IMAGES: [&str; 7] = ["pod", "deploy", "sts", "ds", "rs", "job", "cronjob"];
const UNUSED: [&str; 2] = ["unused-a", "unused-b"];

fn image(name: &str) -> String {
    format!("{UPSTREAM}/e2e/{name}:1")
}

fn pod_template(app: &str, image_name: &str) -> Value {
    json!({"metadata": {"labels": {"app": app}},
        "spec": {"restartPolicy": if app == "job" || app == "cronjob" { "Never" } else { "Always" },
            "containers": [{"name": "c", "image": image(image_name)}]}})
}

/// Every kind of workload the operator reads images from; none of them has a running Pod (the
/// cluster has no node), so only their specs protect the images.
fn workloads() -> Vec<Value> {
    let selector = |app: &str| json!({"matchLabels": {"app": app}});
    vec![
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"},
            "spec": pod_template("pod", "pod")["spec"]}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "scaled-to-zero"},
            "spec": {"replicas": 0, "selector": selector("deploy"), "template": pod_template("deploy", "deploy")}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "sts"},
            "spec": {"replicas": 0, "serviceName": "sts", "selector": selector("sts"), "template": pod_template("sts", "sts")}}),
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "ds"},
            "spec": {"selector": selector("ds"), "template": pod_template("ds", "ds")}}),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "rs"},
            "spec": {"replicas": 0, "selector": selector("rs"), "template": pod_template("rs", "rs")}}),
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "job"},
            "spec": {"suspend": true, "template": pod_template("job", "job")}}),
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "cronjob"},
            "spec": {"schedule": "0 0 1 1 *", "suspend": true,
                "jobTemplate": {"spec": {"template": pod_template("cronjob", "cronjob")}}}}),
    ]
}

/// Waits until the policy records a completed run that started after `after`.
async fn run_after(
    api: &Api<PrunePolicy>,
    name: &str,
    after: Option<Timestamp>,
    timeout: Duration,
) -> PrunePolicyStatus {
    eventually(&format!("a run of {name}"), timeout, || async {
        let s = policy_status(api, name).await?;
        let run = s.last_run.as_ref()?;
        run.completion_time.as_ref()?;
        let started = run.start_time.as_ref()?.0;
        after.is_none_or(|a| started > a).then_some(s)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the test cluster: scripts/test runs it"]
async fn prune_policy_runs_and_protects_every_workload() {
    let names: Vec<&str> = WORKLOAD_IMAGES
        .iter()
        .chain(UNUSED.iter())
        .copied()
        .collect();
    let fx = Fixture::new("pp", &names).await;
    let client = fx.client().clone();
    let ns = fx.ns().to_owned();
    fx.create_cache(CACHE, json!({})).await;
    fx.ready(CACHE, 1).await;
    for name in &names {
        fx.pull("cache-0", name);
    }
    for w in workloads() {
        let out =
            crate::harness::kubectl_output(&["create", "-n", &ns, "-f", "-"], Some(&w.to_string()));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A schedule every minute: the first run comes at a minute boundary.
    let policies: Api<PrunePolicy> = Api::namespaced(client.clone(), &ns);
    create_prune_policy(
        &policies,
        "every-minute",
        json!({"cacheRef": {"name": CACHE}, "schedule": "* * * * *",
            "request": {"patterns": ["e2e/"], "minAge": "0", "count": -1, "maxDeletionRatio": 1.0}}),
    )
    .await;
    let status = run_after(&policies, "every-minute", None, Duration::from_secs(150)).await;
    let run = status.last_run.clone().expect("last run");
    assert_eq!(run.result.as_deref(), Some("Succeeded"), "{run:?}");
    assert_eq!(
        run.totals.manifests, 2,
        "only the unused images go: {run:?}"
    );
    assert_eq!(run.totals.protected.get("inUse"), Some(&7), "{run:?}");
    let started = status
        .last_schedule_time
        .clone()
        .expect("lastScheduleTime")
        .0;
    assert_eq!(
        started.as_second() % 60,
        0,
        "a scheduled run starts on the minute: {started}"
    );
    let held = fx.held(CACHE, "cache-0").await;
    for name in WORKLOAD_IMAGES {
        assert!(held.contains(&fx.digests[name]), "{name}'s image survives");
    }
    for name in UNUSED {
        assert!(!held.contains(&fx.digests[name]), "{name} is pruned");
    }
    wait_event(
        &client,
        &ns,
        "PrunePolicy",
        "every-minute",
        "PruneSucceeded",
        1,
    )
    .await;

    // The printer columns, values included (NEXT is a time to come).
    let table = kubectl(&["get", "prunepolicy", "every-minute", "-n", &ns]);
    let row = &rows(&table)[0];
    assert_eq!(row["CACHE"], CACHE, "{table}");
    assert_eq!(row["SCHEDULE"], "* * * * *", "{table}");
    assert_eq!(row["DRY-RUN"], "false", "{table}");
    assert!(
        row["LAST RUN"].ends_with('s') || row["LAST RUN"].ends_with('m'),
        "{table}"
    );
    assert_eq!(row["PRUNED"], "2", "{table}");
    assert_eq!(
        row["RECLAIMED"],
        run.totals.reclaimed.clone().expect("reclaimed"),
        "{table}"
    );
    let next: Timestamp = row["NEXT"]
        .parse()
        .unwrap_or_else(|e| panic!("NEXT {:?}: {e}\n{table}", row["NEXT"]));
    assert!(
        next > Timestamp::now() - jiff::SignedDuration::from_secs(5),
        "{table}"
    );

    // Suspended: no scheduled run comes, a manual one still does; history and events grow.
    policies
        .patch(
            "every-minute",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .expect("suspend");
    let suspended_at = Timestamp::now();
    eventually("the suspension in the status", WAIT, || async {
        let s = policy_status(&policies, "every-minute").await?;
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.reason == "Suspended" && s.next_schedule_time.is_none()).then_some(())
    })
    .await;
    let row = &rows(&kubectl(&["get", "pp", "every-minute", "-n", &ns]))[0];
    assert_eq!(row["NEXT"], "", "no next run while suspended");
    // Past the next minute boundary: nothing ran.
    let wait = 65 - (Timestamp::now().as_second() % 60) as u64;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let s = policy_status(&policies, "every-minute")
        .await
        .expect("status");
    assert_eq!(
        s.last_schedule_time.as_ref().map(|t| t.0),
        Some(started),
        "suspended: no run"
    );
    assert!(suspended_at < Timestamp::now());

    // A dry run by annotation: reported, nothing deleted.
    fx.pull("cache-0", "unused-a");
    policies
        .patch(
            "every-minute",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"dryRun": true}})),
        )
        .await
        .expect("dry run");
    run_now(&policies, "every-minute", "dry-1").await;
    let s = run_after(&policies, "every-minute", Some(started), WAIT).await;
    let run = s.last_run.clone().expect("run");
    assert!(run.dry_run, "{run:?}");
    assert_eq!(run.totals.manifests, 1, "{run:?}");
    assert!(
        run.items.iter().any(|i| i.digest == fx.digests["unused-a"]),
        "{run:?}"
    );
    assert_eq!(s.last_manual_run.as_deref(), Some("dry-1"));
    assert!(
        fx.held(CACHE, "cache-0")
            .await
            .contains(&fx.digests["unused-a"]),
        "a dry run deletes nothing"
    );
    assert_eq!(
        s.history.len(),
        1,
        "the first run moved to the history: {:?}",
        s.history
    );
    let row = &rows(&kubectl(&["get", "pp", "every-minute", "-n", &ns]))[0];
    assert_eq!(row["DRY-RUN"], "true");
    assert_eq!(row["PRUNED"], "1");
    wait_event(
        &client,
        &ns,
        "PrunePolicy",
        "every-minute",
        "PruneSucceeded",
        2,
    )
    .await;
    assert_eq!(
        event_count(
            &client,
            &ns,
            "PrunePolicy",
            "every-minute",
            "PruneSucceeded"
        )
        .await,
        2,
        "one Event per run"
    );

    // A time zone: the next run is 03:00 in Paris.
    create_prune_policy(
        &policies,
        "paris",
        json!({"cacheRef": {"name": CACHE}, "schedule": "0 3 * * *", "timeZone": "Europe/Paris",
            "request": {"unusedFor": "30d"}}),
    )
    .await;
    let next = eventually("the next run of paris", WAIT, || async {
        policy_status(&policies, "paris")
            .await?
            .next_schedule_time
            .map(|t| t.0)
    })
    .await;
    let local = next.to_zoned(jiff::tz::TimeZone::get("Europe/Paris").expect("tz"));
    assert_eq!(
        (local.hour(), local.minute(), local.second()),
        (3, 0, 0),
        "{local}"
    );
    assert!(
        next > Timestamp::now() && next < Timestamp::now() + jiff::SignedDuration::from_hours(25)
    );
    let row = &rows(&kubectl(&["get", "pp", "paris", "-n", &ns]))[0];
    assert_eq!(row["NEXT"], next.to_string());
    assert_eq!(row["LAST RUN"], "", "no run yet");

    fx.finish().await;
}
