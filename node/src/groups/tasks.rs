//! The layer's tasks: tracked, so that [`Groups::shutdown`](super::Groups::shutdown)
//! waits for every one, and counted by kind, so that one that outlives it
//! is named in the warning rather than only counted.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// How many tasks of each kind run now.
type Kinds = Arc<Mutex<BTreeMap<&'static str, usize>>>;

#[derive(Clone, Default)]
pub(super) struct Tasks {
    tracker: TaskTracker,
    kinds: Kinds,
}

impl Tasks {
    /// Runs `task`, counted as a `kind` until it ends (or is dropped).
    pub(super) fn spawn<F>(&self, kind: &'static str, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        *lock(&self.kinds).entry(kind).or_default() += 1;
        let running = Running {
            kinds: self.kinds.clone(),
            kind,
        };
        self.tracker.spawn(async move {
            let _running = running;
            task.await
        })
    }

    /// No task is spawned from now on without being awaited by [`wait`](Self::wait).
    pub(super) fn close(&self) {
        self.tracker.close();
    }

    /// Waits until every task ended (after [`close`](Self::close)).
    pub(super) async fn wait(&self) {
        self.tracker.wait().await;
    }

    /// The kinds of the tasks still running, with how many of each.
    pub(super) fn running(&self) -> BTreeMap<&'static str, usize> {
        lock(&self.kinds).clone()
    }
}

/// Counts one task of its kind while it lives.
struct Running {
    kinds: Kinds,
    kind: &'static str,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut kinds = lock(&self.kinds);
        if let Some(n) = kinds.get_mut(self.kind) {
            *n -= 1;
            if *n == 0 {
                kinds.remove(self.kind);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_are_counted_by_kind_while_they_run() {
        let tasks = Tasks::default();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let waiting = tasks.spawn("waits", async move {
            let _ = released.await;
        });
        tasks.spawn("ends", async {}).await.unwrap();
        assert_eq!(tasks.running(), BTreeMap::from([("waits", 1)]));
        release.send(()).unwrap();
        waiting.await.unwrap();
        tasks.close();
        tasks.wait().await;
        assert!(tasks.running().is_empty());
    }
}
