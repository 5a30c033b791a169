//! The control socket of a running node: advertise, remove and status from the same machine.
//!
//! This module exists so that services can be advertised, withdrawn and discovered on a node that is
//! already running (`rust-node ctl ...`), without a network-facing admin port. It is a Unix
//! socket that only the node's user can open: the socket is bound under a temporary name,
//! restricted to mode 0600, and only then renamed into place, so there is no moment at which
//! the final path accepts anyone else.
//!
//! Protocol: one connection, one request line, one reply line, both JSON:
//!
//! ```text
//! > {"cmd":"advertise","service":"calc","endpoint":"https://h:9443","ttl":60,"metadata":{},"once":false}
//! < {"result":"published","key":"5e8b...","targets":7,"acked":7}
//! > {"cmd":"remove","service":"calc"}
//! > {"cmd":"discover","service":"calc","want":2}
//! < {"result":"providers","providers":[{"node_id":"ab12...","endpoint":"https://h:9443",...}]}
//! > {"cmd":"pick","service":"calc","strategy":"least-loaded"}
//! < {"result":"picked","provider":{"node_id":"ab12...","endpoint":"https://h:9443",...}}
//! > {"cmd":"report_failure","service":"calc","node_id":"ab12..."}
//! < {"result":"reported","skipped_for_ms":5000}
//! > {"cmd":"status"}
//! < {"result":"status","id":"...","addr":"127.0.0.1:4000","peers":7,...}
//! < {"result":"error","message":"..."}
//! ```
//!
//! Bounded: connections served at once, request line length, time to send the request.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::config::DEFAULT_TTL_SECS;
use crate::node::{Node, Published, Status, Strategy};
use crate::record::{unhex, ProviderView};

/// Longest request or reply line, in bytes.
pub const MAX_LINE_BYTES: usize = 64 << 10;

/// Control connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 8;

/// How long a client may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the client waits for a reply (a publish runs a lookup and k stores).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum CtlRequest {
    /// Advertise a service from this node and keep republishing it, as [`Node::advertise`] (or
    /// publish it once); answered with [`CtlResponse::Published`].
    Advertise {
        /// The service name; its DHT key is the SHA-256 of it.
        service: String,
        /// Where clients reach the service (such as `https://h:9443`), stored in the provider map.
        endpoint: String,
        /// How long the record lives without a refresh, in seconds; [`DEFAULT_TTL_SECS`] when
        /// absent.
        #[serde(default = "default_ttl")]
        ttl: u32,
        /// Free-form string pairs stored with the provider; empty when absent.
        #[serde(default)]
        metadata: BTreeMap<String, String>,
        /// Publish once, without republishing (the record expires after `ttl`).
        #[serde(default)]
        once: bool,
    },
    /// Stop advertising a service, as [`Node::withdraw`]; answered with
    /// [`CtlResponse::Published`], counting the REMOVEs sent and acknowledged.
    Remove {
        /// The service name, as given to `advertise`.
        service: String,
    },
    /// The providers of a service as this node finds them: its own store, then a lookup.
    Discover {
        /// The service name.
        service: String,
        /// How many providers are enough to end the lookup; 1 when absent.
        #[serde(default = "one")]
        want: usize,
    },
    /// One provider of a service by a strategy, as [`Node::pick`]; answered with
    /// [`CtlResponse::Picked`].
    Pick {
        /// The service name.
        service: String,
        /// `round-robin` (when absent), `random`, `least-loaded` or `nearest`.
        #[serde(default = "round_robin")]
        strategy: String,
    },
    /// The caller could not reach a provider, as [`Node::report_failure`]; answered with
    /// [`CtlResponse::Reported`].
    ReportFailure {
        /// The service name.
        service: String,
        /// The provider's `node_id`, hex.
        node_id: String,
    },
    /// A snapshot of the node's state; answered with [`CtlResponse::Status`].
    Status,
}

fn round_robin() -> String {
    Strategy::RoundRobin.name().to_string()
}

fn one() -> usize {
    1
}

fn default_ttl() -> u32 {
    DEFAULT_TTL_SECS
}

/// A control reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CtlResponse {
    /// An `advertise` or `remove` was sent: the key, and how many of its closest nodes
    /// acknowledged.
    Published(Published),
    /// The reply to `status`.
    Status(Box<Status>),
    /// The reply to `discover`.
    Providers {
        /// The providers found, this node's own store first; empty when none was found.
        providers: Vec<ProviderView>,
    },
    /// The reply to `pick`.
    Picked {
        /// The provider chosen.
        provider: ProviderView,
    },
    /// The reply to `report_failure`.
    Reported {
        /// How long `pick` now skips the provider, in milliseconds.
        skipped_for_ms: u64,
    },
    /// The request could not be read, or the node failed to carry it out.
    Error {
        /// Why, for humans.
        message: String,
    },
}

/// Why the control socket could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Creating, binding, connecting to or talking over the socket failed (a client that waits
    /// longer than [`CLIENT_TIMEOUT`] for the reply gets this too).
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket's path.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A node is already listening on the socket at this path.
    #[error("control socket {0} is in use by a running node")]
    InUse(PathBuf),
    /// Something other than a socket exists at this path; it is left alone.
    #[error("{0} exists and is not a socket; not touching it")]
    NotASocket(PathBuf),
    /// The request could not be encoded, or the reply is missing or is not a [`CtlResponse`].
    #[error("control socket {path}: bad reply: {reason}")]
    Protocol {
        /// The socket's path.
        path: PathBuf,
        /// What was wrong, for humans.
        reason: String,
    },
}

/// A listening control socket. Dropping it stops serving and removes the socket file.
pub struct CtlServer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl CtlServer {
    /// Creates the socket at `path` (mode 0600) and serves `node` on it. A stale socket file
    /// (nobody listening) is replaced; a live one is an error. Must be called within a tokio
    /// runtime.
    pub fn bind(path: &Path, node: Arc<Node>) -> Result<CtlServer, CtlError> {
        let io = |source| CtlError::Io {
            path: path.to_owned(),
            source,
        };
        clear_stale(path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "ctl".into());
        let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&temp);
        let listener = std::os::unix::net::UnixListener::bind(&temp).map_err(io)?;
        let private = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&temp, path));
        if let Err(e) = private {
            let _ = std::fs::remove_file(&temp);
            return Err(io(e));
        }
        let listener = listener
            .set_nonblocking(true)
            .and_then(|()| UnixListener::from_std(listener))
            .map_err(io)?;
        let task = tokio::spawn(accept_loop(listener, node));
        tracing::info!(path = %path.display(), "control socket ready");
        Ok(CtlServer {
            path: path.to_owned(),
            task,
        })
    }

    /// Where the socket listens; the file is removed when the server is dropped.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends one request to the node listening at `path` and returns its reply (blocking; no
/// runtime needed).
pub fn call(path: &Path, request: &CtlRequest) -> Result<CtlResponse, CtlError> {
    let io = |source| CtlError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream = StdUnixStream::connect(path).map_err(io)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(READ_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(request).map_err(|e| CtlError::Protocol {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reply = Vec::new();
    BufReader::new(stream.take(MAX_LINE_BYTES as u64 + 1))
        .read_until(b'\n', &mut reply)
        .map_err(io)?;
    serde_json::from_slice(&reply).map_err(|e| CtlError::Protocol {
        path: path.to_owned(),
        reason: if reply.is_empty() {
            "connection closed without a reply".into()
        } else {
            e.to_string()
        },
    })
}

/// Removes a socket file nobody listens on; refuses a live socket or a non-socket file.
fn clear_stale(path: &Path) -> Result<(), CtlError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CtlError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(CtlError::NotASocket(path.to_owned()));
    }
    if StdUnixStream::connect(path).is_ok() {
        return Err(CtlError::InUse(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(|source| CtlError::Io {
        path: path.to_owned(),
        source,
    })
}

async fn accept_loop(listener: UnixListener, node: Arc<Node>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let node = node.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    serve(stream, &node).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(stream: UnixStream, node: &Node) {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = AsyncBufReader::new(read.take(MAX_LINE_BYTES as u64 + 1));
    let read = tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let reply = match read {
        Ok(Ok(_)) if line.len() > MAX_LINE_BYTES => error("request line too long"),
        Ok(Ok(_)) => match serde_json::from_slice::<CtlRequest>(&line) {
            Ok(request) => execute(node, request).await,
            Err(e) => error(&format!("bad request: {e}")),
        },
        Ok(Err(e)) => error(&format!("read failed: {e}")),
        Err(_) => error("request not received in time"),
    };
    let Ok(mut out) = serde_json::to_vec(&reply) else {
        return;
    };
    out.push(b'\n');
    let _ = write.write_all(&out).await;
    let _ = write.shutdown().await;
}

async fn execute(node: &Node, request: CtlRequest) -> CtlResponse {
    let result = match request {
        CtlRequest::Advertise {
            service,
            endpoint,
            ttl,
            metadata,
            once,
        } => {
            if once {
                node.publish_once(&service, &endpoint, metadata, ttl).await
            } else {
                node.advertise(&service, &endpoint, metadata, ttl).await
            }
        }
        CtlRequest::Remove { service } => node.withdraw(&service).await,
        CtlRequest::Discover { service, want } => {
            return match node.discover(&service, want).await {
                Ok(found) => CtlResponse::Providers {
                    providers: found.iter().map(ProviderView::from).collect(),
                },
                Err(e) => error(&e.to_string()),
            };
        }
        CtlRequest::Pick { service, strategy } => return pick(node, &service, &strategy).await,
        CtlRequest::ReportFailure { service, node_id } => {
            return report_failure(node, &service, &node_id);
        }
        CtlRequest::Status => return CtlResponse::Status(Box::new(node.status())),
    };
    match result {
        Ok(published) => CtlResponse::Published(published),
        Err(e) => error(&e.to_string()),
    }
}

async fn pick(node: &Node, service: &str, strategy: &str) -> CtlResponse {
    let strategy: Strategy = match strategy.parse() {
        Ok(strategy) => strategy,
        Err(e) => return error(&e.to_string()),
    };
    match node.pick(service, strategy).await {
        Ok(provider) => CtlResponse::Picked {
            provider: ProviderView::from(&provider),
        },
        Err(e) => error(&e.to_string()),
    }
}

fn report_failure(node: &Node, service: &str, node_id: &str) -> CtlResponse {
    let Some(node_id) = unhex(node_id.as_bytes()).filter(|id| !id.is_empty()) else {
        return error(&format!("invalid node id {node_id:?}: expected hex"));
    };
    let skipped = node.report_failure(service, &node_id);
    CtlResponse::Reported {
        skipped_for_ms: u64::try_from(skipped.as_millis()).unwrap_or(u64::MAX),
    }
}

fn error(message: &str) -> CtlResponse {
    CtlResponse::Error {
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_are_json_lines() {
        let r: CtlRequest =
            serde_json::from_str(r#"{"cmd":"advertise","service":"s","endpoint":"e"}"#).unwrap();
        assert_eq!(
            r,
            CtlRequest::Advertise {
                service: "s".into(),
                endpoint: "e".into(),
                ttl: DEFAULT_TTL_SECS,
                metadata: BTreeMap::new(),
                once: false
            }
        );
        let reply = CtlResponse::Published(Published {
            key: "ab".into(),
            targets: 2,
            acked: 1,
        });
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(
            text,
            r#"{"result":"published","key":"ab","targets":2,"acked":1}"#
        );
        assert_eq!(serde_json::from_str::<CtlResponse>(&text).unwrap(), reply);
    }
}
