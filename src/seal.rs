//! Publisher signatures on provider records and removals.
//!
//! A provider record says "service S is at endpoint E"; whoever can write or remove it can send
//! every caller of S elsewhere. So every record that crosses the wire carries a [`Seal`]: its
//! publisher's Ed25519 public key, a sequence number that only grows for the publisher, the ttl,
//! and the publisher's signature over a canonical byte string naming all of that, the DHT key
//! and the provider's term bytes exactly as stored. A removal carries the same kind of signature
//! over its own byte string. Replicas verify before they store, hand off or remove; a node that
//! runs a lookup verifies what replicas return. Nothing outside the signed bytes changes what a
//! reader sees.
//!
//! The signed bytes (all integers big-endian; `docs/protocol.md` has a worked example):
//!
//! ```text
//! provider: "macula-dht/2 provider\0" ‖ u32 key_len ‖ key ‖ publisher (32) ‖ u64 seq ‖ u32 ttl
//!           ‖ u32 term_len ‖ term
//! removal:  "macula-dht/2 remove\0"   ‖ u32 key_len ‖ key ‖ publisher (32) ‖ u64 seq
//!           ‖ u32 node_id_len ‖ node_id
//! ```
//!
//! The domain tags keep a signature of one kind from passing for the other, or for anything else
//! the key signs (its TLS handshakes sign with other tags). A sequence is compared only with
//! other sequences of the same publisher, never with a replica's clock.

use std::collections::VecDeque;

use hashbrown::HashSet;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use sha2::{Digest, Sha256};

use crate::id::NodeId;

/// Bytes of an Ed25519 public key (a publisher).
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// What a seal adds to a record: publisher, sequence, ttl, signature.
pub const SEAL_LEN: usize = PUBLIC_KEY_LEN + 8 + 4 + SIGNATURE_LEN;

/// Domain tag of a provider record's signed bytes.
pub const PROVIDER_DOMAIN: &[u8] = b"macula-dht/2 provider\0";
/// Domain tag of a removal's signed bytes.
pub const REMOVAL_DOMAIN: &[u8] = b"macula-dht/2 remove\0";

/// A publisher: an Ed25519 public key.
pub type Publisher = [u8; PUBLIC_KEY_LEN];

/// The publisher's signature on one provider record, with what it covers besides the key and
/// the term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Seal {
    /// The publisher's public key.
    pub publisher: Publisher,
    /// Grows with every record or removal the publisher signs (milliseconds since the Unix
    /// epoch at signing, or one more than the last if the clock has not moved on).
    pub seq: u64,
    /// Seconds the record lives on a replica (clamped by the replica's `max_ttl`).
    pub ttl_secs: u32,
    /// Ed25519 signature over [`provider_message`].
    pub sig: [u8; SIGNATURE_LEN],
}

/// A removal of one provider slot, signed by its publisher.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Removal {
    /// The publisher's public key.
    pub publisher: Publisher,
    /// Newer than the record it removes (see [`Seal::seq`]).
    pub seq: u64,
    /// Ed25519 signature over [`removal_message`].
    pub sig: [u8; SIGNATURE_LEN],
}

/// Why a seal or a removal was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The signature does not verify under the publisher's key.
    #[error("signature does not verify")]
    Forged,
    /// The provider's `node_id` is a node id (32 bytes) that is not the publisher's.
    #[error("the provider's node_id belongs to another node than the publisher")]
    WrongPublisher,
}

impl Seal {
    /// The seal as bytes, in the order the store keeps them.
    pub fn to_bytes(&self) -> [u8; SEAL_LEN] {
        let mut out = [0; SEAL_LEN];
        out[..32].copy_from_slice(&self.publisher);
        out[32..40].copy_from_slice(&self.seq.to_be_bytes());
        out[40..44].copy_from_slice(&self.ttl_secs.to_be_bytes());
        out[44..].copy_from_slice(&self.sig);
        out
    }

    /// A seal from [`Seal::to_bytes`].
    pub fn from_bytes(b: &[u8; SEAL_LEN]) -> Seal {
        let mut publisher = [0; 32];
        publisher.copy_from_slice(&b[..32]);
        let mut seq = [0; 8];
        seq.copy_from_slice(&b[32..40]);
        let mut ttl = [0; 4];
        ttl.copy_from_slice(&b[40..44]);
        let mut sig = [0; SIGNATURE_LEN];
        sig.copy_from_slice(&b[44..]);
        Seal {
            publisher,
            seq: u64::from_be_bytes(seq),
            ttl_secs: u32::from_be_bytes(ttl),
            sig,
        }
    }
}

/// The bytes a publisher signs for a provider record.
pub fn provider_message(
    key: &[u8],
    publisher: &Publisher,
    seq: u64,
    ttl: u32,
    term: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(PROVIDER_DOMAIN.len() + 52 + key.len() + term.len());
    m.extend_from_slice(PROVIDER_DOMAIN);
    put_bytes(&mut m, key);
    m.extend_from_slice(publisher);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&ttl.to_be_bytes());
    put_bytes(&mut m, term);
    m
}

/// The bytes a publisher signs to remove its provider `node_id` under `key`.
pub fn removal_message(key: &[u8], publisher: &Publisher, seq: u64, node_id: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(REMOVAL_DOMAIN.len() + 48 + key.len() + node_id.len());
    m.extend_from_slice(REMOVAL_DOMAIN);
    put_bytes(&mut m, key);
    m.extend_from_slice(publisher);
    m.extend_from_slice(&seq.to_be_bytes());
    put_bytes(&mut m, node_id);
    m
}

/// A length-prefixed field. Keys, terms and node ids are far below 4 GiB (frames are capped).
fn put_bytes(m: &mut Vec<u8>, bytes: &[u8]) {
    m.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    m.extend_from_slice(bytes);
}

/// The node id of a publisher: SHA-256 of its public key (the rule node ids follow).
pub fn node_id_of(publisher: &Publisher) -> NodeId {
    NodeId(Sha256::digest(publisher).into())
}

/// A provider `node_id` that is a node id (32 bytes) must be its publisher's; any other
/// `node_id` is free-form and may be used by any publisher (each has its own slot).
pub fn may_publish(publisher: &Publisher, node_id: &[u8]) -> bool {
    node_id.len() != crate::id::ID_LEN || node_id == node_id_of(publisher).0
}

/// A node's signing key.
#[derive(Debug)]
pub struct Keypair {
    key: Ed25519KeyPair,
    public: Publisher,
}

/// The key material was not an Ed25519 key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an Ed25519 key: {0}")]
pub struct KeyError(String);

impl Keypair {
    /// From a PKCS#8 document (v1 or v2), as `rust-node --identity` files hold it.
    pub fn from_pkcs8(der: &[u8]) -> Result<Keypair, KeyError> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(Keypair::from_ring)
            .map_err(|e| KeyError(e.to_string()))
    }

    /// From a 32-byte seed: the same seed always gives the same key (for simulations and
    /// tests, whose keys must replay).
    pub fn from_seed(seed: &[u8; 32]) -> Keypair {
        // A 32-byte seed is always a valid Ed25519 private key.
        match Ed25519KeyPair::from_seed_unchecked(seed) {
            Ok(key) => Keypair::from_ring(key),
            Err(_) => unreachable!("any 32-byte seed is an Ed25519 key"),
        }
    }

    fn from_ring(key: Ed25519KeyPair) -> Keypair {
        let mut public = [0; PUBLIC_KEY_LEN];
        public.copy_from_slice(key.public_key().as_ref());
        Keypair { key, public }
    }

    /// The public key: the publisher of what this key signs.
    pub fn public(&self) -> &Publisher {
        &self.public
    }

    /// The node id that goes with this key.
    pub fn node_id(&self) -> NodeId {
        node_id_of(&self.public)
    }

    /// Signs a provider record.
    pub fn seal(&self, key: &[u8], term: &[u8], seq: u64, ttl_secs: u32) -> Seal {
        let message = provider_message(key, &self.public, seq, ttl_secs, term);
        Seal {
            publisher: self.public,
            seq,
            ttl_secs,
            sig: self.sign(&message),
        }
    }

    /// Signs the removal of this publisher's provider `node_id` under `key`.
    pub fn removal(&self, key: &[u8], node_id: &[u8], seq: u64) -> Removal {
        let message = removal_message(key, &self.public, seq, node_id);
        Removal {
            publisher: self.public,
            seq,
            sig: self.sign(&message),
        }
    }

    fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut sig = [0; SIGNATURE_LEN];
        sig.copy_from_slice(self.key.sign(message).as_ref());
        sig
    }
}

/// Checks an Ed25519 signature.
fn verify(publisher: &Publisher, message: &[u8], sig: &[u8; SIGNATURE_LEN]) -> bool {
    signature::UnparsedPublicKey::new(&signature::ED25519, publisher)
        .verify(message, sig)
        .is_ok()
}

/// Checks seals and removals, remembering the last seals that verified so that a record seen
/// again (a repeated lookup of an unchanged record, a hand-off of a record already held) costs a
/// hash instead of a signature check. Bounded: the oldest remembered seal is forgotten first.
#[derive(Debug)]
pub struct Verifier {
    known: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
    capacity: usize,
}

impl Verifier {
    /// A verifier remembering up to `capacity` seals.
    pub fn new(capacity: usize) -> Verifier {
        Verifier {
            known: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Whether `seal` is its publisher's signature on `term` under `key`, and the publisher may
    /// publish the provider `node_id` ([`may_publish`]).
    pub fn check_seal(
        &mut self,
        key: &[u8],
        term: &[u8],
        node_id: Option<&[u8]>,
        seal: &Seal,
    ) -> Result<(), SealError> {
        if !node_id.is_none_or(|id| may_publish(&seal.publisher, id)) {
            return Err(SealError::WrongPublisher);
        }
        let message = provider_message(key, &seal.publisher, seal.seq, seal.ttl_secs, term);
        self.check(&message, &seal.publisher, &seal.sig)
    }

    /// Whether `removal` is its publisher's signature on the removal of `node_id` under `key`,
    /// and the publisher may publish that `node_id`.
    pub fn check_removal(
        &mut self,
        key: &[u8],
        node_id: &[u8],
        removal: &Removal,
    ) -> Result<(), SealError> {
        if !may_publish(&removal.publisher, node_id) {
            return Err(SealError::WrongPublisher);
        }
        let message = removal_message(key, &removal.publisher, removal.seq, node_id);
        self.check(&message, &removal.publisher, &removal.sig)
    }

    fn check(
        &mut self,
        message: &[u8],
        publisher: &Publisher,
        sig: &[u8; SIGNATURE_LEN],
    ) -> Result<(), SealError> {
        // The message names the publisher; the signature makes the pair unique.
        let mut hasher = Sha256::new();
        hasher.update(message);
        hasher.update(sig);
        let digest: [u8; 32] = hasher.finalize().into();
        if self.known.contains(&digest) {
            return Ok(());
        }
        if !verify(publisher, message, sig) {
            return Err(SealError::Forged);
        }
        if self.capacity > 0 {
            if self.order.len() == self.capacity {
                if let Some(oldest) = self.order.pop_front() {
                    self.known.remove(&oldest);
                }
            }
            self.known.insert(digest);
            self.order.push_back(digest);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair(n: u8) -> Keypair {
        Keypair::from_seed(&[n; 32])
    }

    #[test]
    fn seals_verify_and_any_change_breaks_them() {
        let k = keypair(1);
        let seal = k.seal(b"key", b"term", 7, 60);
        let mut v = Verifier::new(16);
        assert_eq!(v.check_seal(b"key", b"term", Some(b"free"), &seal), Ok(()));
        assert_eq!(v.check_seal(b"key", b"term", None, &seal), Ok(()), "cached");
        for (key, term) in [(&b"kex"[..], &b"term"[..]), (b"key", b"tern")] {
            assert_eq!(v.check_seal(key, term, None, &seal), Err(SealError::Forged));
        }
        let changed = [
            Seal { seq: 8, ..seal },
            Seal {
                ttl_secs: 61,
                ..seal
            },
            Seal {
                publisher: *keypair(2).public(),
                ..seal
            },
        ];
        for bad in changed {
            assert_eq!(
                Verifier::new(0).check_seal(b"key", b"term", None, &bad),
                Err(SealError::Forged)
            );
        }
        assert_eq!(Seal::from_bytes(&seal.to_bytes()), seal);
    }

    #[test]
    fn a_node_id_names_its_own_publisher_only() {
        let k = keypair(3);
        let own = k.node_id().0;
        let other = keypair(4).node_id().0;
        let seal = k.seal(b"key", b"term", 1, 60);
        let mut v = Verifier::new(16);
        assert_eq!(v.check_seal(b"key", b"term", Some(&own), &seal), Ok(()));
        assert_eq!(
            v.check_seal(b"key", b"term", Some(&other), &seal),
            Err(SealError::WrongPublisher)
        );
        let removal = k.removal(b"key", &own, 2);
        assert_eq!(v.check_removal(b"key", &own, &removal), Ok(()));
        assert_eq!(
            v.check_removal(b"key", &other, &k.removal(b"key", &other, 2)),
            Err(SealError::WrongPublisher)
        );
        assert_eq!(
            v.check_removal(b"key", b"node-1", &removal),
            Err(SealError::Forged),
            "a removal names its node_id"
        );
    }

    #[test]
    fn a_removal_signature_is_not_a_record_signature() {
        let k = keypair(5);
        let removal = k.removal(b"key", b"id", 9);
        let as_seal = Seal {
            publisher: removal.publisher,
            seq: 9,
            ttl_secs: 0,
            sig: removal.sig,
        };
        assert_eq!(
            Verifier::new(0).check_seal(b"key", b"id", None, &as_seal),
            Err(SealError::Forged)
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let k = keypair(6);
        let mut v = Verifier::new(2);
        for seq in 0..5 {
            let seal = k.seal(b"key", b"t", seq, 1);
            v.check_seal(b"key", b"t", None, &seal).unwrap();
        }
        assert_eq!((v.known.len(), v.order.len()), (2, 2));
    }
}
