//! When to retry a failed event, and how long to wait: exponential backoff
//! with full jitter (a uniformly random delay up to the exponential bound),
//! which spreads retries of many events failing together.

use std::time::Duration;

use rand::Rng;

/// How the random part of a delay is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// Uniform in `[0, bound]`: the best spread (the default).
    #[default]
    Full,
    /// Uniform in `[bound/2, bound]`: spread, but never much shorter than the bound.
    Equal,
    /// Exactly the bound: deterministic.
    None,
}

/// Retry policy of one plugin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (1 = never retry).
    pub max_attempts: u32,
    /// Upper bound of the first retry delay.
    pub initial_delay: Duration,
    /// Growth of the bound per attempt.
    pub multiplier: f64,
    /// Cap on any single delay (also caps a plugin's hint).
    pub max_delay: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub max_elapsed: Option<Duration>,
    /// How delays are randomised.
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(200),
            multiplier: 2.0,
            max_delay: Duration::from_secs(30),
            max_elapsed: Some(Duration::from_secs(300)),
            jitter: Jitter::Full,
        }
    }
}

impl RetryPolicy {
    /// The exponential bound for the retry after failed attempt `attempt` (1-based).
    pub fn bound(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let secs = (self.initial_delay.as_secs_f64() * exp).min(self.max_delay.as_secs_f64());
        Duration::from_secs_f64(secs)
    }

    /// The delay before the next attempt after failed attempt `attempt`:
    /// jitter over the bound, raised to the plugin's hint if it gave one,
    /// never above `max_delay`.
    pub fn delay(&self, attempt: u32, hint: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let bound = self.bound(attempt);
        let nanos = bound.as_nanos().min(u64::MAX as u128) as u64;
        let jittered = match self.jitter {
            _ if nanos == 0 => bound,
            Jitter::Full => Duration::from_nanos(rng.random_range(0..=nanos)),
            Jitter::Equal => Duration::from_nanos(rng.random_range(nanos / 2..=nanos)),
            Jitter::None => bound,
        };
        jittered.max(hint.unwrap_or_default()).min(self.max_delay)
    }

    /// Whether to try again after failed attempt `attempt`, given the time
    /// since the first attempt and the delay that would follow.
    pub fn should_retry(&self, attempt: u32, since_first: Duration, next_delay: Duration) -> bool {
        if attempt >= self.max_attempts {
            return false;
        }
        match self.max_elapsed {
            Some(limit) => since_first + next_delay <= limit,
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            initial_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(2),
            max_elapsed: Some(Duration::from_secs(5)),
            jitter: Jitter::Full,
        }
    }

    #[test]
    fn bounds_grow_exponentially_then_cap() {
        let p = policy();
        assert_eq!(p.bound(1), Duration::from_millis(100));
        assert_eq!(p.bound(2), Duration::from_millis(200));
        assert_eq!(p.bound(4), Duration::from_millis(800));
        assert_eq!(p.bound(10), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_within_bound_and_spreads() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..200).map(|_| p.delay(3, None, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= p.bound(3)));
        let min = delays.iter().min().unwrap();
        let max = delays.iter().max().unwrap();
        assert!(
            *max - *min > p.bound(3) / 2,
            "jitter should spread: {min:?}..{max:?}"
        );
    }

    #[test]
    fn jitter_modes_shape_the_delay() {
        let mut rng = StdRng::seed_from_u64(3);
        let none = RetryPolicy {
            jitter: Jitter::None,
            ..policy()
        };
        assert_eq!(none.delay(3, None, &mut rng), none.bound(3));
        let equal = RetryPolicy {
            jitter: Jitter::Equal,
            ..policy()
        };
        for _ in 0..100 {
            let d = equal.delay(3, None, &mut rng);
            assert!(d >= equal.bound(3) / 2 && d <= equal.bound(3), "{d:?}");
        }
    }

    #[test]
    fn hint_is_honoured_within_max_delay() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(1);
        assert!(
            p.delay(1, Some(Duration::from_millis(700)), &mut rng) >= Duration::from_millis(700)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(60)), &mut rng),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn attempts_and_elapsed_time_cut_retries() {
        let p = policy();
        assert!(p.should_retry(1, Duration::ZERO, Duration::from_millis(100)));
        assert!(!p.should_retry(10, Duration::ZERO, Duration::ZERO));
        assert!(!p.should_retry(2, Duration::from_millis(4900), Duration::from_millis(200)));
    }
}
