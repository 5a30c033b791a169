//! Helpers shared by the in-process node tests.
#![allow(dead_code)]

pub mod procs;
pub mod relay;

use std::future::Future;
use std::time::Duration;

use std::net::SocketAddr;

use macula_dht::wire::{Request, Response, SealedRecord};
use macula_dht_node::{DhtConfig, Endpoint, NodeConfig};

/// Production settings with short timers, so expiry and republish show within seconds.
pub fn fast_config() -> NodeConfig {
    NodeConfig {
        dht: DhtConfig {
            tick: Duration::from_millis(100),
            refresh_interval: Duration::from_secs(5),
            republish_floor: Duration::from_secs(1),
            request_timeout: Duration::from_millis(1000),
            ..DhtConfig::default()
        },
        ..NodeConfig::default()
    }
}

/// The sealed records a node serves under `key`, asked over the wire from `client`.
pub async fn sealed_copies(client: &Endpoint, addr: SocketAddr, key: &[u8]) -> Vec<SealedRecord> {
    let ask = Request::FindValue { key: key.to_vec() };
    let (_, reply) = client.request(addr, None, ask.encode()).await.unwrap();
    match Response::decode(&reply).unwrap() {
        Response::Value { providers, .. } => providers,
        _ => Vec::new(),
    }
}

/// Polls `check` every 50 ms until it holds or `within` has passed; returns whether it held.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
