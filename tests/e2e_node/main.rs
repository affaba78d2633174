//! End-to-end on a real node: what users buy is "`helm install` the chart, and every node pulls
//! its images through the in-cluster mirror, which keeps pruning itself without ever removing an
//! image a workload needs". `scripts/cluster up --node` gives a control plane with one node (a
//! kubelet, kube-proxy and Debian's containerd with runc and CNI, in namespaces of its own); this
//! suite installs the chart on it with the project's image (built from the binary cargo built for
//! the test run, without a Docker engine, and imported into the node's containerd) and an
//! upstream Distribution registry on the host end of the node's link, and checks every part of
//! that sentence with real Pods, printing the figures it measures.
//!
//! Every test is `#[ignore]`d: `scripts/test` starts the node and runs them with `--ignored`.
//! Run by hand:
//!
//! ```sh
//! scripts/cluster up --node && eval "$(scripts/cluster env)"
//! cargo test --test e2e_node -- --ignored --nocapture
//! ```
//!
//! Without a node they fail at once, saying how to start one.

#[path = "../support/mod.rs"]
mod support;

// The control-plane suite's harness (client, kubectl, namespaces, events, waiting); this suite
// uses part of it.
#[allow(dead_code)]
#[path = "../e2e/harness.rs"]
mod harness;

mod images;
mod mirror;
mod node;
