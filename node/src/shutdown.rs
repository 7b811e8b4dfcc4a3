//! How a node stops everything it started, as mini-redis does it: one
//! signal that every long-lived task watches, and one tracker that every
//! task joins when it is spawned, so that stopping can wait for the last.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A stop signal and the tasks that must end when it is given; cheap to
/// clone, so each part of a node takes its own.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    signal: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `task` as one that stopping waits for. A task that runs until
    /// stopped must watch [`Shutdown::requested`].
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Gives the stop signal (again is harmless).
    pub fn request(&self) {
        self.signal.cancel();
    }

    /// A token cancelled with the stop signal, for tasks that are not
    /// waited for (a connection's, which ends when its peer or the signal
    /// says so).
    pub fn token(&self) -> CancellationToken {
        self.signal.child_token()
    }

    /// Whether the stop signal was given.
    pub fn is_requested(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// Resolves once the stop signal is given.
    pub async fn requested(&self) {
        self.signal.cancelled().await;
    }

    /// Gives the stop signal and waits until every task spawned through
    /// this handle (or a clone) has ended. Spawning after this is a bug;
    /// such a task would still be waited for if it starts before the last
    /// one ends.
    pub async fn stop(&self) {
        self.request();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Tasks spawned and not yet ended.
    pub fn running(&self) -> usize {
        self.tasks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn stop_waits_for_every_task_that_watches_the_signal() {
        let shutdown = Shutdown::new();
        let (done_tx, mut done) = tokio::sync::mpsc::channel(4);
        for _ in 0..3 {
            let s = shutdown.clone();
            let done_tx = done_tx.clone();
            shutdown.spawn(async move {
                s.requested().await;
                // Cleanup after the signal still counts as the task.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = done_tx.send(()).await;
            });
        }
        drop(done_tx);
        assert_eq!(shutdown.running(), 3);
        shutdown.stop().await;
        assert!(shutdown.is_requested());
        assert_eq!(shutdown.running(), 0);
        for _ in 0..3 {
            assert!(done.try_recv().is_ok(), "a task ended after stop returned");
        }
    }

    #[tokio::test]
    async fn stop_with_no_tasks_returns_at_once() {
        let shutdown = Shutdown::new();
        tokio::time::timeout(Duration::from_secs(1), shutdown.stop())
            .await
            .unwrap();
    }
}
