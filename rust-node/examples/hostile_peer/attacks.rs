//! A hostile peer: a node with a valid identity of its own that speaks the wire protocol
//! directly to forge, remove, replay, inject and flood provider records that are not its own.
//!
//! Used by `hostile_peer` (run against live clusters, BEAM nodes included) and by the
//! multi-process tests of `rust-node` (`tests/trust.rs`). Every attack reports what each node
//! answered; deciding whether that is right is the caller's business.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use macula_dht::etf::Writer;
use macula_dht::provider::ProviderRecord;
use macula_dht::record::versioned;
use macula_dht::seal::Keypair;
use macula_dht::wire::{Request, Response, SealedRecord};
use macula_dht::NodeId;
use macula_dht_node::transport::Peer;
use macula_dht_node::{service_key, Endpoint, Identity, TransportConfig};

/// Where the forged and injected records send callers.
pub const EVIL_ENDPOINT: &str = "https://evil.example:443";

/// A peer that attacks the records of others. Its own records and identity are valid.
pub struct Hostile {
    endpoint: Endpoint,
    keypair: Keypair,
    /// Records flooded so far: each flood sends new ones.
    flooded: AtomicUsize,
    /// When it was bound (nanoseconds since the epoch), in the keys it floods, so that runs with
    /// one identity flood new records too.
    started: u128,
}

/// How many flood STOREs got each answer (`accepted`, `over_quota`, `rate_limited`, ...).
pub type Tally = BTreeMap<String, usize>;

impl Hostile {
    /// Binds a hostile peer on 127.0.0.1 with `identity`.
    pub fn bind(identity: &Identity) -> Result<Hostile, String> {
        let keypair = identity.keypair().map_err(|e| e.to_string())?;
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let endpoint = Endpoint::bind(addr, identity, TransportConfig::default())
            .map_err(|e| format!("cannot bind: {e}"))?;
        Ok(Hostile {
            endpoint,
            keypair,
            flooded: AtomicUsize::new(0),
            started: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// Its node id.
    pub fn id(&self) -> NodeId {
        self.endpoint.id()
    }

    /// Sends `request` to `node` and names the answer ([`answer_name`]).
    pub async fn send(&self, node: SocketAddr, request: &Request) -> String {
        match self.endpoint.request(node, None, request.encode()).await {
            Ok((_, frame)) => match Response::decode(&frame) {
                Ok(response) => answer_name(&response),
                Err(e) => format!("undecodable: {e}"),
            },
            Err(e) => format!("failed: {e}"),
        }
    }

    /// The sealed records `node` holds under `key` (none on a miss or a failure).
    pub async fn held(&self, node: SocketAddr, key: &[u8]) -> Vec<SealedRecord> {
        let request = Request::FindValue { key: key.to_vec() };
        let reply = self.endpoint.request(node, None, request.encode()).await;
        match reply.map(|(_, frame)| Response::decode(&frame)) {
            Ok(Ok(Response::Value { providers, .. })) => providers,
            _ => Vec::new(),
        }
    }

    /// A STORE under `victim`'s slot with the evil endpoint, a newer sequence and `victim`'s
    /// publisher key, signed with this peer's key.
    pub fn forged_store(&self, key: &[u8], victim: &SealedRecord) -> Request {
        let term = evil_term(victim);
        let mut seal = self
            .keypair
            .seal(key, &term, victim.seal.seq + 1, victim.seal.ttl_secs);
        seal.publisher = victim.seal.publisher;
        Request::Store {
            key: key.to_vec(),
            record: SealedRecord { term, seal },
        }
    }

    /// A REMOVE of `victim`'s slot in the name of its publisher, signed with this peer's key.
    pub fn forged_remove(&self, key: &[u8], victim: &SealedRecord) -> Request {
        let node_id = node_id(victim);
        let mut removal = self.keypair.removal(key, &node_id, victim.seal.seq + 1);
        removal.publisher = victim.seal.publisher;
        Request::Remove {
            key: key.to_vec(),
            node_id,
            removal,
        }
    }

    /// A STORE with `victim`'s provider `node_id` (a node id: the victim's own) and the evil
    /// endpoint, correctly signed, by this peer as its publisher.
    pub fn wrong_publisher_store(&self, key: &[u8], victim: &SealedRecord) -> Request {
        let term = evil_term(victim);
        Request::Store {
            key: key.to_vec(),
            record: SealedRecord {
                seal: self.keypair.seal(key, &term, 1, victim.seal.ttl_secs),
                term,
            },
        }
    }

    /// Answers every `find_value` of `key` with the providers of [`Hostile::forged_store`] and
    /// [`Hostile::wrong_publisher_store`] for each of `victims` (none signed by its publisher),
    /// takes every STORE and REMOVE without keeping anything, and knows no other node. Returns
    /// the count of `find_value` replies that carried the injection.
    pub fn serve_injections(
        &self,
        key: &[u8],
        victims: &[SealedRecord],
    ) -> Result<Arc<AtomicU64>, String> {
        let injected: Vec<SealedRecord> = victims
            .iter()
            .flat_map(|v| {
                [
                    self.forged_store(key, v),
                    self.wrong_publisher_store(key, v),
                ]
            })
            .filter_map(|request| match request {
                Request::Store { record, .. } => Some(record),
                _ => None,
            })
            .collect();
        let served = Arc::new(AtomicU64::new(0));
        let (count, key) = (served.clone(), key.to_vec());
        let handler = move |_: Peer, frame: Vec<u8>| {
            let reply = match Request::decode(&frame) {
                Ok(Request::Ping) => Response::Pong,
                Ok(Request::FindNode { .. }) => Response::Nodes { nodes: Vec::new() },
                Ok(Request::FindValue { key: asked }) if asked == key => {
                    count.fetch_add(1, Ordering::Relaxed);
                    Response::Value {
                        providers: injected.clone(),
                        nodes: Vec::new(),
                    }
                }
                Ok(Request::FindValue { .. }) => Response::NoValue { nodes: Vec::new() },
                Ok(Request::Store { .. }) => Response::Stored,
                Ok(Request::Remove { .. }) => Response::Removed,
                Err(e) => Response::from(&e),
            };
            std::future::ready(reply.encode())
        };
        self.endpoint
            .serve(handler)
            .map_err(|e| format!("cannot serve: {e}"))?;
        Ok(served)
    }

    /// Sends `node` `count` STOREs of new, validly signed records of this peer's own, each under
    /// a key of its own, `concurrency` at a time; tallies the answers.
    pub async fn flood(&self, node: SocketAddr, count: usize, concurrency: usize) -> Tally {
        let own = self.id().0;
        let first = self.flooded.fetch_add(count, Ordering::Relaxed);
        let frames: Arc<Vec<Vec<u8>>> = Arc::new(
            (first..first + count)
                .map(|i| {
                    let key = service_key(&format!("flood.{}.{i}", self.started));
                    let term = provider_term(&own, "https://flood.example:1", 300);
                    let seal = self.keypair.seal(&key, &term, 1, 300);
                    let record = SealedRecord { term, seal };
                    Request::Store {
                        key: key.to_vec(),
                        record,
                    }
                    .encode()
                })
                .collect(),
        );
        let next = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..concurrency.max(1))
            .map(|_| {
                let (next, frames, endpoint) =
                    (next.clone(), frames.clone(), self.endpoint.clone());
                tokio::spawn(async move {
                    let mut tally = Tally::new();
                    while let Some(frame) = frames.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let answer = match endpoint.request(node, None, frame.clone()).await {
                            Ok((_, reply)) => Response::decode(&reply)
                                .map_or_else(|e| format!("undecodable: {e}"), |r| answer_name(&r)),
                            Err(e) => format!("failed: {e}"),
                        };
                        *tally.entry(answer).or_default() += 1;
                    }
                    tally
                })
            })
            .collect();
        let mut tally = Tally::new();
        for worker in workers {
            for (answer, n) in worker.await.unwrap_or_default() {
                *tally.entry(answer).or_default() += n;
            }
        }
        tally
    }

    /// Stops answering and closes the endpoint.
    pub async fn close(&self) {
        self.endpoint.close().await;
    }
}

/// How a node answered: `accepted` for a STORE or REMOVE it took, the wire name of the reason
/// for an `error` (`forged_signature`, `wrong_publisher`, `removed`, ...), else the reply's type.
pub fn answer_name(response: &Response) -> String {
    match response {
        Response::Stored | Response::Removed => "accepted".into(),
        Response::Error { reason } => reason.name().into(),
        other => other.type_name().into(),
    }
}

/// Of `tries` fresh identities, the one whose id is closest to the id of `key`: a peer that
/// lookups of `key` ask first.
pub fn identity_near(key: &[u8], tries: usize) -> Result<Identity, String> {
    let target = NodeId::normalize(key);
    let mut best: Option<Identity> = None;
    for _ in 0..tries.max(1) {
        let candidate = Identity::generate().map_err(|e| e.to_string())?;
        let closer = best
            .as_ref()
            .is_none_or(|b| candidate.id().distance(&target) < b.id().distance(&target));
        if closer {
            best = Some(candidate);
        }
    }
    best.ok_or_else(|| "no identity".into())
}

/// The provider `node_id` of a record (empty if it has none).
fn node_id(record: &SealedRecord) -> Vec<u8> {
    let etf = versioned(&record.term);
    ProviderRecord::parse(&etf)
        .ok()
        .and_then(|p| p.node_id().map(<[u8]>::to_vec))
        .unwrap_or_default()
}

/// `victim`'s provider `node_id` with the evil endpoint, as term bytes without version byte.
fn evil_term(victim: &SealedRecord) -> Vec<u8> {
    provider_term(&node_id(victim), EVIL_ENDPOINT, victim.seal.ttl_secs.max(1))
}

/// `#{endpoint => Endpoint, node_id => NodeId, ttl => Ttl}`, without version byte.
fn provider_term(node_id: &[u8], endpoint: &str, ttl: u32) -> Vec<u8> {
    let mut w = Writer::unversioned();
    w.map(3);
    w.atom("endpoint");
    w.binary(endpoint.as_bytes());
    w.atom("node_id");
    w.binary(node_id);
    w.atom("ttl");
    w.unsigned(u64::from(ttl));
    w.into_bytes()
}
