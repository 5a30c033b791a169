//! Writes messages as Erlang does, with [`Writer`] (`term_to_binary(T, [{minor_version, 2}])`
//! bytes). Map keys must be in Erlang's term order, which for atoms is the order of their names;
//! that order is written out by hand below, field by field.

use std::net::SocketAddr;

use super::{NodeInfo, Request, Response, SealedRecord, PROTOCOL_VERSION};
use crate::etf::Writer;
use crate::seal::Seal;

/// The frame of a request; see [`Request::encode`].
pub(super) fn request(req: &Request) -> Vec<u8> {
    let mut w = Writer::new();
    match req {
        Request::Ping => {
            w.map(2);
            type_and_v(&mut w, "ping");
        }
        Request::FindNode { target } => {
            w.map(3);
            w.atom("target");
            w.binary(&target.0);
            type_and_v(&mut w, "find_node");
        }
        Request::FindValue { key } => {
            w.map(3);
            w.atom("key");
            w.binary(key);
            type_and_v(&mut w, "find_value");
        }
        Request::Store { key, record } => {
            w.map(8);
            w.atom("key");
            w.binary(key);
            seal_fields(&mut w, &record.seal);
            type_and_v(&mut w, "store");
            w.atom("value");
            w.raw(&record.term);
        }
        Request::Remove {
            key,
            node_id,
            removal,
        } => {
            w.map(7);
            w.atom("key");
            w.binary(key);
            w.atom("node_id");
            w.binary(node_id);
            w.atom("publisher");
            w.binary(&removal.publisher);
            w.atom("seq");
            w.unsigned(removal.seq);
            w.atom("sig");
            w.binary(&removal.sig);
            type_and_v(&mut w, "remove");
        }
    }
    w.into_bytes()
}

/// The frame of a reply; see [`Response::encode`].
pub(super) fn response(resp: &Response) -> Vec<u8> {
    let mut w = Writer::new();
    match resp {
        Response::Pong => {
            w.map(2);
            type_and_v(&mut w, "pong");
        }
        Response::Nodes { nodes } => {
            w.map(3);
            w.atom("nodes");
            node_list(&mut w, nodes);
            type_and_v(&mut w, "find_node_reply");
        }
        Response::Value { providers, nodes } => {
            w.map(5);
            w.atom("nodes");
            node_list(&mut w, nodes);
            w.atom("result");
            w.atom("value");
            type_and_v(&mut w, "find_value_reply");
            w.atom("value");
            w.list(providers, sealed);
        }
        Response::NoValue { nodes } => {
            w.map(4);
            w.atom("nodes");
            node_list(&mut w, nodes);
            w.atom("result");
            w.atom("nodes");
            type_and_v(&mut w, "find_value_reply");
        }
        Response::Stored => ok_reply(&mut w, "store_reply"),
        Response::Removed => ok_reply(&mut w, "remove_reply"),
        Response::Error { reason } => {
            w.map(3);
            w.atom("reason");
            w.atom(reason.name());
            type_and_v(&mut w, "error");
        }
    }
    w.into_bytes()
}

/// A sealed provider in a `find_value_reply`: `#{publisher, seq, sig, ttl, value}`.
fn sealed(w: &mut Writer, record: &SealedRecord) {
    w.map(5);
    seal_fields(w, &record.seal);
    w.atom("value");
    w.raw(&record.term);
}

/// A seal's four pairs, in key order: `publisher`, `seq`, `sig`, `ttl`.
fn seal_fields(w: &mut Writer, seal: &Seal) {
    w.atom("publisher");
    w.binary(&seal.publisher);
    w.atom("seq");
    w.unsigned(seal.seq);
    w.atom("sig");
    w.binary(&seal.sig);
    w.atom("ttl");
    w.unsigned(u64::from(seal.ttl_secs));
}

/// Bytes a sealed provider takes in a `find_value_reply`.
pub(super) fn sealed_len(record: &SealedRecord) -> usize {
    let mut w = Writer::unversioned();
    sealed(&mut w, record);
    w.into_bytes().len()
}

/// The address as the wire writes it: `"a.b.c.d:port"` or `"[v6]:port"`.
pub(super) fn address(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

fn node_list(w: &mut Writer, nodes: &[NodeInfo]) {
    w.list(nodes, |w, node| {
        w.map(2);
        w.atom("address");
        w.binary(address(&node.addr).as_bytes());
        w.atom("node_id");
        w.binary(&node.id.0);
    });
}

/// The `type` and `v` fields, which sort next to each other in every message.
fn type_and_v(w: &mut Writer, type_name: &str) {
    w.atom("type");
    w.atom(type_name);
    w.atom("v");
    w.unsigned(u64::from(PROTOCOL_VERSION));
}

fn ok_reply(w: &mut Writer, type_name: &str) {
    w.map(3);
    w.atom("result");
    w.atom("ok");
    type_and_v(w, type_name);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, SocketAddrV6};

    #[test]
    fn addresses() {
        assert_eq!(address(&"10.0.0.1:4433".parse().unwrap()), "10.0.0.1:4433");
        assert_eq!(address(&"[::1]:9".parse().unwrap()), "[::1]:9");
        // Scope id and flow info are dropped.
        let scoped = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9, 7, 3));
        assert_eq!(address(&scoped), "[::1]:9");
    }
}
