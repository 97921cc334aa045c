//! The hand-off from callers to the committer: one vector under a mutex, which the
//! committer swaps for its own empty one (ADR 0016).
//!
//! A channel allocates its slots in blocks that the sender's thread allocates and the
//! committer's thread frees; that free under another thread's arena showed in the
//! committer's profile. Here the two vectors trade places and keep their capacity, so a
//! busy log queues jobs without allocating, and a caller wakes the committer only when
//! it is actually waiting (a condition variable's notify is a system call even when
//! nobody waits).

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Job, lock_poisoned};

/// What [`Queue::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Taken {
    /// Jobs were moved into the caller's vector.
    Jobs,
    /// Nothing arrived within the timeout.
    Timeout,
    /// The log is closing and every queued job has been taken.
    Closed,
}

pub(super) struct Queue {
    state: Mutex<State>,
    ready: Condvar,
}

struct State {
    jobs: Vec<Job>,
    closed: bool,
    /// The committer is blocked in [`Queue::take`] and must be notified.
    waiting: bool,
}

impl Queue {
    pub(super) fn new() -> Self {
        Queue {
            state: Mutex::new(State {
                jobs: Vec::new(),
                closed: false,
                waiting: false,
            }),
            ready: Condvar::new(),
        }
    }

    /// Queues a job, or gives it back when the log is closing (the caller answers it).
    pub(super) fn push(&self, job: Job) -> Result<(), Job> {
        let mut s = lock_poisoned(&self.state);
        if s.closed {
            return Err(job);
        }
        s.jobs.push(job);
        // Only the first caller after the committer went to sleep pays for the wake-up.
        let wake = std::mem::take(&mut s.waiting);
        drop(s);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Waits up to `timeout` for jobs and moves all of them into `into`, which must be
    /// empty (its capacity is kept for the callers' next jobs). After [`Queue::close`],
    /// returns the jobs still queued first and then [`Taken::Closed`].
    pub(super) fn take(&self, into: &mut Vec<Job>, timeout: Duration) -> Taken {
        debug_assert!(into.is_empty(), "the committer answers every job it took");
        // A deadline past what `Instant` can hold means: wait until woken.
        let deadline = Instant::now().checked_add(timeout);
        let mut s = lock_poisoned(&self.state);
        loop {
            if !s.jobs.is_empty() {
                std::mem::swap(&mut s.jobs, into);
                return Taken::Jobs;
            }
            if s.closed {
                return Taken::Closed;
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return Taken::Timeout,
                },
                None => timeout,
            };
            s.waiting = true;
            s = self
                .ready
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            s.waiting = false;
        }
    }

    /// Adds the jobs queued since the last take to `into`, without waiting.
    pub(super) fn take_more(&self, into: &mut Vec<Job>) {
        into.append(&mut lock_poisoned(&self.state).jobs);
    }

    /// Refuses further jobs; the committer still takes the queued ones, then sees
    /// [`Taken::Closed`].
    pub(super) fn close(&self) {
        lock_poisoned(&self.state).closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{Receipts, Reply};
    use super::*;
    use crate::Result;

    type Answers = Arc<Mutex<Vec<(u64, Result<Receipts>)>>>;

    fn job(id: u64, answers: &Answers) -> Job {
        let answers = Arc::clone(answers);
        Job {
            bodies: id.to_string().into_bytes(),
            count: id,
            reply: Reply::Call(Box::new(move |r| {
                lock_poisoned(&answers).push((id, r));
            })),
        }
    }

    fn ids(jobs: &[Job]) -> Vec<u64> {
        jobs.iter().map(|j| j.count).collect()
    }

    #[test]
    fn jobs_come_out_in_order_and_the_vectors_keep_their_capacity() {
        let q = Queue::new();
        let answers = Answers::default();
        for id in 1..=3 {
            assert!(q.push(job(id, &answers)).is_ok());
        }
        let mut group = Vec::with_capacity(64);
        assert_eq!(q.take(&mut group, Duration::from_secs(5)), Taken::Jobs);
        assert_eq!(ids(&group), [1, 2, 3]);
        // The committer's empty vector went to the queue: the next pushes reuse it.
        assert!(lock_poisoned(&q.state).jobs.capacity() >= 64);
        assert!(q.push(job(4, &answers)).is_ok());
        assert!(q.push(job(5, &answers)).is_ok());
        q.take_more(&mut group);
        assert_eq!(ids(&group), [1, 2, 3, 4, 5]);
        assert!(lock_poisoned(&q.state).jobs.is_empty());
        group.clear();
        assert_eq!(
            q.take(&mut group, Duration::from_millis(20)),
            Taken::Timeout
        );
        assert!(group.is_empty());
    }

    #[test]
    fn a_waiting_committer_is_woken_by_a_push_from_another_thread() {
        let q = Arc::new(Queue::new());
        let answers = Answers::default();
        // The committer waits an hour: only the push's wake-up can end that wait while
        // this test still listens (a liveness bound, not a speed check).
        let (tx, rx) = std::sync::mpsc::channel();
        let committer = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                let mut group = Vec::new();
                let taken = q.take(&mut group, Duration::from_hours(1));
                let _ = tx.send((taken, ids(&group)));
            })
        };
        // Push only once the committer is asleep.
        while !lock_poisoned(&q.state).waiting {
            std::thread::yield_now();
        }
        assert!(q.push(job(7, &answers)).is_ok());
        let woken = rx.recv_timeout(Duration::from_mins(1));
        assert_eq!(
            woken.ok(),
            Some((Taken::Jobs, vec![7])),
            "the push did not wake the waiting committer"
        );
        assert!(committer.join().is_ok());
        assert!(!lock_poisoned(&q.state).waiting);
    }

    #[test]
    fn closing_hands_out_what_was_queued_then_refuses() {
        let q = Queue::new();
        let answers = Answers::default();
        assert!(q.push(job(1, &answers)).is_ok());
        q.close();
        let refused = q.push(job(2, &answers)).err().map(|j| j.count);
        assert_eq!(
            refused,
            Some(2),
            "a job after close comes back to its caller"
        );
        let mut group = Vec::new();
        assert_eq!(q.take(&mut group, Duration::from_secs(5)), Taken::Jobs);
        assert_eq!(ids(&group), [1]);
        group.clear();
        assert_eq!(q.take(&mut group, Duration::from_secs(5)), Taken::Closed);
        assert!(
            lock_poisoned(&answers).is_empty(),
            "nothing was answered here"
        );
    }
}
