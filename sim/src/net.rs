//! The simulated network: every node-to-node request of woof's group layer
//! (what a node sends over the overlay: batches of Raft messages, control
//! messages to start groups, write or read at a leader, put groups to
//! sleep), as the [`Net`] each node's `Groups` is built on, delivered to
//! the target's inbound queue (the one the overlay feeds in a real node)
//! after a seeded delay, with faults:
//! - a request or its reply is dropped (the sender sees an error after
//!   [`TIMEOUT_MS`]; a dropped reply means the target acted on it);
//! - a message is delayed (20 to 200 ms) or held back a little so that
//!   later ones overtake it (reordering);
//! - a request is delivered twice, the second reply thrown away;
//! - partitions: a `blocked` set of (from, to) links, checked when a
//!   message is sent and again when it arrives (for the reply, the other
//!   way round), so one-way cuts are possible.
//!
//! A node that has been down for [`SILENT_AFTER_MS`] is reported silent to
//! the others (as the overlay's membership would). Clients' calls to nodes
//! cross it too ([`SimNet::client_call`]): delays and drops of the call or
//! its answer, no partitions.
//!
//! The DHT is simulated here too ([`SimNet::dht`], the
//! `woof_node::api::Overlay` each node's `ClusterTopics` is built on):
//! each node holds records in memory (lost when it crashes, as the
//! overlay's Kademlia `MemoryStore`); a record lives on the [`DHT_K`]
//! nodes nearest its key by XOR distance (and on the node that put it);
//! a put writes to those it reaches (it fails if it reaches none); a get
//! asks its own store, then those nodes nearest first, and takes the first
//! answer. Every DHT request crosses the network like any other message
//! (drops, delays, partitions). The member view it gives is derived from
//! the network: a node down, or cut off from the asker, for
//! [`SILENT_AFTER_MS`] or more is suspected, its `silent_ms` growing, and
//! gone after the overlay's gone time.
//!
//! Every send, loss and delivery is an event in the history.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use woof_consensus::Error;
use woof_node::api::Overlay;
use woof_node::groups::Net;
use woof_overlay::{Inbound, Liveness, Member, NodeInfo, PeerId, Timing};

use crate::config::{Fault, Rates};
use crate::history::{Fnv, Recorder};
use crate::rng::SimRng;

/// How long a sender waits for a lost message before giving up.
pub const TIMEOUT_MS: u64 = 500;
/// The longest a target may take to answer one message.
const HANDLE_MS_MAX: u64 = 5_000;
/// A node down this long is reported silent (suspected) to the others.
pub const SILENT_AFTER_MS: u64 = 1_000;
/// How many nodes nearest a record's key hold it.
pub const DHT_K: usize = 3;
/// Records one node holds at most (the overlay's bound is larger; a run
/// has few topics).
const RECORDS_MAX: usize = 10_000;

struct State {
    rng: SimRng,
    rates: Rates,
    /// The node ids that are up, with the incarnation that is running and
    /// its inbound queue.
    inboxes: BTreeMap<u64, (u64, mpsc::Sender<Inbound>)>,
    /// When each node that is down went down.
    down_since: BTreeMap<u64, tokio::time::Instant>,
    /// Cut links (from, to), with how many partitions cut each.
    blocked: BTreeMap<(u64, u64), u32>,
    /// When each cut link was cut.
    cut_since: BTreeMap<(u64, u64), tokio::time::Instant>,
    /// Each node's DHT records (in memory: a crash loses them).
    records: BTreeMap<u64, BTreeMap<Vec<u8>, Vec<u8>>>,
    next_msg: u64,
}

/// The network between all nodes of a run.
pub struct SimNet {
    rec: Arc<Recorder>,
    state: Mutex<State>,
    /// Each node's peer id, by node id (1-based).
    peers: Vec<PeerId>,
    /// What each node advertises (its tier), by node id (1-based).
    infos: Vec<NodeInfo>,
}

/// What happens to one message, drawn when it is sent.
struct Plan {
    msg: u64,
    /// Whether the sender's incarnation is still running.
    sender_up: bool,
    request_ms: u64,
    reply_ms: u64,
    drop_request: bool,
    drop_reply: bool,
    dup_after_ms: Option<u64>,
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.write(bytes);
    h.finish()
}

impl SimNet {
    /// The network between nodes 1 to `peers.len()`, with those peer ids
    /// and what they advertise.
    pub fn new(
        rec: Arc<Recorder>,
        rng: SimRng,
        rates: Rates,
        peers: Vec<(PeerId, NodeInfo)>,
    ) -> Arc<Self> {
        let (peers, infos) = peers.into_iter().unzip();
        Arc::new(Self {
            rec,
            state: Mutex::new(State {
                rng,
                rates,
                inboxes: BTreeMap::new(),
                down_since: BTreeMap::new(),
                blocked: BTreeMap::new(),
                cut_since: BTreeMap::new(),
                records: BTreeMap::new(),
                next_msg: 0,
            }),
            peers,
            infos,
        })
    }

    /// What node `id` advertises.
    pub fn info(&self, id: u64) -> Option<NodeInfo> {
        self.infos.get((id as usize).checked_sub(1)?).cloned()
    }

    /// Node `id`'s peer id.
    pub fn peer(&self, id: u64) -> Option<PeerId> {
        self.peers.get((id as usize).checked_sub(1)?).copied()
    }

    /// The node id of `peer`.
    pub fn node_of(&self, peer: &PeerId) -> Option<u64> {
        self.peers
            .iter()
            .position(|p| p == peer)
            .map(|i| i as u64 + 1)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Node `node`'s incarnation `incarnation` is up and receives into `inbox`.
    pub fn attach(&self, node: u64, incarnation: u64, inbox: mpsc::Sender<Inbound>) {
        let mut s = self.state();
        s.inboxes.insert(node, (incarnation, inbox));
        s.down_since.remove(&node);
    }

    /// Node `node` is down: nothing reaches it, nothing it sent arrives.
    pub fn detach(&self, node: u64) {
        let mut s = self.state();
        if s.inboxes.remove(&node).is_some() {
            s.down_since.insert(node, tokio::time::Instant::now());
        }
        s.records.remove(&node);
    }

    /// What incarnation `incarnation` of node `node` sends with.
    pub fn link(self: &Arc<Self>, node: u64, incarnation: u64) -> Arc<dyn Net> {
        Arc::new(Link {
            me: node,
            incarnation,
            net: self.clone(),
        })
    }

    /// The nodes down for [`SILENT_AFTER_MS`] or more.
    fn silent(&self) -> Vec<PeerId> {
        let s = self.state();
        s.down_since
            .iter()
            .filter(|(_, since)| since.elapsed() >= Duration::from_millis(SILENT_AFTER_MS))
            .filter_map(|(id, _)| self.peer(*id))
            .collect()
    }

    /// Changes the fault rates (the heal phase turns them off).
    pub fn set_rates(&self, rates: Rates) {
        self.state().rates = rates;
    }

    /// Cuts the links in `links` (one partition; [`unblock`](Self::unblock)
    /// with the same list heals it).
    pub fn block(&self, links: &[(u64, u64)]) {
        let mut s = self.state();
        let now = tokio::time::Instant::now();
        for l in links {
            *s.blocked.entry(*l).or_default() += 1;
            s.cut_since.entry(*l).or_insert(now);
        }
    }

    pub fn unblock(&self, links: &[(u64, u64)]) {
        let mut s = self.state();
        for l in links {
            if let Some(n) = s.blocked.get_mut(l) {
                *n -= 1;
                if *n == 0 {
                    s.blocked.remove(l);
                    s.cut_since.remove(l);
                }
            }
        }
    }

    /// Heals every partition.
    pub fn heal(&self) {
        let mut s = self.state();
        s.blocked.clear();
        s.cut_since.clear();
    }

    pub fn is_blocked(&self, from: u64, to: u64) -> bool {
        self.state().blocked.contains_key(&(from, to))
    }

    /// Cut links, for the history.
    pub fn blocked_links(&self) -> BTreeSet<(u64, u64)> {
        self.state().blocked.keys().copied().collect()
    }

    fn plan(&self, me: u64, incarnation: u64) -> Plan {
        let mut s = self.state();
        let sender_up = s.inboxes.get(&me).is_some_and(|(i, _)| *i == incarnation);
        Plan {
            sender_up,
            ..self.draw(&mut s)
        }
    }

    /// Draws what happens to one message.
    fn draw(&self, s: &mut State) -> Plan {
        s.next_msg += 1;
        let msg = s.next_msg;
        let rates = s.rates;
        let rng = &mut s.rng;
        let delay = |rng: &mut SimRng, rec: &Recorder, leg: &str| {
            let mut ms = rng.range(1, 6);
            if rng.chance(rates.get(Fault::Delay)) {
                let extra = rng.range(20, 201);
                rec.fault(Fault::Delay, format_args!("msg#{msg} {leg} +{extra} ms"));
                ms += extra;
            }
            if rng.chance(rates.get(Fault::Reorder)) {
                let extra = rng.range(5, 41);
                rec.fault(Fault::Reorder, format_args!("msg#{msg} {leg} +{extra} ms"));
                ms += extra;
            }
            ms
        };
        let request_ms = delay(rng, &self.rec, "request");
        let reply_ms = delay(rng, &self.rec, "reply");
        let drop_request = rng.chance(rates.get(Fault::Drop));
        let drop_reply = !drop_request && rng.chance(rates.get(Fault::Drop));
        let dup_after_ms = rng.chance(rates.get(Fault::Dup)).then(|| rng.range(0, 30));
        Plan {
            msg,
            sender_up: true,
            request_ms,
            reply_ms,
            drop_request,
            drop_reply,
            dup_after_ms,
        }
    }

    /// A client's call to node `node`: the request and the reply cross
    /// the network with its delays and drops (clients are outside the
    /// nodes' partitions; they reach every node). `call` is what the node
    /// does; it runs to its end even when the reply is then lost. A lost
    /// request or reply leaves the client waiting `wait_ms` in all, then
    /// with nothing (`None`), as a client's own timeout would.
    pub async fn client_call<T>(
        &self,
        who: &str,
        node: u64,
        wait_ms: u64,
        call: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let start = tokio::time::Instant::now();
        let p = {
            let mut s = self.state();
            self.draw(&mut s)
        };
        let msg = p.msg;
        self.rec
            .event(format_args!("msg#{msg} {who}->n{node} call"));
        let wait_out = |msg: u64, what: &'static str| async move {
            let waited = start.elapsed().as_millis() as u64;
            tokio::time::sleep(Duration::from_millis(wait_ms.saturating_sub(waited))).await;
            self.rec.event(format_args!("msg#{msg} lost: {what}"));
            None
        };
        if p.drop_request {
            self.rec.fault(Fault::Drop, format_args!("msg#{msg} call"));
            return wait_out(msg, "call dropped").await;
        }
        tokio::time::sleep(Duration::from_millis(p.request_ms)).await;
        let out = call.await;
        if p.drop_reply {
            self.rec
                .fault(Fault::Drop, format_args!("msg#{msg} call's answer"));
            return wait_out(msg, "answer dropped").await;
        }
        tokio::time::sleep(Duration::from_millis(p.reply_ms)).await;
        self.rec
            .event(format_args!("msg#{msg} n{node}->{who} answer"));
        Some(out)
    }

    fn inbox(&self, node: u64) -> Option<mpsc::Sender<Inbound>> {
        self.state().inboxes.get(&node).map(|(_, i)| i.clone())
    }

    /// Hands `message` from node `from` to `inbox` and waits (at most
    /// [`HANDLE_MS_MAX`]) for the answer.
    async fn deliver(
        &self,
        inbox: &mpsc::Sender<Inbound>,
        from: u64,
        to: u64,
        message: Vec<u8>,
    ) -> Result<Vec<u8>, Error> {
        let peer = self
            .peer(from)
            .ok_or_else(|| Error::Network(format!("no node {from}")))?;
        let (reply, answer) = oneshot::channel();
        let request = Inbound {
            peer,
            payload: message,
            reply,
        };
        if inbox.send(request).await.is_err() {
            return Err(Error::Network(format!("node {to} is down")));
        }
        match tokio::time::timeout(Duration::from_millis(HANDLE_MS_MAX), answer).await {
            Ok(Ok(bytes)) => Ok(bytes),
            // The target refused the request (it drops the reply).
            Ok(Err(_)) => Err(Error::Network(format!("node {to} refused the request"))),
            Err(_) => Err(Error::Network(format!("node {to} did not answer"))),
        }
    }

    async fn lost<T>(&self, msg: u64, why: &str, waited_ms: u64) -> Result<T, Error> {
        self.rec.event(format_args!("msg#{msg} lost: {why}"));
        tokio::time::sleep(Duration::from_millis(TIMEOUT_MS.saturating_sub(waited_ms))).await;
        Err(Error::Network(format!("message {msg} lost: {why}")))
    }

    /// A request's way to `to`: cut at send, dropped, delayed, cut in
    /// flight (each a lost message, which the sender learns after its
    /// timeout).
    async fn request_leg(&self, msg: u64, me: u64, to: u64, p: &Plan) -> Result<(), Error> {
        if self.is_blocked(me, to) {
            return self.lost(msg, "link cut at send", 0).await;
        }
        if p.drop_request {
            self.rec
                .fault(Fault::Drop, format_args!("msg#{msg} request"));
            return self.lost(msg, "request dropped", 0).await;
        }
        tokio::time::sleep(Duration::from_millis(p.request_ms)).await;
        if self.is_blocked(me, to) {
            return self.lost(msg, "link cut in flight", p.request_ms).await;
        }
        Ok(())
    }

    async fn send(
        self: Arc<Self>,
        me: u64,
        incarnation: u64,
        to: u64,
        message: Vec<u8>,
    ) -> Result<Vec<u8>, Error> {
        let p = self.plan(me, incarnation);
        let msg = p.msg;
        if !p.sender_up {
            // A dead incarnation's leftover task: it can send nothing.
            tokio::time::sleep(Duration::from_millis(p.request_ms)).await;
            return Err(Error::Closed);
        }
        self.rec.event(format_args!(
            "msg#{msg} n{me}->n{to} send {} bytes #{:016x}",
            message.len(),
            digest(&message)
        ));
        self.rec
            .note(|| format!("msg#{msg} is {}", describe(&message)));
        self.request_leg(msg, me, to, &p).await?;
        let Some(inbox) = self.inbox(to) else {
            // Connection refused: the sender learns soon.
            self.rec
                .event(format_args!("msg#{msg} refused: n{to} is down"));
            return Err(Error::Network(format!("node {to} is down")));
        };
        if let Some(after) = p.dup_after_ms {
            self.rec.fault(
                Fault::Dup,
                format_args!("msg#{msg} delivered again in {after} ms"),
            );
            let (net, inbox, message) = (self.clone(), inbox.clone(), message.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(after)).await;
                if net.inbox(to).is_none() || net.is_blocked(me, to) {
                    return;
                }
                let answered = net.deliver(&inbox, me, to, message).await;
                net.rec.event(format_args!(
                    "msg#{msg} duplicate delivered, answer {}",
                    match answered {
                        Ok(_) => "discarded",
                        Err(_) => "an error",
                    }
                ));
            });
        }
        self.rec.event(format_args!("msg#{msg} delivered to n{to}"));
        let reply = match self.deliver(&inbox, me, to, message).await {
            Ok(reply) => reply,
            Err(e) => {
                self.rec
                    .event(format_args!("msg#{msg} error at n{to}: {e}"));
                return Err(e);
            }
        };
        if p.drop_reply {
            self.rec.fault(Fault::Drop, format_args!("msg#{msg} reply"));
            return self.lost(msg, "reply dropped", 0).await;
        }
        tokio::time::sleep(Duration::from_millis(p.reply_ms)).await;
        if self.is_blocked(to, me) {
            return self.lost(msg, "reply's link cut", p.reply_ms).await;
        }
        self.rec.event(format_args!(
            "msg#{msg} n{to}->n{me} reply {} bytes #{:016x}",
            reply.len(),
            digest(&reply)
        ));
        Ok(reply)
    }
}

/// What a node-to-node message is (for traces): its tag says.
fn describe(message: &[u8]) -> String {
    match message.first() {
        Some(3) => format!("a batch of Raft messages, {} bytes", message.len()),
        Some(2) => format!("a control message, {} bytes", message.len()),
        _ => format!("an unknown message, {} bytes", message.len()),
    }
}

/// One incarnation of a node: its group layer's network ([`Net`]) and its
/// `ClusterTopics`' DHT and member view ([`Overlay`]).
struct Link {
    me: u64,
    incarnation: u64,
    net: Arc<SimNet>,
}

impl Net for Link {
    fn peer_id(&self) -> PeerId {
        self.net.peer(self.me).expect("a node of the run")
    }

    fn request(
        &self,
        peer: PeerId,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let net = self.net.clone();
        let (me, incarnation) = (self.me, self.incarnation);
        let to = net.node_of(&peer);
        async move {
            let to = to.ok_or_else(|| format!("{peer} is not a node of the run"))?;
            net.send(me, incarnation, to, payload)
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn silent_peers(&self) -> BoxFuture<'static, Result<Vec<PeerId>, String>> {
        let silent = self.net.silent();
        async move { Ok(silent) }.boxed()
    }
}

/// A record key, for the history.
fn show_key(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

impl SimNet {
    /// What incarnation `incarnation` of node `node` sees of the overlay:
    /// the DHT and the member view (its `ClusterTopics` is built on it).
    pub fn dht(self: &Arc<Self>, node: u64, incarnation: u64) -> Arc<dyn Overlay> {
        Arc::new(Link {
            me: node,
            incarnation,
            net: self.clone(),
        })
    }

    /// The nodes that hold `key`'s record: the [`DHT_K`] nearest the key
    /// by XOR distance, nearest first.
    fn holders(&self, key: &[u8]) -> Vec<u64> {
        let mut peers = self.peers.clone();
        woof_overlay::distance::sort_nearest(key, &mut peers);
        peers
            .iter()
            .take(DHT_K)
            .filter_map(|p| self.node_of(p))
            .collect()
    }

    /// The member view of node `me`: every other node, silent since it went
    /// down or since its link to `me` was cut.
    fn members(&self, me: u64) -> Vec<Member> {
        let s = self.state();
        let gone_after_ms = Timing::default().gone_after_ms;
        (1..=self.peers.len() as u64)
            .filter(|id| *id != me)
            .filter_map(|id| {
                let since = [s.down_since.get(&id), s.cut_since.get(&(id, me))]
                    .into_iter()
                    .flatten()
                    .min();
                let silent_ms = since.map_or(0, |t| t.elapsed().as_millis() as u64);
                let liveness = if silent_ms < SILENT_AFTER_MS {
                    Liveness::Alive
                } else if silent_ms < gone_after_ms {
                    Liveness::Suspected
                } else {
                    Liveness::Gone
                };
                Some(Member {
                    peer: self.peer(id)?,
                    info: self.info(id)?,
                    addrs: Vec::new(),
                    liveness,
                    silent_ms,
                })
            })
            .collect()
    }

    /// Runs `op` on node `me`'s own records, if incarnation `incarnation`
    /// is the one up.
    fn local_records<T>(
        &self,
        me: u64,
        incarnation: u64,
        op: impl FnOnce(&mut BTreeMap<Vec<u8>, Vec<u8>>) -> T,
    ) -> Option<T> {
        let mut s = self.state();
        if s.inboxes.get(&me).is_none_or(|(i, _)| *i != incarnation) {
            return None;
        }
        Some(op(s.records.entry(me).or_default()))
    }

    /// One DHT request from node `me` to node `to`: it crosses the network
    /// as any message does (drops, delays, partitions both ways), and runs
    /// `op` on `to`'s records if `to` is up when it arrives.
    async fn dht_call<T>(
        &self,
        me: u64,
        incarnation: u64,
        to: u64,
        what: &str,
        op: impl FnOnce(&mut BTreeMap<Vec<u8>, Vec<u8>>) -> T,
    ) -> Result<T, Error> {
        let p = self.plan(me, incarnation);
        let msg = p.msg;
        if !p.sender_up {
            tokio::time::sleep(Duration::from_millis(p.request_ms)).await;
            return Err(Error::Closed);
        }
        self.rec
            .event(format_args!("msg#{msg} n{me}->n{to} dht {what}"));
        self.request_leg(msg, me, to, &p).await?;
        let out = {
            let mut s = self.state();
            if !s.inboxes.contains_key(&to) {
                drop(s);
                self.rec
                    .event(format_args!("msg#{msg} refused: n{to} is down"));
                return Err(Error::Network(format!("node {to} is down")));
            }
            op(s.records.entry(to).or_default())
        };
        if p.drop_reply {
            self.rec.fault(Fault::Drop, format_args!("msg#{msg} reply"));
            return self.lost(msg, "reply dropped", 0).await;
        }
        tokio::time::sleep(Duration::from_millis(p.reply_ms)).await;
        if self.is_blocked(to, me) {
            return self.lost(msg, "reply's link cut", p.reply_ms).await;
        }
        self.rec
            .event(format_args!("msg#{msg} n{to}->n{me} dht answer"));
        Ok(out)
    }

    /// A get of `key` by node `me`: its own store, then the holders,
    /// nearest first; the first answer wins.
    async fn get_record(
        &self,
        me: u64,
        incarnation: u64,
        key: Vec<u8>,
    ) -> woof_overlay::Result<Option<Vec<u8>>> {
        let shown = show_key(&key);
        match self.local_records(me, incarnation, |r| r.get(&key).cloned()) {
            None => return Err(woof_overlay::Error::Closed),
            Some(Some(value)) => return Ok(Some(value)),
            Some(None) => {}
        }
        let mut reached = false;
        for to in self.holders(&key) {
            if to == me {
                continue;
            }
            let what = format!("get {shown}");
            match self
                .dht_call(me, incarnation, to, &what, |r| r.get(&key).cloned())
                .await
            {
                Ok(Some(value)) => return Ok(Some(value)),
                Ok(None) => reached = true,
                Err(Error::Closed) => return Err(woof_overlay::Error::Closed),
                Err(_) => {}
            }
        }
        if reached || self.holders(&key).iter().all(|h| *h == me) {
            Ok(None)
        } else {
            Err(woof_overlay::Error::Record {
                key: shown,
                reason: "no node holding it answered".into(),
            })
        }
    }

    /// A put of `key` by node `me`: into its own store and to every holder
    /// it reaches; it fails if it reaches none.
    async fn put_record(
        &self,
        me: u64,
        incarnation: u64,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> woof_overlay::Result<()> {
        let shown = show_key(&key);
        let store = |records: &mut BTreeMap<Vec<u8>, Vec<u8>>, key: &[u8], value: &[u8]| {
            if records.len() < RECORDS_MAX || records.contains_key(key) {
                records.insert(key.to_vec(), value.to_vec());
            }
        };
        if self
            .local_records(me, incarnation, |r| store(r, &key, &value))
            .is_none()
        {
            return Err(woof_overlay::Error::Closed);
        }
        let holders: Vec<u64> = self
            .holders(&key)
            .into_iter()
            .filter(|h| *h != me)
            .collect();
        if holders.is_empty() {
            return Ok(());
        }
        let what = format!("put {shown}");
        let puts = holders
            .iter()
            .map(|to| self.dht_call(me, incarnation, *to, &what, |r| store(r, &key, &value)));
        let stored = futures::future::join_all(puts)
            .await
            .iter()
            .filter(|r| r.is_ok())
            .count();
        if stored == 0 {
            return Err(woof_overlay::Error::Record {
                key: shown,
                reason: "no node to store it on answered".into(),
            });
        }
        Ok(())
    }
}

/// The same incarnation, as its `ClusterTopics` sees the overlay.
impl Overlay for Link {
    fn peer_id(&self) -> PeerId {
        self.net.peer(self.me).expect("a node of the run")
    }

    fn get_record(
        &self,
        key: Vec<u8>,
    ) -> BoxFuture<'static, woof_overlay::Result<Option<Vec<u8>>>> {
        let (net, me, incarnation) = (self.net.clone(), self.me, self.incarnation);
        async move { net.get_record(me, incarnation, key).await }.boxed()
    }

    fn put_record(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> BoxFuture<'static, woof_overlay::Result<()>> {
        let (net, me, incarnation) = (self.net.clone(), self.me, self.incarnation);
        async move { net.put_record(me, incarnation, key, value).await }.boxed()
    }

    fn members(&self) -> BoxFuture<'static, woof_overlay::Result<Vec<Member>>> {
        let members = self.net.members(self.me);
        async move { Ok(members) }.boxed()
    }
}
