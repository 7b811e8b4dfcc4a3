//! The simulator's random numbers: xoshiro256** seeded through splitmix64,
//! written out here so that a seed replays the same run whatever version of
//! a random-number crate the build picks. Each purpose gets its own stream
//! ([`SimRng::fork`]), so that drawing more for one purpose (a longer
//! workload, say) does not shift the draws of another (the network's).

/// One stream of random numbers.
#[derive(Debug, Clone)]
pub struct SimRng {
    s: [u64; 4],
}

/// splitmix64: one step of state `x`, and its output.
fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SimRng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        Self {
            s: [
                splitmix(&mut x),
                splitmix(&mut x),
                splitmix(&mut x),
                splitmix(&mut x),
            ],
        }
    }

    /// An independent stream for `purpose`, derived from this stream's
    /// state (not its position: forking draws nothing).
    pub fn fork(&self, purpose: &str) -> Self {
        let mut h = crate::history::Fnv::default();
        h.write(purpose.as_bytes());
        Self::new(self.s[0] ^ self.s[2].rotate_left(17) ^ h.finish())
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A number in `lo..hi` (`lo` if the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// One of `items`, if any.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.range(0, items.len() as u64) as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_stream_and_forks_are_independent() {
        let take = |mut r: SimRng| (0..8).map(|_| r.next_u64()).collect::<Vec<_>>();
        assert_eq!(take(SimRng::new(1)), take(SimRng::new(1)));
        assert_ne!(take(SimRng::new(1)), take(SimRng::new(2)));
        let root = SimRng::new(1);
        assert_eq!(take(root.fork("net")), take(root.fork("net")));
        assert_ne!(take(root.fork("net")), take(root.fork("disk")));
        // Drawing from one fork leaves the other's draws unchanged.
        let mut a = root.fork("a");
        a.next_u64();
        assert_eq!(take(root.fork("b")), take(SimRng::new(1).fork("b")));
    }

    #[test]
    fn ranges_and_chances_stay_in_bounds() {
        let mut r = SimRng::new(3);
        for _ in 0..1000 {
            let v = r.range(10, 20);
            assert!((10..20).contains(&v));
        }
        assert_eq!(r.range(5, 5), 5);
        assert!(!(0..1000).any(|_| r.chance(0.0)));
        assert!((0..1000).all(|_| r.chance(1.0)));
        let hits = (0..10_000).filter(|_| r.chance(0.1)).count();
        assert!((800..1200).contains(&hits), "{hits} of 10,000 at p = 0.1");
    }
}
