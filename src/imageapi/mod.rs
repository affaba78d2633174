//! Watchable views of the cache on the admin listener: an OpenShift-style Image API that kubectl
//! and kube-rs clients can list and watch, and the Docker Engine image endpoints the docker CLI
//! uses. Both read the store's snapshot and change log and delete through the prune engine.
//!
//! Layer: HTTP views over the store and the prune service. They run on the admin listener's
//! state ([`crate::admin::AdminState`]) and are mounted beside its routes by
//! `server::admin_router`; the objects they serve are wire shapes in [`crate::api`]. Nothing here
//! knows the registry data plane, the upstreams or the operator.

use std::sync::Arc;

use axum::Router;

use crate::admin::AdminState;

pub mod docker;
pub mod openshift;

/// Both image APIs, to mount on the admin listener.
pub fn routes() -> Router<Arc<AdminState>> {
    openshift::routes().merge(docker::routes())
}
