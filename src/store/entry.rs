//! The packed layout of one key and all its provider records, in one heap allocation.
//!
//! Memory per stored provider has a budget (at most 300 bytes all-in for a ~158-byte term), which
//! a map of boxed keys to vectors of boxed records cannot meet: every allocation costs a malloc
//! header and rounding, and every pointer costs 8 bytes. So a key and its records share a single
//! `Box<[u8]>`:
//!
//! ```text
//! entry:  [scheduled: u64][key_len: u16][key][record]*
//! record: [expires_at: u64][term_len: u24][node_id_at: u24][node_id_len: u8][sealed: u8]
//!         [seal: 108 bytes, when sealed][term]
//! ```
//!
//! Integers are little-endian and read with `from_le_bytes` (no casts, no unsafe). `scheduled` is
//! when the key next needs an expiry pass (see `expiry.rs`); it is never later than the earliest
//! `expires_at`. `node_id_at` is the offset of the `node_id` bytes within `term`, 0 meaning "no
//! node_id" (a term starts with its map header, so a node id never starts at offset 0). Records
//! are kept in the contract's order. A refresh with a term of the same length is rewritten in
//! place; any other change rebuilds the allocation at its exact size.
//!
//! A record that came from the network carries its publisher's seal (publisher key, sequence,
//! ttl, signature: `crate::seal`), kept so that it can be handed on untouched. A slot is
//! (`node_id`, publisher): two publishers using one free-form `node_id` hold two records, and a
//! local record without a seal is a slot of its own.

use std::ops::Range;

use crate::provider::ProviderRecord;
use crate::seal::{Publisher, Seal, SEAL_LEN};

/// Longest key the layout can hold.
pub(super) const MAX_KEY: usize = u16::MAX as usize;
/// Longest term the layout can hold.
pub(super) const MAX_TERM: usize = (1 << 24) - 1;

const ENTRY_HEADER: usize = 8 + 2;
const RECORD_HEADER: usize = 8 + 3 + 3 + 1 + 1;

/// A provider ready to be written: its encoded record header, its seal and its term.
pub(super) struct NewRecord<'a> {
    header: [u8; RECORD_HEADER],
    seal: Option<[u8; SEAL_LEN]>,
    term: &'a [u8],
    node_id: Option<&'a [u8]>,
    publisher: Option<Publisher>,
    seq: u64,
    expires_at: u64,
}

/// A stored record, borrowed from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// When the record expires, in ms (the store's `now_ms` clock).
    pub expires_at: u64,
    /// The provider's term bytes, without version byte.
    pub term: &'a [u8],
    /// The `node_id` binary inside `term`, if the provider has one.
    pub node_id: Option<&'a [u8]>,
    /// The publisher's seal, for a record from the network.
    seal: Option<&'a [u8; SEAL_LEN]>,
}

/// What [`KeyEntry::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Upsert {
    /// The record of the same slot was replaced in place.
    Replaced {
        /// Stored length ([`Record::stored_len`]) of the record replaced, in bytes.
        old_len: usize,
    },
    /// The record was added first.
    Inserted,
    /// The key already holds the maximum number of records; nothing changed.
    Full,
    /// The slot holds a record of its publisher with a sequence at least as high; nothing
    /// changed.
    Stale {
        /// The sequence held.
        held: u64,
    },
}

/// One key and its records; see the module documentation for the layout.
#[derive(Debug)]
pub(super) struct KeyEntry(Box<[u8]>);

impl<'a> NewRecord<'a> {
    /// `None` when the term is longer than [`MAX_TERM`].
    pub fn new(
        provider: &ProviderRecord<'a>,
        expires_at: u64,
        seal: Option<&Seal>,
    ) -> Option<Self> {
        let term = provider.term();
        let (node_id_at, node_id_len) = match provider.node_id_range() {
            Some(range) => (u24(range.start)?, u8::try_from(range.len()).ok()?),
            None => ([0; 3], 0),
        };
        let mut header = [0; RECORD_HEADER];
        header[..8].copy_from_slice(&expires_at.to_le_bytes());
        header[8..11].copy_from_slice(&u24(term.len())?);
        header[11..14].copy_from_slice(&node_id_at);
        header[14] = node_id_len;
        header[15] = u8::from(seal.is_some());
        Some(NewRecord {
            header,
            seal: seal.map(Seal::to_bytes),
            term,
            node_id: provider.node_id(),
            publisher: seal.map(|s| s.publisher),
            seq: seal.map_or(0, |s| s.seq),
            expires_at,
        })
    }

    /// Bytes it takes in the store's count: its term, and its seal if it has one.
    pub fn stored_len(&self) -> usize {
        self.term.len() + self.seal.map_or(0, |s| s.len())
    }

    /// Its publisher, for a sealed record.
    pub fn publisher(&self) -> Option<&Publisher> {
        self.publisher.as_ref()
    }

    /// Its `node_id`, if the provider has one.
    pub fn node_id(&self) -> Option<&'a [u8]> {
        self.node_id
    }

    /// When the record will expire, in ms.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    fn encoded_len(&self) -> usize {
        RECORD_HEADER + self.stored_len()
    }

    fn append_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header);
        if let Some(seal) = &self.seal {
            out.extend_from_slice(seal);
        }
        out.extend_from_slice(self.term);
    }

    /// Overwrites `dst` when it has exactly this record's encoded length.
    fn overwrite(&self, dst: &mut [u8]) -> bool {
        if dst.len() != self.encoded_len() {
            return false;
        }
        let (header, rest) = dst.split_at_mut(RECORD_HEADER);
        header.copy_from_slice(&self.header);
        let term = match &self.seal {
            Some(seal) => {
                let (sealed, term) = rest.split_at_mut(SEAL_LEN);
                sealed.copy_from_slice(seal);
                term
            }
            None => rest,
        };
        term.copy_from_slice(self.term);
        true
    }

    /// Whether `stored` is the record of this record's slot.
    fn same_slot(&self, stored: &Record<'_>) -> bool {
        self.node_id.is_some_and(|id| same_id(stored.node_id, id))
            && stored.publisher() == self.publisher.as_ref()
    }
}

impl<'a> Record<'a> {
    /// The publisher's seal, for a record from the network.
    pub fn seal(&self) -> Option<Seal> {
        self.seal.map(Seal::from_bytes)
    }

    /// The publisher, for a sealed record.
    pub fn publisher(&self) -> Option<&'a Publisher> {
        self.seal.and_then(|s| s.first_chunk::<32>())
    }

    /// Bytes it takes in the store's count: its term, and its seal if it has one.
    pub fn stored_len(&self) -> usize {
        self.term.len() + self.seal.map_or(0, |s| s.len())
    }
}

impl KeyEntry {
    /// A new entry holding one record, scheduled at that record's expiry. `None` when the key is
    /// longer than [`MAX_KEY`].
    pub fn new(key: &[u8], record: &NewRecord) -> Option<Self> {
        let key_len = u16::try_from(key.len()).ok()?;
        let mut buf = Vec::with_capacity(ENTRY_HEADER + key.len() + record.encoded_len());
        buf.extend_from_slice(&record.expires_at.to_le_bytes());
        buf.extend_from_slice(&key_len.to_le_bytes());
        buf.extend_from_slice(key);
        record.append_to(&mut buf);
        Some(KeyEntry(buf.into_boxed_slice()))
    }

    /// The DHT key.
    pub fn key(&self) -> &[u8] {
        self.0
            .get(ENTRY_HEADER..self.records_start())
            .unwrap_or_default()
    }

    /// When the key next needs an expiry pass, in ms; never later than its earliest expiry.
    pub fn scheduled(&self) -> u64 {
        // An entry always starts with its header; 0 would only mean "due now".
        self.0.first_chunk().map_or(0, |b| u64::from_le_bytes(*b))
    }

    /// Sets the next expiry pass; the caller pushes the matching entry on the expiry index.
    pub fn set_scheduled(&mut self, at: u64) {
        if let Some(b) = self.0.first_chunk_mut() {
            *b = at.to_le_bytes();
        }
    }

    /// Whether no record is left (the store then removes the key).
    pub fn is_empty(&self) -> bool {
        self.0.len() <= self.records_start()
    }

    /// The records in stored order, expired ones included.
    pub fn records(&self) -> impl Iterator<Item = Record<'_>> + '_ {
        self.slots().map(|slot| slot.record)
    }

    /// The record of the same slot (node_id and publisher) is replaced in place (keeping its
    /// position), unless both are sealed and the stored one is newer, or as new but another
    /// record (the very same record again, from another replica, is taken: its expiry is
    /// refreshed); otherwise the record goes first, unless the key already holds `max_records`.
    pub fn upsert(&mut self, record: &NewRecord, max_records: usize) -> Upsert {
        let mut count = 0;
        let mut same = None;
        for slot in self.slots() {
            if record.same_slot(&slot.record) {
                let stale = slot.record.seal.and_then(|held| {
                    let held_seq = Seal::from_bytes(held).seq;
                    let newer = record.seq > held_seq;
                    let again = record.seq == held_seq && record.seal.as_ref() == Some(held);
                    (!newer && !again).then_some(held_seq)
                });
                same = Some((slot.span, slot.record.stored_len(), stale));
                break;
            }
            count += 1;
        }
        if let Some((span, old_len, stale)) = same {
            if let Some(held) = stale {
                return Upsert::Stale { held };
            }
            self.splice(span, Some(record));
            return Upsert::Replaced { old_len };
        }
        if count >= max_records {
            return Upsert::Full;
        }
        let first = self.records_start();
        self.splice(first..first, Some(record));
        Upsert::Inserted
    }

    /// The record of the slot (`node_id`, `publisher`: `None` for the unsealed one).
    pub fn slot(&self, node_id: &[u8], publisher: Option<&Publisher>) -> Option<Record<'_>> {
        self.records()
            .find(|r| same_id(r.node_id, node_id) && r.publisher() == publisher)
    }

    /// Removes the records `which` picks, telling `gone` about each; returns how many.
    pub fn remove_where(
        &mut self,
        which: impl Fn(&Record<'_>) -> bool,
        gone: &mut dyn FnMut(&Record<'_>),
    ) -> usize {
        let mut removed = 0;
        let mut kept_len = self.records_start();
        for slot in self.slots() {
            if which(&slot.record) {
                gone(&slot.record);
                removed += 1;
            } else {
                kept_len += slot.span.len();
            }
        }
        if removed > 0 {
            let mut buf = Vec::with_capacity(kept_len);
            buf.extend_from_slice(self.0.get(..self.records_start()).unwrap_or_default());
            for slot in self.slots().filter(|slot| !which(&slot.record)) {
                buf.extend_from_slice(self.0.get(slot.span).unwrap_or_default());
            }
            self.0 = buf.into_boxed_slice();
        }
        removed
    }

    /// Removes every record with `expires_at <= now`, telling `gone` about each; returns the
    /// earliest expiry left (`None` when the entry is now empty).
    pub fn purge_expired(&mut self, now: u64, gone: &mut dyn FnMut(&Record<'_>)) -> Option<u64> {
        self.remove_where(|r| r.expires_at <= now, gone);
        self.records().map(|r| r.expires_at).min()
    }

    fn records_start(&self) -> usize {
        let key_len = self
            .0
            .get(8..ENTRY_HEADER)
            .and_then(|b| b.first_chunk::<2>());
        ENTRY_HEADER + key_len.map_or(0, |b| u16::from_le_bytes(*b).into())
    }

    fn slots(&self) -> Slots<'_> {
        Slots {
            buf: &self.0,
            pos: self.records_start(),
        }
    }

    /// Replaces the bytes at `span` (a record, or an empty range between records) with `record`
    /// (or with nothing), in place when the length does not change.
    fn splice(&mut self, span: Range<usize>, record: Option<&NewRecord>) {
        if let (Some(record), Some(dst)) = (record, self.0.get_mut(span.clone())) {
            if record.overwrite(dst) {
                return;
            }
        }
        // Spans come from walking this same entry just before, so both halves exist.
        let (Some(before), Some(after)) = (self.0.get(..span.start), self.0.get(span.end..)) else {
            return;
        };
        let added = record.map_or(0, NewRecord::encoded_len);
        let mut buf = Vec::with_capacity(before.len() + added + after.len());
        buf.extend_from_slice(before);
        if let Some(record) = record {
            record.append_to(&mut buf);
        }
        buf.extend_from_slice(after);
        self.0 = buf.into_boxed_slice();
    }
}

/// A record with where it lies in its entry.
struct Slot<'a> {
    span: Range<usize>,
    record: Record<'a>,
}

/// Walks the records of an entry; stops at the end (or at anything inconsistent, which the
/// writers above never produce).
struct Slots<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Slots<'a> {
    type Item = Slot<'a>;

    fn next(&mut self) -> Option<Slot<'a>> {
        let start = self.pos;
        let (header, rest) = self
            .buf
            .get(start..)?
            .split_first_chunk::<RECORD_HEADER>()?;
        let [e0, e1, e2, e3, e4, e5, e6, e7, l0, l1, l2, a0, a1, a2, node_id_len, sealed] = *header;
        let (seal, rest) = match sealed {
            0 => (None, rest),
            _ => {
                let (seal, rest) = rest.split_first_chunk::<SEAL_LEN>()?;
                (Some(seal), rest)
            }
        };
        let term = rest.get(..read_u24([l0, l1, l2]))?;
        let node_id = match read_u24([a0, a1, a2]) {
            0 => None,
            at => Some(term.get(at..at + usize::from(node_id_len))?),
        };
        let record = Record {
            expires_at: u64::from_le_bytes([e0, e1, e2, e3, e4, e5, e6, e7]),
            term,
            node_id,
            seal,
        };
        self.pos = start + RECORD_HEADER + record.stored_len();
        Some(Slot {
            span: start..self.pos,
            record,
        })
    }
}

/// Node ids are mostly random bytes: a first-byte check skips nearly every comparison call.
fn same_id(stored: Option<&[u8]>, id: &[u8]) -> bool {
    stored.is_some_and(|stored| stored.first() == id.first() && stored == id)
}

fn u24(n: usize) -> Option<[u8; 3]> {
    if n > MAX_TERM {
        return None;
    }
    let [a, b, c, ..] = n.to_le_bytes();
    Some([a, b, c])
}

fn read_u24([a, b, c]: [u8; 3]) -> usize {
    u32::from_le_bytes([a, b, c, 0]) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `#{node_id => <<Id>>, pad => <<Pad>>}`, versioned.
    fn provider(id: &[u8], pad: usize) -> Vec<u8> {
        let mut t = vec![131, 116, 0, 0, 0, 2, 119, 7];
        t.extend(b"node_id");
        t.push(109);
        t.extend((id.len() as u32).to_be_bytes());
        t.extend(id);
        t.extend([119, 3, b'p', b'a', b'd', 109]);
        t.extend((pad as u32).to_be_bytes());
        t.extend(vec![0; pad]);
        t
    }

    fn parse(etf: &[u8]) -> ProviderRecord<'_> {
        ProviderRecord::parse(etf).unwrap()
    }

    fn upsert(entry: &mut KeyEntry, etf: &[u8], expires_at: u64) -> Upsert {
        entry.upsert(&NewRecord::new(&parse(etf), expires_at, None).unwrap(), 10)
    }

    fn ids(entry: &KeyEntry) -> Vec<(Vec<u8>, u64)> {
        entry
            .records()
            .map(|r| (r.node_id.unwrap().to_vec(), r.expires_at))
            .collect()
    }

    fn entry(key: &[u8], etf: &[u8], expires_at: u64) -> KeyEntry {
        KeyEntry::new(key, &NewRecord::new(&parse(etf), expires_at, None).unwrap()).unwrap()
    }

    #[test]
    fn layout_round_trips() {
        let a = provider(b"a", 3);
        let e = entry(b"key", &a, 50);
        assert_eq!(e.key(), b"key");
        assert_eq!(e.scheduled(), 50);
        assert_eq!(e.0.len(), ENTRY_HEADER + 3 + RECORD_HEADER + a.len() - 1);
        let r = e.records().next().unwrap();
        assert_eq!(
            (r.term, r.node_id, r.expires_at),
            (&a[1..], Some(&b"a"[..]), 50)
        );
    }

    #[test]
    fn upsert_puts_new_first_and_replaces_in_place() {
        let mut e = entry(b"k", &provider(b"a", 0), 10);
        assert_eq!(upsert(&mut e, &provider(b"b", 0), 20), Upsert::Inserted);
        assert_eq!(upsert(&mut e, &provider(b"c", 0), 30), Upsert::Inserted);
        // Same length: rewritten in place, same allocation.
        let ptr = e.0.as_ptr();
        assert_eq!(
            upsert(&mut e, &provider(b"b", 0), 40),
            Upsert::Replaced { old_len: 30 }
        );
        assert_eq!(e.0.as_ptr(), ptr);
        // Other length: rebuilt, position kept.
        assert_eq!(
            upsert(&mut e, &provider(b"a", 5), 50),
            Upsert::Replaced { old_len: 30 }
        );
        let expected: Vec<(Vec<u8>, u64)> = vec![
            (b"c".to_vec(), 30),
            (b"b".to_vec(), 40),
            (b"a".to_vec(), 50),
        ];
        assert_eq!(ids(&e), expected);
        assert_eq!(e.records().nth(2).unwrap().term.len(), 35);
        assert_eq!(e.scheduled(), 10, "upsert leaves scheduling to the store");
    }

    #[test]
    fn full_entry_refuses_additions_only() {
        let (a, b) = (provider(b"a", 0), provider(b"b", 0));
        let (a, b) = (parse(&a), parse(&b));
        let a = NewRecord::new(&a, 5, None).unwrap();
        let mut e = KeyEntry::new(b"k", &a).unwrap();
        assert_eq!(e.upsert(&a, 1), Upsert::Replaced { old_len: 30 });
        assert_eq!(
            e.upsert(&NewRecord::new(&b, 5, None).unwrap(), 1),
            Upsert::Full
        );
        assert_eq!(e.records().count(), 1);
    }

    /// Removes what `which` picks; returns the stored lengths of what went.
    fn remove(e: &mut KeyEntry, which: impl Fn(&Record<'_>) -> bool) -> Vec<usize> {
        let mut gone = Vec::new();
        e.remove_where(which, &mut |r| gone.push(r.stored_len()));
        gone
    }

    fn purge(e: &mut KeyEntry, now: u64) -> (Vec<usize>, Option<u64>) {
        let mut gone = Vec::new();
        let next = e.purge_expired(now, &mut |r| gone.push(r.stored_len()));
        (gone, next)
    }

    #[test]
    fn remove_and_purge() {
        let mut e = entry(b"k", &provider(b"a", 0), 10);
        upsert(&mut e, &provider(b"b", 1), 20);
        upsert(&mut e, &provider(b"c", 2), 30);
        assert_eq!(remove(&mut e, |r| r.node_id == Some(b"x")), vec![]);
        assert_eq!(remove(&mut e, |r| r.node_id == Some(b"b")), vec![31]);
        assert_eq!(purge(&mut e, 9), (vec![], Some(10)));
        assert_eq!(purge(&mut e, 10), (vec![30], Some(30)));
        assert_eq!(ids(&e), vec![(b"c".to_vec(), 30)]);
        assert_eq!(e.key(), b"k");
        assert_eq!(purge(&mut e, 30), (vec![32], None));
        assert!(e.is_empty());
    }

    #[test]
    fn sealed_records_are_slots_of_their_publisher_and_only_grow() {
        let k1 = crate::seal::Keypair::from_seed(&[1; 32]);
        let k2 = crate::seal::Keypair::from_seed(&[2; 32]);
        let a = provider(b"a", 0);
        let term = &a[1..];
        let (s1, s1_old, s2) = (
            k1.seal(b"k", term, 5, 60),
            k1.seal(b"k", term, 4, 60),
            k2.seal(b"k", term, 1, 60),
        );
        let sealed = |s: &Seal| {
            NewRecord::new(&parse(&a), 10, Some(s))
                .unwrap()
                .stored_len()
        };
        let mut e = entry(b"k", &a, 10);
        let rec = |s| NewRecord::new(&parse(&a), 10, Some(s)).unwrap();
        assert_eq!(
            e.upsert(&rec(&s1), 10),
            Upsert::Inserted,
            "unsealed and sealed: two slots"
        );
        assert_eq!(
            e.upsert(&rec(&s2), 10),
            Upsert::Inserted,
            "two publishers: two slots"
        );
        assert_eq!(e.upsert(&rec(&s1_old), 10), Upsert::Stale { held: 5 });
        let len = sealed(&s1);
        assert_eq!(
            e.upsert(&rec(&s1), 10),
            Upsert::Replaced { old_len: len },
            "the same record again, from another replica"
        );
        let other = k1.seal(b"k", b"another term", 5, 60);
        assert_eq!(
            e.upsert(&rec(&other), 10),
            Upsert::Stale { held: 5 },
            "another record with the same sequence"
        );
        let s1_new = k1.seal(b"k", term, 6, 60);
        assert_eq!(
            e.upsert(&rec(&s1_new), 10),
            Upsert::Replaced {
                old_len: sealed(&s1)
            }
        );
        let held = e.slot(b"a", Some(k1.public())).unwrap();
        assert_eq!(held.seal(), Some(s1_new));
        assert_eq!(held.term, term);
        assert!(e.slot(b"a", None).unwrap().seal().is_none());
        assert_eq!(e.records().count(), 3);
        assert_eq!(
            e.records().map(|r| r.stored_len()).sum::<usize>(),
            30 + 2 * (30 + SEAL_LEN)
        );
    }

    #[test]
    fn records_without_node_id() {
        let anon = [131, 116, 0, 0, 0, 0];
        let p = ProviderRecord::parse(&anon).unwrap();
        let r = NewRecord::new(&p, 7, None).unwrap();
        let mut e = KeyEntry::new(b"k", &r).unwrap();
        assert_eq!(
            e.upsert(&r, 10),
            Upsert::Inserted,
            "no node_id never replaces"
        );
        assert!(e
            .records()
            .all(|r| r.node_id.is_none() && r.term == &anon[1..]));
        assert!(e.slot(b"", None).is_none());
    }

    #[test]
    fn caps() {
        assert_eq!(u24(MAX_TERM), Some([255; 3]));
        assert_eq!(u24(MAX_TERM + 1), None);
        assert_eq!(read_u24([1, 2, 3]), 0x030201);
        let a = provider(b"a", 0);
        let a = NewRecord::new(&parse(&a), 1, None).unwrap();
        assert!(KeyEntry::new(&vec![0; MAX_KEY + 1], &a).is_none());
    }
}
