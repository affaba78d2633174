//! When an upstream request is tried again: the pure rules behind [`super::Upstream::send`].
//!
//! Only failures before any body byte was read are retried there (a connection refused or
//! reset, 429, 500, 502, 503, 504), so a retry never duplicates bytes a client has seen; a
//! blob body cut short is resumed with a `Range` request by the blob fetch instead. The waits
//! of one request add up to at most `maxWait`: an upstream asking for longer (`Retry-After`)
//! gets its answer passed back to the client, whose own retry then respects it.

use std::time::{Duration, SystemTime};

use crate::config::RetryConfig;

/// The first backoff; doubled on every further try, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A longer `Retry-After` is read as this: no upstream gets to stall us for more than a day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// What went wrong with one try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No response: the connection was refused, reset or closed before the headers.
    Transport,
    /// A response with this status.
    Status(u16),
}

impl Failure {
    /// Whether trying again can help: the upstream's problem may be gone a moment later.
    pub fn is_transient(self) -> bool {
        match self {
            Failure::Transport => true,
            Failure::Status(s) => matches!(s, 429 | 500 | 502 | 503 | 504),
        }
    }
}

/// The verdict for a failed try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Wait this long, then try again.
    Retry(Duration),
    /// Hand the failure to the caller.
    GiveUp,
}

/// Decides after `tries` tries (the first is 1) that ended in `failure`, with `waited` spent
/// waiting so far and the upstream's `Retry-After`, if any. `jitter` in `[0, 1)` spreads the
/// backoff of many clients over ±25% so they do not come back in step.
pub fn decide(
    config: &RetryConfig,
    tries: u32,
    failure: Failure,
    retry_after: Option<Duration>,
    waited: Duration,
    jitter: f64,
) -> Decision {
    if !failure.is_transient() || tries >= config.attempts {
        return Decision::GiveUp;
    }
    let wait = retry_after.unwrap_or_else(|| backoff(tries, jitter));
    if waited.saturating_add(wait) > config.max_wait {
        return Decision::GiveUp;
    }
    Decision::Retry(wait)
}

/// The pause after `tries` failed tries, without a `Retry-After`.
pub fn backoff(tries: u32, jitter: f64) -> Duration {
    let doublings = tries.saturating_sub(1).min(16);
    let base = FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF);
    base.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A `Retry-After` value: delta-seconds or an HTTP date (RFC 9110 §10.2.3), as a wait from
/// `now`, at most [`MAX_RETRY_AFTER`]. A date in the past is no wait; anything unreadable is
/// ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let date = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
            let now = jiff::Timestamp::try_from(now).ok()?;
            Duration::try_from(now.duration_until(date)).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// How `Retry-After` is written back to a client: whole seconds, rounded up so the client
/// never comes back early.
pub fn retry_after_header(wait: Duration) -> String {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(attempts: u32, max_wait_secs: u64) -> RetryConfig {
        RetryConfig {
            attempts,
            max_wait: Duration::from_secs(max_wait_secs),
        }
    }

    #[test]
    fn transient_failures_are_retried_until_the_attempts_run_out() {
        let c = config(3, 10);
        for failure in [
            Failure::Transport,
            Failure::Status(429),
            Failure::Status(500),
            Failure::Status(502),
            Failure::Status(503),
            Failure::Status(504),
        ] {
            assert!(matches!(
                decide(&c, 1, failure, None, Duration::ZERO, 0.5),
                Decision::Retry(_)
            ));
            assert!(matches!(
                decide(&c, 2, failure, None, Duration::ZERO, 0.5),
                Decision::Retry(_)
            ));
            assert_eq!(
                decide(&c, 3, failure, None, Duration::ZERO, 0.5),
                Decision::GiveUp
            );
        }
    }

    #[test]
    fn answers_that_will_not_change_are_not_retried() {
        let c = config(5, 60);
        for status in [400, 401, 403, 404, 405, 416, 501] {
            assert_eq!(
                decide(&c, 1, Failure::Status(status), None, Duration::ZERO, 0.0),
                Decision::GiveUp,
                "{status}"
            );
        }
        assert_eq!(
            decide(
                &config(1, 60),
                1,
                Failure::Transport,
                None,
                Duration::ZERO,
                0.0
            ),
            Decision::GiveUp
        );
    }

    #[test]
    fn retry_after_is_waited_exactly_when_it_fits_the_budget() {
        let c = config(3, 10);
        let ask = |secs, waited| {
            decide(
                &c,
                1,
                Failure::Status(429),
                Some(Duration::from_secs(secs)),
                Duration::from_secs(waited),
                0.9,
            )
        };
        assert_eq!(ask(2, 0), Decision::Retry(Duration::from_secs(2)));
        assert_eq!(ask(10, 0), Decision::Retry(Duration::from_secs(10)));
        assert_eq!(ask(11, 0), Decision::GiveUp);
        assert_eq!(ask(5, 6), Decision::GiveUp);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        assert_eq!(backoff(1, 0.5), Duration::from_millis(200));
        assert_eq!(backoff(2, 0.5), Duration::from_millis(400));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(150));
        assert_eq!(backoff(1, 1.0), Duration::from_millis(250));
        assert_eq!(backoff(30, 0.5), Duration::from_secs(2));
        assert_eq!(backoff(u32::MAX, 1.0), Duration::from_millis(2500));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21 07:28:00 UTC
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("Sat, 01 Jan 2050 00:00:00 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn retry_after_header_rounds_up() {
        assert_eq!(retry_after_header(Duration::from_millis(1)), "1");
        assert_eq!(retry_after_header(Duration::from_millis(2001)), "3");
        assert_eq!(retry_after_header(Duration::from_secs(7)), "7");
        assert_eq!(retry_after_header(Duration::ZERO), "1");
    }
}
