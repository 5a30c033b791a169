//! Picking one provider of a service for a caller, and failing over to another when it cannot
//! be reached. The decisions are the engine's [`Selector`]; this module feeds it the providers
//! the node finds, the clock, random numbers and the round-trip times the node measured.

use std::future::Future;
use std::time::Duration;

use macula_dht::seal::node_id_of;
use macula_dht::select::{Choice, Selector, Strategy};
use macula_dht::{NodeId, ID_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use super::{Node, NodeError};
use crate::record::{service_key, Provider};

/// Most calls [`Node::call_with_failover`] makes.
pub const MAX_TRIES: usize = 16;

/// Why [`Node::pick`] has no provider.
#[derive(Debug, thiserror::Error)]
pub enum PickError {
    /// No provider is advertised, or every one is skipped after a failure report (checked
    /// against a fresh lookup).
    #[error("no providers")]
    NoProviders,
    /// The lookup could not run.
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// Why [`Node::call_with_failover`] gave up, with each provider it called and the error it got.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError<E> {
    /// No provider was left to try (or the node could not look for one).
    #[error("{error} after {} failed call(s)", failed.len())]
    Pick {
        /// Why picking failed.
        error: PickError,
        /// The calls that failed before.
        failed: Vec<(Provider, E)>,
    },
    /// Every try failed.
    #[error("all {} tries failed", failed.len())]
    Spent {
        /// Each call and its error, in order.
        failed: Vec<(Provider, E)>,
    },
}

impl Node {
    /// One provider of `service` chosen by `strategy`, from the providers a lookup found in the
    /// last few seconds (a new lookup when there are none, they are older, or every one was
    /// reported). Providers reported with [`Node::report_failure`] are skipped for their
    /// back-off.
    pub async fn pick(&self, service: &str, strategy: Strategy) -> Result<Provider, PickError> {
        self.pick_by_key(&service_key(service), strategy).await
    }

    /// [`Node::pick`] of the service whose DHT key is `key`.
    pub async fn pick_by_key(&self, key: &[u8], strategy: Strategy) -> Result<Provider, PickError> {
        let mut fetched = false;
        loop {
            let now = self.shared.store().now();
            let random = random_u64();
            let rtts = |p: &Provider| self.publisher_rtt(p);
            let choice = self.selector.lock().pick(key, strategy, now, random, &rtts);
            match choice {
                Choice::Picked(provider) => return Ok(provider),
                Choice::Fetch if !fetched => {
                    let providers = self.providers(key, self.config().dht.k).await?;
                    let now = self.shared.store().now();
                    self.selector.lock().refresh(key, providers, now);
                    fetched = true;
                }
                Choice::Fetch | Choice::NoProviders => return Err(PickError::NoProviders),
            }
        }
    }

    /// The caller could not reach the provider `node_id` of `service`: [`Node::pick`] skips it
    /// for a back-off (5 s, doubling on each report while skipped, up to 5 min) or until it is
    /// advertised again. Returns for how long.
    pub fn report_failure(&self, service: &str, node_id: &[u8]) -> Duration {
        self.report_failure_by_key(&service_key(service), node_id)
    }

    /// [`Node::report_failure`] for the service whose DHT key is `key`.
    pub fn report_failure_by_key(&self, key: &[u8], node_id: &[u8]) -> Duration {
        let now = self.shared.store().now();
        self.selector.lock().report_failure(key, node_id, now)
    }

    /// How long the provider `node_id` of `service` is still skipped, if it is.
    pub fn skipped_for(&self, service: &str, node_id: &[u8]) -> Option<Duration> {
        let now = self.shared.store().now();
        self.selector
            .lock()
            .skipped_for(&service_key(service), node_id, now)
    }

    /// Calls `call` with providers of `service` picked by `strategy` until one call succeeds,
    /// reporting each provider whose call failed, for at most `tries` calls (1 to
    /// [`MAX_TRIES`]). Returns the provider that answered and its answer.
    pub async fn call_with_failover<T, E, F, Fut>(
        &self,
        service: &str,
        strategy: Strategy,
        tries: usize,
        mut call: F,
    ) -> Result<(Provider, T), FailoverError<E>>
    where
        F: FnMut(Provider) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut failed = Vec::new();
        for _ in 0..tries.clamp(1, MAX_TRIES) {
            let provider = match self.pick(service, strategy).await {
                Ok(provider) => provider,
                Err(error) => return Err(FailoverError::Pick { error, failed }),
            };
            match call(provider.clone()).await {
                Ok(answer) => return Ok((provider, answer)),
                Err(e) => {
                    self.report_failure(service, &provider.node_id);
                    failed.push((provider, e));
                }
            }
        }
        Err(FailoverError::Spent { failed })
    }

    /// The round-trip time to the node that published `provider`: its seal's publisher, or the
    /// node its 32-byte `node_id` names.
    fn publisher_rtt(&self, provider: &Provider) -> Option<Duration> {
        let node = match (&provider.publisher, provider.node_id.len()) {
            (Some(publisher), _) => node_id_of(publisher),
            (None, ID_LEN) => NodeId(provider.node_id.as_slice().try_into().ok()?),
            (None, _) => return None,
        };
        self.rtt(&node)
    }
}

/// A random number from the system's generator (zero should it fail: the first provider).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = SystemRandom::new().fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// A new selector for a node.
pub(super) fn selector(config: &super::NodeConfig) -> parking_lot::Mutex<Selector> {
    parking_lot::Mutex::new(Selector::new(config.select.clone()))
}
