//! Status conditions per the Kubernetes API conventions: one per type, `lastTransitionTime`
//! moves only when the status flips, `observedGeneration` says which spec they describe.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// A condition to set; [`set`] fills in the transition time.
#[derive(Clone, Debug, PartialEq)]
pub struct Cond<'a> {
    pub type_: &'a str,
    pub status: bool,
    pub reason: &'a str,
    pub message: String,
}

impl<'a> Cond<'a> {
    pub fn new(type_: &'a str, status: bool, reason: &'a str, message: impl Into<String>) -> Self {
        Cond {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

fn status_str(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// Sets `cond` in `conditions` (replacing one of the same type), keeping the previous
/// `lastTransitionTime` when the status did not change. Conditions stay sorted by type so the
/// status is stable from one reconcile to the next.
pub fn set(conditions: &mut Vec<Condition>, cond: Cond<'_>, generation: Option<i64>, now: Time) {
    let status = status_str(cond.status).to_string();
    let previous = conditions.iter().position(|c| c.type_ == cond.type_);
    let last_transition_time = match previous.map(|i| &conditions[i]) {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => now,
    };
    let new = Condition {
        type_: cond.type_.to_string(),
        status,
        reason: cond.reason.to_string(),
        // The API server refuses messages over 32 KiB.
        message: super::report::bounded(&cond.message, super::report::MESSAGE_MAX),
        observed_generation: generation,
        last_transition_time,
    };
    match previous {
        Some(i) => conditions[i] = new,
        None => conditions.push(new),
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// The condition of a type, if set.
pub fn get<'c>(conditions: &'c [Condition], type_: &str) -> Option<&'c Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether a condition of this type is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut conds = Vec::new();
        set(
            &mut conds,
            Cond::new(READY, false, "Starting", "0/1"),
            Some(1),
            t("2026-01-01T00:00:00Z"),
        );
        set(
            &mut conds,
            Cond::new(READY, false, "Starting", "0/1 still"),
            Some(2),
            t("2026-01-01T00:01:00Z"),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, t("2026-01-01T00:00:00Z"));
        assert_eq!(conds[0].message, "0/1 still");
        assert_eq!(conds[0].observed_generation, Some(2));
        set(
            &mut conds,
            Cond::new(READY, true, "Serving", "1/1"),
            Some(2),
            t("2026-01-01T00:02:00Z"),
        );
        assert_eq!(conds[0].last_transition_time, t("2026-01-01T00:02:00Z"));
        assert!(is_true(&conds, READY));
    }

    #[test]
    fn conditions_are_sorted_by_type_and_messages_bounded() {
        let mut conds = Vec::new();
        let now = t("2026-01-01T00:00:00Z");
        set(
            &mut conds,
            Cond::new(READY, true, "A", "x".repeat(10_000)),
            None,
            now.clone(),
        );
        set(
            &mut conds,
            Cond::new(DEGRADED, false, "B", ""),
            None,
            now.clone(),
        );
        set(
            &mut conds,
            Cond::new(PROGRESSING, false, "C", ""),
            None,
            now,
        );
        let types: Vec<_> = conds.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Degraded", "Progressing", "Ready"]);
        assert!(get(&conds, READY).unwrap().message.len() <= 4100);
    }
}
