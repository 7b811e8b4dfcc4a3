//! What the cluster topic API needs of the overlay, as a trait: this
//! node's peer id, the DHT's records (where each topic lives) and the
//! member view (who else is there, how long each has been silent, its tier
//! and attributes). A node passes its [`woof_overlay::Client`]; the
//! simulator (`sim/`) passes a simulated DHT and member view over its
//! simulated network, so that the same create, delete, lookup, read
//! routing, remote follow and repair run there (as [`crate::groups::Net`]
//! does for the group layer).

use futures::FutureExt;
use futures::future::BoxFuture;
use woof_overlay::{Member, PeerId};

pub trait Overlay: Send + Sync + 'static {
    /// This node's peer id.
    fn peer_id(&self) -> PeerId;

    /// Looks a record up in the DHT: `None` if no node that was asked
    /// holds it.
    fn get_record(&self, key: Vec<u8>)
    -> BoxFuture<'static, woof_overlay::Result<Option<Vec<u8>>>>;

    /// Stores a record in the DHT, on the nodes closest to its key.
    fn put_record(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> BoxFuture<'static, woof_overlay::Result<()>>;

    /// Every other member heard from, with its liveness, how long it has
    /// been silent, its tier and attributes.
    fn members(&self) -> BoxFuture<'static, woof_overlay::Result<Vec<Member>>>;
}

impl Overlay for woof_overlay::Client {
    fn peer_id(&self) -> PeerId {
        woof_overlay::Client::peer_id(self)
    }

    fn get_record(
        &self,
        key: Vec<u8>,
    ) -> BoxFuture<'static, woof_overlay::Result<Option<Vec<u8>>>> {
        let client = self.clone();
        async move { woof_overlay::Client::get_record(&client, key).await }.boxed()
    }

    fn put_record(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> BoxFuture<'static, woof_overlay::Result<()>> {
        let client = self.clone();
        async move { woof_overlay::Client::put_record(&client, key, value).await }.boxed()
    }

    fn members(&self) -> BoxFuture<'static, woof_overlay::Result<Vec<Member>>> {
        let client = self.clone();
        async move { woof_overlay::Client::members(&client).await }.boxed()
    }
}
