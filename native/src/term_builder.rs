//! Builds terms straight from the ETF bytes the store keeps, for the plain data providers are made
//! of. `binary_to_term` spends most of a read looking atoms up in the atom table and building maps
//! generically; this builder caches atoms and builds each container in one call. Anything it does
//! not handle (pids, refs, funs, big bignums, ...) makes it give up, and the caller falls back to
//! `binary_to_term`.
//!
//! An atom this VM does not know comes back as a binary of its name. Such an atom can only be in
//! a record that arrived from another node (a local record's atoms exist here), creating it would
//! let peers fill the atom table, and refusing the record would make the whole key unreadable
//! here; Macula already treats `field` and `<<"field">>` keys as one field.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use macula_dht::etf::{self, tag};
use rustler::sys::{self, ErlNifCharEncoding, ErlNifTerm};
use rustler::{Encoder, Env, NewBinary, Term};

// The engine's reader caps, so anything the store accepted builds here too: containers open at
// once (deeper terms fall back) and terms per input, elements of strings included.
use macula_dht::etf::{MAX_DEPTH, MAX_TERMS};
/// Atoms kept per scheduler thread; once full, further atoms are looked up every time.
const ATOM_CACHE_CAP: usize = 4096;
/// Atoms have at most 255 characters: 255 bytes in latin1.
const MAX_ATOM_LEN: usize = 255;

/// Builds the term encoded by `etf` (a complete versioned ETF term, first byte 131) in `env`,
/// or None when it holds something this builder does not handle (the caller then uses
/// binary_to_term). Never creates an atom; never panics; bounded depth; iterative.
pub fn build<'a>(env: Env<'a>, etf: &[u8]) -> Option<Term<'a>> {
    let (&etf::VERSION, body) = etf.split_first()? else {
        return None;
    };
    let built = SCRATCH.try_with(|cell| {
        // `build` never re-enters itself; were it to, it would fall back rather than panic.
        let mut scratch = cell.try_borrow_mut().ok()?;
        let mut b = Builder {
            env,
            input: Reader(body),
            s: &mut scratch,
            budget: MAX_TERMS,
        };
        let term = b.run();
        let trailing = !b.input.0.is_empty();
        scratch.reset();
        term.filter(|_| !trailing)
    });
    // SAFETY: the raw term was made in `env` by the builder.
    built
        .ok()
        .flatten()
        .map(|term| unsafe { Term::new(env, term) })
}

/// A container whose elements are still being built.
struct Open {
    kind: Kind,
    /// Where its elements start in `Scratch::done`.
    base: usize,
    /// How many terms it takes: arity, 2 × map size, or list length + 1 for the tail.
    needed: usize,
}

#[derive(Clone, Copy)]
enum Kind {
    Tuple,
    List,
    Map,
}

/// What one tag gave: a whole term, or a container to fill.
enum Step {
    Term(ErlNifTerm),
    Open(Kind, usize),
}

struct Builder<'a, 'b> {
    env: Env<'a>,
    input: Reader<'b>,
    s: &'b mut Scratch,
    budget: usize,
}

impl Builder<'_, '_> {
    fn run(&mut self) -> Option<ErlNifTerm> {
        loop {
            let mut term = match self.step()? {
                Step::Term(t) => t,
                Step::Open(kind, needed) => {
                    if self.s.open.len() == MAX_DEPTH {
                        return None;
                    }
                    let base = self.s.done.len();
                    self.s.open.push(Open { kind, base, needed });
                    continue;
                }
            };
            // Hand the term to its container, closing every container it completes.
            loop {
                let Some(top) = self.s.open.last() else {
                    return Some(term);
                };
                self.s.done.push(term);
                if self.s.done.len() - top.base < top.needed {
                    break;
                }
                let (kind, base) = (top.kind, top.base);
                self.s.open.pop();
                term = self.close(kind, base)?;
                self.s.done.truncate(base);
            }
        }
    }

    /// Reads one tag and what follows it, up to the elements of a container.
    fn step(&mut self) -> Option<Step> {
        self.budget = self.budget.checked_sub(1)?;
        let env = self.env;
        let r = &mut self.input;
        let term = match r.u8()? {
            tag::SMALL_INTEGER => i64::from(r.u8()?).encode(env).as_c_arg(),
            tag::INTEGER => i64::from(i32::from_be_bytes(r.array()?))
                .encode(env)
                .as_c_arg(),
            tag::SMALL_BIG => {
                let len = usize::from(r.u8()?);
                let negative = r.u8()? != 0;
                small_big(env, r.take(len)?, negative)?
            }
            tag::NEW_FLOAT => {
                let f = f64::from_be_bytes(r.array()?);
                // enif_make_double raises on NaN and infinities; binary_to_term refuses them.
                if !f.is_finite() {
                    return None;
                }
                f.encode(env).as_c_arg()
            }
            tag::ATOM => {
                let len = usize::from(r.u16()?);
                self.s.atom(env, r.take(len)?, false)?
            }
            tag::SMALL_ATOM => {
                let len = usize::from(r.u8()?);
                self.s.atom(env, r.take(len)?, false)?
            }
            tag::ATOM_UTF8 => {
                let len = usize::from(r.u16()?);
                self.s.atom(env, r.take(len)?, true)?
            }
            tag::SMALL_ATOM_UTF8 => {
                let len = usize::from(r.u8()?);
                self.s.atom(env, r.take(len)?, true)?
            }
            tag::BINARY => {
                let len = r.u32()?;
                Term::from(NewBinary::from_slice(env, r.take(len)?)).as_c_arg()
            }
            tag::NIL => nil(env),
            tag::STRING => {
                let len = usize::from(r.u16()?);
                let bytes = r.take(len)?;
                self.budget = self.budget.checked_sub(len)?;
                bytes.iter().rev().fold(nil(env), |tail, &byte| {
                    let head = i64::from(byte).encode(env).as_c_arg();
                    // SAFETY: both terms belong to `env`.
                    unsafe { sys::enif_make_list_cell(env.as_c_arg(), head, tail) }
                })
            }
            tag::SMALL_TUPLE => {
                let arity = usize::from(r.u8()?);
                return self.open(Kind::Tuple, arity, 1);
            }
            tag::LARGE_TUPLE => {
                let arity = r.u32()?;
                return self.open(Kind::Tuple, arity, 1);
            }
            tag::MAP => {
                let size = r.u32()?;
                return self.open(Kind::Map, size, 2);
            }
            // Elements, then the tail (`[]` for a proper list).
            tag::LIST => {
                let len = r.u32()?;
                return self.open(Kind::List, len.checked_add(1)?, 1);
            }
            _ => return None,
        };
        Some(Step::Term(term))
    }

    /// A container of `count` elements, each at least one byte per `per` terms; empty ones are
    /// built at once.
    fn open(&mut self, kind: Kind, count: usize, per: usize) -> Option<Step> {
        let needed = count.checked_mul(per)?;
        if needed > self.input.0.len() {
            return None;
        }
        if needed == 0 {
            let Scratch { keys, values, .. } = &mut *self.s;
            return Some(Step::Term(make(self.env, kind, &[], keys, values)?));
        }
        Some(Step::Open(kind, needed))
    }

    /// Builds the container whose elements are `done[base..]`.
    fn close(&mut self, kind: Kind, base: usize) -> Option<ErlNifTerm> {
        let Scratch {
            done, keys, values, ..
        } = &mut *self.s;
        make(self.env, kind, done.get(base..)?, keys, values)
    }
}

/// Builds a container from its elements; `keys` and `values` are scratch space for maps.
fn make(
    env: Env,
    kind: Kind,
    items: &[ErlNifTerm],
    keys: &mut Vec<ErlNifTerm>,
    values: &mut Vec<ErlNifTerm>,
) -> Option<ErlNifTerm> {
    let env = env.as_c_arg();
    // SAFETY (all three): `items` are terms of `env`; the arrays outlive the calls.
    match kind {
        Kind::Tuple => {
            let arity = u32::try_from(items.len()).ok()?;
            Some(unsafe { sys::enif_make_tuple_from_array(env, items.as_ptr(), arity) })
        }
        Kind::List => {
            let (&tail, elements) = items.split_last()?;
            let cell = |tail, &head| unsafe { sys::enif_make_list_cell(env, head, tail) };
            Some(elements.iter().rev().fold(tail, cell))
        }
        Kind::Map => {
            keys.clear();
            values.clear();
            for pair in items.chunks_exact(2) {
                if let [k, v] = *pair {
                    keys.push(k);
                    values.push(v);
                }
            }
            let mut map = ErlNifTerm::default();
            let mut size = 0;
            // A duplicate key fails the call for small maps but is silently merged for large ones
            // (OTP 25), so the size is checked too; binary_to_term refuses both.
            let ok = unsafe {
                sys::enif_make_map_from_arrays(
                    env,
                    keys.as_ptr(),
                    values.as_ptr(),
                    keys.len(),
                    &mut map,
                ) != 0
                    && sys::enif_get_map_size(env, map, &mut size) != 0
            };
            (ok && size == keys.len()).then_some(map)
        }
    }
}

fn nil(env: Env) -> ErlNifTerm {
    Term::list_new_empty(env).as_c_arg()
}

/// SMALL_BIG_EXT whose value fits an i64 or a u64; larger ones fall back.
fn small_big(env: Env, magnitude: &[u8], negative: bool) -> Option<ErlNifTerm> {
    if magnitude.len() > 8 {
        return None;
    }
    let mut le = [0u8; 8];
    le[..magnitude.len()].copy_from_slice(magnitude); // at most 8 bytes: checked above
    let m = u64::from_le_bytes(le);
    let term = match negative {
        false => m.encode(env),
        // -2^63 is i64::MIN; anything beyond does not fit.
        true if m <= 1 << 63 => 0i64.wrapping_sub_unsigned(m).encode(env),
        true => return None,
    };
    Some(term.as_c_arg())
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Per scheduler thread: the atom cache, and vectors reused from one build to the next.
#[derive(Default)]
struct Scratch {
    // SAFETY of caching terms: an atom's ERL_NIF_TERM is an immediate (the atom's index, tagged),
    // not a pointer into any heap, so it is valid in every environment; and atoms are never
    // removed from the atom table, so it stays valid for the life of the VM. Only atoms that
    // `enif_make_existing_atom_len` found are inserted, so the cache never creates an atom.
    // One cache per thread: no lock and no shared cache line on the read path.
    atoms: HashMap<Box<[u8]>, ErlNifTerm, BuildHasherDefault<WordHash>>,
    /// Open containers, innermost last.
    open: Vec<Open>,
    /// Finished elements of the open containers, in order.
    done: Vec<ErlNifTerm>,
    keys: Vec<ErlNifTerm>,
    values: Vec<ErlNifTerm>,
}

impl Scratch {
    /// Empties the vectors, dropping any that a large term made large.
    fn reset(&mut self) {
        const KEEP: usize = 4096;
        self.open.clear();
        for v in [&mut self.done, &mut self.keys, &mut self.values] {
            v.clear();
            if v.capacity() > KEEP {
                *v = Vec::new();
            }
        }
    }

    /// The existing atom with that name, from the cache or the atom table, or else a binary of
    /// the name (UTF-8); None for a name no atom can have.
    fn atom(&mut self, env: Env, name: &[u8], utf8: bool) -> Option<ErlNifTerm> {
        let mut buf;
        let latin1 = if utf8 && !name.is_ascii() {
            buf = [0u8; MAX_ATOM_LEN];
            utf8_to_latin1(name, &mut buf)?
        } else {
            name
        };
        if latin1.len() > MAX_ATOM_LEN {
            return None;
        }
        if let Some(&term) = self.atoms.get(latin1) {
            return Some(term);
        }
        let mut term = ErlNifTerm::default();
        // Latin-1 is the only encoding NIF 2.16 (OTP 25) takes: UTF-8 names are transcoded first.
        // SAFETY: `latin1` is a live buffer of the given length; `term` is written on success.
        let found = unsafe {
            sys::enif_make_existing_atom_len(
                env.as_c_arg(),
                latin1.as_ptr().cast(),
                latin1.len(),
                &mut term,
                ErlNifCharEncoding::ERL_NIF_LATIN1,
            )
        };
        if found == 0 {
            return Some(unknown_atom(env, name, utf8));
        }
        if self.atoms.len() < ATOM_CACHE_CAP {
            self.atoms.insert(latin1.into(), term);
        }
        Some(term)
    }
}

/// The name of an atom this VM does not have, as a UTF-8 binary.
fn unknown_atom(env: Env, name: &[u8], utf8: bool) -> ErlNifTerm {
    let text: std::borrow::Cow<[u8]> = if utf8 {
        name.into()
    } else {
        name.iter()
            .map(|&b| char::from(b))
            .collect::<String>()
            .into_bytes()
            .into()
    };
    Term::from(NewBinary::from_slice(env, &text)).as_c_arg()
}

/// Transcodes a UTF-8 atom name whose characters are all below 256; None otherwise (including
/// invalid UTF-8, which binary_to_term refuses too).
fn utf8_to_latin1<'b>(utf8: &[u8], out: &'b mut [u8; MAX_ATOM_LEN]) -> Option<&'b [u8]> {
    let mut len = 0;
    let mut bytes = utf8.iter();
    while let Some(&b) = bytes.next() {
        let c = match b {
            0..=0x7f => b,
            // Two-byte sequences for U+0080..U+00FF: 110000xx 10xxxxxx.
            0xc2 | 0xc3 => match bytes.next() {
                Some(&c @ 0x80..=0xbf) => ((b & 0x03) << 6) | (c & 0x3f),
                _ => return None,
            },
            _ => return None,
        };
        *out.get_mut(len)? = c;
        len += 1;
    }
    out.get(..len)
}

/// Word-at-a-time multiply-fold hash: atom names are short, and std's SipHash costs more than
/// the lookup it guards. Only existing atoms, at most `ATOM_CACHE_CAP` of them, ever go in, so
/// collisions cannot be forced without bound.
struct WordHash(u64);

impl Default for WordHash {
    fn default() -> Self {
        WordHash(0x243f_6a88_85a3_08d3)
    }
}

impl WordHash {
    fn mix(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * 0x9e37_79b9_7f4a_7c15;
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for WordHash {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.mix(u64::from_le_bytes(word.try_into().unwrap_or_default()));
        }
        // Shifted in, not copied: a copy to a stack buffer stalls the load that follows.
        let rest = words.remainder();
        if !rest.is_empty() {
            self.mix(rest.iter().fold(0, |w, &b| (w << 8) | u64::from(b)));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Bounds-checked big-endian reads; every length is checked against the bytes left.
struct Reader<'b>(&'b [u8]);

impl<'b> Reader<'b> {
    fn take(&mut self, len: usize) -> Option<&'b [u8]> {
        if len > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Option<usize> {
        usize::try_from(u32::from_be_bytes(self.array()?)).ok()
    }
}
