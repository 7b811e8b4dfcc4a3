//! What the groups need of the overlay, as a trait: this node's peer id, a
//! request to a peer answered with bytes (through the event loop, or on the
//! link to the peer), and the peers the overlay has stopped hearing from. A node passes its [`woof_overlay::Client`]; the
//! simulator (`sim/`) passes its simulated network, so that the same group
//! layer (forwarding to leaders, group commit, sleeping groups) runs there.

use futures::FutureExt;
use futures::future::BoxFuture;
use woof_overlay::{Liveness, PeerId};

pub trait Net: Send + Sync + 'static {
    /// This node's peer id.
    fn peer_id(&self) -> PeerId;

    /// Sends `payload` to `peer` and waits for its answer.
    fn request(
        &self,
        peer: PeerId,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>>;

    /// Sends `payload` to `peer` on the link between the two, which the
    /// swarm's event loop does not carry (the Raft traffic), and waits for
    /// its answer. Where there is no such link, as a request.
    fn link_request(
        &self,
        peer: PeerId,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        self.request(peer, payload)
    }

    /// [`link_request`](Self::link_request) of `head` followed by `body`;
    /// the overlay sends them without joining them (a copy of `body`).
    fn link_request_parts(
        &self,
        peer: PeerId,
        head: Vec<u8>,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let mut payload = head;
        payload.extend_from_slice(&body);
        self.link_request(peer, payload)
    }

    /// The peers the overlay suspects or has given up on (silent for
    /// seconds: dead, paused or cut off).
    fn silent_peers(&self) -> BoxFuture<'static, Result<Vec<PeerId>, String>>;
}

impl Net for woof_overlay::Client {
    fn peer_id(&self) -> PeerId {
        woof_overlay::Client::peer_id(self)
    }

    fn request(
        &self,
        peer: PeerId,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let client = self.clone();
        async move {
            woof_overlay::Client::request(&client, peer, payload)
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn link_request(
        &self,
        peer: PeerId,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        Net::link_request_parts(self, peer, Vec::new(), payload)
    }

    fn link_request_parts(
        &self,
        peer: PeerId,
        head: Vec<u8>,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let client = self.clone();
        async move {
            woof_overlay::Client::link_request_parts(&client, peer, head, body)
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn silent_peers(&self) -> BoxFuture<'static, Result<Vec<PeerId>, String>> {
        let client = self.clone();
        async move {
            let members = client.members().await.map_err(|e| e.to_string())?;
            Ok(members
                .into_iter()
                .filter(|m| m.liveness != Liveness::Alive)
                .map(|m| m.peer)
                .collect())
        }
        .boxed()
    }
}
