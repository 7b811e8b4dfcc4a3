//! The tokio driver of topics ([`Topics`]) over an in-memory store, with a
//! store wrapper that can be told to fail writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use woof_consensus::store::{MemStore, Store, WriteBatch};
use woof_consensus::topic::{Element, Producer, ProducerWindow, TopicConfig, TopicId, TopicMeta};
use woof_consensus::{Error, Start, SystemClock, Topics};

/// A [`MemStore`] whose writes fail while `failing` is set.
#[derive(Default)]
struct Flaky {
    inner: MemStore,
    failing: AtomicBool,
}

impl Store for Flaky {
    fn write(&self, batch: &WriteBatch) -> woof_consensus::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::Storage("disk on fire".into()));
        }
        self.inner.write(batch)
    }
    fn topics(&self) -> woof_consensus::Result<Vec<TopicMeta>> {
        self.inner.topics()
    }
    fn topic(&self, id: TopicId) -> woof_consensus::Result<Option<TopicMeta>> {
        self.inner.topic(id)
    }
    fn next_topic_id(&self) -> woof_consensus::Result<u64> {
        self.inner.next_topic_id()
    }
    fn last_seq(&self, topic: TopicId) -> woof_consensus::Result<u64> {
        self.inner.last_seq(topic)
    }
    fn get(&self, topic: TopicId, seq: u64) -> woof_consensus::Result<Option<Element>> {
        self.inner.get(topic, seq)
    }
    fn scan(
        &self,
        topic: TopicId,
        from: u64,
        limit: usize,
        bytes_max: usize,
    ) -> woof_consensus::Result<Vec<Element>> {
        self.inner.scan(topic, from, limit, bytes_max)
    }
    fn producer(&self, topic: TopicId, id: &str) -> woof_consensus::Result<Option<ProducerWindow>> {
        self.inner.producer(topic, id)
    }
    fn producers(
        &self,
        topic: TopicId,
        limit: usize,
    ) -> woof_consensus::Result<Vec<(String, ProducerWindow)>> {
        self.inner.producers(topic, limit)
    }
    fn effects(
        &self,
        topic: TopicId,
        cause_topic: &str,
        handler: &str,
        cause_seq: u64,
        limit: usize,
    ) -> woof_consensus::Result<Vec<woof_consensus::topic::Element>> {
        self.inner
            .effects(topic, cause_topic, handler, cause_seq, limit)
    }

    fn trim(&self, topic: TopicId, below_seq: u64) -> woof_consensus::Result<()> {
        self.inner.trim(topic, below_seq)
    }
    fn read_fixed(
        &self,
        f: &mut dyn FnMut(&dyn woof_consensus::store::Fixed) -> woof_consensus::Result<()>,
    ) -> woof_consensus::Result<()> {
        self.inner.read_fixed(f)
    }
}

async fn open(store: Arc<Flaky>) -> Topics {
    Topics::open(store, Arc::new(SystemClock)).await.unwrap()
}

fn one(s: &str) -> Vec<Bytes> {
    vec![Bytes::copy_from_slice(s.as_bytes())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_grouped_and_dense() {
    let store = Arc::new(Flaky::default());
    let topics = open(store.clone()).await;
    topics.create("g", TopicConfig::default()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let t = topics.clone();
        tasks.push(tokio::spawn(async move {
            (
                t.append("g", one(&format!("{i}")), None)
                    .await
                    .unwrap()
                    .first_seq,
                i,
            )
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        let (seq, i) = t.await.unwrap();
        assert_eq!(
            topics.get("g", seq).await.unwrap().payload,
            format!("{i}").into_bytes()
        );
        seqs.push(seq);
    }
    seqs.sort();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    assert_eq!(store.last_seq(TopicId(1)).unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_not_acknowledged_nor_visible_and_numbering_resumes() {
    let store = Arc::new(Flaky::default());
    let topics = open(store.clone()).await;
    topics.create("f", TopicConfig::default()).await.unwrap();
    let p = |seq| Some(Producer::new("p".into(), seq).unwrap());
    assert_eq!(
        topics.append("f", one("a"), p(1)).await.unwrap().first_seq,
        1
    );
    store.failing.store(true, Ordering::SeqCst);
    let err = topics.append("f", one("b"), p(2)).await.unwrap_err();
    assert!(matches!(err, Error::Storage(_)), "{err:?}");
    assert_eq!(topics.latest("f").unwrap().last, 1, "nothing published");
    assert!(topics.get("f", 2).await.is_err());
    store.failing.store(false, Ordering::SeqCst);
    // The failed append left no trace: not in the numbering, not in the
    // producer's window, so its retry is appended now, as number 2.
    let retry = topics.append("f", one("b"), p(2)).await.unwrap();
    assert_eq!((retry.first_seq, retry.duplicate), (2, false));
    assert_eq!(topics.get("f", 2).await.unwrap().payload, &b"b"[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_creates_nothing() {
    let store = Arc::new(Flaky::default());
    let topics = open(store.clone()).await;
    store.failing.store(true, Ordering::SeqCst);
    assert!(matches!(
        topics.create("x", TopicConfig::default()).await,
        Err(Error::Storage(_))
    ));
    assert!(topics.list().is_empty());
    store.failing.store(false, Ordering::SeqCst);
    topics.create("x", TopicConfig::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_deletes_from_the_store_behind_the_appends() {
    let store = Arc::new(Flaky::default());
    let topics = open(store.clone()).await;
    let config = TopicConfig {
        element_max_bytes: 100,
        history: 10,
    };
    topics.create("t", config).await.unwrap();
    for i in 0..100 {
        topics.append("t", one(&i.to_string()), None).await.unwrap();
    }
    let range = topics.latest("t").unwrap();
    assert_eq!((range.first, range.last), (91, 100));
    // The trimmer runs in the background; it catches up quickly.
    let mut stored = usize::MAX;
    for _ in 0..100 {
        stored = store.scan(TopicId(1), 1, 1000, usize::MAX).unwrap().len();
        if stored <= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        stored <= 20,
        "{stored} elements still stored; history is 10"
    );
    assert!(store.get(TopicId(1), 91).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_continues_where_it_stopped() {
    let store = Arc::new(Flaky::default());
    let topics = open(store.clone()).await;
    topics.create("a", TopicConfig::default()).await.unwrap();
    topics.create("b", TopicConfig::default()).await.unwrap();
    topics.append("a", one("1"), None).await.unwrap();
    topics.delete("b").await.unwrap();
    topics.shutdown().await;
    let topics = open(store).await;
    let names: Vec<_> = topics
        .list()
        .into_iter()
        .map(|t| t.meta.name.to_string())
        .collect();
    assert_eq!(names, ["a"]);
    assert_eq!(
        topics.append("a", one("2"), None).await.unwrap().first_seq,
        2
    );
    // Ids are never reused, even for a deleted topic.
    let c = topics.create("c", TopicConfig::default()).await.unwrap();
    assert_eq!(c.meta.id, TopicId(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_owned_by_raft_groups_are_not_loaded_as_local_topics() {
    use woof_consensus::store::{GROUP_ID_MIN, Op};
    let store = Arc::new(Flaky::default());
    let mut batch = WriteBatch::default();
    batch.push(Op::PutTopic(TopicMeta {
        id: TopicId(GROUP_ID_MIN + 5),
        name: woof_consensus::topic::TopicName::new("replicated").unwrap(),
        config: TopicConfig::default(),
        created_at_ms: 0,
        placement: Default::default(),
    }));
    store.write(&batch).unwrap();
    let topics = open(store).await;
    assert!(topics.list().is_empty());
    assert!(matches!(
        topics.append("replicated", one("x"), None).await,
        Err(Error::TopicNotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_subscriptions_and_refuses_appends() {
    let store = Arc::new(Flaky::default());
    let topics = open(store).await;
    topics.create("s", TopicConfig::default()).await.unwrap();
    let mut sub = topics.subscribe("s", Start::Latest).unwrap();
    let waiting = tokio::spawn(async move { sub.next_batch(10).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    topics.shutdown().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.unwrap_err(), Error::Closed);
    assert!(topics.append("s", one("x"), None).await.is_err());
    assert_eq!(
        topics
            .create("t", TopicConfig::default())
            .await
            .unwrap_err(),
        Error::Closed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_during_appends_answers_every_appender() {
    let store = Arc::new(Flaky::default());
    let topics = open(store).await;
    topics.create("d", TopicConfig::default()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let t = topics.clone();
        tasks.push(tokio::spawn(async move {
            t.append("d", one(&i.to_string()), None).await
        }));
    }
    topics.delete("d").await.unwrap();
    for t in tasks {
        match t.await.unwrap() {
            Ok(o) => assert!(o.first_seq >= 1),
            Err(e) => assert!(matches!(e, Error::TopicNotFound(_)), "{e:?}"),
        }
    }
    assert!(matches!(topics.latest("d"), Err(Error::TopicNotFound(_))));
}
