//! Running the shards side by side, one thread each.
//!
//! No message arrives sooner than the shortest one-way latency (the lookahead) after it was
//! sent. Each shard says, as it goes, how early anything it does from now on can be (its bound:
//! its next delivery, or sooner if a message from another shard may still come before that), and
//! hands over what it sent before it says so. A shard may then deliver whatever is due before
//! every other shard's bound plus the lookahead: nothing still to come can be due before that
//! (a conservative parallel discrete-event simulation, without a lockstep: a shard waits only
//! when it is a lookahead ahead of another). Each node meets the same inputs in the same order as
//! on one thread (see `shard`), so the outcome does not depend on the threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use macula_dht::Time;

use crate::shard::{Common, Letter, Shard};

/// Deliveries between two looks at the other shards' bounds (and two hand-overs).
const BATCH: usize = 32;

/// Looks at the others' bounds before a waiting thread starts yielding its core.
const SPINS: u32 = 1_000;

/// Runs `shards` until `until` (what is due at `until` included), with `lookahead`: the caller's
/// thread runs the first, a thread each the others.
pub(crate) fn run(shards: &mut [Shard], common: &Common, lookahead: Duration, until: Time) {
    let sync = Sync::new(shards, lookahead, until);
    std::thread::scope(|scope| {
        let mut shards = shards.iter_mut().enumerate();
        let first = shards.next();
        for (index, shard) in shards {
            let sync = &sync;
            scope.spawn(move || work(index, shard, common, sync));
        }
        if let Some((index, shard)) = first {
            work(index, shard, common, &sync);
        }
    });
    // What was sent for after the end.
    for (shard, mail) in shards.iter_mut().zip(&sync.mail) {
        shard.receive(lock(&mail.0).drain(..));
    }
}

/// What the threads share: each shard's mailbox and bound (in microseconds).
struct Sync {
    mail: Vec<Apart<Mutex<Vec<Letter>>>>,
    bounds: Vec<Apart<AtomicU64>>,
    /// A thread panicked: the others stop rather than wait for it.
    poisoned: AtomicBool,
    lookahead: Duration,
    end: u64,
}

/// A value on cache lines of its own: one thread writes each bound and mailbox as others read
/// them, and neighbours on one line would make every write a miss for all.
#[repr(align(128))]
struct Apart<T>(T);

impl Sync {
    fn new(shards: &[Shard], lookahead: Duration, until: Time) -> Sync {
        // Nothing is due before the earliest delivery of all: every shard's first bound.
        let first = shards
            .iter()
            .filter_map(|s| s.next_at())
            .min()
            .map_or(u64::MAX, Time::as_micros);
        Sync {
            mail: shards
                .iter()
                .map(|_| Apart(Mutex::new(Vec::new())))
                .collect(),
            bounds: shards
                .iter()
                .map(|_| Apart(AtomicU64::new(first)))
                .collect(),
            poisoned: AtomicBool::new(false),
            lookahead,
            // Past the last instant to deliver: `until` itself is delivered.
            end: (until + Duration::from_micros(1)).as_micros(),
        }
    }

    /// How far shard `index` may deliver: before every other shard's bound plus the lookahead,
    /// and before the end.
    fn horizon(&self, index: usize) -> u64 {
        let lookahead = self.lookahead.as_micros() as u64;
        self.bounds
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .map(|(_, bound)| bound.0.load(Ordering::Acquire).saturating_add(lookahead))
            .fold(self.end, u64::min)
    }
}

/// One thread's part: deliver what is due before the horizon, a batch at a time; after each
/// batch, hand over what it sent, publish its bound, take what it was sent and look at the
/// horizon again; until its bound reaches the end.
fn work(index: usize, shard: &mut Shard, common: &Common, sync: &Sync) {
    let _poison = PoisonOnPanic(&sync.poisoned);
    let mut spins = 0u32;
    loop {
        // The others' bounds first, then the mail: what they sent before saying so is there.
        let horizon = sync.horizon(index);
        shard.receive(lock(&sync.mail[index].0).drain(..));
        let mut delivered = 0;
        while delivered < BATCH && shard.next_at().is_some_and(|at| at.as_micros() < horizon) {
            shard.step(common);
            delivered += 1;
        }
        for (to, letters) in shard.outbox.iter_mut().enumerate() {
            if !letters.is_empty() {
                lock(&sync.mail[to].0).append(letters);
            }
        }
        let next = shard.next_at().map_or(u64::MAX, Time::as_micros);
        let bound = next.min(horizon);
        sync.bounds[index].0.store(bound, Ordering::Release);
        if bound >= sync.end {
            return;
        }
        if delivered > 0 {
            spins = 0;
        } else {
            wait(&mut spins, &sync.poisoned);
        }
    }
}

/// Nothing to deliver until another shard moves on: spin a while, then yield the core (a
/// sleeping thread would take longer to wake than the others take to move on).
fn wait(spins: &mut u32, poisoned: &AtomicBool) {
    assert!(
        !poisoned.load(Ordering::Relaxed),
        "another shard's thread panicked"
    );
    if *spins < SPINS {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A thread that panicked holding it poisoned the run too: the others stop.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Poisons the run when its thread unwinds.
struct PoisonOnPanic<'a>(&'a AtomicBool);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_waiting_for_one_that_panicked_panics_too() {
        let poisoned = AtomicBool::new(false);
        let waiter_panicked = AtomicBool::new(false);
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::thread::scope(|s| {
                s.spawn(|| {
                    let _poison = PoisonOnPanic(&poisoned);
                    panic!("a shard fails");
                });
                let waited = s
                    .spawn(|| {
                        let mut spins = 0;
                        loop {
                            wait(&mut spins, &poisoned);
                        }
                    })
                    .join();
                waiter_panicked.store(waited.is_err(), Ordering::Relaxed);
            });
        }));
        assert!(run.is_err(), "the panic reaches the caller");
        assert!(
            waiter_panicked.into_inner(),
            "the waiting thread stopped waiting"
        );
    }
}
