//! A UDP relay that delays every packet between one client and one node: the client reaches the
//! node through the relay's address and measures a longer round trip to it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A running relay; it stops when dropped.
pub struct DelayRelay {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl DelayRelay {
    /// Relays between the first other sender and `node`, holding each packet for `delay`
    /// (so a round trip through it costs twice that).
    pub async fn start(node: SocketAddr, delay: Duration) -> DelayRelay {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let to = if from == node {
                    match *client.lock().unwrap() {
                        Some(client) => client,
                        None => continue,
                    }
                } else {
                    *client.lock().unwrap() = Some(from);
                    node
                };
                let packet = buf[..n].to_vec();
                let socket = socket.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = socket.send_to(&packet, to).await;
                });
            }
        });
        DelayRelay { addr, task }
    }

    /// Where the client sends to reach the node.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
