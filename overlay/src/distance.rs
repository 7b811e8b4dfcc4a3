//! Kademlia's notion of which nodes a key belongs to: XOR distance between
//! the SHA-256 of the key and of each peer id. The DHT stores a record on the
//! nodes nearest its key; placement uses the same order by default, so where
//! a topic's record lives and where the topic lives start out the same.

use libp2p::PeerId;
use libp2p::kad::KBucketKey;

/// Sorts `peers` by distance from `key`, nearest first.
pub fn sort_nearest(key: &[u8], peers: &mut [PeerId]) {
    let target = KBucketKey::new(key.to_vec());
    peers.sort_by_cached_key(|p| KBucketKey::from(*p).distance(&target));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_depends_on_the_key_and_is_stable() {
        let peers: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
        let mut a = peers.clone();
        let mut b = peers.clone();
        sort_nearest(b"topic/a", &mut a);
        sort_nearest(b"topic/a", &mut b);
        assert_eq!(a, b);
        let firsts: std::collections::HashSet<PeerId> = (0..50)
            .map(|i| {
                let mut p = peers.clone();
                sort_nearest(format!("topic/{i}").as_bytes(), &mut p);
                p[0]
            })
            .collect();
        assert!(firsts.len() > 3, "different keys pick different nodes");
    }
}
