//! The threads that write live recordings. A recording hands each batch of its files' bytes
//! to its writer thread and goes on: no wait and no wake-up back, so it can write what every
//! wake-up of its connection brought instead of holding frames in memory for a larger batch
//! (what a batch pins is the read and reassembly blocks its frames are slices of).
//!
//! A recording's jobs run in order on one thread (several recordings share one). It waits only
//! when its bytes in flight pass [`MAX_IN_FLIGHT`] (storage slower than the stream). A file's
//! close is queued behind its writes ([`WriteQueue::then`]: no task waits for them) and handed
//! from here to the blocking pool, so a slow close (an upload, an fsync) holds no other stream.
//!
//! Recordings fill the first thread up to [`PACK`] before the next is used (then the one with
//! the fewest): a few streams wake one thread, not each thread a little.
//!
//! A thread that ran the jobs it found pauses for [`PAUSE`] before it looks again, and then
//! waits for a job: the jobs queued meanwhile wake nobody, and those of one beat of the ingest
//! threads (which read their connections together) wake it twice, whatever the number of
//! streams, not once per batch of each (measured: 300 streams, futex calls 48k -> 0.5k and
//! context switches halved). A recording over its bound, and [`WriteQueue::wake`] (a
//! recording's last closes), wake it at once.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// Bytes one recording may have queued and not yet written; past it, the recording waits (and
/// its frames wait in its queue, which ends it if storage never catches up).
pub const MAX_IN_FLIGHT: usize = 4 << 20;

/// How long a writer thread pauses after the jobs it found: what a write may wait (on top of
/// its recording's batching) for fewer wake-ups of the thread. A recording over its bound and
/// [`WriteQueue::wake`] wake it at once.
const PAUSE: Duration = Duration::from_millis(20);

/// Recordings a writer thread takes before the next thread is used.
const PACK: usize = 128;

type Job = Box<dyn FnOnce() + Send>;

/// Bytes queued on a writer thread, over all its recordings, that end its pause early: what
/// a beat of many streams brings is written while it comes (and its blocks freed), not after
/// the pause. Below it, a wake-up is not worth its cost.
const WAKE_BYTES: usize = 256 << 10;

/// One writer thread: its queue, its handle (to wake it early), its recordings, and the bytes
/// queued on it.
#[derive(Clone)]
struct Thread {
    tx: Sender<Job>,
    handle: std::thread::Thread,
    recordings: Arc<AtomicUsize>,
    queued: Arc<AtomicUsize>,
}

/// The writer threads of a recorder.
pub(crate) struct Writers {
    threads: Vec<Thread>,
    /// Times a thread woke to jobs, all threads.
    #[cfg(test)]
    rounds: Arc<AtomicU64>,
}

impl Writers {
    /// Starts `n` threads (0: one per CPU). They end when the last queue on them is dropped.
    pub fn start(n: usize) -> std::io::Result<Writers> {
        Self::pausing(n, PAUSE)
    }

    fn pausing(n: usize, pause: Duration) -> std::io::Result<Writers> {
        let n = if n == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { n };
        let mut threads = Vec::with_capacity(n);
        let rounds = Arc::new(AtomicU64::new(0));
        for i in 0..n {
            let (tx, rx) = channel::<Job>();
            let counted = rounds.clone();
            let thread = std::thread::Builder::new().name(format!("reel-writer-{i}")).spawn(move || {
                while let Ok(job) = rx.recv() {
                    counted.fetch_add(1, Ordering::Relaxed);
                    job();
                    // What was queued meanwhile, then a pause, then what was queued during
                    // it: a recording queues its writes without waking this thread while it
                    // sleeps (a send wakes only a thread blocked in `recv`), so the writes
                    // that a beat of the ingest threads brings wake it twice, however many
                    // streams write, instead of once per batch. A pause cut short by
                    // [`WAKE_BYTES`] queued is followed by another. Then it waits for the next.
                    loop {
                        while let Ok(job) = rx.try_recv() {
                            job();
                        }
                        let paused = std::time::Instant::now();
                        std::thread::park_timeout(pause);
                        let early = paused.elapsed() < pause;
                        while let Ok(job) = rx.try_recv() {
                            job();
                        }
                        if !early {
                            break;
                        }
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })?;
            threads.push(Thread {
                tx,
                handle: thread.thread().clone(),
                recordings: Arc::default(),
                queued: Arc::default(),
            });
        }
        Ok(Writers {
            threads,
            #[cfg(test)]
            rounds,
        })
    }

    /// The queue of a new recording: on the first thread with room under [`PACK`], or else
    /// the one with the fewest recordings.
    pub fn queue(&self) -> WriteQueue {
        let count = |t: &&Thread| t.recordings.load(Ordering::Relaxed);
        let thread = self.threads.iter().find(|t| count(t) < PACK).or_else(|| self.threads.iter().min_by_key(count));
        let thread = thread.expect("at least one writer thread").clone();
        thread.recordings.fetch_add(1, Ordering::Relaxed);
        WriteQueue { thread, in_flight: Arc::default() }
    }
}

#[derive(Default)]
struct InFlight {
    bytes: AtomicUsize,
    below: Notify,
}

/// One recording's way to its writer thread.
pub(crate) struct WriteQueue {
    /// Its thread, woken early from its pause when a caller waits for it.
    thread: Thread,
    in_flight: Arc<InFlight>,
}

impl Drop for WriteQueue {
    fn drop(&mut self) {
        self.thread.recordings.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WriteQueue {
    /// Runs `job` on the writer thread after the jobs queued before it; `bytes` count against
    /// [`MAX_IN_FLIGHT`] until it ran. Waits only while the recording is over that bound.
    pub async fn submit(&self, bytes: usize, job: impl FnOnce() + Send + 'static) {
        loop {
            let below = self.in_flight.below.notified();
            tokio::pin!(below);
            below.as_mut().enable();
            if self.in_flight.bytes.load(Ordering::Acquire) < MAX_IN_FLIGHT {
                break;
            }
            self.thread.handle.unpark();
            below.await;
        }
        self.in_flight.bytes.fetch_add(bytes, Ordering::AcqRel);
        let in_flight = self.in_flight.clone();
        let queued = self.thread.queued.clone();
        let job: Job = Box::new(move || {
            // A job that panics (a storage bug) loses its own write, not the count or the thread.
            if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
                tracing::error!("a write job panicked");
            }
            queued.fetch_sub(bytes, Ordering::AcqRel);
            let before = in_flight.bytes.fetch_sub(bytes, Ordering::AcqRel);
            if before >= MAX_IN_FLIGHT && before - bytes < MAX_IN_FLIGHT {
                in_flight.below.notify_waiters();
            }
        });
        let before = self.thread.queued.fetch_add(bytes, Ordering::AcqRel);
        if let Err(back) = self.thread.tx.send(job) {
            // The thread is gone (the recorder is being dropped): write here, in order still.
            (back.0)();
        } else if before < WAKE_BYTES && before + bytes >= WAKE_BYTES {
            self.thread.handle.unpark();
        }
    }

    /// Runs `job` on the writer thread after the jobs queued before it, without waking the
    /// thread from its pause (a close waits at most [`PAUSE`] for the writes before it, and
    /// the closes of one beat of many streams cost the thread no wake-up of their own;
    /// [`WriteQueue::wake`] ends the pause). With the thread gone (the recorder being
    /// dropped), `job` runs here.
    pub fn then(&self, job: impl FnOnce() + Send + 'static) {
        let job: Job = Box::new(move || {
            if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
                tracing::error!("a job after writes panicked");
            }
        });
        if let Err(back) = self.thread.tx.send(job) {
            (back.0)();
        }
    }

    /// Wakes the thread from its pause: what is queued (a recording's last closes) runs now.
    pub fn wake(&self) {
        self.thread.handle.unpark();
    }

    /// Resolves once every job queued before it has run (tests: what they queued is written).
    #[cfg(test)]
    pub fn barrier(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.thread.tx.send(Box::new(move || {
            let _ = tx.send(());
        }));
        // A file is closing: its writes are not left to wait out the thread's pause.
        self.thread.handle.unpark();
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn jobs_run_in_order_off_the_caller_and_a_barrier_waits_for_them() {
        let writers = Writers::start(2).unwrap();
        let q = writers.queue();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let caller = std::thread::current().id();
        for i in 0..100 {
            let seen = seen.clone();
            q.submit(10, move || {
                assert_ne!(std::thread::current().id(), caller);
                seen.lock().unwrap().push(i);
            })
            .await;
        }
        q.barrier().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), (0..100).collect::<Vec<_>>());
        assert_eq!(q.in_flight.bytes.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn jobs_queued_during_a_pause_wake_the_thread_once_and_a_barrier_ends_the_pause() {
        let writers = Writers::pausing(1, Duration::from_secs(1)).unwrap();
        let q = writers.queue();
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..40 {
            let ran = ran.clone();
            q.submit(10, move || {
                ran.fetch_add(1, Ordering::Relaxed);
            })
            .await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // 40 jobs over 80 ms or more: the first woke the thread, the rest waited for its pause
        // (the barrier ends it; a wake-up token left by the channel may add one round).
        q.barrier().await.unwrap();
        assert_eq!(ran.load(Ordering::Relaxed), 40);
        assert!(writers.rounds.load(Ordering::Relaxed) <= 4, "{} rounds", writers.rounds.load(Ordering::Relaxed));
        // A barrier does not wait out a pause, however long.
        let long = Writers::pausing(1, Duration::from_secs(3600)).unwrap();
        let q = long.queue();
        q.submit(1, || {}).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        q.submit(1, || {}).await;
        tokio::time::timeout(Duration::from_secs(10), q.barrier()).await.expect("the barrier woke the thread").unwrap();
    }

    /// Files closing at a cut: each close runs after its recording's writes, on the writer
    /// thread, and the closes queued during a pause wake it no more than writes do.
    #[tokio::test]
    async fn jobs_after_writes_run_after_them_and_wait_for_the_pause() {
        let writers = Writers::pausing(1, Duration::from_millis(200)).unwrap();
        let q = writers.queue();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for i in 0..20 {
            let (written, closed) = (seen.clone(), seen.clone());
            q.submit(10, move || written.lock().unwrap().push(("write", i))).await;
            q.then(move || closed.lock().unwrap().push(("close", i)));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        q.barrier().await.unwrap();
        let expected: Vec<_> = (0..20).flat_map(|i| [("write", i), ("close", i)]).collect();
        assert_eq!(*seen.lock().unwrap(), expected);
        // The first write woke the thread; the rest, closes included, came during its pause
        // (and the barrier's round).
        assert!(writers.rounds.load(Ordering::Relaxed) <= 4, "{} rounds", writers.rounds.load(Ordering::Relaxed));
        // A job that panics loses itself, not the thread.
        q.then(|| panic!("a close that fails"));
        let after = Arc::new(AtomicUsize::new(0));
        let ran = after.clone();
        q.then(move || {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        q.barrier().await.unwrap();
        assert_eq!(after.load(Ordering::Relaxed), 1);
        // A recording's last closes need not wait out a pause, however long: `wake` ends it.
        let long = Writers::pausing(1, Duration::from_secs(3600)).unwrap();
        let q = long.queue();
        q.submit(1, || {}).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        q.then(move || {
            let _ = tx.send(());
        });
        q.wake();
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("the close ran without waiting out the pause")
            .unwrap();
    }

    #[tokio::test]
    async fn enough_bytes_queued_end_a_pause() {
        let writers = Writers::pausing(1, Duration::from_secs(3600)).unwrap();
        let q = writers.queue();
        let ran = Arc::new(AtomicUsize::new(0));
        let job = |ran: &Arc<AtomicUsize>| {
            let ran = ran.clone();
            move || {
                ran.fetch_add(1, Ordering::Relaxed);
            }
        };
        // The first job wakes the thread, which then pauses (an hour here).
        q.submit(10, job(&ran)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ran.load(Ordering::Relaxed), 1);
        // Small writes wait for the pause to end.
        q.submit(WAKE_BYTES / 4, job(&ran)).await;
        q.submit(WAKE_BYTES / 4, job(&ran)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ran.load(Ordering::Relaxed), 1);
        // Enough of them end it, and are written while the pause would still go on.
        q.submit(WAKE_BYTES / 2, job(&ran)).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while ran.load(Ordering::Relaxed) < 4 {
            assert!(std::time::Instant::now() < deadline, "the bytes queued did not wake the thread");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(writers.threads[0].queued.load(Ordering::Relaxed), 0);
        // And the thread pauses again: the next small write waits.
        tokio::time::sleep(Duration::from_millis(50)).await;
        q.submit(10, job(&ran)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ran.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn a_recording_over_its_bound_waits_for_its_writes() {
        let writers = Writers::start(1).unwrap();
        let q = writers.queue();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        // A write that does not end until the gate opens (storage stalled).
        q.submit(MAX_IN_FLIGHT, move || gate_rx.recv().unwrap()).await;
        let waited = tokio::time::timeout(std::time::Duration::from_millis(200), q.submit(1, || {})).await;
        assert!(waited.is_err(), "a submit over the bound must wait");
        gate_tx.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), q.submit(1, || {}))
            .await
            .expect("the wait ends when the stalled write does");
        q.barrier().await.unwrap();
    }

    #[test]
    fn recordings_fill_one_thread_then_go_to_the_least_busy() {
        let writers = Writers::start(2).unwrap();
        let on = |q: &WriteQueue, i: usize| Arc::ptr_eq(&q.thread.recordings, &writers.threads[i].recordings);
        let first: Vec<WriteQueue> = (0..PACK).map(|_| writers.queue()).collect();
        assert!(first.iter().all(|q| on(q, 0)));
        assert_eq!(writers.threads[0].recordings.load(Ordering::Relaxed), PACK);
        // The first thread is full: the next ones go to the second.
        let (a, b, c) = (writers.queue(), writers.queue(), writers.queue());
        assert!(on(&a, 1) && on(&b, 1));
        drop(first);
        // The first thread's recordings ended: it has room again, and takes the next.
        assert_eq!(writers.threads[0].recordings.load(Ordering::Relaxed), 0);
        assert!(on(&c, 1) && on(&writers.queue(), 0));
        assert_eq!(writers.threads[1].recordings.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_panicking_job_leaves_the_thread_working() {
        let writers = Writers::start(1).unwrap();
        let q = writers.queue();
        q.submit(1, || panic!("storage bug")).await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        q.submit(1, move || tx.send(()).unwrap()).await;
        tokio::time::timeout(std::time::Duration::from_secs(5), rx).await.unwrap().unwrap();
    }
}
