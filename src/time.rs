//! Time as the engine sees it: a number the host passes in.
//!
//! The engine never reads a clock. Every call that depends on time takes a [`Time`], microseconds
//! on one monotonic clock chosen by the host: the runtime's clock is the one its provider store
//! runs on, the simulator's is virtual. Microseconds, because a lookup on loopback takes a few
//! hundred of them; the provider store counts in milliseconds ([`Time::as_millis`]).

use std::ops::Add;
use std::time::Duration;

/// A point on the host's monotonic clock, in microseconds since an origin the host chose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    /// The origin.
    pub const ZERO: Time = Time(0);

    /// The point `micros` microseconds after the origin.
    pub const fn from_micros(micros: u64) -> Time {
        Time(micros)
    }

    /// The point `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Time {
        Time(millis.saturating_mul(1000))
    }

    /// Microseconds since the origin.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Whole milliseconds since the origin: the unit of the provider store's expiry times.
    pub const fn as_millis(self) -> u64 {
        self.0 / 1000
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    /// Saturates at the end of time rather than wrapping.
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(micros(d)))
    }
}

/// A duration in whole microseconds, saturating.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_saturation() {
        let t = Time::from_millis(1_500);
        assert_eq!(t.as_micros(), 1_500_000);
        assert_eq!(t.as_millis(), 1_500);
        assert_eq!((t + Duration::from_micros(700)).as_millis(), 1_500);
        assert_eq!(t.since(Time::from_millis(500)), Duration::from_secs(1));
        assert_eq!(Time::ZERO.since(t), Duration::ZERO);
        assert_eq!(
            Time::from_micros(u64::MAX) + Duration::from_secs(1),
            Time::from_micros(u64::MAX)
        );
    }
}
