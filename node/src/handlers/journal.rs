//! What each handler did on this node, recently: the invocations
//! `woof handler logs` shows, and the counts `describe` gives.
//!
//! Kept in memory on the node that runs the handler, bounded per handler
//! ([`RECENT_MAX`]) and in handlers ([`BOOKS_MAX`]); it starts afresh when
//! the handler starts on a node (its numbering too).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use woof_consensus::topic::TopicName;

/// Invocations kept per handler.
pub const RECENT_MAX: usize = 1000;
/// Handlers whose invocations a node keeps.
const BOOKS_MAX: usize = super::RUNNERS_MAX;

/// How an invocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    Timeout,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Timeout => "timeout",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Numbered from 1 for as long as the handler runs on this node.
    pub id: u64,
    pub seq: u64,
    /// Wall-clock start, in ms since the Unix epoch.
    pub at_ms: u64,
    /// From the element's commit here to the handler's start.
    pub dispatch_us: u64,
    pub duration_us: u64,
    pub outcome: Outcome,
    pub error: String,
    pub logs: Vec<String>,
    /// The peer id of the node it ran on, when not this one (an
    /// `adaptive()` handler's invocation sent elsewhere); empty: here.
    pub ran_on: String,
}

/// One handler's record.
#[derive(Debug, Clone, Default)]
pub struct Book {
    pub recent: VecDeque<Invocation>,
    pub runs: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// Where its invocations also count (the node's `/metrics`); a copy
    /// [`Journal::read`] gives has none.
    pub metrics: Option<crate::metrics::HandlerHandles>,
}

/// Books by topic, then handler (looked up without allocating).
type Books = HashMap<TopicName, HashMap<String, Book>>;

/// Every handler's record on this node; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Journal {
    books: Arc<Mutex<Books>>,
    /// Where each invocation is also counted (the node's `/metrics`).
    metrics: crate::metrics::HandlerMetrics,
}

impl Journal {
    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A journal that also counts into `metrics`.
    pub fn with_metrics(metrics: crate::metrics::HandlerMetrics) -> Self {
        Self {
            books: Arc::default(),
            metrics,
        }
    }

    /// Starts a handler's record afresh (it starts running here).
    pub fn open(&self, topic: &TopicName, handler: &str) {
        let book = Book {
            metrics: Some(self.metrics.handles(topic.as_str(), handler)),
            ..Book::default()
        };
        let mut books = self.books();
        let open: usize = books.values().map(HashMap::len).sum();
        let here = books.get(topic).is_some_and(|b| b.contains_key(handler));
        if open >= BOOKS_MAX && !here {
            // Only handlers that stopped running here can be past the
            // bound: forget one of them.
            if let Some(old) = books.keys().next().cloned() {
                let emptied = books.get_mut(&old).is_some_and(|handlers| {
                    if let Some(name) = handlers.keys().next().cloned() {
                        handlers.remove(&name);
                    }
                    handlers.is_empty()
                });
                if emptied {
                    books.remove(&old);
                }
            }
        }
        books
            .entry(topic.clone())
            .or_default()
            .insert(handler.to_string(), book);
    }

    /// Records one invocation (its `id` is given here).
    pub fn record(&self, topic: &TopicName, handler: &str, mut invocation: Invocation) {
        let mut books = self.books();
        let Some(book) = books.get_mut(topic).and_then(|b| b.get_mut(handler)) else {
            return;
        };
        if let Some(metrics) = &book.metrics {
            metrics.record(
                invocation.outcome,
                std::time::Duration::from_micros(invocation.dispatch_us),
            );
        }
        book.runs += 1;
        match invocation.outcome {
            Outcome::Ok => {}
            Outcome::Error => book.errors += 1,
            Outcome::Timeout => book.timeouts += 1,
        }
        invocation.id = book.runs;
        if book.recent.len() >= RECENT_MAX {
            book.recent.pop_front();
        }
        book.recent.push_back(invocation);
    }

    /// The newest `limit` invocations numbered above `after`, oldest
    /// first, with the counts; `None` if the handler never ran here.
    pub fn read(&self, topic: &TopicName, handler: &str, after: u64, limit: usize) -> Option<Book> {
        let books = self.books();
        let book = books.get(topic)?.get(handler)?;
        let newer: Vec<&Invocation> = book.recent.iter().filter(|i| i.id > after).collect();
        let skip = newer.len().saturating_sub(limit);
        Some(Book {
            recent: newer.into_iter().skip(skip).cloned().collect(),
            runs: book.runs,
            errors: book.errors,
            timeouts: book.timeouts,
            metrics: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation(seq: u64, outcome: Outcome) -> Invocation {
        Invocation {
            id: 0,
            seq,
            at_ms: 0,
            dispatch_us: 1,
            duration_us: 2,
            outcome,
            error: String::new(),
            logs: Vec::new(),
            ran_on: String::new(),
        }
    }

    #[test]
    fn keeps_the_newest_counts_everything_and_reads_after_a_point() {
        let journal = Journal::default();
        let topic = TopicName::new("t").unwrap();
        journal.record(&topic, "h", invocation(1, Outcome::Ok));
        assert!(
            journal.read(&topic, "h", 0, 10).is_none(),
            "not open: not kept"
        );
        journal.open(&topic, "h");
        for seq in 1..=(RECENT_MAX as u64 + 5) {
            let outcome = match seq % 10 {
                0 => Outcome::Error,
                5 => Outcome::Timeout,
                _ => Outcome::Ok,
            };
            journal.record(&topic, "h", invocation(seq, outcome));
        }
        let all = journal.read(&topic, "h", 0, usize::MAX).unwrap();
        assert_eq!(all.runs, RECENT_MAX as u64 + 5);
        assert_eq!(all.errors, 100);
        assert_eq!(all.timeouts, 101);
        assert_eq!(all.recent.len(), RECENT_MAX);
        assert_eq!(all.recent.front().unwrap().seq, 6);
        let tail = journal.read(&topic, "h", 1000, 3).unwrap();
        let ids: Vec<u64> = tail.recent.iter().map(|i| i.id).collect();
        assert_eq!(ids, vec![1003, 1004, 1005]);
        // Starting here again starts afresh.
        journal.open(&topic, "h");
        assert_eq!(journal.read(&topic, "h", 0, 10).unwrap().runs, 0);
    }
}
