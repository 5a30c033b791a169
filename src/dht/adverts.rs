//! The services this node advertises, when each is published again, and the order of a
//! service's publishes and withdrawals.
//!
//! One service's commands run one at a time: a withdrawal waits for the publish before it, so a
//! STORE sent after the REMOVE cannot look newer than it is. Different services run side by side.
//! A republish that falls due while the service is busy waits for the next tick.
//!
//! Bounded: services by `max_adverts` (slots of withdrawn, idle services are reused first), and
//! commands waiting per service by [`MAX_WAITING`].

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::{AdvertError, OpId};
use crate::record::Advertisement;
use crate::time::Time;

/// Commands of one service waiting for the one before them.
pub const MAX_WAITING: usize = 16;

/// A publish or withdrawal of one service, waiting for its turn.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    Publish { ad: Advertisement, refresh: bool },
    Withdraw,
}

/// One advertised (or withdrawn) service.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// `Some` while it is advertised and republished.
    pub advert: Option<Advertisement>,
    /// When it is published again.
    pub next_at: Time,
    /// Its last publish reached no node (the table was empty, or the one peer it had did not
    /// answer): it is published again as soon as a join reaches a node, not a whole republish
    /// interval later.
    pub unplaced: bool,
    /// The command running now.
    pub running: Option<OpId>,
    /// Commands waiting for it, in arrival order.
    pub waiting: VecDeque<(OpId, Command)>,
}

impl Slot {
    fn idle(&self) -> bool {
        self.advert.is_none() && self.running.is_none() && self.waiting.is_empty()
    }
}

/// Services by name (ordered, so that due republishes start in the same order every run).
#[derive(Debug)]
pub(crate) struct Adverts {
    slots: BTreeMap<String, Slot>,
    max: usize,
}

impl Adverts {
    pub(crate) fn new(max: usize) -> Adverts {
        Adverts {
            slots: BTreeMap::new(),
            max,
        }
    }

    /// The slot of `service`, made if needed within `max_adverts` (an idle slot of a withdrawn
    /// service gives way).
    pub(crate) fn slot(&mut self, service: &str) -> Result<&mut Slot, AdvertError> {
        if !self.slots.contains_key(service) {
            if self.slots.len() >= self.max {
                let idle = self
                    .slots
                    .iter()
                    .find(|(_, slot)| slot.idle())
                    .map(|(name, _)| name.clone());
                match idle {
                    Some(name) => {
                        self.slots.remove(&name);
                    }
                    None => return Err(AdvertError::TooManyAdverts { max: self.max }),
                }
            }
            self.slots.insert(service.to_string(), Slot::default());
        }
        self.slots
            .get_mut(service)
            .ok_or(AdvertError::TooManyAdverts { max: self.max })
    }

    /// The slot of `service` if it has one.
    pub(crate) fn get_mut(&mut self, service: &str) -> Option<&mut Slot> {
        self.slots.get_mut(service)
    }

    /// Services whose republish is due at `now` and that are not busy, with their
    /// advertisement; each gets its next time, `interval(ttl)` from now.
    pub(crate) fn take_due(
        &mut self,
        now: Time,
        interval: impl Fn(u32) -> Duration,
    ) -> Vec<(String, Advertisement)> {
        let mut due = Vec::new();
        for (service, slot) in &mut self.slots {
            let Some(ad) = &slot.advert else { continue };
            if slot.next_at > now || slot.running.is_some() {
                continue;
            }
            slot.next_at = now + interval(ad.ttl_secs);
            due.push((service.clone(), ad.clone()));
        }
        due
    }

    /// The advertised services whose last publish reached no node fall due at `now`.
    pub(crate) fn place_unplaced(&mut self, now: Time) {
        for slot in self.slots.values_mut() {
            if slot.unplaced && slot.advert.is_some() {
                slot.next_at = slot.next_at.min(now);
            }
        }
    }

    /// Names of the services advertised now, sorted.
    pub(crate) fn advertised(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|(_, slot)| slot.advert.is_some())
            .map(|(name, _)| name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn ad(ttl_secs: u32) -> Advertisement {
        Advertisement {
            endpoint: "https://x:1".into(),
            metadata: BTreeMap::new(),
            ttl_secs,
        }
    }

    #[test]
    fn slots_are_bounded_and_idle_ones_give_way() {
        let mut a = Adverts::new(2);
        a.slot("a").unwrap().advert = Some(ad(60));
        a.slot("b").unwrap();
        assert!(a.slot("c").is_ok(), "b is idle and gives way");
        assert!(a.get_mut("b").is_none());
        a.slot("c").unwrap().running = Some(OpId(1));
        assert_eq!(
            a.slot("d").unwrap_err(),
            AdvertError::TooManyAdverts { max: 2 }
        );
        assert_eq!(a.advertised(), vec!["a".to_string()]);
    }

    #[test]
    fn an_advertisement_that_reached_no_node_falls_due_once_one_is_reachable() {
        let mut a = Adverts::new(8);
        for (name, unplaced) in [("placed", false), ("unplaced", true)] {
            let slot = a.slot(name).unwrap();
            slot.advert = Some(ad(100));
            slot.next_at = Time::from_millis(90_000);
            slot.unplaced = unplaced;
        }
        a.slot("withdrawn").unwrap().unplaced = true;
        a.place_unplaced(Time::from_millis(2_000));
        let due = a.take_due(Time::from_millis(2_000), |_| Duration::from_secs(90));
        let names: Vec<&str> = due.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["unplaced"]);
    }

    #[test]
    fn due_republishes_skip_busy_services_and_are_rescheduled() {
        let mut a = Adverts::new(8);
        for name in ["x", "y"] {
            let slot = a.slot(name).unwrap();
            slot.advert = Some(ad(100));
            slot.next_at = Time::from_millis(1_000);
        }
        a.slot("y").unwrap().running = Some(OpId(7));
        let every_10s = |_| Duration::from_secs(10);
        assert!(a.take_due(Time::from_millis(999), every_10s).is_empty());
        let due = a.take_due(Time::from_millis(1_000), every_10s);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, "x");
        assert_eq!(a.get_mut("x").unwrap().next_at, Time::from_millis(11_000));
        assert_eq!(a.get_mut("y").unwrap().next_at, Time::from_millis(1_000));
    }
}
