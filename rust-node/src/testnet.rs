//! Many nodes in one process, on 127.0.0.1, for tests and benches.
//!
//! Every node binds port 0 and bootstraps off the first one, in order, so that by the end each
//! node has met the first and, through its own-id lookup, its neighbourhood. Identities are
//! fresh for each run.

use std::net::SocketAddr;

use crate::identity::Identity;
use crate::node::{Node, NodeConfig, NodeError};

/// A running in-process network.
#[derive(Debug)]
pub struct Testnet {
    nodes: Vec<Node>,
}

impl Testnet {
    /// Starts `n` nodes (at least 1) with `config` and bootstraps nodes 1.. off node 0.
    pub async fn start(n: usize, config: NodeConfig) -> Result<Testnet, NodeError> {
        Testnet::start_on(n, config, |_| None).await
    }

    /// [`Testnet::start`], with node `i` on the runtime `on(i)` names (for `None`, the current
    /// one): the node's timer, its requests and connections, and its answers all run there. A
    /// test stops such nodes as `kill -9` stops a process, as far as their peers can tell, by
    /// shutting that runtime down (`Runtime::shutdown_background`): every task stops where it is
    /// and no packet leaves (no QUIC close); while the [`Node`] value is kept (see
    /// [`Testnet::take`]) its socket stays bound and unread, so what peers send is swallowed
    /// (no ICMP port unreachable either).
    pub async fn start_on(
        n: usize,
        config: NodeConfig,
        on: impl Fn(usize) -> Option<tokio::runtime::Handle>,
    ) -> Result<Testnet, NodeError> {
        let loopback: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut nodes: Vec<Node> = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let identity = Identity::generate()?;
            let node = match on(i) {
                None => Node::start(&identity, loopback, config.clone()).await?,
                Some(runtime) => {
                    let config = config.clone();
                    let started = runtime
                        .spawn(async move { Node::start(&identity, loopback, config).await })
                        .await;
                    match started {
                        Ok(node) => node?,
                        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                        // That runtime is shutting down.
                        Err(_) => return Err(NodeError::Closed),
                    }
                }
            };
            if i > 0 {
                node.bootstrap(&[nodes_first_addr(&nodes)]).await?;
            }
            nodes.push(node);
        }
        Ok(Testnet { nodes })
    }

    /// Takes node `i` out of the network as it is, still running (later indices shift down):
    /// the caller decides how it ends. `None` if there is no such node.
    pub fn take(&mut self, i: usize) -> Option<Node> {
        (i < self.nodes.len()).then(|| self.nodes.remove(i))
    }

    /// The running nodes, in start order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i`, if there is one.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.nodes.get(i)
    }

    /// How many nodes run.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The address of node 0, to bootstrap more nodes (or clients) off it.
    pub fn bootstrap_addr(&self) -> SocketAddr {
        nodes_first_addr(&self.nodes)
    }

    /// Shuts down node `i` and takes it out of the network (its records are not withdrawn);
    /// later indices shift down. Returns false if there is no such node.
    pub async fn stop(&mut self, i: usize) -> bool {
        if i >= self.nodes.len() {
            return false;
        }
        let node = self.nodes.remove(i);
        node.shutdown().await;
        true
    }

    /// Shuts every node down, all at once.
    pub async fn shutdown(self) {
        let mut closing = tokio::task::JoinSet::new();
        for node in self.nodes {
            closing.spawn(async move { node.shutdown().await });
        }
        while closing.join_next().await.is_some() {}
    }
}

/// Node 0's address; `start` always creates node 0 before calling this.
fn nodes_first_addr(nodes: &[Node]) -> SocketAddr {
    nodes
        .first()
        .map(Node::local_addr)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
}
