//! Watchable views of the cache on the admin listener: an OpenShift-style Image API that kubectl
//! and kube-rs clients can list and watch, and the Docker Engine image endpoints the docker CLI
//! uses. Both read the store's snapshot and change log and delete through the prune engine.

pub mod docker;
pub mod openshift;
