//! Where this node sent copies of each record (by STORE of a record it publishes, or by
//! hand-off of one it holds), so that removing the record reaches every copy it made.
//!
//! A removal is sent to the `k` closest nodes a fresh lookup finds. Routing tables fill in over
//! time, so the `k` closest found at a STORE and at the later REMOVE can differ, and replicas
//! hand copies to newcomers in between: a copy left outside the set the REMOVE reaches would
//! still be served. So the publisher sends the REMOVE to the nodes its STOREs reached as well,
//! and every node passes a REMOVE on to the nodes it handed the record to. Bounded: records
//! remembered (the oldest is forgotten first, its removal then reaching only the current
//! closest) and nodes per record.

use std::collections::{HashMap, VecDeque};

use crate::seal::Publisher;
use crate::wire::NodeInfo;

/// (key, publisher, provider `node_id`): a slot.
type RecordId = (Vec<u8>, Publisher, Vec<u8>);

#[derive(Debug)]
pub(crate) struct Copies {
    records: HashMap<RecordId, Vec<NodeInfo>>,
    /// Insertion order of `records`, for forgetting the oldest.
    order: VecDeque<RecordId>,
    max_records: usize,
    max_nodes: usize,
}

impl Copies {
    pub(crate) fn new(max_records: usize, max_nodes: usize) -> Copies {
        Copies {
            records: HashMap::new(),
            order: VecDeque::new(),
            max_records,
            max_nodes,
        }
    }

    /// Notes that `nodes` took a copy of the record; the most recent `max_nodes` are kept.
    pub(crate) fn add(
        &mut self,
        key: &[u8],
        publisher: &Publisher,
        node_id: &[u8],
        nodes: &[NodeInfo],
    ) {
        let id = (key.to_vec(), *publisher, node_id.to_vec());
        if !self.records.contains_key(&id) {
            while self.records.len() >= self.max_records {
                let Some(oldest) = self.order.pop_front() else {
                    break;
                };
                self.records.remove(&oldest);
            }
            self.order.push_back(id.clone());
        }
        let held = self.records.entry(id).or_default();
        for node in nodes {
            held.retain(|n| n.id != node.id);
            held.push(*node);
        }
        let excess = held.len().saturating_sub(self.max_nodes);
        held.drain(..excess);
    }

    pub(crate) fn contains(&self, key: &[u8], publisher: &Publisher, node_id: &[u8]) -> bool {
        self.records
            .contains_key(&(key.to_vec(), *publisher, node_id.to_vec()))
    }

    /// Forgets the record and returns the nodes that took a copy.
    pub(crate) fn take(
        &mut self,
        key: &[u8],
        publisher: &Publisher,
        node_id: &[u8],
    ) -> Vec<NodeInfo> {
        let id = (key.to_vec(), *publisher, node_id.to_vec());
        let held = self.records.remove(&id).unwrap_or_default();
        if !held.is_empty() {
            self.order.retain(|r| *r != id);
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use crate::NodeId;

    const P: Publisher = [9; 32];

    use super::*;

    fn node(i: u8) -> NodeInfo {
        NodeInfo {
            id: NodeId([i; 32]),
            addr: ([127, 0, 0, 1], 4000 + u16::from(i)).into(),
        }
    }

    #[test]
    fn copies_are_remembered_per_record_within_bounds() {
        let mut copies = Copies::new(2, 3);
        copies.add(b"k", &P, b"p", &[node(1), node(2)]);
        copies.add(b"k", &P, b"p", &[node(2), node(3), node(4)]);
        assert!(copies.contains(b"k", &P, b"p"));
        let ids: Vec<u8> = copies
            .take(b"k", &P, b"p")
            .iter()
            .map(|n| n.id.0[0])
            .collect();
        assert_eq!(ids, [2, 3, 4], "the most recent three, each once");
        assert!(!copies.contains(b"k", &P, b"p"));
        assert!(copies.take(b"k", &P, b"p").is_empty());

        copies.add(b"a", &P, b"p", &[node(1)]);
        copies.add(b"b", &P, b"p", &[node(1)]);
        copies.add(b"c", &P, b"p", &[node(1)]);
        assert!(
            !copies.contains(b"a", &P, b"p"),
            "the oldest record is forgotten"
        );
        assert!(copies.contains(b"b", &P, b"p") && copies.contains(b"c", &P, b"p"));
    }
}
