//! The Rustler NIF `macula_dht_nif`: the engine's store and routing table inside a BEAM node.
//!
//! Every function runs on the caller's normal scheduler and returns in microseconds, except the
//! two that walk a whole structure (`store_keys`, `table_buckets`), which go to a dirty scheduler.
//! No argument can crash the VM: types are checked here and bad input comes back as
//! `{error, Reason}`; a panic is turned into an Erlang exception by rustler.

mod alloc;
mod log;
mod net;
mod node;
mod read_cache;
mod reply;
mod term_builder;

use std::cell::RefCell;

use macula_dht::settings::{self, Setting};
use macula_dht::store::StoreLimits;
use macula_dht::table::TableConfig;
use macula_dht::{etf, NodeId};
use rustler::{Binary, Encoder, Env, LocalPid, NifResult, ResourceArc, Term};
use sha2::{Digest, Sha256};

use node::{unix_ms, Node};
use reply::atoms;

#[global_allocator]
static ALLOCATOR: alloc::CountingAllocator = alloc::CountingAllocator;

/// Largest NodeInfo map kept in the routing table, in ETF bytes.
const MAX_NODE_INFO_BYTES: usize = 4096;
/// Reply buffers larger than this are not kept between calls.
const MAX_KEPT_BUFFER: usize = 1 << 20;

thread_local! {
    /// One reusable buffer per scheduler thread for the ETF list a read hands to `binary_to_term`.
    static REPLY_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

// NIFs take the handle as `&Node`, not `ResourceArc<Node>`: decoding a `ResourceArc` bumps the
// resource's shared reference count on every call, a cache line the schedulers would fight over.
rustler::init!("macula_dht_nif");

/// Creates a node owned by the calling process: when that process dies the handle is closed.
#[rustler::nif]
fn new<'a>(env: Env<'a>, local_id: Binary<'a>, config: Term<'a>) -> NifResult<Term<'a>> {
    let table = TableConfig {
        k: field(config, atoms::k())?,
        replacements: field(config, atoms::replacements())?,
    };
    let limits = StoreLimits {
        max_keys: field(config, atoms::max_keys())?,
        max_providers_per_key: field(config, atoms::max_providers_per_key())?,
        max_record_bytes: field(config, atoms::max_record_bytes())?,
        max_key_bytes: field(config, atoms::max_key_bytes())?,
        default_ttl_secs: field(config, atoms::default_ttl())?,
        max_ttl_secs: field(config, atoms::max_ttl())?,
        max_records: field(config, atoms::max_records())?,
        max_bytes: field(config, atoms::max_bytes())?,
    };
    let read_cache = field(config, atoms::read_cache())?;
    let node = ResourceArc::new(Node::new(
        NodeId::normalize(local_id.as_slice()),
        table,
        limits,
        read_cache,
    ));
    let owner: LocalPid = env.pid();
    node.monitor(Some(env), &owner);
    // Encoded here: a handle is not `RefUnwindSafe`, so rustler will not encode it for us.
    Ok(node.encode(env))
}

fn field<'a, T: rustler::Decoder<'a>>(config: Term<'a>, key: rustler::Atom) -> NifResult<T> {
    config.map_get(key)?.decode()
}

/// Closes the node; in network mode, returns once its listening port is released.
#[rustler::nif(schedule = "DirtyIo")]
fn close(node: &Node) -> rustler::Atom {
    node.close_and_wait();
    atoms::ok()
}

#[rustler::nif]
fn store_put<'a>(env: Env<'a>, node: &'a Node, key: Term<'a>, value: Term<'a>) -> Term<'a> {
    match put(env, node, key, value) {
        Ok(_) => atoms::ok().encode(env),
        Err(reply) => reply,
    }
}

/// Checks and upserts one provider; returns the key and the record's ETF as stored. The store's
/// write hook drops the key's cached list under the write lock, so no reader can cache the old
/// list after this.
pub(crate) fn put<'a>(
    env: Env<'a>,
    node: &Node,
    key: Term<'a>,
    value: Term<'a>,
) -> Result<(Binary<'a>, rustler::OwnedBinary), Term<'a>> {
    let (key, bytes) = provider_etf(env, node, key, value)?;
    let now = node.now_ms();
    match node.store.write(key.as_slice(), |store| {
        store.upsert(key.as_slice(), bytes.as_slice(), now)
    }) {
        Ok(_) => Ok((key, bytes)),
        Err(e) => Err(reply::store_error(env, &e)),
    }
}

/// The key and the provider's ETF of a write, once the types are checked: `{error, Reason}`
/// (or `closed`) otherwise.
pub(crate) fn provider_etf<'a>(
    env: Env<'a>,
    node: &Node,
    key: Term<'a>,
    value: Term<'a>,
) -> Result<(Binary<'a>, rustler::OwnedBinary), Term<'a>> {
    let Ok(key) = Binary::from_term(key) else {
        return Err(reply::invalid_key(env));
    };
    if !value.is_map() {
        return Err(reply::error(
            env,
            (atoms::invalid_provider(), atoms::not_a_map()),
        ));
    }
    if node.is_closed() {
        return Err(atoms::closed().encode(env));
    }
    Ok((key, value.to_binary()))
}

#[rustler::nif]
fn store_get<'a>(env: Env<'a>, node: &'a Node, key: Term<'a>) -> Term<'a> {
    let Ok(key) = Binary::from_term(key) else {
        return reply::invalid_key(env);
    };
    if node.is_closed() {
        return atoms::closed().encode(env);
    }
    match read_local(env, node, key.as_slice()) {
        Ok(Some(list)) => (atoms::ok(), list).encode(env),
        Ok(None) => atoms::not_found().encode(env),
        Err(reply) => reply,
    }
}

/// The live providers under `key` as a list, from the read cache or the store; `None` when
/// there are none.
pub(crate) fn read_local<'a>(
    env: Env<'a>,
    node: &Node,
    key: &[u8],
) -> Result<Option<Term<'a>>, Term<'a>> {
    let now = node.now_ms();
    if let Some(list) = node.read_cache.read().get(env, key, now) {
        return Ok(Some(list));
    }
    with_reply_buf(|buf| {
        let store = node.store.read();
        let listed = store.write_list(key, now, buf);
        if listed.count == 0 {
            return Ok(None);
        }
        let Some(list) = decode_list(env, buf) else {
            return Err(reply::error(env, atoms::corrupt_record()));
        };
        // Cached while the store is still read-locked, so no write can slip in between.
        node.read_cache
            .write()
            .admit(key, list, listed.valid_until_ms);
        Ok(Some(list))
    })
}

/// The live providers under `key` with who published each: `[{Provider, Publisher}]`, where
/// `Publisher` is the 32-byte key of the node whose seal the record carries, or `local` for a
/// record stored here without one; `not_found` when there are none.
#[rustler::nif]
fn store_publishers<'a>(env: Env<'a>, node: &'a Node, key: Term<'a>) -> Term<'a> {
    let Ok(key) = Binary::from_term(key) else {
        return reply::invalid_key(env);
    };
    if node.is_closed() {
        return atoms::closed().encode(env);
    }
    let now = node.now_ms();
    let mut list = Vec::new();
    let publishers: Vec<Option<[u8; 32]>> = {
        let store = node.store.read();
        let records = || store.records(key.as_slice(), now);
        etf::write_list(records().map(|r| r.term), &mut list);
        records().map(|r| r.seal().map(|s| s.publisher)).collect()
    };
    if publishers.is_empty() {
        return atoms::not_found().encode(env);
    }
    let providers: Vec<Term<'a>> = match decode_list(env, &list).map(|l| l.decode()) {
        Some(Ok(providers)) => providers,
        _ => return reply::error(env, atoms::corrupt_record()),
    };
    let pairs: Vec<Term<'a>> = providers
        .into_iter()
        .zip(publishers)
        .map(|(provider, publisher)| match publisher {
            Some(p) => (provider, reply::binary(env, &p)).encode(env),
            None => (provider, atoms::local()).encode(env),
        })
        .collect();
    pairs.encode(env)
}

#[rustler::nif]
fn store_delete<'a>(env: Env<'a>, node: &'a Node, key: Term<'a>, node_id: Term<'a>) -> Term<'a> {
    let Ok(key) = Binary::from_term(key) else {
        return reply::invalid_key(env);
    };
    let Ok(node_id) = Binary::from_term(node_id) else {
        return reply::error(env, (atoms::invalid_node_id(), atoms::not_a_binary()));
    };
    if node.is_closed() {
        return atoms::closed().encode(env);
    }
    // The node's own provider, or one it published, goes everywhere; any other only here.
    match node.net() {
        Some(net) if net.removes_everywhere(key.as_slice(), node_id.as_slice()) => {
            net.remove(key.as_slice(), node_id.as_slice());
        }
        _ => {
            node.store.write(key.as_slice(), |store| {
                store.remove(key.as_slice(), node_id.as_slice())
            });
        }
    }
    atoms::ok().encode(env)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn store_keys<'a>(env: Env<'a>, node: &'a Node) -> Term<'a> {
    let store = node.store.read();
    let keys: Vec<Term<'a>> = store.keys().map(|k| reply::binary(env, k)).collect();
    keys.encode(env)
}

/// Purges expired records; the owner calls it on a timer. Returns how many went.
#[rustler::nif]
fn store_expire(node: &Node) -> usize {
    node.store.expire(node.now_ms())
}

#[rustler::nif]
fn table_add<'a>(env: Env<'a>, node: &'a Node, info: Term<'a>) -> Term<'a> {
    let raw_id = match node_info_id(info) {
        Ok(id) => id,
        Err(reason) => return reply::error(env, (atoms::invalid_node_info(), reason)),
    };
    let info = if info.map_get(atoms::last_seen()).is_ok() {
        Ok(info)
    } else {
        info.map_put(atoms::last_seen(), unix_ms())
    };
    let Ok(info) = info else {
        return reply::error(env, (atoms::invalid_node_info(), atoms::not_a_map()));
    };
    let term = match node_info_bytes(info) {
        Ok(term) => term,
        Err(len) => {
            return reply::error(
                env,
                (
                    atoms::invalid_node_info(),
                    (atoms::too_large(), len, MAX_NODE_INFO_BYTES),
                ),
            )
        }
    };
    if node.is_closed() {
        return atoms::closed().encode(env);
    }
    node.table
        .write()
        .insert(NodeId::normalize(raw_id.as_slice()), term);
    atoms::ok().encode(env)
}

/// A NodeInfo map as the table keeps it: its ETF without the version byte, so that replies can
/// splice entries into one ETF list. Over `MAX_NODE_INFO_BYTES`, the encoded length.
pub(crate) fn node_info_bytes(info: Term<'_>) -> Result<Box<[u8]>, usize> {
    let bytes = info.to_binary();
    if bytes.len() > MAX_NODE_INFO_BYTES {
        return Err(bytes.len());
    }
    Ok(bytes.as_slice().get(1..).unwrap_or_default().into())
}

/// The raw `node_id` of a NodeInfo map, under the atom or the binary key.
fn node_info_id<'a>(info: Term<'a>) -> Result<Binary<'a>, rustler::Atom> {
    if !info.is_map() {
        return Err(atoms::not_a_map());
    }
    let id = info
        .map_get(atoms::node_id())
        .or_else(|_| info.map_get(reply::binary(info.get_env(), b"node_id")))
        .map_err(|_| atoms::missing_node_id())?;
    Binary::from_term(id).map_err(|_| atoms::invalid_node_id())
}

#[rustler::nif]
fn table_remove<'a>(env: Env<'a>, node: &'a Node, node_id: Term<'a>) -> Term<'a> {
    let Ok(node_id) = Binary::from_term(node_id) else {
        return reply::error(env, (atoms::invalid_node_id(), atoms::not_a_binary()));
    };
    node.table
        .write()
        .remove(&NodeId::normalize(node_id.as_slice()));
    atoms::ok().encode(env)
}

#[rustler::nif]
fn table_closest<'a>(env: Env<'a>, node: &'a Node, target: Term<'a>, count: Term<'a>) -> Term<'a> {
    let Ok(target) = Binary::from_term(target) else {
        return reply::error(env, (atoms::invalid_target(), atoms::not_a_binary()));
    };
    let Ok(count) = count.decode::<usize>() else {
        return reply::error(env, (atoms::invalid_count(), count));
    };
    if node.is_closed() {
        return atoms::closed().encode(env);
    }
    with_reply_buf(|buf| {
        let table = node.table.read();
        let closest = table.closest(&NodeId::normalize(target.as_slice()), count);
        etf::write_list(closest.iter().map(|(_, info)| &info[..]), buf);
        drop(table);
        match decode_list(env, buf) {
            Some(list) => (atoms::ok(), list).encode(env),
            None => reply::error(env, atoms::corrupt_record()),
        }
    })
}

#[rustler::nif]
fn table_size(node: &Node) -> usize {
    node.table.read().len()
}

/// `[{BucketIndex, [NodeInfo]}]`, least recently seen first in each bucket.
#[rustler::nif(schedule = "DirtyCpu")]
fn table_buckets<'a>(env: Env<'a>, node: &'a Node) -> Term<'a> {
    let table = node.table.read();
    let mut buckets = Vec::new();
    let mut buf = Vec::new();
    for (index, nodes) in table.buckets() {
        buf.clear();
        etf::write_list(nodes.iter().map(|(_, info)| &info[..]), &mut buf);
        if let Some(list) = decode_list(env, &buf) {
            buckets.push((index, list).encode(env));
        }
    }
    buckets.encode(env)
}

/// SHA-256 of a binary: the DHT key of a service (`macula_service_registry:service_key/1`).
/// Hashing 32-odd bytes here costs a fraction of `crypto:hash/2`, which sets up an OpenSSL
/// context per call, and every publish and discover hashes its service id.
#[rustler::nif]
fn sha256<'a>(env: Env<'a>, data: Binary<'a>) -> Term<'a> {
    reply::binary(env, &Sha256::digest(data.as_slice()))
}

/// The settings `macula_routing_server` accepts, from the engine's one table:
/// `#{server => [{Name, Default, Min, Max}], network => [...], max_bootstrap => N}`, `network`
/// holding what network mode adds or narrows.
#[rustler::nif]
fn settings(env: Env<'_>) -> Term<'_> {
    let list = |table: &[Setting]| -> Vec<Term<'_>> {
        table
            .iter()
            .filter_map(|s| {
                // Names come from the engine's fixed table.
                let name = rustler::Atom::from_str(env, s.name).ok()?;
                Some((name, s.default, s.min, s.max).encode(env))
            })
            .collect()
    };
    reply::map(
        env,
        &[
            (atoms::server(), list(&settings::SERVER).encode(env)),
            (atoms::network(), list(&settings::NETWORK).encode(env)),
            (atoms::max_bootstrap(), settings::MAX_BOOTSTRAP.encode(env)),
        ],
    )
}

/// Sends the runtime's log events at `Level` or more severe (`error`, `warn`, `info`, `debug` or
/// `trace`; `none` for none) to `Pid` as messages, in place of any process registered before (see
/// `log.rs`): `ok`, `{error, {invalid_level, Level}}`, or `{error, {log, Why}}` when forwarding
/// cannot be set up in this VM.
#[rustler::nif]
fn log_forward<'a>(env: Env<'a>, pid: LocalPid, level: Term<'a>) -> Term<'a> {
    let invalid = || reply::error(env, (log::log_atoms::invalid_level(), level));
    let Ok(atom) = level.decode::<rustler::Atom>() else {
        return invalid();
    };
    let Some(level) = log::level(atom) else {
        return invalid();
    };
    match log::forward(pid, level) {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => reply::error(env, (log::log_atoms::log(), e.to_string())),
    }
}

/// Stops sending log events to `Pid`, if it is the process registered.
#[rustler::nif]
fn log_stop(pid: LocalPid) -> rustler::Atom {
    log::stop(pid);
    atoms::ok()
}

#[rustler::nif]
fn stats<'a>(env: Env<'a>, node: &'a Node) -> Term<'a> {
    let store = node.store.read().stats();
    let nodes = node.table.read().len();
    let local = [
        (atoms::keys(), store.keys as u64),
        (atoms::records(), store.records as u64),
        (atoms::bytes(), store.bytes as u64),
        (atoms::expired(), store.expired),
        (atoms::rejected(), store.rejected),
        (atoms::nodes(), nodes as u64),
        (atoms::nif_allocated_bytes(), alloc::heap_bytes() as u64),
    ];
    let (network, joined) = net::stats(node);
    let pairs: Vec<(rustler::Atom, Term<'a>)> = local
        .into_iter()
        .chain(network)
        .map(|(k, v)| (k, v.encode(env)))
        .chain([(atoms::joined(), joined.encode(env))])
        .collect();
    reply::map(env, &pairs)
}

pub(crate) fn with_reply_buf<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    REPLY_BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        let result = f(&mut buf);
        if buf.capacity() > MAX_KEPT_BUFFER {
            *buf = Vec::new();
        }
        result
    })
}

/// Turns an ETF list written by the engine into terms: `term_builder` for plain data, else
/// `binary_to_term` in safe mode. Neither ever creates an atom, whatever the bytes hold.
pub(crate) fn decode_list<'a>(env: Env<'a>, buf: &[u8]) -> Option<Term<'a>> {
    term_builder::build(env, buf).or_else(|| env.binary_to_term(buf).map(|(term, _)| term))
}
