//! Node identifiers and the XOR metric.
//!
//! Every other part of the engine (routing table, lookups, replication targets) compares ids by
//! XOR distance, so the contract's rules live here once: how an arbitrary binary becomes a 256-bit
//! id, how distance is ordered, and which k-bucket an id falls into.

use std::cmp::Ordering;

use sha2::{Digest, Sha256};

/// Length of a node id in bytes (256 bits).
pub const ID_LEN: usize = 32;

/// Number of bits in a node id.
pub const ID_BITS: usize = ID_LEN * 8;

/// A normalised 256-bit node id, ordered byte-wise.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct NodeId(pub [u8; ID_LEN]);

/// XOR distance between two ids: a big-endian unsigned number, so the byte-wise order is the
/// numeric order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Distance(pub [u8; ID_LEN]);

/// 32 bytes as two big-endian `u128` halves, which order exactly as the bytes do. Ids and
/// distances are compared this way rather than by the derived order, which calls `memcmp`: their
/// comparisons (routing table searches, sorts by distance) took a quarter of a simulation's time.
pub(crate) fn halves(bytes: &[u8; ID_LEN]) -> (u128, u128) {
    let mut hi = [0u8; 16];
    let mut lo = [0u8; 16];
    hi.copy_from_slice(&bytes[..16]);
    lo.copy_from_slice(&bytes[16..]);
    (u128::from_be_bytes(hi), u128::from_be_bytes(lo))
}
// The slices above are exactly the two halves of an id: checked at compile time.
const _: () = assert!(ID_LEN == 32);

/// Orders 32-byte newtypes by their [`halves`].
macro_rules! ordered_by_halves {
    ($($t:ty),*) => {$(
        impl Ord for $t {
            fn cmp(&self, other: &Self) -> Ordering {
                halves(&self.0).cmp(&halves(&other.0))
            }
        }

        impl PartialOrd for $t {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }
    )*};
}

ordered_by_halves!(NodeId, Distance);

impl NodeId {
    /// The contract's normalisation: 32 bytes are taken as they are; exactly 64 ASCII hex chars
    /// (either case) are decoded to their 32 bytes; anything else (other length, or 64 chars that
    /// are not hex) is SHA-256 hashed.
    pub fn normalize(raw: &[u8]) -> NodeId {
        if let Ok(bytes) = <[u8; ID_LEN]>::try_from(raw) {
            return NodeId(bytes);
        }
        if let Some(id) = decode_hex(raw) {
            return id;
        }
        NodeId(Sha256::digest(raw).into())
    }

    /// Bytewise XOR.
    pub fn distance(&self, other: &NodeId) -> Distance {
        let mut d = [0u8; ID_LEN];
        for ((out, a), b) in d.iter_mut().zip(&self.0).zip(&other.0) {
            *out = a ^ b;
        }
        Distance(d)
    }

    /// Leading zero bits of the distance, `0..=256`: 0 is the farthest half of the id space,
    /// 255 the nearest, 256 the same id.
    pub fn bucket_index(&self, other: &NodeId) -> u32 {
        self.distance(other).leading_zeros()
    }

    /// Bit `i`, 0 being the most significant. Bits past the end read as `false`.
    pub fn bit(&self, i: usize) -> bool {
        self.0
            .get(i / 8)
            .is_some_and(|byte| byte >> (7 - i % 8) & 1 == 1)
    }
}

impl Distance {
    /// Number of leading zero bits, 256 for the zero distance.
    pub fn leading_zeros(&self) -> u32 {
        let mut zeros = 0;
        for byte in self.0 {
            if byte != 0 {
                return zeros + byte.leading_zeros();
            }
            zeros += 8;
        }
        zeros
    }
}

/// Decodes exactly 64 hex chars (either case); `None` for any other input.
fn decode_hex(raw: &[u8]) -> Option<NodeId> {
    if raw.len() != 2 * ID_LEN {
        return None;
    }
    crate::record::unhex(raw)?.try_into().ok().map(NodeId)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(first: u8) -> NodeId {
        let mut b = [0u8; ID_LEN];
        b[0] = first;
        NodeId(b)
    }

    #[test]
    fn thirty_two_bytes_are_kept() {
        let raw: Vec<u8> = (0..32).collect();
        assert_eq!(NodeId::normalize(&raw).0.to_vec(), raw);
    }

    #[test]
    fn hex_is_decoded_in_either_case() {
        let lower = "00ff10abcdef0123456789abcdef0123456789abcdef0123456789abcdef0a0b";
        let id = NodeId::normalize(lower.as_bytes());
        assert_eq!(&id.0[..4], &[0x00, 0xff, 0x10, 0xab]);
        assert_eq!(id.0[31], 0x0b);
        assert_eq!(NodeId::normalize(lower.to_uppercase().as_bytes()), id);
    }

    #[test]
    fn other_inputs_are_sha256_hashed() {
        let abc = NodeId::normalize(b"abc");
        assert_eq!(
            &abc.0[..8],
            &[0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea]
        );
        assert_eq!(abc.0[31], 0xad);
        // 64 chars that are not all hex are hashed, not decoded.
        let not_hex = [b'g'; 64];
        assert_eq!(
            NodeId::normalize(&not_hex),
            NodeId(Sha256::digest(not_hex).into())
        );
        assert_eq!(NodeId::normalize(b""), NodeId(Sha256::digest(b"").into()));
    }

    #[test]
    fn leading_zeros_and_bucket_index() {
        assert_eq!(Distance([0; ID_LEN]).leading_zeros(), 256);
        assert_eq!(id(0x80).distance(&id(0)).leading_zeros(), 0);
        assert_eq!(id(0x01).distance(&id(0)).leading_zeros(), 7);
        let mut last = [0u8; ID_LEN];
        last[31] = 1;
        assert_eq!(Distance(last).leading_zeros(), 255);
        assert_eq!(id(0x40).bucket_index(&id(0x40)), 256);
        assert_eq!(id(0x40).bucket_index(&id(0x60)), 2);
    }

    #[test]
    fn ids_and_distances_order_as_their_bytes() {
        // Ids differing in each byte position, both ways, and equal ones.
        let mut ids = vec![NodeId([0; ID_LEN]), NodeId([0xff; ID_LEN])];
        for at in 0..ID_LEN {
            for byte in [0x01, 0x80, 0xff] {
                let mut b = [0x5a; ID_LEN];
                b[at] = byte;
                ids.push(NodeId(b));
            }
        }
        for a in &ids {
            for b in &ids {
                assert_eq!(a.cmp(b), a.0.cmp(&b.0), "{a:?} against {b:?}");
                assert_eq!(Distance(a.0).cmp(&Distance(b.0)), a.0.cmp(&b.0));
            }
        }
    }

    #[test]
    fn distance_orders_numerically() {
        let target = id(0);
        assert!(target.distance(&id(1)) < target.distance(&id(2)));
        assert!(target.distance(&id(0x7f)) < target.distance(&id(0x80)));
        assert_eq!(id(0xf0).distance(&id(0x0f)), id(0xff).distance(&id(0)));
    }

    #[test]
    fn bits_are_msb_first() {
        let x = id(0b1010_0000);
        assert!(x.bit(0));
        assert!(!x.bit(1));
        assert!(x.bit(2));
        assert!(!x.bit(255));
        assert!(!x.bit(256));
    }
}
