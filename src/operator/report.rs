//! How every controller tells what it saw: a status written by server-side apply under the
//! operator's field manager, and Events whose note follows one length rule.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::{Context, MANAGER, object_key};
use super::error::OperatorError;

/// The longest Event note, in bytes: the API refuses a note over 1 KiB.
pub const NOTE_MAX: usize = 1024;
/// The longest condition message, in bytes (the API allows 32 KiB; a reader wants less).
pub const MESSAGE_MAX: usize = 4096;

/// `text` cut to at most `max` bytes on a character boundary, ending in `...` when cut.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Writes `status` to `obj`'s status subresource by server-side apply (forced: the operator
/// owns its status).
pub async fn apply_status<K, S>(ctx: &Context, obj: &K, status: &S) -> Result<(), OperatorError>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned,
    S: Serialize,
{
    let ns = obj
        .namespace()
        .ok_or(OperatorError::MissingField("metadata.namespace"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// An Event (a transition a controller decided on, before it is published).
pub fn event(type_: EventType, reason: &str, action: &str, note: impl Into<String>) -> Event {
    Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.into()),
        action: action.to_owned(),
        secondary: None,
    }
}

/// Publishes `event` about `obj` with its note bounded to [`NOTE_MAX`]; a failure is logged,
/// never fatal.
pub async fn publish<K>(ctx: &Context, obj: &K, mut event: Event)
where
    K: Resource<DynamicType = ()>,
{
    event.note = event.note.map(|n| bounded(&n, NOTE_MAX));
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(object = %object_key(obj), reason = %event.reason, error = %e, "cannot publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_cuts_on_a_character_boundary_and_says_so() {
        assert_eq!(bounded("short", 10), "short");
        assert_eq!(bounded("exactly10!", 10), "exactly10!");
        assert_eq!(bounded("0123456789abc", 10), "0123456...");
        // 'é' is two bytes: the cut never splits it.
        let cut = bounded("ééééé", 8);
        assert_eq!(cut, "éé...");
        assert!(cut.len() <= 8);
        let long = "x".repeat(5000);
        assert_eq!(bounded(&long, NOTE_MAX).len(), NOTE_MAX);
    }
}
