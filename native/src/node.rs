//! One DHT node inside the BEAM: the engine's routing table and provider store behind locks, so
//! that any process can read on its own scheduler while writes serialise only on the data they
//! touch; and, in network mode, the embedded runtime serving peers from that same store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use macula_dht::store::StoreLimits;
use macula_dht::table::{RoutingTable, TableConfig};
use macula_dht::NodeId;
use macula_dht_node::SharedStore;
use parking_lot::RwLock;
use rustler::{Env, LocalPid, Monitor, Resource};

use crate::net::Net;
use crate::read_cache::ReadCache;

/// NodeInfo maps as stored in the table: their ETF bytes without the version byte.
pub type NodeInfoBytes = Box<[u8]>;

pub type Table = Arc<RwLock<RoutingTable<NodeInfoBytes>>>;

pub struct Node {
    /// Shared with the network side, which mirrors its peers into it.
    pub table: Table,
    /// Shared with the network side, which answers peers from it and writes their STOREs.
    pub store: Arc<SharedStore>,
    /// Decoded lists of hot keys. Lock order: `store`, then `read_cache`; the store's write hook
    /// drops a key's entry under the store's write lock.
    pub read_cache: Arc<RwLock<ReadCache>>,
    /// The network side, once `net_start` ran.
    net: RwLock<Option<Arc<Net>>>,
    /// Set when the owning server process dies, so callers holding the handle see it gone
    /// (as they would with a dead gen_server) instead of a store nobody maintains.
    closed: AtomicBool,
}

#[rustler::resource_impl]
impl Resource for Node {
    const IMPLEMENTS_DOWN: bool = true;

    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _monitor: Monitor) {
        self.close();
    }
}

impl Node {
    pub fn new(local: NodeId, table: TableConfig, limits: StoreLimits, read_cache: usize) -> Self {
        let read_cache = Arc::new(RwLock::new(ReadCache::new(read_cache)));
        let cache = read_cache.clone();
        let store = SharedStore::with_write_hook(
            limits,
            Box::new(move |key| cache.write().invalidate(key)),
        );
        Node {
            table: Arc::new(RwLock::new(RoutingTable::new(local, table))),
            store: Arc::new(store),
            read_cache,
            net: RwLock::new(None),
            closed: AtomicBool::new(false),
        }
    }

    /// Monotonic milliseconds: the store's clock, which the network side shares.
    pub fn now_ms(&self) -> u64 {
        self.store.now_ms()
    }

    pub fn local_id(&self) -> NodeId {
        *self.table.read().local()
    }

    pub fn net(&self) -> Option<Arc<Net>> {
        self.net.read().clone()
    }

    /// Attaches the network side; refused (returned) when one is attached or the node closed.
    pub fn attach(&self, net: Arc<Net>) -> Result<(), Arc<Net>> {
        let mut slot = self.net.write();
        if slot.is_some() || self.is_closed() {
            return Err(net);
        }
        *slot = Some(net);
        Ok(())
    }

    /// Closes the handle and stops the network side, if any, in the background: for the
    /// monitor callback, which must not block.
    pub fn close(&self) {
        if let Some(net) = self.take_net() {
            net.stop();
        }
    }

    /// Closes the handle and stops the network side, returning once its port is released (at
    /// most a few seconds), so that a restarted server can bind it again.
    pub fn close_and_wait(&self) {
        if let Some(net) = self.take_net() {
            net.stop_and_wait();
        }
    }

    fn take_net(&self) -> Option<Arc<Net>> {
        self.closed.store(true, Ordering::Release);
        self.net.write().take()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Wall-clock milliseconds, the unit of a NodeInfo's `last_seen`.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
