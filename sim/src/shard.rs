//! A shard of the network: some of its nodes, and what is on its way to them.
//!
//! Node `i` lives in shard `i % shards`. A shard delivers its nodes' messages and wake-ups in
//! the order of their keys (due time, then the node that scheduled it, then that node's count of
//! what it scheduled), and carries out what they ask for. Every key and every loss comes from the
//! node that sends, never from a count shared by the network, so a node meets its inputs in the
//! same order however the nodes are sharded and whichever shard runs first: one seed, one
//! outcome, on one thread or several (see `parallel`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use macula_dht::dht::{Action, Event, Outcome, Reply};
use macula_dht::wire::{NodeInfo, Request, Response};
use macula_dht::{NodeId, OpId, RpcId, Time};

use crate::queue::Queue;
use crate::{addr_of, index_of, NetStats, SimConfig, SimNode};

/// Wake-ups of one node at one instant before the simulation calls it a livelock (a paused
/// hand-off legitimately asks for a few: each step examines a chunk of keys).
const MAX_WAKES_AT_ONCE: u32 = 10_000;

/// Bits of a key's order below the node that scheduled the delivery: its count of what it
/// scheduled. The node's index goes above, so up to 2^24 nodes.
const COUNT_BITS: u32 = 40;

/// What every shard reads and none writes while they run.
#[derive(Debug)]
pub(crate) struct Common {
    pub config: SimConfig,
    /// Each node's id, by index.
    pub ids: Vec<NodeId>,
    /// Pairs of nodes whose messages to each other are lost (a partition), lower index first.
    pub cuts: BTreeSet<(usize, usize)>,
    pub shards: usize,
}

impl Common {
    pub(crate) fn shard_of(&self, node: usize) -> usize {
        node % self.shards
    }
}

#[derive(Debug)]
pub(crate) enum Delivery {
    Request {
        from: usize,
        to: usize,
        /// `None`: injected by a test, nobody waits for the answer.
        rpc: Option<RpcId>,
        request: Arc<Request>,
    },
    Reply {
        from: usize,
        to: usize,
        rpc: RpcId,
        response: Response,
    },
    Wake {
        node: usize,
    },
}

/// A delivery for a node of another shard: due time, order, the delivery.
pub(crate) type Letter = (Time, u64, Delivery);

/// Some of the nodes, their deliveries and what they did.
#[derive(Debug)]
pub(crate) struct Shard {
    /// Node `i` at `i / shards`.
    nodes: Vec<SimNode>,
    /// The wake-up scheduled for each node, if any (others in the queue are stale): what a
    /// stale wake-up reads, packed apart from the nodes' state.
    wakes: Vec<Option<Time>>,
    queue: Queue<Delivery>,
    pub outcomes: BTreeMap<(usize, OpId), Outcome>,
    /// Commands that ended while `discover_many` waits (`None` otherwise).
    pub ended: Option<Vec<(usize, OpId)>>,
    pub stats: NetStats,
    /// Deliveries for the nodes of other shards, by shard, since they were last handed over.
    pub outbox: Vec<Vec<Letter>>,
}

impl Shard {
    pub(crate) fn new(shards: usize) -> Shard {
        Shard {
            nodes: Vec::new(),
            wakes: Vec::new(),
            queue: Queue::new(),
            outcomes: BTreeMap::new(),
            ended: None,
            stats: NetStats::default(),
            outbox: (0..shards).map(|_| Vec::new()).collect(),
        }
    }

    pub(crate) fn node(&self, i: usize, common: &Common) -> &SimNode {
        &self.nodes[i / common.shards]
    }

    pub(crate) fn node_mut(&mut self, i: usize, common: &Common) -> &mut SimNode {
        &mut self.nodes[i / common.shards]
    }

    /// Adds node `i` (the next of this shard).
    pub(crate) fn push(&mut self, i: usize, node: SimNode, common: &Common) {
        assert_eq!(
            i / common.shards,
            self.nodes.len(),
            "nodes are added in order"
        );
        assert!(i < 1 << (64 - COUNT_BITS), "at most 2^24 nodes");
        self.nodes.push(node);
        self.wakes.push(None);
    }

    pub(crate) fn into_nodes(self) -> Vec<SimNode> {
        self.nodes
    }

    /// The key of what is due first: its time above, its order below.
    pub(crate) fn next_key(&self) -> Option<u128> {
        self.queue.next_key()
    }

    pub(crate) fn next_at(&self) -> Option<Time> {
        self.queue.next_at()
    }

    /// Queues deliveries handed over by other shards.
    pub(crate) fn receive(&mut self, letters: impl IntoIterator<Item = Letter>) {
        for (at, order, delivery) in letters {
            self.queue.push(at, order, delivery);
        }
    }

    /// Delivers the first thing due.
    pub(crate) fn step(&mut self, common: &Common) {
        let Some((now, delivery)) = self.queue.pop() else {
            return;
        };
        match delivery {
            Delivery::Request {
                from,
                to,
                rpc,
                request,
            } => self.deliver_request(from, to, rpc, request, now, common),
            Delivery::Reply {
                from,
                to,
                rpc,
                response,
            } => {
                let node = self.node_mut(to, common);
                if node.alive {
                    let reply = Reply::Answered {
                        from: common.ids[from],
                        response: Ok(response),
                    };
                    node.dht.handle_reply(&mut node.store, rpc, reply, now);
                    self.after_input(to, now, common);
                }
            }
            Delivery::Wake { node } => {
                let at = node / common.shards;
                if self.wakes[at] == Some(now) && self.nodes[at].alive {
                    self.wakes[at] = None;
                    let n = &mut self.nodes[at];
                    n.woken_at = match n.woken_at {
                        (at, count) if at == now => (at, count + 1),
                        _ => (now, 1),
                    };
                    assert!(
                        n.woken_at.1 < MAX_WAKES_AT_ONCE,
                        "node {node} asks to be woken at {now:?} again and again: a deadline that does not move on",
                    );
                    n.dht.handle_timeout(&mut n.store, now);
                    self.after_input(node, now, common);
                }
            }
        }
    }

    /// Queues `request` from `from` to `to`, a node of this shard, at `now`, as if `from` had
    /// sent it (its answer goes nowhere). `order`: from [`Shard::order`] of `from`.
    pub(crate) fn inject(
        &mut self,
        now: Time,
        order: u64,
        from: usize,
        to: usize,
        request: Request,
    ) {
        let delivery = Delivery::Request {
            from,
            to,
            rpc: None,
            request: Arc::new(request),
        };
        self.queue.push(now, order, delivery);
    }

    /// The order of the next thing node `i` (of this shard) schedules.
    pub(crate) fn order(&mut self, i: usize, common: &Common) -> u64 {
        let node = self.node_mut(i, common);
        node.scheduled += 1;
        ((i as u64) << COUNT_BITS) | node.scheduled
    }

    fn deliver_request(
        &mut self,
        from: usize,
        to: usize,
        rpc: Option<RpcId>,
        request: Arc<Request>,
        now: Time,
        common: &Common,
    ) {
        let node = self.node_mut(to, common);
        if !node.alive {
            self.stats.unanswered += 1;
            return;
        }
        let sender = NodeInfo {
            id: common.ids[from],
            addr: addr_of(from),
        };
        let request = Arc::try_unwrap(request).unwrap_or_else(|shared| (*shared).clone());
        let response = node
            .dht
            .handle_request(&mut node.store, sender, request, now);
        self.after_input(to, now, common);
        let Some(rpc) = rpc else {
            return;
        };
        self.stats.replies += 1;
        let reply = Delivery::Reply {
            from: to,
            to: from,
            rpc,
            response,
        };
        self.transmit(to, from, reply, now, common);
    }

    /// Schedules a message from `from` (of this shard) to `to` after their one-way latency,
    /// unless it is lost.
    fn transmit(&mut self, from: usize, to: usize, delivery: Delivery, now: Time, c: &Common) {
        let order = self.order(from, c);
        if c.config.links.lost(c.config.seed, order)
            || c.cuts.contains(&(from.min(to), from.max(to)))
        {
            self.stats.lost += 1;
            return;
        }
        let at = now + c.config.links.rtt(c.config.seed, from, to) / 2;
        let shard = c.shard_of(to);
        if shard == c.shard_of(from) {
            self.queue.push(at, order, delivery);
        } else {
            self.outbox[shard].push((at, order, delivery));
        }
    }

    /// Carries out what node `i` asks for after an input at `now`, and schedules its next
    /// wake-up.
    pub(crate) fn after_input(&mut self, i: usize, now: Time, common: &Common) {
        while let Some(action) = self.node_mut(i, common).dht.poll_action() {
            match action {
                Action::Send(out) => {
                    self.stats.requests += 1;
                    let Some(to) = index_of(out.addr).filter(|&to| to < common.ids.len()) else {
                        continue; // nobody there: it times out
                    };
                    let request = Delivery::Request {
                        from: i,
                        to,
                        rpc: Some(out.rpc),
                        request: out.request,
                    };
                    self.transmit(i, to, request, now, common);
                }
                // The reply, when it comes, is ignored by the engine.
                Action::Cancel(_) => {}
                Action::Event(event) => self.count(&event),
                Action::Done(op, outcome) => {
                    self.outcomes.insert((i, op), outcome);
                    if let Some(ended) = self.ended.as_mut() {
                        ended.push((i, op));
                    }
                    self.settle_leaving(i, op, common);
                }
            }
        }
        let at = i / common.shards;
        if !self.nodes[at].alive {
            return;
        }
        let wake = self.nodes[at].dht.poll_timeout();
        if wake != self.wakes[at] {
            self.wakes[at] = wake;
            if let Some(wake) = wake {
                let order = self.order(i, common);
                self.queue
                    .push(wake.max(now), order, Delivery::Wake { node: i });
            }
        }
    }

    /// Node `i` stops at once: it answers nothing more and its state is kept only for
    /// inspection.
    pub(crate) fn crash(&mut self, i: usize, common: &Common) {
        let at = i / common.shards;
        self.nodes[at].alive = false;
        self.wakes[at] = None;
    }

    fn count(&mut self, event: &Event) {
        let stats = &mut self.stats;
        match event {
            Event::PeerUp(_) => stats.peer_ups += 1,
            Event::PeerDown(_) => stats.peer_downs += 1,
            Event::Lookup(_) => stats.lookups += 1,
            Event::Trouble(_) => stats.troubles += 1,
            _ => {}
        }
    }

    /// A leaving node goes once its last withdrawal ended.
    fn settle_leaving(&mut self, i: usize, op: OpId, common: &Common) {
        let node = self.node_mut(i, common);
        let Some(ops) = node.leaving.as_mut() else {
            return;
        };
        ops.retain(|o| *o != op);
        if ops.is_empty() {
            node.leaving = None;
            self.outcomes.retain(|(node, _), _| *node != i);
            self.crash(i, common);
        }
    }
}
