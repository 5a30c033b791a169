//! The terms the NIF answers with: atoms, error tuples, binaries.

use macula_dht::provider::ProviderError;
use macula_dht::store::StoreError;
use rustler::{Encoder, Env, NewBinary, Term};

pub mod atoms {
    rustler::atoms! {
        ok, error, not_found, closed, corrupt_record,
        k, replacements, max_keys, max_providers_per_key, max_record_bytes, max_key_bytes,
        default_ttl, max_ttl, read_cache, max_records, max_bytes,
        invalid_key, invalid_provider, invalid_node_id, invalid_node_info, invalid_target,
        invalid_count, invalid_ttl, not_a_map, not_a_binary, malformed, missing_node_id,
        too_large, key_too_large, record_too_large, limit,
        node_id, last_seen,
        keys, records, bytes, expired, rejected, nodes, nif_allocated_bytes,
        peers, requests, bad_requests, tombstones, lookups, lookup_timeouts, lookup_p50_us,
        lookup_p99_us, lookup_failures, store_failures, remove_failures, handoff_failures,
        server, network, max_bootstrap, stale, local, protocol, refused_version, refused_forged,
        refused_wrong_publisher, refused_stale, refused_replay, refused_quota, refused_rate,
        forged_in_replies, suspects, joined,
    }
}

pub fn error<'a>(env: Env<'a>, reason: impl Encoder) -> Term<'a> {
    (atoms::error(), reason).encode(env)
}

/// A map of atom keys, built in one call.
pub fn map<'a>(env: Env<'a>, pairs: &[(rustler::Atom, Term<'a>)]) -> Term<'a> {
    let keys: Vec<Term<'a>> = pairs.iter().map(|(k, _)| k.encode(env)).collect();
    let values: Vec<Term<'a>> = pairs.iter().map(|(_, v)| *v).collect();
    // Distinct atom keys always make a map.
    Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| Term::map_new(env))
}

pub fn invalid_key(env: Env<'_>) -> Term<'_> {
    error(env, (atoms::invalid_key(), atoms::not_a_binary()))
}

pub fn binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut bin = NewBinary::new(env, bytes.len());
    bin.as_mut_slice().copy_from_slice(bytes);
    bin.into()
}

pub fn store_error<'a>(env: Env<'a>, e: &StoreError) -> Term<'a> {
    match e {
        StoreError::KeyTooLarge { len, max } => error(env, (atoms::key_too_large(), *len, *max)),
        StoreError::RecordTooLarge { len, max } => {
            error(env, (atoms::record_too_large(), *len, *max))
        }
        StoreError::TooManyKeys { max } => error(env, (atoms::limit(), atoms::max_keys(), *max)),
        StoreError::TooManyProviders { max } => {
            error(env, (atoms::limit(), atoms::max_providers_per_key(), *max))
        }
        StoreError::TooManyRecords { max } => {
            error(env, (atoms::limit(), atoms::max_records(), *max))
        }
        StoreError::TooManyBytes { max } => error(env, (atoms::limit(), atoms::max_bytes(), *max)),
        StoreError::Stale { seq, held } => error(env, (atoms::stale(), *seq, *held)),
        StoreError::InvalidProvider(p) => {
            error(env, (atoms::invalid_provider(), provider_reason(p)))
        }
    }
}

fn provider_reason(e: &ProviderError) -> rustler::Atom {
    match e {
        ProviderError::NotAMap => atoms::not_a_map(),
        ProviderError::Malformed(_) => atoms::malformed(),
        ProviderError::InvalidNodeId => atoms::invalid_node_id(),
        ProviderError::InvalidTtl => atoms::invalid_ttl(),
    }
}
