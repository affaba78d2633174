//! When background work runs: a 5-field cron expression in a time zone, or a fixed frequency.
//! Pure apart from looking the zone up in the system's time zone database.
//!
//! Layer: a value module every layer may use; it imports no other module.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error(
        "invalid cron schedule {expr:?}: {message} (expected 5 fields: minute hour day-of-month month day-of-week)"
    )]
    Cron { expr: String, message: String },
    #[error("unknown time zone {0:?} (expected an IANA name such as Europe/Berlin)")]
    TimeZone(String),
    #[error("frequency must be at least 1s")]
    Frequency,
}

#[derive(Clone, Debug)]
pub enum Schedule {
    Cron { cron: Box<Cron>, tz: TimeZone },
    Every(Duration),
}

impl Schedule {
    /// A standard 5-field cron expression (no seconds, no years), evaluated in `time_zone`
    /// (an IANA name; UTC when not given).
    pub fn cron(expr: &str, time_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let fields = expr.split_whitespace().count();
        let err = |message: String| ScheduleError::Cron {
            expr: expr.to_owned(),
            message,
        };
        if fields != 5 {
            return Err(err(format!("has {fields} fields")));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| err(e.to_string()))?;
        let tz = match time_zone {
            None | Some("") | Some("UTC") => TimeZone::UTC,
            Some(name) => {
                TimeZone::get(name).map_err(|_| ScheduleError::TimeZone(name.to_owned()))?
            }
        };
        Ok(Schedule::Cron {
            cron: Box::new(cron),
            tz,
        })
    }

    pub fn every(d: Duration) -> Result<Schedule, ScheduleError> {
        if d < Duration::from_secs(1) {
            return Err(ScheduleError::Frequency);
        }
        Ok(Schedule::Every(d))
    }

    /// The first run strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Every(d) => jiff::SignedDuration::try_from(*d)
                .ok()
                .and_then(|d| t.checked_add(d).ok()),
            Schedule::Cron { cron, tz } => cron
                .find_next_occurrence(&t.to_zoned(tz.clone()), false)
                .ok()
                .map(|z| z.timestamp()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn daily_at_three() {
        let s = Schedule::cron("0 3 * * *", None).unwrap();
        assert_eq!(
            s.next_after(ts("2026-01-01T02:59:00Z")),
            Some(ts("2026-01-01T03:00:00Z"))
        );
        assert_eq!(
            s.next_after(ts("2026-01-01T03:00:00Z")),
            Some(ts("2026-01-02T03:00:00Z"))
        );
    }

    #[test]
    fn time_zones_and_steps() {
        let s = Schedule::cron("30 2 * * 1", Some("Europe/Berlin")).unwrap();
        // Monday 2026-01-05 02:30 in Berlin is 01:30 UTC.
        assert_eq!(
            s.next_after(ts("2026-01-01T00:00:00Z")),
            Some(ts("2026-01-05T01:30:00Z"))
        );
        let s = Schedule::cron("*/15 * * * *", None).unwrap();
        assert_eq!(
            s.next_after(ts("2026-01-01T00:07:00Z")),
            Some(ts("2026-01-01T00:15:00Z"))
        );
        let s = Schedule::every(Duration::from_secs(3600)).unwrap();
        assert_eq!(
            s.next_after(ts("2026-01-01T00:07:00Z")),
            Some(ts("2026-01-01T01:07:00Z"))
        );
    }

    #[test]
    fn bad_schedules_are_refused() {
        for bad in [
            "",
            "* * * *",
            "0 0 0 * * *",
            "61 * * * *",
            "x * * * *",
            "* * 32 * *",
        ] {
            assert!(Schedule::cron(bad, None).is_err(), "{bad}");
        }
        assert!(matches!(
            Schedule::cron("* * * * *", Some("Mars/Base")),
            Err(ScheduleError::TimeZone(_))
        ));
        assert!(Schedule::every(Duration::ZERO).is_err());
    }
}
