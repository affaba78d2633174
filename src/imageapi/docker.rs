//! (being written)

use std::sync::Arc;

use axum::Router;

use crate::admin::AdminState;

pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
}
