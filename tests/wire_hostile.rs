//! Hostile frames, v2 seals included: each must give an error quickly, without panicking and
//! without allocating a large buffer. A tracking allocator records the largest single allocation made by the test's
//! own thread while a frame is being decoded.

mod wire_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use macula_dht::etf::{self, EtfError};
use macula_dht::wire::{Request, Response, WireError, MAX_FRAME_BYTES, MAX_PROVIDERS};
use macula_dht::ProviderRecord;
use proptest::prelude::*;
use wire_support::*;

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the slot may be gone while a thread is being torn down.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator; `note` neither allocates
// nor unwinds.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Largest single allocation allowed while decoding a hostile frame.
const SMALL_ALLOC: usize = 64 << 10;

/// Decodes `frame` as a request and as a response; both must fail quickly with small
/// allocations only. Returns the request's error.
fn rejected(frame: &[u8]) -> WireError {
    rejected_within(frame, SMALL_ALLOC)
}

/// [`rejected`], with allocations of up to `max_alloc` bytes at once allowed.
fn rejected_within(frame: &[u8], max_alloc: usize) -> WireError {
    LARGEST.with(|l| l.set(0));
    let start = Instant::now();
    let req = Request::decode(frame);
    let resp = Response::decode(frame);
    let elapsed = start.elapsed();
    let largest = LARGEST.with(Cell::get);
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert!(largest <= max_alloc, "allocated {largest} bytes at once");
    assert!(resp.is_err(), "{resp:?}");
    req.expect_err("request decoded")
}

#[test]
fn the_tracking_allocator_sees_allocations() {
    LARGEST.with(|l| l.set(0));
    let big = std::hint::black_box(vec![0u8; SMALL_ALLOC + 1]);
    assert_eq!(LARGEST.with(Cell::get), SMALL_ALLOC + 1);
    drop(big);
}

fn find_value_with_key(key_term: Vec<u8>) -> Vec<u8> {
    msg(&[("v", v()), ("type", atom("find_value")), ("key", key_term)])
}

#[test]
fn huge_announced_list_in_a_tiny_buffer() {
    let huge = vec![108, 255, 255, 255, 255, 106];
    assert_eq!(
        rejected(&frame(&huge)),
        WireError::Etf(EtfError::TooManyElements)
    );
    assert_eq!(
        rejected(&find_value_with_key(huge.clone())),
        WireError::Etf(EtfError::TooManyElements)
    );
    // The same in a reply's node list.
    let reply = msg(&[
        ("v", v()),
        ("type", atom("find_node_reply")),
        ("nodes", huge),
    ]);
    assert_eq!(rejected(&reply), WireError::Etf(EtfError::TooManyElements));
    // A map announcing 2^32 - 1 pairs.
    assert_eq!(
        rejected(&[131, 116, 255, 255, 255, 255, 97, 1]),
        WireError::Etf(EtfError::TooManyElements)
    );
    // A hit announcing 2^32 - 1 sealed providers, and a sealed provider announcing 2^32 - 1
    // fields.
    let hit = |value: Vec<u8>| {
        msg(&[
            ("v", v()),
            ("type", atom("find_value_reply")),
            ("result", atom("value")),
            ("value", value),
        ])
    };
    assert_eq!(
        rejected(&hit(vec![108, 255, 255, 255, 255, 106])),
        WireError::Etf(EtfError::TooManyElements)
    );
    assert_eq!(
        rejected(&hit(list(&[vec![116, 255, 255, 255, 255, 97, 1]]))),
        WireError::Etf(EtfError::TooManyElements)
    );
}

#[test]
fn deep_nesting() {
    let depth = 100_000;
    let mut lists = [108, 0, 0, 0, 1].repeat(depth);
    lists.extend(vec![106; depth + 1]);
    assert_eq!(rejected(&frame(&lists)), WireError::Etf(EtfError::TooDeep));
    assert_eq!(
        rejected(&find_value_with_key(lists.clone())),
        WireError::Etf(EtfError::TooDeep)
    );
    // Hidden under an unknown key, and inside a provider.
    let hidden = msg(&[("v", v()), ("type", atom("ping")), ("junk", lists)]);
    assert_eq!(rejected(&hidden), WireError::Etf(EtfError::TooDeep));
    let mut maps = [116, 0, 0, 0, 1, 97, 0].repeat(depth);
    maps.extend(vec![106; 1]);
    let record = sealed(b"k", provider(b"n1", 300), 1, 60);
    let store = msg(&with(&store_fields(b"k", &record), "value", maps.clone()));
    assert_eq!(rejected(&store), WireError::Etf(EtfError::TooDeep));
    // As a seal field, in a sealed provider, and under `v => 1`: the frame is walked, and
    // refused, before any field is read.
    for name in ["publisher", "seq", "ttl", "sig"] {
        let store = msg(&with(&store_fields(b"k", &record), name, maps.clone()));
        assert_eq!(
            rejected(&store),
            WireError::Etf(EtfError::TooDeep),
            "{name}"
        );
    }
    let deep_sealed = atom_map(&with(&sealed_fields(&record), "value", maps.clone()));
    let hit = msg(&[
        ("v", v()),
        ("type", atom("find_value_reply")),
        ("result", atom("value")),
        (
            "value",
            list(&[atom_map(&sealed_fields(&record)), deep_sealed]),
        ),
    ]);
    assert_eq!(rejected(&hit), WireError::Etf(EtfError::TooDeep));
    let old = msg(&[("v", int(1)), ("type", atom("store")), ("value", maps)]);
    assert_eq!(rejected(&old), WireError::Etf(EtfError::TooDeep));
}

#[test]
fn every_truncation_of_every_frame_fails() {
    for frame in sample_frames() {
        for cut in 0..frame.len() {
            rejected(&frame[..cut]);
        }
    }
}

#[test]
fn unknown_tags() {
    for tag in [0, 42, 69, 71, 255] {
        assert_eq!(
            rejected(&[131, tag]),
            WireError::Etf(EtfError::UnknownTag(tag))
        );
        assert_eq!(
            rejected(&find_value_with_key(vec![tag, 0, 0, 0, 0])),
            WireError::Etf(EtfError::UnknownTag(tag))
        );
    }
    // Every byte of a valid frame replaced by an unknown tag: never a panic.
    for frame in sample_frames() {
        for at in 0..frame.len() {
            let mut bad = frame.clone();
            bad[at] = 42;
            let _ = Request::decode(&bad);
            let _ = Response::decode(&bad);
        }
    }
}

#[test]
fn distribution_headers_and_compression_are_rejected() {
    // 131, 68: a distribution header (as sent between connected BEAM nodes), not a term.
    let dist = [131, 68, 1, 0x08, 0, 119, 4, b'p', b'i', b'n', b'g'];
    assert_eq!(rejected(&dist), WireError::Etf(EtfError::UnknownTag(68)));
    // 131, 80: a compressed term, announcing 1 GiB uncompressed.
    let compressed = [131, 80, 0x40, 0, 0, 0, 0x78, 0x9c, 1, 2, 3];
    assert_eq!(rejected(&compressed), WireError::Etf(EtfError::Compressed));
    // 131, 82: an atom cache reference (distribution only).
    assert_eq!(
        rejected(&[131, 82, 0]),
        WireError::Etf(EtfError::UnknownTag(82))
    );
}

#[test]
fn one_gib_length_fields() {
    let gib = 1u32 << 30;
    let bin_len = [&[109][..], &gib.to_be_bytes(), b"short"].concat();
    assert_eq!(
        rejected(&find_value_with_key(bin_len)),
        WireError::Etf(EtfError::Truncated)
    );
    let list_len = [&[108][..], &gib.to_be_bytes(), &[106]].concat();
    assert_eq!(
        rejected(&find_value_with_key(list_len)),
        WireError::Etf(EtfError::TooManyElements)
    );
    let big_len = [&[111][..], &gib.to_be_bytes(), &[0, 1]].concat();
    assert_eq!(
        rejected(&find_value_with_key(big_len)),
        WireError::Etf(EtfError::Truncated)
    );
    let fun_size = [&[112][..], &gib.to_be_bytes()].concat();
    assert_eq!(
        rejected(&find_value_with_key(fun_size)),
        WireError::Etf(EtfError::Truncated)
    );
    // An atom's 16-bit length past the end.
    assert_eq!(
        rejected(&[131, 118, 255, 255, b'x']),
        WireError::Etf(EtfError::Truncated)
    );
}

#[test]
fn hostile_seals() {
    let record = sealed(b"k", provider(b"n1", 300), 1, 60);
    let store = store_fields(b"k", &record);
    let removal = keypair(1).removal(b"k", b"n1", 2);
    let remove = remove_fields(b"k", b"n1", &removal);
    let gib = 1u32 << 30;
    // A publisher or a signature announcing 1 GiB.
    for name in ["publisher", "sig"] {
        let huge = [&[109][..], &gib.to_be_bytes(), &[1; 64]].concat();
        for fields in [&store, &remove] {
            assert_eq!(
                rejected(&msg(&with(fields, name, huge.clone()))),
                WireError::Etf(EtfError::Truncated),
                "{name}"
            );
        }
        // 64 KiB where 32 or 64 bytes belong.
        let long = bin(&[1; 1 << 16]);
        assert_eq!(
            rejected(&msg(&with(&store, name, long.clone()))),
            WireError::Malformed(name)
        );
        assert_eq!(
            rejected(&msg(&with(&remove, name, long))),
            WireError::Malformed(name)
        );
    }
    for name in ["seq", "ttl"] {
        // Bignums: the longest SMALL_BIG, a 64 KiB LARGE_BIG, one announcing 1 GiB, and 2^64.
        let large_big =
            |len: u32, digits: &[u8]| [&[111][..], &len.to_be_bytes(), &[0], digits].concat();
        let cases = [
            (small_big(false, &[255; 255]), WireError::Malformed(name)),
            (small_big(true, &[255; 255]), WireError::Malformed(name)),
            (
                large_big(1 << 16, &[255; 1 << 16]),
                WireError::Malformed(name),
            ),
            (large_big(gib, &[1; 8]), WireError::Etf(EtfError::Truncated)),
            (
                small_big(false, &[0, 0, 0, 0, 0, 0, 0, 0, 1]),
                WireError::Malformed(name),
            ),
            (small_big(true, &[1]), WireError::Malformed(name)),
            (vec![98, 255, 255, 255, 255], WireError::Malformed(name)),
        ];
        for (value, error) in cases {
            assert_eq!(
                rejected(&msg(&with(&store, name, value.clone()))),
                error,
                "store {name}"
            );
            if name == "seq" {
                assert_eq!(
                    rejected(&msg(&with(&remove, name, value))),
                    error,
                    "remove {name}"
                );
            }
        }
    }
    assert_eq!(
        rejected(&msg(&with(&store, "ttl", uint(u64::from(u32::MAX) + 1)))),
        WireError::Malformed("ttl")
    );
    // A frame of 2^16 unknown keys around a seal: read and skipped.
    let mut fields: Vec<_> = store
        .iter()
        .map(|(name, value)| (atom(name), value.clone()))
        .collect();
    fields.extend((0..1u32 << 16).map(|i| (int(i), vec![106])));
    fields.push((atom("sig"), bin(&[0; 64])));
    assert_eq!(
        rejected(&frame(&map(&fields))),
        WireError::Malformed("duplicate key")
    );
}

#[test]
fn a_full_hit_with_one_bad_seal() {
    // MAX_PROVIDERS sealed providers, the last one with a short signature: every provider is
    // read before the bad one, but nothing is allocated beyond the size of the frame itself.
    let record = sealed(b"k", provider(b"n1", 300), 1, 60);
    let good = atom_map(&sealed_fields(&record));
    let bad = atom_map(&with(&sealed_fields(&record), "sig", bin(&[0; 63])));
    let mut providers = vec![good; MAX_PROVIDERS - 1];
    providers.push(bad);
    let hit = msg(&[
        ("v", v()),
        ("type", atom("find_value_reply")),
        ("result", atom("value")),
        ("value", list(&providers)),
    ]);
    assert_eq!(Response::decode(&hit), Err(WireError::Malformed("sig")));
    assert_eq!(rejected_within(&hit, hit.len()), WireError::UnknownType);
    // One provider more than the cap: refused before any is read.
    let mut providers = vec![atom_map(&sealed_fields(&record)); MAX_PROVIDERS + 1];
    providers[0] = int(0);
    let over = msg(&[
        ("v", v()),
        ("type", atom("find_value_reply")),
        ("result", atom("value")),
        ("value", list(&providers)),
    ]);
    LARGEST.with(|l| l.set(0));
    assert_eq!(
        Response::decode(&over),
        Err(WireError::Limit {
            what: "value",
            max: MAX_PROVIDERS
        })
    );
    assert!(LARGEST.with(Cell::get) <= SMALL_ALLOC);
}

#[test]
fn frames_over_the_cap() {
    let over = vec![0u8; MAX_FRAME_BYTES + 1];
    assert_eq!(rejected(&over), WireError::TooLarge(MAX_FRAME_BYTES + 1));
    // A well-formed message one byte over the cap.
    let valid_but_big = Request::FindValue {
        key: vec![1; MAX_FRAME_BYTES],
    }
    .encode();
    assert_eq!(
        rejected(&valid_but_big),
        WireError::TooLarge(valid_but_big.len())
    );
}

#[test]
fn atoms_outside_the_table() {
    for name in ["hello", "find_nodes", "PING", "ping\0", ""] {
        let frame = msg(&[("v", v()), ("type", atom(name))]);
        assert_eq!(rejected(&frame), WireError::UnknownType, "{name:?}");
    }
    // A 255-byte UTF-8 atom, and a 65535-byte ATOM_EXT.
    let long = "é".repeat(127);
    assert_eq!(
        rejected(&msg(&[("v", v()), ("type", atom(&long))])),
        WireError::UnknownType
    );
    let huge = [&[100u8, 255, 255][..], &[b'a'; 65535]].concat();
    let frame = frame_with_type(huge);
    assert_eq!(rejected(&frame), WireError::UnknownType);
}

fn frame_with_type(type_term: Vec<u8>) -> Vec<u8> {
    frame(&map(&[(atom("v"), v()), (atom("type"), type_term)]))
}

#[test]
fn other_shapes() {
    assert_eq!(rejected(&[]), WireError::Etf(EtfError::MissingVersion));
    assert_eq!(rejected(&[131]), WireError::Etf(EtfError::Truncated));
    let unversioned = &Request::Ping.encode()[1..];
    assert_eq!(
        rejected(unversioned),
        WireError::Etf(EtfError::MissingVersion)
    );
    assert_eq!(rejected(&[131, 106]), WireError::Malformed("not a map"));
    assert_eq!(
        rejected(&frame(&bin(b"ping"))),
        WireError::Malformed("not a map")
    );
    let mut trailing = Request::Ping.encode();
    trailing.push(106);
    assert_eq!(rejected(&trailing), WireError::Etf(EtfError::TrailingBytes));
    let two_frames = [Request::Ping.encode(), Request::Ping.encode()].concat();
    assert_eq!(
        rejected(&two_frames),
        WireError::Etf(EtfError::TrailingBytes)
    );
    // Many unknown keys: read and skipped, within the frame cap.
    let mut fields = vec![(atom("v"), v()), (atom("type"), atom("bogus"))];
    fields.extend((0..100_000u32).map(|i| (int(i), vec![106])));
    assert_eq!(rejected(&frame(&map(&fields))), WireError::UnknownType);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        for frame in [body.clone(), [&[131][..], &body].concat(), [&[131, 116][..], &body].concat()] {
            check_any(&frame);
        }
    }

    #[test]
    fn mutated_frames_never_panic(
        pick in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let frames = sample_frames();
        let mut frame = pick.get(&frames).clone();
        for (at, byte, op) in edits {
            let len = frame.len().max(1);
            let i = at.index(len).min(frame.len());
            match op {
                0 if i < frame.len() => frame[i] = byte,
                1 => frame.insert(i, byte),
                _ if i < frame.len() => { frame.remove(i); }
                _ => frame.push(byte),
            }
        }
        check_any(&frame);
    }
}

/// Whatever the bytes: no panic, and anything that decodes re-encodes to the same value.
fn check_any(frame: &[u8]) {
    if let Ok(req) = Request::decode(frame) {
        assert_eq!(Request::decode(&req.encode()), Ok(req));
    }
    if let Ok(resp) = Response::decode(frame) {
        assert_eq!(Response::decode(&resp.encode()), Ok(resp));
    }
    let _ = etf::skip_term(frame, 0);
    let _ = ProviderRecord::parse(frame);
}
