//! End-to-end: the operator, the CRDs, the rendered manifests and the Helm chart against a real
//! Kubernetes control plane: kube-apiserver with etcd, kube-controller-manager (StatefulSet,
//! garbage collector, namespace, ServiceAccount... controllers) and kube-scheduler, built and
//! started on loopback by `scripts/cluster up` (Node,RBAC authorization, default admission).
//!
//! Every test is `#[ignore]`d: `scripts/test` brings the cluster up and runs them with
//! `--ignored`. Run by hand:
//!
//! ```sh
//! scripts/cluster up && eval "$(scripts/cluster env)"
//! cargo test --test e2e -- --ignored
//! ```
//!
//! Run without a cluster they fail at once, naming what is missing; they never pass by skipping.
//!
//! The cluster has no node yet, so the suite plays the kubelet's part only ([`kubelet`]): for each
//! registry Pod the StatefulSet controller creates, it runs `imagecache serve` with the Pod's
//! command, config and token (materialised from the Pod's volumes), on a loopback address that
//! stands for the Pod IP, probes it as the readiness probe would, restarts it when it exits and
//! reports all of it in the Pod's status. Everything else is the real control plane's work.
//!
//! The operator runs as a process on this machine (as its Deployment would run it), with a token
//! of its own ServiceAccount from `deploy/operator.yaml` ([`operator`]): exactly that RBAC, no
//! impersonation. Each test works in namespaces of its own, deleted (and waited for) at its end;
//! the tests that reinstall the CRDs take the cluster for themselves ([`harness::exclusive`]).

#[path = "../support/mod.rs"]
mod support;

mod fixture;
mod harness;
mod kubelet;
mod operator;

mod cachedimage;
mod crds;
mod imagecache;
mod leader;
mod packaging;
mod peers;
mod prunepolicy;
mod rbac;
