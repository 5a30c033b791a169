//! Writes messages as Erlang does.
//!
//! The output is byte for byte what `erlang:term_to_binary(T, [{minor_version, 2}])` gives on
//! OTP 25: atoms as `SMALL_ATOM_UTF8_EXT`, binaries as `BINARY_EXT`, `v` as `SMALL_INTEGER_EXT`,
//! lists as `LIST_EXT` with a `NIL_EXT` tail (an empty list is just `NIL_EXT`), and map keys in
//! Erlang's term order, which for atoms is the order of their names. That order is written out by
//! hand below, field by field.

use std::net::SocketAddr;

use super::{NodeInfo, Request, Response, PROTOCOL_VERSION};
use crate::etf::{tag, VERSION};

pub(super) fn request(req: &Request) -> Vec<u8> {
    let mut w = Writer::new();
    match req {
        Request::Ping => {
            w.map(2);
            w.type_and_v("ping");
        }
        Request::FindNode { target } => {
            w.map(3);
            w.atom("target");
            w.binary(&target.0);
            w.type_and_v("find_node");
        }
        Request::FindValue { key } => {
            w.map(3);
            w.atom("key");
            w.binary(key);
            w.type_and_v("find_value");
        }
        Request::Store { key, value } => {
            w.map(4);
            w.atom("key");
            w.binary(key);
            w.type_and_v("store");
            w.atom("value");
            w.raw(value);
        }
        Request::Remove { key, node_id } => {
            w.map(4);
            w.atom("key");
            w.binary(key);
            w.atom("node_id");
            w.binary(node_id);
            w.type_and_v("remove");
        }
    }
    w.0
}

pub(super) fn response(resp: &Response) -> Vec<u8> {
    let mut w = Writer::new();
    match resp {
        Response::Pong => {
            w.map(2);
            w.type_and_v("pong");
        }
        Response::Nodes { nodes } => {
            w.map(3);
            w.atom("nodes");
            w.nodes(nodes);
            w.type_and_v("find_node_reply");
        }
        Response::Value { providers, nodes } => {
            w.map(5);
            w.atom("nodes");
            w.nodes(nodes);
            w.atom("result");
            w.atom("value");
            w.type_and_v("find_value_reply");
            w.atom("value");
            w.list(providers, |w, p| w.raw(p));
        }
        Response::NoValue { nodes } => {
            w.map(4);
            w.atom("nodes");
            w.nodes(nodes);
            w.atom("result");
            w.atom("nodes");
            w.type_and_v("find_value_reply");
        }
        Response::Stored => w.ok_reply("store_reply"),
        Response::Removed => w.ok_reply("remove_reply"),
        Response::Error { reason } => {
            w.map(3);
            w.atom("reason");
            w.atom(reason.name());
            w.type_and_v("error");
        }
    }
    w.0
}

/// The address as the wire writes it: `"a.b.c.d:port"` or `"[v6]:port"`.
pub(super) fn address(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// A frame being written; starts with the version byte.
struct Writer(Vec<u8>);

impl Writer {
    fn new() -> Writer {
        Writer(vec![VERSION])
    }

    fn map(&mut self, arity: u32) {
        self.0.push(tag::MAP);
        self.0.extend(arity.to_be_bytes());
    }

    /// `name` is one of this module's fixed ASCII names, all shorter than 256 bytes.
    fn atom(&mut self, name: &str) {
        self.0.extend([tag::SMALL_ATOM_UTF8, name.len() as u8]);
        self.0.extend(name.as_bytes());
    }

    /// A binary longer than `u32::MAX` bytes is cut there, so the output stays one valid term
    /// (that a peer refuses as too large anyway).
    fn binary(&mut self, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.0.push(tag::BINARY);
        self.0.extend(len.to_be_bytes());
        self.0.extend(&bytes[..len as usize]);
    }

    /// An already-encoded term without version byte.
    fn raw(&mut self, term: &[u8]) {
        self.0.extend(term);
    }

    /// A proper list, or NIL when empty; at most `u32::MAX` elements are written.
    fn list<T>(&mut self, items: &[T], mut item: impl FnMut(&mut Self, &T)) {
        if !items.is_empty() {
            let len = u32::try_from(items.len()).unwrap_or(u32::MAX);
            self.0.push(tag::LIST);
            self.0.extend(len.to_be_bytes());
            for each in &items[..len as usize] {
                item(self, each);
            }
        }
        self.0.push(tag::NIL);
    }

    fn nodes(&mut self, nodes: &[NodeInfo]) {
        self.list(nodes, |w, node| {
            w.map(2);
            w.atom("address");
            w.binary(address(&node.addr).as_bytes());
            w.atom("node_id");
            w.binary(&node.id.0);
        });
    }

    /// The `type` and `v` fields, which sort next to each other in every message.
    fn type_and_v(&mut self, type_name: &str) {
        self.atom("type");
        self.atom(type_name);
        self.atom("v");
        self.0.extend([tag::SMALL_INTEGER, PROTOCOL_VERSION]);
    }

    fn ok_reply(&mut self, type_name: &str) {
        self.map(3);
        self.atom("result");
        self.atom("ok");
        self.type_and_v(type_name);
    }
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

    #[test]
    fn empty_lists_are_nil() {
        let mut w = Writer(Vec::new());
        w.list::<u8>(&[], |_, _| {});
        assert_eq!(w.0, [tag::NIL]);
    }
}
