//! The lane of a writer thread's blocking jobs: what follows a recording's writes and may wait
//! on storage (a file's close: its index, fsync, rename, upload; an HLS segment's store).
//!
//! Jobs run in the order they came, on as few threads as keep up with them: one while each job
//! starts before it has waited [`GROW_AFTER`], one more for each [`GROW_EVERY`] that the oldest
//! job still waits past that (a slow disk, an upload), up to [`MAX_THREADS`]. The cut of many
//! streams at once is then done by one thread in turn (measured: 50 streams, three formats,
//! busiest second over the median 1.8 against 2.0–2.2, memory per stream −16%; 10 streams
//! −15%), not by a thread per close as it comes, each with an allocator heap of its own that
//! keeps what its closes once held. A thread idle for [`KEEP_ALIVE`] ends.
//!
//! Each job runs inside the runtime it was queued from (its `tokio::spawn`s go there).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

/// How long the oldest job may wait before another thread is started for the lane.
pub(crate) const GROW_AFTER: Duration = Duration::from_millis(50);
/// While the oldest job still waits past [`GROW_AFTER`], one more thread this often.
const GROW_EVERY: Duration = Duration::from_millis(10);
/// Most threads of one lane.
const MAX_THREADS: usize = 64;
/// How long an idle thread waits for a job before it ends: longer than the interval between
/// cuts, so the threads of one cut do the next.
const KEEP_ALIVE: Duration = Duration::from_secs(300);

type Job = Box<dyn FnOnce() + Send>;

struct Queued {
    at: Instant,
    job: Job,
    rt: Option<Handle>,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Queued>,
    /// Threads started and not ended, and those of them waiting for a job.
    threads: usize,
    idle: usize,
    /// A task watches the oldest job's wait.
    watching: bool,
}

pub(crate) struct Lane {
    name: String,
    state: Mutex<State>,
    ready: Condvar,
}

impl Lane {
    /// A lane whose threads are named `name`.
    pub fn new(name: String) -> Arc<Lane> {
        Arc::new(Lane { name, state: Mutex::default(), ready: Condvar::new() })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job`; `rt` is the runtime it runs in, and the one that watches its wait.
    pub fn run(self: &Arc<Self>, job: Job, rt: Option<Handle>) {
        let mut st = self.lock();
        st.jobs.push_back(Queued { at: Instant::now(), job, rt: rt.clone() });
        if st.idle > 0 {
            drop(st);
            self.ready.notify_one();
        } else if st.threads == 0 {
            self.start_thread(st);
        } else if !st.watching {
            if let Some(rt) = rt {
                st.watching = true;
                drop(st);
                rt.spawn(Watch { lane: self.clone(), ended: false }.run());
            }
        }
    }

    /// Starts a thread, unlocking `st` first; if the system refuses one, runs what is queued
    /// here (late rather than lost).
    fn start_thread(self: &Arc<Self>, mut st: MutexGuard<'_, State>) {
        st.threads += 1;
        drop(st);
        let lane = self.clone();
        if let Err(e) = std::thread::Builder::new().name(self.name.clone()).spawn(move || lane.work()) {
            tracing::error!(lane = %self.name, "cannot start a thread for closes: {e}; closing here");
            let mut st = self.lock();
            st.threads -= 1;
            while let Some(q) = st.jobs.pop_front() {
                drop(st);
                run(q);
                st = self.lock();
            }
        }
    }

    /// A thread's life: the jobs in order, then a wait for more, up to [`KEEP_ALIVE`].
    fn work(self: Arc<Self>) {
        let mut st = self.lock();
        loop {
            if let Some(q) = st.jobs.pop_front() {
                drop(st);
                run(q);
                st = self.lock();
                continue;
            }
            st.idle += 1;
            let (next, wait) = self.ready.wait_timeout(st, KEEP_ALIVE).unwrap_or_else(|e| e.into_inner());
            st = next;
            st.idle -= 1;
            if wait.timed_out() && st.jobs.is_empty() {
                st.threads -= 1;
                return;
            }
        }
    }

    #[cfg(test)]
    fn threads(&self) -> usize {
        self.lock().threads
    }
}

fn run(q: Queued) {
    let _rt = q.rt.as_ref().map(Handle::enter);
    // A job that panics (a storage bug) loses its own work, not the thread or the jobs after it.
    if std::panic::catch_unwind(AssertUnwindSafe(q.job)).is_err() {
        tracing::error!("a job after writes panicked");
    }
}

/// The task that starts threads while the oldest job waits too long; it ends with the lane's
/// queue empty (or with its runtime).
struct Watch {
    lane: Arc<Lane>,
    ended: bool,
}

impl Watch {
    async fn run(mut self) {
        loop {
            let sleep = {
                let mut st = self.lane.lock();
                let Some(waited) = st.jobs.front().map(|q| q.at.elapsed()) else {
                    // Under the lock: a job queued from now on starts a new watch.
                    st.watching = false;
                    self.ended = true;
                    return;
                };
                if st.idle == 0 && waited >= GROW_AFTER && st.threads < MAX_THREADS {
                    self.lane.start_thread(st);
                    GROW_EVERY
                } else {
                    GROW_AFTER.saturating_sub(waited).max(GROW_EVERY)
                }
            };
            tokio::time::sleep(sleep).await;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.ended {
            self.lane.lock().watching = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quick_jobs_run_in_order_on_one_thread() {
        let lane = Lane::new("reel-close-test".into());
        let (tx, rx) = mpsc::channel();
        for i in 0..200 {
            let tx = tx.clone();
            lane.run(Box::new(move || tx.send((i, std::thread::current().id())).unwrap()), Some(Handle::current()));
        }
        let got: Vec<_> = (0..200).map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap()).collect();
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), (0..200).collect::<Vec<_>>(), "in order");
        assert!(got.iter().all(|g| g.1 == got[0].1), "one thread did them all");
        assert_eq!(lane.threads(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_waits_does_not_hold_the_ones_after_it() {
        let lane = Lane::new("reel-close-test".into());
        let (release, held) = mpsc::channel::<()>();
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        // A close stuck on its storage, then three that are quick.
        lane.run(Box::new(move || held.recv().unwrap()), Some(Handle::current()));
        for i in 0..3 {
            let tx = tx.clone();
            lane.run(Box::new(move || tx.send(i).unwrap()), Some(Handle::current()));
        }
        for i in 0..3 {
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), i);
        }
        let took = started.elapsed();
        assert!(took >= GROW_AFTER && took < Duration::from_secs(2), "another thread after the wait: {took:?}");
        assert_eq!(lane.threads(), 2);
        release.send(()).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_panics_loses_only_itself_and_runs_in_its_runtime() {
        let lane = Lane::new("reel-close-test".into());
        lane.run(Box::new(|| panic!("a storage bug")), Some(Handle::current()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The job spawns a task: it runs inside the runtime it was queued from.
        lane.run(
            Box::new(move || {
                tokio::spawn(async move { tx.send(()).unwrap() });
            }),
            Some(Handle::current()),
        );
        tokio::time::timeout(Duration::from_secs(5), rx).await.unwrap().unwrap();
    }
}
