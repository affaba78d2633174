//! Whether a PrunePolicy runs now, and when it runs next: pure, from the spec's schedule, what
//! the status remembers, the object's creation time and the clock.
//!
//! Rules:
//! - A scheduled time runs once. Slots that passed while the operator was down or busy run
//!   once, together, as soon as it sees them (`Missed`), never once per slot.
//! - Slots before the policy existed never run: counting starts at `creationTimestamp`.
//! - The annotation [`RUN_NOW`] with a value the status has not answered yet runs at once
//!   (`Manual`), also while suspended: it is an explicit request.
//! - `suspend` blocks scheduled runs; on resume, a slot that passed while suspended runs once
//!   (as a Kubernetes CronJob without a starting deadline does).

use std::time::Duration;

use jiff::Timestamp;

use crate::schedule::Schedule;

/// Annotation asking for a run now; any new value asks again
/// (`kubectl annotate pp NAME imagecache.io/run-now="$(date +%s)" --overwrite`).
pub const RUN_NOW: &str = "imagecache.io/run-now";

/// A slot is `Missed` rather than `Scheduled` when the run starts this long after it.
pub const MISSED_AFTER: Duration = Duration::from_secs(60);

/// Longest wait between two reconciles of a policy, so clock jumps are caught up with.
pub const MAX_REQUEUE: Duration = Duration::from_secs(3600);

/// Why a run starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A scheduled time, on time.
    Scheduled,
    /// One or more scheduled times passed while the operator was down or busy; they run once.
    Missed,
    /// The [`RUN_NOW`] annotation.
    Manual,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Scheduled => "Scheduled",
            Reason::Missed => "Missed",
            Reason::Manual => "Manual",
        }
    }
}

/// What the decision looks at.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub suspend: bool,
    /// `status.lastScheduleTime`: when the last run started.
    pub last_schedule_time: Option<Timestamp>,
    /// The current value of the [`RUN_NOW`] annotation.
    pub run_now: Option<&'a str>,
    /// `status.lastManualRun`: the annotation value the last manual run answered.
    pub last_manual_run: Option<&'a str>,
    /// `metadata.creationTimestamp`.
    pub created: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// Run now, and why; `None`: wait.
    pub run: Option<Reason>,
    /// The first scheduled time after now; `None` while suspended (or for a schedule that never
    /// fires again).
    pub next: Option<Timestamp>,
    /// When to look again.
    pub requeue: Duration,
}

/// Decides whether to run at `now`.
pub fn decide(schedule: &Schedule, inputs: &Inputs<'_>, now: Timestamp) -> Due {
    let manual = inputs
        .run_now
        .is_some_and(|v| Some(v) != inputs.last_manual_run);
    // Counting starts at the last run, or at the policy's creation.
    let since = match (inputs.last_schedule_time, inputs.created) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let scheduled = match since {
        _ if inputs.suspend => None,
        // Without any reference point, wait for the next slot rather than guess.
        None => None,
        Some(since) => schedule
            .next_after(since)
            .filter(|slot| *slot <= now)
            .map(|slot| {
                if now.duration_since(slot).as_secs() > MISSED_AFTER.as_secs() as i64 {
                    Reason::Missed
                } else {
                    Reason::Scheduled
                }
            }),
    };
    let run = if manual {
        Some(Reason::Manual)
    } else {
        scheduled
    };
    let next = if inputs.suspend {
        None
    } else {
        schedule.next_after(now)
    };
    Due {
        run,
        next,
        requeue: requeue_until(next, now),
    }
}

/// The wait until `next`, at most [`MAX_REQUEUE`] (and at least one second, so a clock a hair
/// early does not spin).
pub fn requeue_until(next: Option<Timestamp>, now: Timestamp) -> Duration {
    match next {
        None => MAX_REQUEUE,
        Some(next) => Duration::try_from(next.duration_since(now))
            .unwrap_or_default()
            .clamp(Duration::from_secs(1), MAX_REQUEUE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn daily_at_three() -> Schedule {
        Schedule::cron("0 3 * * *", None).unwrap()
    }

    /// A policy created long ago whose last run was at `last`.
    fn ran_at(last: &str) -> Inputs<'static> {
        Inputs {
            suspend: false,
            last_schedule_time: Some(ts(last)),
            run_now: None,
            last_manual_run: None,
            created: Some(ts("2025-06-01T00:00:00Z")),
        }
    }

    #[test]
    fn a_slot_runs_on_time_as_scheduled_and_the_next_one_is_a_day_later() {
        let d = decide(
            &daily_at_three(),
            &ran_at("2026-01-01T03:00:00Z"),
            ts("2026-01-02T03:00:00.250Z"),
        );
        assert_eq!(d.run, Some(Reason::Scheduled));
        assert_eq!(d.next, Some(ts("2026-01-03T03:00:00Z")));
        assert_eq!(d.requeue, MAX_REQUEUE, "a day away is capped");
    }

    #[test]
    fn before_the_slot_nothing_runs_and_the_requeue_is_the_time_left() {
        let d = decide(
            &daily_at_three(),
            &ran_at("2026-01-01T03:00:00Z"),
            ts("2026-01-02T02:59:30Z"),
        );
        assert_eq!(d.run, None);
        assert_eq!(d.next, Some(ts("2026-01-02T03:00:00Z")));
        assert_eq!(d.requeue, Duration::from_secs(30));
    }

    #[test]
    fn once_a_run_is_recorded_the_same_slot_does_not_run_again() {
        // lastScheduleTime is the run's start, stored to the second.
        let d = decide(
            &daily_at_three(),
            &ran_at("2026-01-02T03:00:00Z"),
            ts("2026-01-02T03:00:05Z"),
        );
        assert_eq!(d.run, None);
        assert_eq!(d.next, Some(ts("2026-01-03T03:00:00Z")));
    }

    #[test]
    fn slots_missed_while_down_run_once_as_missed() {
        // Down for three days: three slots passed; one run, and then none.
        let now = ts("2026-01-04T09:00:00Z");
        let d = decide(&daily_at_three(), &ran_at("2026-01-01T03:00:00Z"), now);
        assert_eq!(d.run, Some(Reason::Missed));
        assert_eq!(d.next, Some(ts("2026-01-05T03:00:00Z")));
        let after = decide(&daily_at_three(), &ran_at("2026-01-04T09:00:00Z"), now);
        assert_eq!(after.run, None);
        // Late by more than a minute (the operator was busy) is missed, within is on time.
        let late = decide(
            &daily_at_three(),
            &ran_at("2026-01-01T03:00:00Z"),
            ts("2026-01-02T03:01:01Z"),
        );
        assert_eq!(late.run, Some(Reason::Missed));
        let close = decide(
            &daily_at_three(),
            &ran_at("2026-01-01T03:00:00Z"),
            ts("2026-01-02T03:01:00Z"),
        );
        assert_eq!(close.run, Some(Reason::Scheduled));
    }

    #[test]
    fn a_new_policy_does_not_run_for_a_slot_before_it_existed() {
        let mut inputs = ran_at("2026-01-01T00:00:00Z");
        inputs.last_schedule_time = None;
        inputs.created = Some(ts("2026-01-02T03:30:00Z"));
        let d = decide(&daily_at_three(), &inputs, ts("2026-01-02T03:30:02Z"));
        assert_eq!(d.run, None);
        assert_eq!(d.next, Some(ts("2026-01-03T03:00:00Z")));
        // Its first slot does run.
        let d = decide(&daily_at_three(), &inputs, ts("2026-01-03T03:00:00Z"));
        assert_eq!(d.run, Some(Reason::Scheduled));
        // A policy recreated after an old run: the creation time wins over a stale status.
        inputs.last_schedule_time = Some(ts("2025-12-01T03:00:00Z"));
        let d = decide(&daily_at_three(), &inputs, ts("2026-01-02T03:30:02Z"));
        assert_eq!(d.run, None);
        // Neither time known: wait for the next slot.
        inputs.last_schedule_time = None;
        inputs.created = None;
        let d = decide(&daily_at_three(), &inputs, ts("2026-01-02T03:30:02Z"));
        assert_eq!(d.run, None);
    }

    #[test]
    fn suspend_blocks_scheduled_runs_but_not_manual_ones() {
        let mut inputs = ran_at("2026-01-01T03:00:00Z");
        inputs.suspend = true;
        let now = ts("2026-01-02T03:00:00Z");
        let d = decide(&daily_at_three(), &inputs, now);
        assert_eq!(d.run, None);
        assert_eq!(d.next, None, "nothing is scheduled while suspended");
        assert_eq!(d.requeue, MAX_REQUEUE);
        inputs.run_now = Some("1");
        assert_eq!(
            decide(&daily_at_three(), &inputs, now).run,
            Some(Reason::Manual)
        );
        // Resumed: the slot that passed while suspended runs once.
        inputs.suspend = false;
        inputs.run_now = None;
        let d = decide(&daily_at_three(), &inputs, ts("2026-01-02T10:00:00Z"));
        assert_eq!(d.run, Some(Reason::Missed));
    }

    #[test]
    fn the_run_now_annotation_runs_once_per_value() {
        let now = ts("2026-01-01T12:00:00Z");
        let mut inputs = ran_at("2026-01-01T03:00:00Z");
        assert_eq!(decide(&daily_at_three(), &inputs, now).run, None);
        inputs.run_now = Some("2026-01-01T11:59:00Z");
        let d = decide(&daily_at_three(), &inputs, now);
        assert_eq!(d.run, Some(Reason::Manual));
        assert_eq!(d.next, Some(ts("2026-01-02T03:00:00Z")));
        inputs.last_manual_run = Some("2026-01-01T11:59:00Z");
        assert_eq!(decide(&daily_at_three(), &inputs, now).run, None);
        inputs.run_now = Some("again");
        assert_eq!(
            decide(&daily_at_three(), &inputs, now).run,
            Some(Reason::Manual)
        );
        // The annotation removed: nothing to answer.
        inputs.run_now = None;
        assert_eq!(decide(&daily_at_three(), &inputs, now).run, None);
        // An empty value is a value too.
        inputs.run_now = Some("");
        assert_eq!(
            decide(&daily_at_three(), &inputs, now).run,
            Some(Reason::Manual)
        );
    }

    #[test]
    fn schedules_follow_their_time_zone() {
        let s = Schedule::cron("0 3 * * *", Some("America/New_York")).unwrap();
        // 03:00 EST is 08:00 UTC.
        let inputs = ran_at("2026-01-01T08:00:00Z");
        let d = decide(&s, &inputs, ts("2026-01-02T07:59:00Z"));
        assert_eq!(d.run, None);
        assert_eq!(d.next, Some(ts("2026-01-02T08:00:00Z")));
        assert_eq!(
            decide(&s, &inputs, ts("2026-01-02T08:00:00Z")).run,
            Some(Reason::Scheduled)
        );
    }

    #[test]
    fn a_slot_in_the_spring_forward_gap_runs_right_after_the_gap() {
        // Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
        let s = Schedule::cron("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let inputs = ran_at("2026-03-28T01:30:00Z"); // 02:30 CET the day before
        let d = decide(&s, &inputs, ts("2026-03-29T00:59:00Z"));
        assert_eq!(d.run, None);
        assert_eq!(d.next, Some(ts("2026-03-29T01:00:00Z")), "03:00 CEST");
        let d = decide(&s, &inputs, ts("2026-03-29T01:00:00Z"));
        assert_eq!(d.run, Some(Reason::Scheduled));
        // The day after, 02:30 CEST is 00:30 UTC.
        assert_eq!(d.next, Some(ts("2026-03-30T00:30:00Z")));
    }

    #[test]
    fn a_slot_in_the_repeated_fall_back_hour_runs_once() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        let s = Schedule::cron("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let before = ran_at("2026-10-24T00:30:00Z");
        let d = decide(&s, &before, ts("2026-10-25T00:30:00Z"));
        assert_eq!(d.run, Some(Reason::Scheduled), "the first 02:30 (CEST)");
        // Ran at the first 02:30; the second 02:30 (CET, 01:30 UTC) does not run again.
        let ran = ran_at("2026-10-25T00:30:00Z");
        let d = decide(&s, &ran, ts("2026-10-25T01:30:00Z"));
        assert_eq!(d.run, None);
        assert_eq!(
            d.next,
            Some(ts("2026-10-26T01:30:00Z")),
            "02:30 CET next day"
        );
    }

    #[test]
    fn requeue_is_bounded() {
        let now = ts("2026-01-01T00:00:00Z");
        assert_eq!(requeue_until(None, now), MAX_REQUEUE);
        assert_eq!(
            requeue_until(Some(ts("2026-01-01T00:10:00Z")), now),
            Duration::from_secs(600)
        );
        assert_eq!(
            requeue_until(Some(ts("2025-12-31T23:59:59Z")), now),
            Duration::from_secs(1),
            "a next time in the past (clock jump) does not spin"
        );
    }
}
