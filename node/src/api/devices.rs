//! The device registry through the cluster: `woof device add/list/rm/rotate`.
//! The registry is the fold of [`DEVICES_TOPIC`]'s elements
//! ([`crate::devices::registry`]); a change is one append, and its caller
//! folds up to that element to learn whether it took effect (two nodes
//! adding one id at once: the first element wins).

use bytes::Bytes;
use woof_consensus::local::SCAN_LIMIT_MAX;
use woof_consensus::topic::{HISTORY_MAX, TopicConfig, TopicName};
use woof_mcu_bridge::crypto::KEY_LEN;

use super::{ClusterTopics, REPLICATION_DEFAULT};
use crate::devices::registry::{
    DEVICES_MAX, DEVICES_TOPIC, Device, Pattern, Record, Registry, check_id, fleet_device_key,
    key_hex, new_key, parse_patterns,
};
use crate::error::{Error, Result};

/// The largest registry record: an add with every pattern at its longest.
const RECORD_BYTES_MAX: u32 = 16 * 1024;

impl ClusterTopics {
    /// The registry as its topic holds it now (empty if no device was ever
    /// added).
    pub async fn devices(&self) -> Result<Registry> {
        let mut registry = Registry::default();
        let last = match self.latest(DEVICES_TOPIC).await {
            Ok(r) => r.last,
            Err(Error::Log(woof_consensus::Error::TopicNotFound(_))) => return Ok(registry),
            Err(e) => return Err(e),
        };
        self.fold(&mut registry, last).await?;
        Ok(registry)
    }

    /// Folds the registry's elements after `registry.applied()` up to `upto`.
    async fn fold(&self, registry: &mut Registry, upto: u64) -> Result<()> {
        while registry.applied() < upto {
            let from = registry.applied() + 1;
            let limit = (upto - registry.applied()).min(u64::from(SCAN_LIMIT_MAX)) as u32;
            let elements = self.scan(DEVICES_TOPIC, from, limit).await?;
            let Some(last) = elements.last().map(|e| e.seq) else {
                return Err(Error::Internal(format!(
                    "the device registry has no elements from {from} up to {upto}"
                )));
            };
            if last < from {
                return Err(Error::Internal(format!(
                    "the device registry answered element {last} for {from}"
                )));
            }
            for e in &elements {
                registry.apply(e.seq, &e.payload);
            }
        }
        Ok(())
    }

    /// Appends `record` to the registry (making its topic first if need
    /// be) and returns the registry up to it, and whether it took effect.
    async fn change(&self, record: Record) -> Result<(Registry, bool)> {
        let (registry, took) = self.changes(vec![record]).await?;
        Ok((registry, took == 1))
    }

    /// Appends `records` in one batch (one commit) and returns the registry
    /// up to them, and how many took effect.
    async fn changes(&self, records: Vec<Record>) -> Result<(Registry, usize)> {
        let payloads: Vec<Bytes> = records.iter().map(|r| Bytes::from(r.to_bytes())).collect();
        let appended = match self.append(DEVICES_TOPIC, payloads.clone(), None).await {
            Err(Error::Log(woof_consensus::Error::TopicNotFound(_))) => {
                self.make_devices_topic().await?;
                self.append(DEVICES_TOPIC, payloads.clone(), None).await?
            }
            other => other?,
        };
        let mut registry = Registry::default();
        self.fold(&mut registry, appended.first_seq - 1).await?;
        let took = payloads
            .iter()
            .zip(appended.first_seq..)
            .filter(|(p, seq)| registry.apply(*seq, p))
            .count();
        Ok((registry, took))
    }

    async fn make_devices_topic(&self) -> Result<()> {
        let name = TopicName::new(DEVICES_TOPIC)?;
        let live = self.candidates().await?.iter().filter(|c| c.alive).count();
        let config = TopicConfig {
            history: HISTORY_MAX,
            element_max_bytes: RECORD_BYTES_MAX,
        };
        let replication = live.clamp(1, REPLICATION_DEFAULT);
        match self.create_named(name, config, replication, None).await {
            Ok(_) | Err(Error::Log(woof_consensus::Error::TopicExists(_))) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Registers a device; returns it with its new key.
    pub async fn device_add(
        &self,
        id: &str,
        topics: &[String],
        subscribe: &[String],
        key: Option<[u8; KEY_LEN]>,
    ) -> Result<Device> {
        check_id(id)?;
        let (patterns, follows) = registration(topics, subscribe)?;
        let current = self.devices().await?;
        if current.get(id).is_some() {
            return Err(Error::Usage(format!(
                "device {id} is already registered (`woof device rotate {id}` gives it a new key)"
            )));
        }
        if current.len() >= DEVICES_MAX {
            return Err(Error::Usage(format!(
                "the cluster has its maximum of {DEVICES_MAX} devices"
            )));
        }
        let record = Record::Add {
            id: id.into(),
            key: key_hex(&match key {
                Some(k) => k,
                None => new_key()?,
            }),
            topics: patterns.iter().map(|p| p.as_str().into()).collect(),
            subscribe: follows.iter().map(|p| p.as_str().into()).collect(),
            at_ms: self.clock.now_ms(),
        };
        let (registry, took) = self.change(record).await?;
        match (took, registry.get(id)) {
            (true, Some(d)) => Ok(d.clone()),
            _ => Err(Error::Usage(format!(
                "device {id} was registered by another request at the same time"
            ))),
        }
    }

    /// Registers devices `id-1` .. `id-n` in one commit, each with its key
    /// derived from `fleet_key` and its id; returns how many it registered
    /// (ids already taken are left as they are).
    pub async fn device_fleet(
        &self,
        id: &str,
        n: u32,
        topics: &[String],
        subscribe: &[String],
        fleet_key: [u8; KEY_LEN],
    ) -> Result<usize> {
        let last = format!("{id}-{n}");
        check_id(&last)?;
        let (patterns, follows) = registration(topics, subscribe)?;
        let current = self.devices().await?;
        if n == 0 || current.len() + n as usize > DEVICES_MAX {
            return Err(Error::Usage(format!(
                "a fleet is 1 device or more, and the cluster has at most {DEVICES_MAX} ({} now)",
                current.len()
            )));
        }
        let at_ms = self.clock.now_ms();
        let records = (1..=n)
            .map(|i| {
                let device = format!("{id}-{i}");
                Record::Add {
                    key: key_hex(&fleet_device_key(&fleet_key, &device)),
                    id: device,
                    topics: patterns.iter().map(|p| p.as_str().into()).collect(),
                    subscribe: follows.iter().map(|p| p.as_str().into()).collect(),
                    at_ms,
                }
            })
            .collect();
        Ok(self.changes(records).await?.1)
    }

    /// Gives a device a new key; the old one stops working at once.
    pub async fn device_rotate(&self, id: &str) -> Result<Device> {
        check_id(id)?;
        let record = Record::Rotate {
            id: id.into(),
            key: key_hex(&new_key()?),
            at_ms: self.clock.now_ms(),
        };
        match self.change(record).await? {
            (registry, true) => Ok(registry.get(id).cloned().expect("just rotated")),
            _ => Err(not_registered(id)),
        }
    }

    /// Removes a device: gateways drop its session and refuse its frames.
    pub async fn device_remove(&self, id: &str) -> Result<()> {
        check_id(id)?;
        let record = Record::Remove {
            id: id.into(),
            at_ms: self.clock.now_ms(),
        };
        match self.change(record).await? {
            (_, true) => Ok(()),
            _ => Err(not_registered(id)),
        }
    }
}

/// A registration's append and follow patterns, checked: at least one
/// to append to.
fn registration(topics: &[String], subscribe: &[String]) -> Result<(Vec<Pattern>, Vec<Pattern>)> {
    let patterns = parse_patterns(topics)?;
    if patterns.is_empty() {
        return Err(Error::Usage(
            "a device needs at least one topic pattern it may append to (--topics)".into(),
        ));
    }
    Ok((patterns, parse_patterns(subscribe)?))
}

fn not_registered(id: &str) -> Error {
    Error::Log(woof_consensus::Error::InvalidArgument(format!(
        "no device {id} is registered (`woof device list` shows those that are)"
    )))
}
