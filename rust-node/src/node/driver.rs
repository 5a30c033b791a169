//! Carries out what the engine decides: the one place where the node's [`Dht`] meets sockets,
//! tasks and the clock.
//!
//! Every input goes through [`Shared::run`]: it locks the engine, hands it the input with the
//! store and the time, takes every action the engine asks for, and carries them out once the
//! lock is released. A request to send becomes a task on the runtime that reports its outcome
//! back as another input; an event is logged and passed to the host; a command's outcome goes
//! to the caller waiting for it. One timer task calls the engine when its next deadline comes.
//! Requests and lookups are counted here as they end ([`Activity`]), and peers' failures and
//! refusals logged (a warning per peer at most once a minute, see `logging`).

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
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
use tracing::Level;

use super::activity::{Activity, ActivitySnapshot, Direction, RequestKind, RequestOutcome};
use super::logging::{self, log_at, PeerWarnings};
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
    /// Requests and lookups by how they ended, for metrics.
    activity: Activity,
    /// Which peers were warned about of late (taken only when a request failed or was refused).
    warnings: Mutex<PeerWarnings>,
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
            activity: Activity::default(),
            warnings: Mutex::new(PeerWarnings::new(
                logging::WARN_INTERVAL,
                logging::MAX_WARNED_PEERS,
            )),
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
            store_bytes: store.bytes,
            inbound_connections: self.endpoint.inbound_connections(),
            outbound_connections: self.endpoint.pooled_connections(),
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

    /// Requests and lookups so far, by how they ended.
    pub(super) fn activity(&self) -> ActivitySnapshot {
        self.activity.snapshot()
    }

    /// The reply frame to one request frame from `peer`.
    fn answer(self: &Arc<Self>, peer: Peer, frame: &[u8]) -> Vec<u8> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let request = match Request::decode(frame) {
            Ok(request) => request,
            Err(e) => {
                self.bad_requests.fetch_add(1, Ordering::Relaxed);
                if let WireError::UnsupportedVersion(_) = e {
                    self.engine.lock().dht.refused_version();
                }
                let reason = e.reason();
                self.activity.bad_request(reason);
                let outcome = RequestOutcome::Refused(reason);
                self.peer_trouble(
                    peer.addr,
                    Some(&peer.id),
                    Direction::Inbound,
                    None,
                    outcome,
                    &e,
                );
                return Response::from(&e).encode();
            }
        };
        let kind = RequestKind::of(&request);
        let from = NodeInfo {
            id: peer.id,
            addr: peer.addr,
        };
        let response =
            self.run(|engine, store, now| engine.dht.handle_request(store, from, request, now));
        let outcome = match response {
            Response::Error { reason } => RequestOutcome::Refused(reason),
            _ => RequestOutcome::Ok,
        };
        self.activity.request(Direction::Inbound, kind, outcome);
        if let RequestOutcome::Refused(reason) = outcome {
            let detail = reason.name();
            self.peer_trouble(
                peer.addr,
                Some(&peer.id),
                Direction::Inbound,
                Some(kind),
                outcome,
                &detail,
            );
        }
        response.encode()
    }

    /// Logs a request that failed or was refused, this node's to `addr` or the peer's to this
    /// node. Refusals that point at the peer and failures are warnings, at most one per peer
    /// per interval (with the number held back since); the rest, and the warnings held back, go
    /// to DEBUG. So do failures of requests to an address whose node is not known yet (a
    /// bootstrap contact): the join's outcome says what became of them.
    fn peer_trouble(
        &self,
        addr: SocketAddr,
        id: Option<&NodeId>,
        direction: Direction,
        kind: Option<RequestKind>,
        outcome: RequestOutcome,
        detail: &dyn Display,
    ) {
        let level = match outcome {
            RequestOutcome::Refused(reason) => logging::refusal_level(reason),
            _ if id.is_none() => Level::DEBUG,
            _ => Level::WARN,
        };
        let held_back = if level == Level::WARN {
            self.warnings.lock().admit(addr, self.store.now())
        } else {
            None
        };
        let level = if held_back.is_some() {
            Level::WARN
        } else {
            Level::DEBUG
        };
        let peer = id.map_or_else(|| "unknown".to_string(), id_hex);
        let request = kind.map_or("undecodable", RequestKind::name);
        let what = match direction {
            Direction::Inbound => "refused a peer's request",
            Direction::Outbound => "request to a peer failed",
        };
        log_at!(
            level,
            %peer,
            %addr,
            request,
            outcome = outcome.name(),
            error = %detail,
            held_back = held_back.unwrap_or(0),
            "{what}"
        );
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
            let kind = RequestKind::of(&out.request);
            let sent = shared
                .endpoint
                .request_within(out.addr, out.to, frame, out.timeout);
            let (reply, outcome) = match sent.await {
                Ok((from, bytes)) => {
                    let response = Response::decode(&bytes);
                    let outcome = match &response {
                        Ok(Response::Error { reason }) => RequestOutcome::Refused(*reason),
                        Ok(response) if response.answers(&out.request) => RequestOutcome::Ok,
                        _ => RequestOutcome::BadReply,
                    };
                    (Reply::Answered { from, response }, outcome)
                }
                Err(e) => {
                    let failure = failure(&e);
                    let outcome = match failure.kind {
                        _ if matches!(e, TransportError::Closed) => RequestOutcome::Closed,
                        FailureKind::Timeout => RequestOutcome::Timeout,
                        FailureKind::Unreachable => RequestOutcome::Unreachable,
                        FailureKind::WrongPeer => RequestOutcome::WrongPeer,
                        FailureKind::Refused => RequestOutcome::Failed,
                    };
                    (Reply::Failed(failure), outcome)
                }
            };
            shared.activity.request(Direction::Outbound, kind, outcome);
            // A node that is closing says nothing about its peers.
            if !matches!(outcome, RequestOutcome::Ok | RequestOutcome::Closed) {
                let detail = reply_detail(&reply, outcome);
                shared.peer_trouble(
                    out.addr,
                    out.to.as_ref(),
                    Direction::Outbound,
                    Some(kind),
                    outcome,
                    &detail,
                );
            }
            shared.run(|engine, store, now| {
                engine.requests.remove(&out.rpc);
                engine.dht.handle_reply(store, out.rpc, reply, now)
            });
        });
        task.abort_handle()
    }

    /// Counts and logs an event as an operator would want it (see `logging`), then passes it
    /// to the host.
    fn emit(&self, event: Event) {
        let level = logging::event_level(&event);
        match &event {
            Event::PeerUp(peer) => {
                log_at!(level, peer = %id_hex(&peer.id), addr = %peer.addr, "peer added")
            }
            Event::PeerDown(peer) => {
                log_at!(level, peer = %id_hex(&peer.id), addr = %peer.addr, "peer lost: removed from the routing table")
            }
            Event::Published {
                service,
                outcome,
                republish,
            } => log_at!(
                level,
                service,
                acked = outcome.acked,
                targets = outcome.targets,
                "{}",
                if *republish {
                    "republished"
                } else {
                    "published"
                }
            ),
            Event::Withdrawn { service, outcome } => log_at!(
                level,
                service,
                acked = outcome.acked,
                targets = outcome.targets,
                "withdrawn"
            ),
            Event::Joined { peers } => log_at!(level, peers, "bootstrapped"),
            Event::Trouble(Trouble::RepublishFailed { service, error }) => {
                log_at!(level, service, %error, "republish failed")
            }
            Event::Trouble(Trouble::RejoinFailed {
                detail,
                retry_in,
                peers: 0,
            }) => {
                log_at!(level, error = %detail, ?retry_in, "no bootstrap node answered; not joined yet, retrying")
            }
            Event::Trouble(Trouble::RejoinFailed {
                detail, retry_in, ..
            }) => {
                log_at!(level, error = %detail, ?retry_in, "re-join failed")
            }
            Event::Trouble(Trouble::HandOffStopped { peer, detail }) => {
                log_at!(level, peer = %id_hex(&peer.id), error = %detail, "hand-off stopped")
            }
            Event::Lookup(summary) => {
                self.activity.lookup(summary);
                log_at!(
                    level,
                    kind = summary.kind.name(),
                    providers = summary.providers,
                    queried = summary.queried,
                    answered = summary.answered,
                    hops = summary.hops,
                    elapsed_us = u64::try_from(summary.elapsed.as_micros()).unwrap_or(u64::MAX),
                    timed_out = summary.timed_out,
                    "lookup ended"
                )
            }
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

/// What went wrong with a request that did not end well, for its log line.
fn reply_detail(reply: &Reply, outcome: RequestOutcome) -> String {
    match reply {
        Reply::Failed(failure) => failure.detail.clone(),
        Reply::Answered {
            response: Err(e), ..
        } => format!("reply did not decode: {e}"),
        Reply::Answered {
            response: Ok(response),
            ..
        } => match outcome {
            RequestOutcome::BadReply => format!("reply of type {}", response.type_name()),
            _ => outcome.name().to_string(),
        },
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
