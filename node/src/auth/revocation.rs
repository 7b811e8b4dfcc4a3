//! Revoked token ids, replicated through the system topic `_woof/revoked`
//! (a Raft group like any topic's, as the device registry is; ADR 0018).
//!
//! `woof token revoke ID` appends the id (an `admin` request on `**`);
//! every node that requires tokens follows the topic ([`follow`]) every
//! [`POLL`] and refuses tokens carrying a revoked id from then on. The list
//! holds at most [`REVOKED_MAX`] ids: past that a revoke is refused, and the
//! way out is a new root key (which revokes every token at once).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use woof_consensus::local::SCAN_LIMIT_MAX;
use woof_consensus::topic::{TopicConfig, TopicName};

use crate::api::TopicApi;
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;

/// The system topic that holds the revoked ids, one per element.
pub const REVOKED_TOPIC: &str = "_woof/revoked";
/// The most ids the list holds (its topic's history, so none is trimmed).
pub const REVOKED_MAX: u64 = 10_000;
/// A revocation id is a block's signature (64 bytes for Ed25519).
pub const ID_BYTES_MAX: usize = 128;
/// How often each node reads the list's new elements.
pub const POLL: Duration = Duration::from_millis(500);

/// The ids a node refuses: shared by its [`super::Authority`] and the task
/// that follows the topic.
#[derive(Clone, Default)]
pub struct Revoked {
    ids: Arc<RwLock<HashSet<Vec<u8>>>>,
}

impl Revoked {
    pub fn contains(&self, id: &[u8]) -> bool {
        self.ids.read().expect("revoked ids poisoned").contains(id)
    }

    pub fn insert(&self, id: Vec<u8>) {
        let mut ids = self.ids.write().expect("revoked ids poisoned");
        if (ids.len() as u64) < REVOKED_MAX {
            ids.insert(id);
        }
    }

    pub fn len(&self) -> usize {
        self.ids.read().expect("revoked ids poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn not_found(e: &Error) -> bool {
    matches!(e, Error::Log(woof_consensus::Error::TopicNotFound(_)))
}

async fn latest(api: &TopicApi) -> Result<u64> {
    let range = match api {
        TopicApi::Local(t) => t.latest(REVOKED_TOPIC).map_err(Error::Log),
        TopicApi::Cluster(c) => c.latest(REVOKED_TOPIC).await,
    };
    match range {
        Ok(r) => Ok(r.last),
        Err(e) if not_found(&e) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Appends `id` to the list, making its topic first if need be.
pub async fn revoke(api: &TopicApi, id: Vec<u8>) -> Result<()> {
    if id.is_empty() || id.len() > ID_BYTES_MAX {
        return Err(Error::Usage(format!(
            "a token id is 1 to {ID_BYTES_MAX} bytes (hex, from `woof token inspect`)"
        )));
    }
    if latest(api).await? >= REVOKED_MAX {
        return Err(Error::Usage(format!(
            "the revocation list is full ({REVOKED_MAX} ids): make a new root key \
             (woof token keygen) and new tokens instead"
        )));
    }
    let payload = vec![Bytes::from(id)];
    let appended = append(api, payload.clone()).await;
    match appended {
        Err(e) if not_found(&e) => {
            make_topic(api).await?;
            append(api, payload).await
        }
        other => other,
    }
}

async fn append(api: &TopicApi, payload: Vec<Bytes>) -> Result<()> {
    match api {
        TopicApi::Local(t) => t.append(REVOKED_TOPIC, payload, None).await.map(drop)?,
        TopicApi::Cluster(c) => c.append(REVOKED_TOPIC, payload, None).await.map(drop)?,
    }
    Ok(())
}

async fn make_topic(api: &TopicApi) -> Result<()> {
    let config = TopicConfig {
        history: REVOKED_MAX,
        element_max_bytes: ID_BYTES_MAX as u32,
    };
    let made = match api {
        TopicApi::Local(t) => t
            .create(REVOKED_TOPIC, config)
            .await
            .map(drop)
            .map_err(Error::Log),
        TopicApi::Cluster(c) => {
            let live = c.candidates().await?.iter().filter(|c| c.alive).count();
            let replication = live.clamp(1, crate::api::REPLICATION_DEFAULT);
            c.create_named(TopicName::new(REVOKED_TOPIC)?, config, replication, None)
                .await
                .map(drop)
        }
    };
    match made {
        Ok(()) | Err(Error::Log(woof_consensus::Error::TopicExists(_))) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads the list's elements after `applied` into `revoked`; returns the
/// last one read.
pub async fn catch_up(api: &TopicApi, revoked: &Revoked, mut applied: u64) -> Result<u64> {
    let last = latest(api).await?;
    while applied < last {
        let limit = (last - applied).min(u64::from(SCAN_LIMIT_MAX)) as u32;
        let elements = match api {
            TopicApi::Local(t) => t.scan(REVOKED_TOPIC, applied + 1, limit).await?,
            TopicApi::Cluster(c) => c.scan(REVOKED_TOPIC, applied + 1, limit).await?,
        };
        let Some(end) = elements.last().map(|e| e.seq) else {
            break;
        };
        for e in &elements {
            if !e.payload.is_empty() && e.payload.len() <= ID_BYTES_MAX {
                revoked.insert(e.payload.to_vec());
            }
        }
        if end <= applied {
            break;
        }
        applied = end;
    }
    Ok(applied)
}

/// Keeps `revoked` current with the list until the node stops.
pub async fn follow(api: TopicApi, revoked: Revoked, shutdown: Shutdown) {
    let mut applied = 0;
    let mut failing = false;
    loop {
        match catch_up(&api, &revoked, applied).await {
            Ok(a) => {
                if a > applied {
                    tracing::info!(revoked = revoked.len(), "revocation list read");
                }
                applied = a;
                failing = false;
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!("cannot read the revocation list yet: {e}");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.requested() => return,
        }
    }
}
