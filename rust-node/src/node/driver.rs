//! Carries out what the engine decides: the one place where the node's [`Dht`] meets sockets,
//! tasks and the clock.
//!
//! Every input goes through [`Shared::run`]: it locks the engine, hands it the input with the
//! store and the time, takes every action the engine asks for, and carries them out once the
//! lock is released. A request to send becomes a task on the runtime that reports its outcome
//! back as another input; an event is logged and passed to the host; a command's outcome goes
//! to the caller waiting for it. One timer task calls the engine when its next deadline comes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use macula_dht::dht::{
    Action, Event, Failure, FailureKind, Outcome, Outgoing, Reply, Started, Trouble,
};
use macula_dht::seal::Keypair;
use macula_dht::wire::{ErrorReason, NodeInfo, Request, Response, WireError, PROTOCOL_VERSION};
use macula_dht::{Dht, NodeId, OpId, RpcId, Time};
use parking_lot::Mutex;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify};
use tokio::task::{AbortHandle, JoinHandle};

use super::{EventSink, NodeConfig, NodeError, Status};
use crate::identity::id_hex;
use crate::record::unix_now_us;
use crate::shared_store::SharedStore;
use crate::transport::{Endpoint, Handler, Peer, TransportError};

/// State of a running node, each piece with one owner: the engine (and the callers waiting on
/// its commands) behind one lock, the store behind its own (shared with the host), the endpoint.
pub(super) struct Shared {
    id: NodeId,
    config: NodeConfig,
    endpoint: Endpoint,
    store: Arc<SharedStore>,
    events: Option<EventSink>,
    engine: Mutex<Engine>,
    timer: Arc<Timer>,
    /// Where request tasks run (callers may be on threads outside the runtime, such as the
    /// BEAM's schedulers).
    runtime: Handle,
    /// Requests peers sent, and of those the ones that did not decode (the engine never sees
    /// those).
    requests: AtomicU64,
    bad_requests: AtomicU64,
}

struct Engine {
    dht: Dht,
    /// Callers waiting for a command's outcome. A caller that gave up leaves a closed sender,
    /// dropped when the command ends.
    waiters: HashMap<OpId, oneshot::Sender<Outcome>>,
    /// The tasks of the requests in flight, to stop those the engine no longer needs.
    requests: HashMap<RpcId, AbortHandle>,
}

/// The engine's next deadline, for the timer task.
struct Timer {
    /// Microseconds on the store's clock; `u64::MAX` for none.
    next_us: AtomicU64,
    /// Woken when the deadline moves earlier.
    notify: Notify,
}

/// A command's outcome, to come.
pub(crate) struct Waiting(oneshot::Receiver<Outcome>);

impl Future for Waiting {
    type Output = Result<Outcome, NodeError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|outcome| outcome.map_err(|_| NodeError::Closed))
    }
}

/// A command that may have been answered at once.
pub(crate) enum Begun<T> {
    Done(T),
    Running(Waiting),
}

/// What one input made the engine ask for that is carried out after the lock is released.
#[derive(Default)]
struct ToDo {
    events: Vec<Event>,
    completions: Vec<(oneshot::Sender<Outcome>, Outcome)>,
}

impl Shared {
    /// Sets up the engine, starts answering peers (when serving) and the timer task.
    pub(super) fn launch(
        keypair: Keypair,
        config: NodeConfig,
        endpoint: Endpoint,
        store: Arc<SharedStore>,
        events: Option<EventSink>,
    ) -> Result<(Arc<Shared>, Vec<JoinHandle<()>>), NodeError> {
        let id = keypair.node_id();
        let dht = Dht::new(
            keypair,
            config.dht.clone(),
            store.now(),
            unix_now_us(),
            seed(&id),
        )?;
        let timer = Arc::new(Timer {
            next_us: AtomicU64::new(u64::MAX),
            notify: Notify::new(),
        });
        let runtime = Handle::current();
        let shared = Arc::new(Shared {
            id,
            endpoint,
            store,
            events,
            engine: Mutex::new(Engine {
                dht,
                waiters: HashMap::new(),
                requests: HashMap::new(),
            }),
            timer,
            runtime,
            requests: AtomicU64::new(0),
            bad_requests: AtomicU64::new(0),
            config,
        });
        if shared.config.dht.serve {
            shared.endpoint.serve(Responder(Arc::downgrade(&shared)))?;
        }
        // Schedules the engine's first deadline.
        shared.run(|_, _, _| ());
        let timer = tokio::spawn(timer_loop(
            Arc::downgrade(&shared),
            shared.timer.clone(),
            shared.store.clone(),
        ));
        Ok((shared, vec![timer]))
    }

    pub(super) fn id(&self) -> NodeId {
        self.id
    }

    pub(super) fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub(super) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub(super) fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Hands the engine one input, then carries out what it asks for.
    fn run<R>(
        self: &Arc<Self>,
        input: impl FnOnce(&mut Engine, &mut &SharedStore, Time) -> R,
    ) -> R {
        let mut store = &*self.store;
        let mut todo = ToDo::default();
        let result = {
            let mut engine = self.engine.lock();
            let now = store.now();
            let result = input(&mut engine, &mut store, now);
            while let Some(action) = engine.dht.poll_action() {
                match action {
                    // Spawned under the lock, so the task cannot end before it is listed.
                    Action::Send(out) => {
                        let rpc = out.rpc;
                        engine.requests.insert(rpc, self.send(out));
                    }
                    Action::Cancel(rpc) => {
                        if let Some(task) = engine.requests.remove(&rpc) {
                            task.abort();
                        }
                    }
                    Action::Done(op, outcome) => {
                        if let Some(waiter) = engine.waiters.remove(&op) {
                            todo.completions.push((waiter, outcome));
                        }
                    }
                    Action::Event(event) => todo.events.push(event),
                }
            }
            // Stored under the lock, so a later input's deadline is never overwritten by an
            // earlier one's.
            let next = engine.dht.poll_timeout().map_or(u64::MAX, Time::as_micros);
            if next < self.timer.next_us.swap(next, Ordering::AcqRel) {
                self.timer.notify.notify_one();
            }
            result
        };
        self.carry_out(todo);
        result
    }

    /// Starts a command; its outcome comes through the returned future.
    pub(super) fn begin(
        self: &Arc<Self>,
        command: impl FnOnce(&mut Dht, &mut &SharedStore, Time) -> Result<OpId, NodeError>,
    ) -> Result<Waiting, NodeError> {
        self.run(|engine, store, now| {
            let op = command(&mut engine.dht, store, now)?;
            let (tx, rx) = oneshot::channel();
            engine.waiters.insert(op, tx);
            Ok(Waiting(rx))
        })
    }

    /// Starts a command that may be answered at once.
    pub(super) fn start<T>(
        self: &Arc<Self>,
        command: impl FnOnce(&mut Dht, &mut &SharedStore, Time) -> Result<Started<T>, NodeError>,
    ) -> Result<Begun<T>, NodeError> {
        self.run(
            |engine, store, now| match command(&mut engine.dht, store, now)? {
                Started::Done(answer) => Ok(Begun::Done(answer)),
                Started::Running(op) => {
                    let (tx, rx) = oneshot::channel();
                    engine.waiters.insert(op, tx);
                    Ok(Begun::Running(Waiting(rx)))
                }
            },
        )
    }

    /// Reads the engine's state.
    pub(super) fn with_dht<R>(&self, read: impl FnOnce(&Dht) -> R) -> R {
        read(&self.engine.lock().dht)
    }

    pub(super) fn status(&self) -> Status {
        let dht = self.with_dht(Dht::status);
        let store = self.store.read().stats();
        Status {
            id: id_hex(&self.id),
            addr: self.endpoint.local_addr().to_string(),
            peers: dht.peers,
            joined: dht.joined,
            suspects: dht.suspects,
            keys: store.keys,
            records: store.records,
            tombstones: dht.tombstones,
            adverts: dht.adverts,
            requests: self.requests.load(Ordering::Relaxed),
            bad_requests: self.bad_requests.load(Ordering::Relaxed),
            lookups: dht.stats.lookups,
            lookup_timeouts: dht.stats.lookup_timeouts,
            lookup_failures: dht.stats.lookup_failures,
            lookup_p50_us: dht.lookup_p50_us,
            lookup_p99_us: dht.lookup_p99_us,
            store_failures: dht.stats.store_failures,
            remove_failures: dht.stats.remove_failures,
            handoff_failures: dht.stats.handoffs_stopped + dht.stats.handoffs_skipped,
            protocol: PROTOCOL_VERSION,
            refused_version: dht.stats.refused_version,
            refused_forged: dht.stats.refused_forged,
            refused_wrong_publisher: dht.stats.refused_wrong_publisher,
            refused_stale: dht.stats.refused_stale,
            refused_replay: dht.stats.refused_replay,
            refused_quota: dht.stats.refused_quota,
            refused_rate: dht.stats.refused_rate,
            forged_in_replies: dht.stats.forged_in_replies,
        }
    }

    /// The reply frame to one request frame from `peer`.
    fn answer(self: &Arc<Self>, peer: Peer, frame: &[u8]) -> Vec<u8> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let request = match Request::decode(frame) {
            Ok(request) => request,
            Err(e) => {
                self.bad_requests.fetch_add(1, Ordering::Relaxed);
                if let WireError::UnsupportedVersion(v) = e {
                    self.engine.lock().dht.refused_version();
                    tracing::debug!(peer = %id_hex(&peer.id), version = v, "request of another protocol version refused");
                }
                tracing::debug!(peer = %id_hex(&peer.id), addr = %peer.addr, error = %e, "bad request");
                return Response::from(&e).encode();
            }
        };
        let from = NodeInfo {
            id: peer.id,
            addr: peer.addr,
        };
        self.run(|engine, store, now| engine.dht.handle_request(store, from, request, now))
            .encode()
    }

    fn carry_out(&self, todo: ToDo) {
        for event in todo.events {
            self.emit(event);
        }
        for (waiter, outcome) in todo.completions {
            // The caller may have given up: nothing to do then.
            let _ = waiter.send(outcome);
        }
    }

    /// Sends one request on its own task and reports its outcome to the engine. The transport
    /// gives up at the same timeout as the engine, so the task ends by then.
    fn send(self: &Arc<Self>, out: Outgoing) -> AbortHandle {
        let shared = self.clone();
        let task = self.runtime.spawn(async move {
            let frame = out.request.encode();
            let sent = shared
                .endpoint
                .request_within(out.addr, out.to, frame, out.timeout);
            let reply = match sent.await {
                Ok((from, bytes)) => Reply::Answered {
                    from,
                    response: Response::decode(&bytes),
                },
                Err(e) => Reply::Failed(failure(&e)),
            };
            shared.run(|engine, store, now| {
                engine.requests.remove(&out.rpc);
                engine.dht.handle_reply(store, out.rpc, reply, now)
            });
        });
        task.abort_handle()
    }

    /// Logs an event as an operator would want it, then passes it to the host.
    fn emit(&self, event: Event) {
        match &event {
            Event::PeerUp(peer) => {
                tracing::debug!(peer = %id_hex(&peer.id), addr = %peer.addr, "peer added")
            }
            Event::PeerDown(peer) => {
                tracing::debug!(peer = %id_hex(&peer.id), addr = %peer.addr, "peer removed from the table")
            }
            Event::Published {
                service, outcome, ..
            } => tracing::info!(
                service,
                acked = outcome.acked,
                targets = outcome.targets,
                "published"
            ),
            Event::Withdrawn { service, outcome } => tracing::info!(
                service,
                acked = outcome.acked,
                targets = outcome.targets,
                "withdrawn"
            ),
            Event::Joined { peers } => tracing::info!(peers, "bootstrapped"),
            Event::Trouble(Trouble::RepublishFailed { service, error }) => {
                tracing::warn!(service, %error, "republish failed")
            }
            Event::Trouble(Trouble::RejoinFailed {
                detail,
                retry_in,
                peers: 0,
            }) => {
                tracing::warn!(error = %detail, ?retry_in, "no bootstrap node answered; not joined yet, retrying")
            }
            Event::Trouble(Trouble::RejoinFailed {
                detail, retry_in, ..
            }) => {
                tracing::debug!(error = %detail, ?retry_in, "re-join failed")
            }
            Event::Trouble(Trouble::HandOffStopped { peer, detail }) => {
                tracing::debug!(peer = %id_hex(&peer.id), error = %detail, "hand-off stopped")
            }
            Event::Lookup(_) => {}
        }
        if let Some(sink) = &self.events {
            sink(event);
        }
    }
}

/// The transport handler of a node. Holds the node weakly, so that the endpoint's serving task
/// does not keep a dropped node alive.
struct Responder(Weak<Shared>);

impl Handler for Responder {
    fn handle(&self, peer: Peer, frame: Vec<u8>) -> impl Future<Output = Vec<u8>> + Send {
        let reply = match self.0.upgrade() {
            Some(shared) => shared.answer(peer, &frame),
            None => Response::Error {
                reason: ErrorReason::Internal,
            }
            .encode(),
        };
        std::future::ready(reply)
    }
}

/// Calls the engine at each of its deadlines. Holds the node weakly and ends when it is gone.
async fn timer_loop(node: Weak<Shared>, timer: Arc<Timer>, clock: Arc<SharedStore>) {
    loop {
        let notified = timer.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let at = timer.next_us.load(Ordering::Acquire);
        let now = clock.now().as_micros();
        if at > now {
            let wait = Duration::from_micros(at - now);
            tokio::select! {
                _ = tokio::time::sleep(wait), if at != u64::MAX => {}
                _ = &mut notified => {}
            }
            continue;
        }
        let Some(shared) = node.upgrade() else {
            return;
        };
        shared.run(|engine, store, now| engine.dht.handle_timeout(store, now));
    }
}

/// What a transport error says about the peer.
fn failure(e: &TransportError) -> Failure {
    let kind = match e {
        TransportError::Timeout { .. } => FailureKind::Timeout,
        TransportError::Connection { .. } | TransportError::Connect { .. } => {
            FailureKind::Unreachable
        }
        TransportError::IdMismatch { .. } => FailureKind::WrongPeer,
        _ => FailureKind::Refused,
    };
    Failure {
        kind,
        detail: e.to_string(),
    }
}

/// The engine's random seed: from the system's generator, or (should it fail) from the id and
/// the clock, which only makes refresh targets less random.
fn seed(id: &NodeId) -> u64 {
    let mut bytes = [0u8; 8];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        bytes.copy_from_slice(&id.0[..8]);
        return u64::from_le_bytes(bytes) ^ unix_now_us();
    }
    u64::from_le_bytes(bytes)
}
