//! How long simulated nodes stay: session lengths drawn from a distribution.

use std::time::Duration;

use crate::rng::Rng;

/// Session lengths: a Weibull distribution given by its median and shape. Shape 1 is the
/// exponential distribution (memoryless: a node is as likely to leave in its first minute as in
/// its hundredth); a shape below 1 gives many short sessions and a long tail of stable nodes,
/// as measured in deployed peer-to-peer networks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sessions {
    /// Half the sessions are shorter than this.
    pub median: Duration,
    /// The Weibull shape parameter (1: exponential).
    pub shape: f64,
}

impl Sessions {
    /// Exponentially distributed sessions with median `median`.
    pub fn exponential(median: Duration) -> Sessions {
        Sessions { median, shape: 1.0 }
    }

    /// Weibull-distributed sessions with median `median` and shape `shape` (> 0).
    pub fn weibull(median: Duration, shape: f64) -> Sessions {
        assert!(shape > 0.0, "a Weibull shape is positive");
        Sessions { median, shape }
    }

    /// One session length.
    pub fn draw(&self, rng: &mut Rng) -> Duration {
        // Inverse transform: the median m of Weibull(scale l, shape b) is l * ln(2)^(1/b), and a
        // draw is l * (-ln u)^(1/b) for u uniform in (0, 1].
        let u = 1.0 - rng.unit();
        let over_median = (-u.ln() / std::f64::consts::LN_2).powf(1.0 / self.shape);
        self.median.mul_f64(over_median)
    }

    /// Departures per node per hour, on average (the churn rate a plot puts on its axis).
    pub fn departures_per_node_hour(&self) -> f64 {
        let mean = self.median.as_secs_f64() * mean_over_median(self.shape);
        3_600.0 / mean
    }
}

/// Mean over median of a Weibull distribution: Gamma(1 + 1/b) / ln(2)^(1/b).
fn mean_over_median(shape: f64) -> f64 {
    gamma(1.0 + 1.0 / shape) / std::f64::consts::LN_2.powf(1.0 / shape)
}

/// The Gamma function for x >= 1 (Lanczos approximation, g = 7: 15 significant digits).
fn gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let t = x + G + 0.5;
    let series: f64 = C[0]
        + C[1..]
            .iter()
            .enumerate()
            .map(|(i, c)| c / (x + i as f64 + 1.0))
            .sum::<f64>();
    (std::f64::consts::TAU).sqrt() * t.powf(x + 0.5) * (-t).exp() * series
}

#[cfg(test)]
mod tests {
    use super::*;

    fn median_of(sessions: Sessions) -> f64 {
        let mut rng = Rng::new(3);
        let mut draws: Vec<f64> = (0..20_001)
            .map(|_| sessions.draw(&mut rng).as_secs_f64())
            .collect();
        draws.sort_by(f64::total_cmp);
        draws[10_000]
    }

    #[test]
    fn draws_have_the_configured_median() {
        let half_hour = Duration::from_secs(1_800);
        for sessions in [
            Sessions::exponential(half_hour),
            Sessions::weibull(half_hour, 0.5),
        ] {
            let median = median_of(sessions);
            assert!(
                (1_700.0..1_900.0).contains(&median),
                "{sessions:?}: {median}"
            );
        }
    }

    #[test]
    fn exponential_departure_rate_is_ln2_over_the_median() {
        let rate = Sessions::exponential(Duration::from_secs(1_800)).departures_per_node_hour();
        assert!((rate - 2.0 * std::f64::consts::LN_2).abs() < 1e-9, "{rate}");
        assert!((gamma(5.0) - 24.0).abs() < 1e-9);
    }
}
