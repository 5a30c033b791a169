//! Latency and loss between simulated nodes.

use std::time::Duration;

use crate::rng::{mix, Rng};

/// Round-trip times between pairs of nodes and the chance that a message is lost.
///
/// Each pair has its own fixed round-trip time, drawn once from a log-normal distribution with
/// median `median_rtt` and shape `spread` (the standard deviation of its logarithm; 0 gives every
/// pair the median). It is a function of the seed and the pair, so it needs no memory per pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Links {
    /// Median round-trip time between two nodes.
    pub median_rtt: Duration,
    /// Standard deviation of the log of the round-trip time.
    pub spread: f64,
    /// Probability that one message (a request or a reply) is lost.
    pub loss: f64,
}

impl Default for Links {
    /// 50 ms median, spread 0.5 (a tenth of pairs under 26 ms, a tenth over 95 ms), no loss.
    fn default() -> Links {
        Links {
            median_rtt: Duration::from_millis(50),
            spread: 0.5,
            loss: 0.0,
        }
    }
}

impl Links {
    /// The round-trip time between nodes `a` and `b` (the same both ways).
    pub fn rtt(&self, seed: u64, a: usize, b: usize) -> Duration {
        if self.spread == 0.0 {
            return self.median_rtt;
        }
        let (lo, hi) = (a.min(b) as u64, a.max(b) as u64);
        let h1 = mix(seed ^ mix(lo.wrapping_mul(0x9e37_79b9) ^ hi.rotate_left(32)));
        let h2 = mix(h1);
        // Box-Muller: two uniforms in (0, 1] and [0, 1) give one standard normal.
        let u1 = ((h1 >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (h2 >> 11) as f64 / (1u64 << 53) as f64;
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        self.median_rtt.mul_f64((self.spread * normal).exp())
    }

    /// Whether the next message is lost.
    pub fn lost(&self, rng: &mut Rng) -> bool {
        self.loss > 0.0 && rng.unit() < self.loss
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_have_a_fixed_symmetric_rtt_around_the_median() {
        let links = Links::default();
        assert_eq!(links.rtt(7, 3, 9), links.rtt(7, 9, 3));
        let mut rtts: Vec<Duration> = (0..2_000).map(|b| links.rtt(7, 0, b + 1)).collect();
        rtts.sort();
        let median = rtts[rtts.len() / 2].as_secs_f64();
        assert!((0.045..0.055).contains(&median), "median {median}");
        assert!(rtts[0] < Duration::from_millis(25) && rtts[1_999] > Duration::from_millis(100));
        let fixed = Links {
            spread: 0.0,
            ..Links::default()
        };
        assert_eq!(fixed.rtt(7, 1, 2), Duration::from_millis(50));
    }
}
