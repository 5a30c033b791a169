//! Picking one provider of a service, and stepping around the ones callers could not reach.
//!
//! A caller asks for one provider by a [`Strategy`]; the [`Selector`] answers from the providers
//! a lookup found a moment ago (kept for `cache_for`), or says it needs a fresh list. A caller
//! that could not reach a provider reports it: the provider is skipped for a back-off that
//! doubles while reports keep coming (capped), and ends early when the provider is advertised
//! again (a higher seal sequence, or a later `advertised_at`). When every known provider is
//! skipped, the selector asks for one fresh list before it gives up.
//!
//! Sans-IO like the rest of the engine: the host passes the time, a random number, round-trip
//! times, and fetches the providers itself.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::record::Provider;
use crate::time::Time;

/// How [`Selector::pick`] chooses among the providers it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Each in turn, per service, in a fixed order (by `node_id`).
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// The smallest numeric `load` in the provider's metadata; providers without one last.
    LeastLoaded,
    /// The smallest measured round-trip time to the provider's publishing node; unknown last.
    Nearest,
}

impl Strategy {
    /// Every strategy, in the order the docs list them.
    pub const ALL: [Strategy; 4] = [
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::LeastLoaded,
        Strategy::Nearest,
    ];

    /// The name on the command line (`round-robin`); Erlang's atom is the same with `_`.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::Random => "random",
            Strategy::LeastLoaded => "least-loaded",
            Strategy::Nearest => "nearest",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A strategy name that is none of [`Strategy::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown strategy {0:?} (round-robin, random, least-loaded or nearest)")]
pub struct UnknownStrategy(pub String);

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    /// Accepts `round-robin` and `round_robin` alike.
    fn from_str(s: &str) -> Result<Strategy, UnknownStrategy> {
        let name = s.replace('_', "-");
        Strategy::ALL
            .into_iter()
            .find(|strategy| strategy.name() == name)
            .ok_or_else(|| UnknownStrategy(s.to_string()))
    }
}

/// Bounds and times of a [`Selector`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectConfig {
    /// How long the providers of one lookup serve picks before the next pick asks for a fresh
    /// list.
    pub cache_for: Duration,
    /// How long a reported provider is first skipped; each report while it is skipped doubles
    /// it.
    pub first_backoff: Duration,
    /// The longest back-off.
    pub max_backoff: Duration,
    /// Services remembered; the one picked longest ago is forgotten first.
    pub max_services: usize,
    /// Reported providers remembered per service; the earliest report is forgotten first.
    pub max_reported: usize,
}

impl Default for SelectConfig {
    fn default() -> SelectConfig {
        SelectConfig {
            cache_for: Duration::from_secs(5),
            first_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            max_services: 1024,
            max_reported: 256,
        }
    }
}

/// What [`Selector::pick`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// This provider.
    Picked(Provider),
    /// The host should fetch the service's providers, give them to [`Selector::refresh`] and
    /// pick again: none are known, they are older than `cache_for`, or every one is skipped.
    Fetch,
    /// A fresh list was given and no provider in it may be used.
    NoProviders,
}

/// What the host knows of a provider's publishing node for [`Strategy::Nearest`].
pub trait RoundTrips {
    /// The smoothed round-trip time to the node that published `provider`, if it ever answered.
    fn rtt(&self, provider: &Provider) -> Option<Duration>;
}

impl<F: Fn(&Provider) -> Option<Duration>> RoundTrips for F {
    fn rtt(&self, provider: &Provider) -> Option<Duration> {
        self(provider)
    }
}

/// Picks providers per service; see the module docs.
#[derive(Debug, Default)]
pub struct Selector {
    config: SelectConfig,
    services: HashMap<Vec<u8>, Service>,
}

#[derive(Debug)]
struct Service {
    /// In the fixed order round-robin walks.
    providers: Vec<Provider>,
    /// `None` until the host first gave a list.
    fetched_at: Option<Time>,
    picked_at: Time,
    turn: u64,
    reported: HashMap<Vec<u8>, Reported>,
}

/// A provider a caller could not reach, and the version of its record it had then.
#[derive(Debug, Clone, Copy)]
struct Reported {
    until: Time,
    backoff: Duration,
    at: Time,
    seq: Option<u64>,
    advertised_at: Option<u64>,
}

impl Reported {
    /// Whether `provider` is a later advertisement than the one reported.
    fn superseded_by(&self, provider: &Provider) -> bool {
        match (self.seq, provider.seq) {
            (Some(old), Some(new)) => new > old,
            _ => {
                matches!((self.advertised_at, provider.advertised_at), (Some(old), Some(new)) if new > old)
            }
        }
    }
}

impl Selector {
    /// An empty selector.
    pub fn new(config: SelectConfig) -> Selector {
        Selector {
            config,
            services: HashMap::new(),
        }
    }

    /// The providers of the service under `key` as just fetched. A reported provider whose
    /// record is newer than when it was reported is no longer skipped.
    pub fn refresh(&mut self, key: &[u8], mut providers: Vec<Provider>, now: Time) {
        providers.sort_by(stable_order);
        providers.dedup_by(|a, b| a.node_id == b.node_id && a.publisher == b.publisher);
        let service = self.service(key, now);
        service.reported.retain(|node_id, reported| {
            reported.until > now
                && !providers
                    .iter()
                    .any(|p| &p.node_id == node_id && reported.superseded_by(p))
        });
        service.providers = providers;
        service.fetched_at = Some(now);
    }

    /// One provider of the service under `key` by `strategy` (`random` is any number the host
    /// drew at random), or what the host must do first.
    pub fn pick(
        &mut self,
        key: &[u8],
        strategy: Strategy,
        now: Time,
        random: u64,
        rtts: &impl RoundTrips,
    ) -> Choice {
        let Some(service) = self.services.get_mut(key) else {
            return Choice::Fetch;
        };
        let Some(fetched_at) = service.fetched_at else {
            return Choice::Fetch;
        };
        let fresh = now.since(fetched_at) < self.config.cache_for;
        let usable: Vec<&Provider> = service
            .providers
            .iter()
            .filter(|p| {
                service
                    .reported
                    .get(&p.node_id)
                    .is_none_or(|r| r.until <= now)
            })
            .collect();
        if usable.is_empty() || !fresh {
            // A list fetched at `now` is as fresh as it gets: asking again would not help.
            return if fetched_at == now {
                Choice::NoProviders
            } else {
                Choice::Fetch
            };
        }
        service.picked_at = now;
        let chosen = match strategy {
            Strategy::RoundRobin => {
                let i = service.turn % usable.len() as u64;
                service.turn = service.turn.wrapping_add(1);
                usable[i as usize]
            }
            Strategy::Random => usable[(random % usable.len() as u64) as usize],
            Strategy::LeastLoaded => first_by(&usable, |p| load(p).map(OrdF64)),
            Strategy::Nearest => first_by(&usable, |p| rtts.rtt(p)),
        };
        Choice::Picked(chosen.clone())
    }

    /// A caller could not reach the provider `node_id` of the service under `key`: skip it for
    /// a while (longer each time it is reported again while skipped). Returns for how long.
    pub fn report_failure(&mut self, key: &[u8], node_id: &[u8], now: Time) -> Duration {
        let config = self.config.clone();
        let service = self.service(key, now);
        let current = service.providers.iter().find(|p| p.node_id == node_id);
        let backoff = match service.reported.get(node_id) {
            Some(r) if r.until > now => (r.backoff * 2).min(config.max_backoff),
            _ => config.first_backoff.min(config.max_backoff),
        };
        if !service.reported.contains_key(node_id) && service.reported.len() >= config.max_reported
        {
            let earliest = service
                .reported
                .iter()
                .min_by_key(|(_, r)| r.at)
                .map(|(id, _)| id.clone());
            if let Some(id) = earliest {
                service.reported.remove(&id);
            }
        }
        service.reported.insert(
            node_id.to_vec(),
            Reported {
                until: now + backoff,
                backoff,
                at: now,
                seq: current.and_then(|p| p.seq),
                advertised_at: current.and_then(|p| p.advertised_at),
            },
        );
        backoff
    }

    /// How long the provider `node_id` of the service under `key` is still skipped.
    pub fn skipped_for(&self, key: &[u8], node_id: &[u8], now: Time) -> Option<Duration> {
        let until = self.services.get(key)?.reported.get(node_id)?.until;
        (until > now).then(|| until.since(now))
    }

    /// The service under `key`, made (forgetting the one picked longest ago when the table is
    /// full) if it is new.
    fn service(&mut self, key: &[u8], now: Time) -> &mut Service {
        if !self.services.contains_key(key) && self.services.len() >= self.config.max_services {
            let oldest = self
                .services
                .iter()
                .min_by_key(|(_, s)| s.picked_at)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                self.services.remove(&oldest);
            }
        }
        self.services
            .entry(key.to_vec())
            .or_insert_with(|| Service {
                providers: Vec::new(),
                fetched_at: None,
                picked_at: now,
                turn: 0,
                reported: HashMap::new(),
            })
    }
}

/// The fixed order round-robin walks and ties are broken by.
fn stable_order(a: &Provider, b: &Provider) -> Ordering {
    (&a.node_id, &a.endpoint, &a.term).cmp(&(&b.node_id, &b.endpoint, &b.term))
}

/// The first provider with the smallest known `rank`; those without one come after all others.
fn first_by<'a, R: Ord>(
    usable: &[&'a Provider],
    rank: impl Fn(&Provider) -> Option<R>,
) -> &'a Provider {
    usable
        .iter()
        .min_by(|a, b| match (rank(a), rank(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
        .copied()
        .unwrap_or(usable[0])
}

/// The provider's metadata `load`, when it is a number.
fn load(provider: &Provider) -> Option<f64> {
    let value: f64 = provider.metadata.get("load")?.trim().parse().ok()?;
    value.is_finite().then_some(value)
}

/// An `f64` ordered by [`f64::total_cmp`].
struct OrdF64(f64);

impl Ord for OrdF64 {
    fn cmp(&self, other: &OrdF64) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &OrdF64) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for OrdF64 {
    fn eq(&self, other: &OrdF64) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for OrdF64 {}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const KEY: &[u8] = b"service key";

    fn provider(id: u8, load: Option<&str>) -> Provider {
        Provider {
            node_id: vec![id],
            endpoint: Some(format!("https://p{id}:443")),
            metadata: load
                .map(|l| BTreeMap::from([("load".to_string(), l.to_string())]))
                .unwrap_or_default(),
            ttl_secs: Some(60),
            advertised_at: Some(1000),
            term: vec![id],
            publisher: None,
            seq: Some(10),
        }
    }

    fn three() -> Vec<Provider> {
        vec![provider(3, None), provider(1, None), provider(2, None)]
    }

    fn no_rtts(_: &Provider) -> Option<Duration> {
        None
    }

    fn at(secs: u64) -> Time {
        Time::from_millis(secs * 1000)
    }

    fn picked(choice: Choice) -> u8 {
        match choice {
            Choice::Picked(p) => p.node_id[0],
            other => panic!("expected a provider, got {other:?}"),
        }
    }

    fn selector_with(providers: Vec<Provider>, now: Time) -> Selector {
        let mut selector = Selector::new(SelectConfig::default());
        selector.refresh(KEY, providers, now);
        selector
    }

    #[test]
    fn names_parse_with_dashes_or_underscores() {
        for strategy in Strategy::ALL {
            assert_eq!(strategy.name().parse(), Ok(strategy));
            assert_eq!(strategy.name().replace('-', "_").parse(), Ok(strategy));
        }
        assert_eq!(
            "fastest".parse::<Strategy>(),
            Err(UnknownStrategy("fastest".into()))
        );
    }

    #[test]
    fn round_robin_visits_each_provider_in_turn() {
        let mut s = selector_with(three(), at(0));
        let picks: Vec<u8> = (0..6)
            .map(|_| picked(s.pick(KEY, Strategy::RoundRobin, at(1), 0, &no_rtts)))
            .collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn random_uses_the_number_it_is_given() {
        let mut s = selector_with(three(), at(0));
        let picks: Vec<u8> = (0..6)
            .map(|r| picked(s.pick(KEY, Strategy::Random, at(1), r, &no_rtts)))
            .collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn least_loaded_takes_the_smallest_load_and_the_unloaded_last() {
        let providers = vec![
            provider(1, None),
            provider(2, Some("0.75")),
            provider(3, Some("0.25")),
            provider(4, Some("busy")),
        ];
        let mut s = selector_with(providers, at(0));
        assert_eq!(
            picked(s.pick(KEY, Strategy::LeastLoaded, at(1), 0, &no_rtts)),
            3
        );
        s.report_failure(KEY, &[3], at(1));
        assert_eq!(
            picked(s.pick(KEY, Strategy::LeastLoaded, at(1), 0, &no_rtts)),
            2
        );
        s.report_failure(KEY, &[2], at(1));
        // Neither 1 nor 4 has a numeric load: the fixed order decides.
        assert_eq!(
            picked(s.pick(KEY, Strategy::LeastLoaded, at(1), 0, &no_rtts)),
            1
        );
    }

    #[test]
    fn nearest_takes_the_smallest_round_trip_and_the_unknown_last() {
        let rtts = |p: &Provider| match p.node_id[0] {
            1 => Some(Duration::from_millis(40)),
            3 => Some(Duration::from_millis(2)),
            _ => None,
        };
        let mut s = selector_with(three(), at(0));
        assert_eq!(picked(s.pick(KEY, Strategy::Nearest, at(1), 0, &rtts)), 3);
        s.report_failure(KEY, &[3], at(1));
        assert_eq!(picked(s.pick(KEY, Strategy::Nearest, at(1), 0, &rtts)), 1);
        s.report_failure(KEY, &[1], at(1));
        assert_eq!(picked(s.pick(KEY, Strategy::Nearest, at(1), 0, &rtts)), 2);
    }

    #[test]
    fn an_unknown_or_stale_service_asks_for_a_fetch() {
        let mut s = Selector::new(SelectConfig::default());
        assert_eq!(
            s.pick(KEY, Strategy::Random, at(0), 0, &no_rtts),
            Choice::Fetch
        );
        s.refresh(KEY, three(), at(0));
        assert!(matches!(
            s.pick(KEY, Strategy::Random, at(4), 0, &no_rtts),
            Choice::Picked(_)
        ));
        assert_eq!(
            s.pick(KEY, Strategy::Random, at(5), 0, &no_rtts),
            Choice::Fetch
        );
        s.refresh(KEY, Vec::new(), at(5));
        assert_eq!(
            s.pick(KEY, Strategy::Random, at(5), 0, &no_rtts),
            Choice::NoProviders
        );
    }

    #[test]
    fn a_reported_provider_is_skipped_until_its_backoff_ends() {
        let mut s = selector_with(three(), at(0));
        s.report_failure(KEY, &[1], at(0));
        for _ in 0..4 {
            assert_ne!(
                picked(s.pick(KEY, Strategy::RoundRobin, at(1), 0, &no_rtts)),
                1
            );
        }
        assert_eq!(
            s.skipped_for(KEY, &[1], at(1)),
            Some(Duration::from_secs(4))
        );
        s.refresh(KEY, three(), at(5));
        assert_eq!(s.skipped_for(KEY, &[1], at(5)), None);
        let picks: Vec<u8> = (0..3)
            .map(|_| picked(s.pick(KEY, Strategy::RoundRobin, at(5), 0, &no_rtts)))
            .collect();
        assert!(picks.contains(&1), "back after 5 s: {picks:?}");
    }

    #[test]
    fn repeated_reports_double_the_backoff_up_to_the_cap() {
        let mut s = selector_with(three(), at(0));
        let mut backoffs = Vec::new();
        for _ in 0..9 {
            let backoff = s.report_failure(KEY, &[2], at(0));
            assert_eq!(s.skipped_for(KEY, &[2], at(0)), Some(backoff));
            backoffs.push(backoff.as_secs());
        }
        assert_eq!(backoffs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        // A report after the back-off ended starts over.
        s.report_failure(KEY, &[2], at(400));
        assert_eq!(
            s.skipped_for(KEY, &[2], at(400)),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn a_readvertised_provider_comes_back_at_once() {
        let mut s = selector_with(three(), at(0));
        s.report_failure(KEY, &[1], at(0));
        s.refresh(KEY, three(), at(1));
        assert!(
            s.skipped_for(KEY, &[1], at(1)).is_some(),
            "same record: still skipped"
        );
        let mut providers = three();
        providers[1].seq = Some(11);
        s.refresh(KEY, providers, at(1));
        assert_eq!(s.skipped_for(KEY, &[1], at(1)), None);

        // Records without a seal count by `advertised_at`.
        let mut unsealed = three();
        unsealed.iter_mut().for_each(|p| p.seq = None);
        s.refresh(KEY, unsealed.clone(), at(2));
        s.report_failure(KEY, &[2], at(2));
        unsealed[2].advertised_at = Some(1001);
        s.refresh(KEY, unsealed, at(2));
        assert_eq!(s.skipped_for(KEY, &[2], at(2)), None);
    }

    #[test]
    fn all_reported_asks_for_one_fetch_then_gives_up() {
        let mut s = selector_with(three(), at(0));
        for id in 1..=3 {
            s.report_failure(KEY, &[id], at(1));
        }
        assert_eq!(
            s.pick(KEY, Strategy::RoundRobin, at(1), 0, &no_rtts),
            Choice::Fetch
        );
        s.refresh(KEY, three(), at(1));
        assert_eq!(
            s.pick(KEY, Strategy::RoundRobin, at(1), 0, &no_rtts),
            Choice::NoProviders
        );
        // A new provider in the fresh list is picked.
        let mut more = three();
        more.push(provider(4, None));
        s.refresh(KEY, more, at(1));
        assert_eq!(
            picked(s.pick(KEY, Strategy::RoundRobin, at(1), 0, &no_rtts)),
            4
        );
    }

    #[test]
    fn services_and_reports_are_bounded() {
        let config = SelectConfig {
            max_services: 2,
            max_reported: 2,
            ..SelectConfig::default()
        };
        let mut s = Selector::new(config);
        s.refresh(b"a", three(), at(0));
        s.refresh(b"b", three(), at(0));
        let _ = s.pick(b"b", Strategy::Random, at(1), 0, &no_rtts);
        s.refresh(b"c", three(), at(2));
        assert_eq!(s.services.len(), 2);
        assert!(
            !s.services.contains_key(b"a".as_slice()),
            "picked longest ago"
        );
        for id in 1..=3 {
            s.report_failure(b"c", &[id], at(3 + u64::from(id)));
        }
        assert_eq!(s.services[b"c".as_slice()].reported.len(), 2);
        assert_eq!(
            s.skipped_for(b"c", &[1], at(6)),
            None,
            "the earliest report went"
        );
    }
}
