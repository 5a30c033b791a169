//! Latency and loss between simulated nodes.

use std::time::Duration;

use crate::rng::{mix, unit};

/// Round-trip times between pairs of nodes and the chance that a message is lost.
///
/// Each pair has its own fixed round-trip time, drawn once from a log-normal distribution with
/// median `median_rtt` and shape `spread` (the standard deviation of its logarithm; 0 gives every
/// pair the median), cut at [`Links::shortest_rtt`]. It is a function of the seed and the pair,
/// so it needs no memory per pair.
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
        let u1 = 1.0 - unit(h1);
        let u2 = unit(h2);
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        self.median_rtt
            .mul_f64((self.spread * normal).exp())
            .max(self.shortest_rtt())
    }

    /// The shortest round-trip time of a pair: three standard deviations below the median (11
    /// ms for the default links, as between hosts of one region; one pair in 740 is further
    /// below, and is given this one). A message takes at least half of it, which lets the shards
    /// of a network run side by side (`parallel`) in windows that long.
    pub fn shortest_rtt(&self) -> Duration {
        self.median_rtt.mul_f64((-3.0 * self.spread).exp())
    }

    /// Whether the message a node sends in order `order` (see `shard`) is lost: a function of
    /// the seed and the message, so that it does not depend on what other nodes sent before.
    pub fn lost(&self, seed: u64, order: u64) -> bool {
        self.loss > 0.0 && unit(mix(seed ^ mix(order ^ 0x10_55))) < self.loss
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
        let shortest = links.shortest_rtt();
        assert!((11.1..11.2).contains(&(shortest.as_secs_f64() * 1e3)));
        let cut = (0..100_000).filter(|&b| links.rtt(7, 0, b + 1) == shortest);
        assert!(
            (100..170).contains(&cut.count()),
            "about one pair in 740 is cut"
        );
        let fixed = Links {
            spread: 0.0,
            ..Links::default()
        };
        assert_eq!(fixed.rtt(7, 1, 2), Duration::from_millis(50));
    }

    #[test]
    fn a_message_is_lost_by_its_own_draw_at_the_given_rate() {
        let links = Links {
            loss: 0.01,
            ..Links::default()
        };
        let lost = (0..100_000).filter(|&order| links.lost(7, order)).count();
        assert!((900..1_100).contains(&lost), "{lost} of 100 000");
        assert_eq!(links.lost(7, 42), links.lost(7, 42));
        assert!(
            !(0..1_000).any(|order| Links::default().lost(7, order)),
            "no loss by default"
        );
    }
}
