//! The embedded runtime's `tracing` events, forwarded to OTP's `logger`.
//!
//! Inside the BEAM nothing prints the runtime's log lines. Once an Erlang process asks for them
//! (`macula_dht_log`, through `log_forward/2`), a `tracing` layer installed as the VM's global
//! subscriber formats each enabled event (level, target, message, fields) on the thread that
//! emitted it and puts it in a bounded queue; it never blocks: when the queue is full the event
//! is dropped and counted. One forwarder thread sends the queued events to that process:
//!
//! - `{macula_dht_log, Level, Target, Message, [{Field, Value}]}`, `Level` one of `error`,
//!   `warn`, `info`, `debug`, `trace` and the rest binaries;
//! - `{macula_dht_log_dropped, Count}` before the next event, when events were dropped.
//!
//! Which events: those at or above the level the process gave (it follows `logger`'s level, so
//! events `logger` would discard are not even formatted), from the node's own crates
//! (`macula_dht*` targets); from the libraries underneath (QUIC, TLS) only warnings and errors.
//! Spans are not tracked. Nothing is forwarded while no process is registered.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;

use parking_lot::Mutex;
use rustler::env::OwnedEnv;
use rustler::{Atom, Encoder, LocalPid};
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Formatted events waiting for the forwarder.
const QUEUE: usize = 1024;
/// Longest message kept, in bytes (longer ones are cut at a character boundary).
const MAX_MESSAGE_BYTES: usize = 2048;
/// Longest field value kept, in bytes.
const MAX_VALUE_BYTES: usize = 512;
/// Fields kept per event.
const MAX_FIELDS: usize = 16;
/// Events of targets starting with this are the node's own.
const OWN_TARGETS: &str = "macula_dht";

pub(crate) mod log_atoms {
    rustler::atoms! {
        macula_dht_log, macula_dht_log_dropped, error, warn, info, debug, trace, none,
        invalid_level, log,
    }
}

/// Why forwarding could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// Another `tracing` subscriber is the global one already.
    #[error("another tracing subscriber is installed")]
    SubscriberTaken,
    /// The forwarder thread could not be started.
    #[error("cannot start the log forwarder: {0}")]
    Thread(String),
}

/// The most verbose level a process asked for, as a rank (see [`rank`]); 0 forwards nothing.
static MAX_RANK: AtomicU8 = AtomicU8::new(0);

/// The queue, the process it goes to, and what was dropped: set up once per VM.
struct Forwarding {
    queue: SyncSender<Line>,
    to: Mutex<Option<LocalPid>>,
    dropped: AtomicU64,
}

static FORWARDING: OnceLock<Result<Forwarding, LogError>> = OnceLock::new();

/// One formatted event.
struct Line {
    level: Level,
    target: String,
    message: String,
    fields: Vec<(&'static str, String)>,
}

/// Sends the runtime's events at `level` or more severe (`None`: none) to `pid`, replacing any
/// process registered before. Installs the subscriber and starts the forwarder on first use.
pub fn forward(pid: LocalPid, level: Option<Level>) -> Result<(), LogError> {
    let forwarding = FORWARDING
        .get_or_init(install)
        .as_ref()
        .map_err(Clone::clone)?;
    *forwarding.to.lock() = Some(pid);
    MAX_RANK.store(level.as_ref().map_or(0, rank), Ordering::Release);
    Ok(())
}

/// Stops forwarding if `pid` is the registered process (a newer one keeps its place).
pub fn stop(pid: LocalPid) {
    if let Some(Ok(forwarding)) = FORWARDING.get() {
        let mut to = forwarding.to.lock();
        if *to == Some(pid) {
            *to = None;
            MAX_RANK.store(0, Ordering::Release);
        }
    }
}

/// The level named by an atom of `log_forward/2`: `Some(None)` for `none`, `None` for an atom
/// that names no level.
pub fn level(atom: Atom) -> Option<Option<Level>> {
    Some(Some(match atom {
        a if a == log_atoms::error() => Level::ERROR,
        a if a == log_atoms::warn() => Level::WARN,
        a if a == log_atoms::info() => Level::INFO,
        a if a == log_atoms::debug() => Level::DEBUG,
        a if a == log_atoms::trace() => Level::TRACE,
        a if a == log_atoms::none() => return Some(None),
        _ => return None,
    }))
}

fn install() -> Result<Forwarding, LogError> {
    let (queue, queued) = mpsc::sync_channel(QUEUE);
    let subscriber = tracing_subscriber::registry().with(ToLogger);
    tracing::subscriber::set_global_default(subscriber).map_err(|_| LogError::SubscriberTaken)?;
    std::thread::Builder::new()
        .name("macula_dht_log".into())
        .spawn(move || forward_queued(queued))
        .map_err(|e| LogError::Thread(e.to_string()))?;
    Ok(Forwarding {
        queue,
        to: Mutex::new(None),
        dropped: AtomicU64::new(0),
    })
}

/// The forwarder thread: sends each queued event to the registered process; a process that is
/// gone is unregistered.
fn forward_queued(queued: Receiver<Line>) {
    let mut env = OwnedEnv::new();
    while let Ok(line) = queued.recv() {
        let Some(Ok(forwarding)) = FORWARDING.get() else {
            continue;
        };
        let Some(pid) = *forwarding.to.lock() else {
            continue;
        };
        let dropped = forwarding.dropped.swap(0, Ordering::AcqRel);
        let mut sent = Ok(());
        if dropped > 0 {
            sent = env.send_and_clear(&pid, |env| {
                (log_atoms::macula_dht_log_dropped(), dropped).encode(env)
            });
        }
        if sent.is_ok() {
            sent = env.send_and_clear(&pid, |env| line.term(env));
        }
        if sent.is_err() {
            stop(pid);
        }
    }
}

impl Line {
    fn term<'a>(&self, env: rustler::Env<'a>) -> rustler::Term<'a> {
        let level = match self.level {
            Level::ERROR => log_atoms::error(),
            Level::WARN => log_atoms::warn(),
            Level::INFO => log_atoms::info(),
            Level::DEBUG => log_atoms::debug(),
            _ => log_atoms::trace(),
        };
        let text = |s: &str| crate::reply::binary(env, s.as_bytes());
        let fields: Vec<rustler::Term<'a>> = self
            .fields
            .iter()
            .map(|(name, value)| (text(name), text(value)).encode(env))
            .collect();
        (
            log_atoms::macula_dht_log(),
            level,
            text(&self.target),
            text(&self.message),
            fields,
        )
            .encode(env)
    }
}

/// ERROR 1 ... TRACE 5: a level is forwarded when its rank is at most [`MAX_RANK`].
fn rank(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        _ => 5,
    }
}

/// Whether an event of this target and level may ever be forwarded: the node's own at any
/// level, the libraries' warnings and errors.
fn ever_forwarded(metadata: &Metadata<'_>) -> bool {
    metadata.is_event()
        && (metadata.target().starts_with(OWN_TARGETS) || *metadata.level() <= Level::WARN)
}

/// The layer: formats enabled events into the queue.
struct ToLogger;

impl<S: Subscriber> Layer<S> for ToLogger {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        // `sometimes`: the level can change at run time, so `enabled` decides per event.
        if ever_forwarded(metadata) {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        ever_forwarded(metadata) && rank(metadata.level()) <= MAX_RANK.load(Ordering::Acquire)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let Some(Ok(forwarding)) = FORWARDING.get() else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = Line {
            level: *event.metadata().level(),
            target: event.metadata().target().to_string(),
            message: fields.message,
            fields: fields.others,
        };
        match forwarding.queue.try_send(line) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                forwarding.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// An event's message and its other fields, each cut to its bound.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = bounded(value, MAX_MESSAGE_BYTES);
        } else if self.others.len() < MAX_FIELDS {
            self.others
                .push((field.name(), bounded(value, MAX_VALUE_BYTES)));
        }
    }
}

/// `value` formatted, at most `max` bytes of it (cut at a character boundary).
fn bounded(value: &dyn fmt::Debug, max: usize) -> String {
    let mut text = String::new();
    let _ = write!(Bounded(&mut text, max), "{value:?}");
    text
}

/// A writer that keeps the first `.1` bytes and ignores the rest.
struct Bounded<'a>(&'a mut String, usize);

impl fmt::Write for Bounded<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.1.saturating_sub(self.0.len());
        if s.len() <= room {
            self.0.push_str(s);
        } else {
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.0.push_str(&s[..cut]);
            self.1 = self.0.len();
        }
        Ok(())
    }
}
