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
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use macula_dht::Time;

use crate::shard::{Common, Letter, Shard};

/// Deliveries between two looks at the other shards' bounds (and two hand-overs).
const BATCH: usize = 32;

/// Looks at the others' bounds before a waiting thread starts yielding its core.
const SPINS: u32 = 1_000;

/// Looks for the next job before a crew thread sleeps until it comes.
const JOB_SPINS: u32 = 100_000;

/// Threads that run shards 1.. of a network (the caller's thread runs shard 0), kept from one
/// run to the next: a network grown a node at a time runs many short stretches (100 000 of 10 ms
/// in the 100 k scenario, which took 332 s starting a thread for each and 286 s with a crew).
#[derive(Debug)]
pub(crate) struct Crew {
    jobs: Vec<Sender<Job>>,
    done: Receiver<(usize, Shard)>,
    threads: Vec<JoinHandle<()>>,
}

/// A shard lent to a crew thread for one run.
struct Job {
    index: usize,
    shard: Shard,
    common: Arc<Common>,
    sync: Arc<Sync>,
}

impl Crew {
    /// A crew for a network of `shards` shards.
    pub(crate) fn new(shards: usize) -> Crew {
        let (give_back, done) = mpsc::channel();
        let (jobs, threads) = (1..shards)
            .map(|_| {
                let (job, jobs) = mpsc::channel();
                let give_back = give_back.clone();
                (job, std::thread::spawn(move || serve(&jobs, &give_back)))
            })
            .unzip();
        Crew {
            jobs,
            done,
            threads,
        }
    }

    /// Runs `shards` until `until` (what is due at `until` included), with `lookahead`.
    pub(crate) fn run(
        &self,
        shards: &mut [Shard],
        common: &Arc<Common>,
        lookahead: Duration,
        until: Time,
    ) {
        let sync = Arc::new(Sync::new(shards, lookahead, until));
        let count = shards.len();
        for (index, jobs) in (1..).zip(&self.jobs) {
            let shard = std::mem::replace(&mut shards[index], Shard::new(count));
            let job = Job {
                index,
                shard,
                common: common.clone(),
                sync: sync.clone(),
            };
            jobs.send(job)
                .expect("crew threads run as long as their network");
        }
        work(0, &mut shards[0], common, &sync);
        for _ in &self.jobs {
            let (index, shard) = loop {
                match self.done.recv_timeout(Duration::from_millis(10)) {
                    Ok(lent) => break lent,
                    Err(_) => check(&sync.poisoned),
                }
            };
            shards[index] = shard;
        }
        // What was sent for after the end.
        for (shard, mail) in shards.iter_mut().zip(&sync.mail) {
            shard.receive(lock(&mail.0).drain(..));
        }
    }
}

impl Drop for Crew {
    fn drop(&mut self) {
        self.jobs.clear(); // each thread's channel closes: it ends
        for thread in self.threads.drain(..) {
            let _ = thread.join(); // a panic there was reported by the run it broke
        }
    }
}

/// A crew thread: runs the shards it is lent and gives them back, until its network is dropped.
fn serve(jobs: &Receiver<Job>, give_back: &Sender<(usize, Shard)>) {
    while let Some(job) = next_job(jobs) {
        let Job {
            index,
            mut shard,
            common,
            sync,
        } = job;
        work(index, &mut shard, &common, &sync);
        drop((common, sync)); // the network's own again before it has its shard back
        if give_back.send((index, shard)).is_err() {
            return;
        }
    }
}

/// The next job: looked for a while first (the next run of a growing network comes within
/// microseconds, and a sleeping thread takes longer to wake), then waited for.
fn next_job(jobs: &Receiver<Job>) -> Option<Job> {
    for _ in 0..JOB_SPINS {
        match jobs.try_recv() {
            Ok(job) => return Some(job),
            Err(TryRecvError::Empty) => std::hint::spin_loop(),
            Err(TryRecvError::Disconnected) => return None,
        }
    }
    jobs.recv().ok()
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
    check(poisoned);
    if *spins < SPINS {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Panics if another shard's thread did.
fn check(poisoned: &AtomicBool) {
    assert!(
        !poisoned.load(Ordering::Relaxed),
        "another shard's thread panicked"
    );
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
