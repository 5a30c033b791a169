//! The node's random choices (bucket refresh targets), from a seed the host gives, so that a
//! simulated network replays exactly.

use crate::id::{NodeId, ID_BITS, ID_LEN};

/// SplitMix64: small, fast and good enough for choosing lookup targets.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A random id whose XOR distance to `local` has exactly `index` leading zero bits (an id
    /// that falls in bucket `index`).
    pub(crate) fn id_in_bucket(&mut self, local: &NodeId, index: usize) -> NodeId {
        let mut random = [0u8; ID_LEN];
        for chunk in random.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
        }
        let mut id = local.0;
        for bit in index.min(ID_BITS - 1)..ID_BITS {
            let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
            // The first bit from `index` on differs; the rest are random.
            if bit == index || random[byte] & mask != 0 {
                id[byte] ^= mask;
            }
        }
        NodeId(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_land_in_the_asked_bucket_and_replay_from_the_seed() {
        let local = NodeId([0x5a; ID_LEN]);
        let mut rng = Rng::new(7);
        for index in [0, 1, 7, 8, 100, 255] {
            let id = rng.id_in_bucket(&local, index);
            assert_eq!(local.bucket_index(&id), index as u32);
        }
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        assert_eq!(a.id_in_bucket(&local, 3), b.id_in_bucket(&local, 3));
        assert_ne!(a.next_u64(), Rng::new(43).next_u64());
    }
}
