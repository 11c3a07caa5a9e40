//! The cross-thread shutdown trigger: a flag plus one waker per mesh participant (the shards,
//! whose wakers ring their doorbells, and the NATS bridge when it is on).

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::task::{Poll, Waker};

use atomic_waker::AtomicWaker;

/// Begins graceful shutdown everywhere, once.
pub struct Shutdown {
    flag: AtomicBool,
    wakers: Vec<AtomicWaker>,
}

impl Shutdown {
    /// A trigger for `participants` mesh participants.
    pub fn new(participants: usize) -> Self {
        Shutdown {
            flag: AtomicBool::new(false),
            wakers: (0..participants).map(|_| AtomicWaker::new()).collect(),
        }
    }

    /// Begin graceful shutdown on every participant.
    pub fn trigger(&self) {
        self.flag.store(true, SeqCst);
        for w in &self.wakers {
            w.wake();
        }
    }

    /// Whether shutdown was triggered.
    pub fn is_triggered(&self) -> bool {
        self.flag.load(SeqCst)
    }

    /// Wake `waker` when shutdown is triggered (`participant`: its mesh index). A trigger that
    /// came first is seen by the next [`is_triggered`](Self::is_triggered).
    pub fn register(&self, participant: usize, waker: &Waker) {
        self.wakers[participant].register(waker);
    }

    /// Resolves once shutdown was triggered (for an async participant: the bridge).
    pub async fn wait(&self, participant: usize) {
        poll_fn(|cx| {
            self.wakers[participant].register(cx.waker());
            if self.is_triggered() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    #[test]
    fn trigger_wakes_every_registered_participant() {
        let s = Shutdown::new(2);
        let c = Arc::new(Count(AtomicUsize::new(0)));
        let w = Waker::from(c.clone());
        s.register(0, &w);
        s.register(1, &w);
        assert!(!s.is_triggered());
        s.trigger();
        assert!(s.is_triggered());
        assert_eq!(c.0.load(SeqCst), 2);
    }
}
