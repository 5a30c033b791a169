//! A bounded reader for Erlang's External Term Format, and a writer ([`Writer`], [`write_list`]).
//!
//! Providers are stored as the ETF bytes `term_to_binary/1` produced, and later they also arrive
//! from untrusted peers. General-purpose decoders trust length fields and recurse (`eetf` aborts on
//! a 6-byte input announcing a huge list; inside the BEAM that kills the VM), so the reader only
//! *walks* terms: every length is checked against the remaining bytes before anything advances,
//! element counts must be plausible, nesting and work per call are capped, nothing is allocated
//! from a length field, there is no recursion, and atoms are only ever byte slices.

mod write;

pub use write::Writer;

/// First byte of a complete ("versioned") external term.
pub const VERSION: u8 = 131;

/// Deepest nesting of containers (lists, tuples, maps, exports) that [`skip_term`] accepts.
pub const MAX_DEPTH: usize = 64;

/// Most terms [`skip_term`] visits in one call. Plausibility checks already bound the work by the
/// input length; this caps it independently of how large a frame the caller accepts.
pub const MAX_TERMS: usize = 1 << 20;

/// Why a term was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtfError {
    /// The input ends inside a term: a tag, length or element points past the last byte.
    #[error("term is truncated")]
    Truncated,
    /// A complete external term was expected, but the input is empty or does not start with
    /// [`VERSION`].
    #[error("missing ETF version byte 131")]
    MissingVersion,
    /// A tag byte (carried) that names no term this reader knows, see [`tag`].
    #[error("unknown ETF tag {0}")]
    UnknownTag(u8),
    /// Containers are nested deeper than [`MAX_DEPTH`].
    #[error("terms nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// A list, tuple or map announces more elements than there are bytes left (each takes at
    /// least one); returned before any element is read.
    #[error("a container announces more elements than there are bytes left")]
    TooManyElements,
    /// One call to [`skip_term`] would visit more than [`MAX_TERMS`] terms.
    #[error("more than {MAX_TERMS} terms in one value")]
    TooManyTerms,
    /// A zlib-compressed term ([`tag::COMPRESSED`], from `term_to_binary(T, [compressed])`):
    /// inflating it would allocate from an untrusted size, so it is refused.
    #[error("compressed terms are not supported")]
    Compressed,
    /// The node name inside a pid, port or reference is not an atom; carries the tag found instead.
    #[error("expected an atom, found tag {0}")]
    ExpectedAtom(u8),
    /// A fun ([`tag::NEW_FUN`]) whose size field is below 4, the size of the field itself.
    #[error("fun size field is smaller than itself")]
    BadFunSize,
    /// [`map_fields`] was given a term that is not a map.
    #[error("term is not a map")]
    NotAMap,
    /// Bytes follow a term that should have filled the whole input.
    #[error("bytes left after the term")]
    TrailingBytes,
}

/// A scalar read by [`scalar`]: enough to recognise map keys and simple field values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar<'a> {
    /// An atom of any atom tag, as its name bytes.
    Atom(&'a [u8]),
    /// The bytes of a `BINARY_EXT` (a bitstring whose length is not a whole number of bytes is
    /// [`Scalar::Other`]).
    Binary(&'a [u8]),
    /// SMALL_INTEGER, INTEGER, or SMALL_BIG of at most 8 magnitude bytes.
    Integer(i128),
    /// Anything else (still skippable with [`skip_term`]).
    Other,
}

/// Returns the term bytes of a complete external term (everything after the version byte).
pub fn strip_version(etf: &[u8]) -> Result<&[u8], EtfError> {
    match etf.split_first() {
        Some((&VERSION, term)) => Ok(term),
        _ => Err(EtfError::MissingVersion),
    }
}

/// Returns the end offset of the term starting at `pos` (iterative skip).
pub fn skip_term(buf: &[u8], pos: usize) -> Result<usize, EtfError> {
    let mut cur = Cursor { buf, pos };
    let children = cur.step()?;
    if children == 0 {
        // A scalar (most map keys and values): no container stack needed.
        return Ok(cur.pos);
    }
    // Terms still to be read in each open container, innermost last.
    let mut pending = [0u64; MAX_DEPTH];
    pending[0] = children; // MAX_DEPTH > 0
    let mut depth = 1;
    for _ in 1..MAX_TERMS {
        let children = cur.step()?;
        if children > 0 {
            let slot = pending.get_mut(depth).ok_or(EtfError::TooDeep)?;
            *slot = children;
            depth += 1;
            continue;
        }
        // A term ended: close every container it completes.
        loop {
            let Some(open) = depth.checked_sub(1).and_then(|top| pending.get_mut(top)) else {
                return Ok(cur.pos);
            };
            *open -= 1;
            if *open > 0 {
                break;
            }
            depth -= 1;
        }
    }
    Err(EtfError::TooManyTerms)
}

/// Reads the scalar at `pos` without validating what follows it.
pub fn scalar(buf: &[u8], pos: usize) -> Result<Scalar<'_>, EtfError> {
    let mut cur = Cursor { buf, pos };
    let tag = cur.tag()?;
    if let Some(name) = cur.atom_name(tag)? {
        return Ok(Scalar::Atom(name));
    }
    Ok(match tag {
        tag::BINARY => {
            let len = cur.u32()?;
            Scalar::Binary(cur.take(len)?)
        }
        tag::SMALL_INTEGER => Scalar::Integer(cur.u8()? as i128),
        tag::INTEGER => Scalar::Integer(i32::from_be_bytes(cur.array()?).into()),
        tag::SMALL_BIG => {
            let len = cur.u8()?;
            let negative = cur.u8()? != 0;
            let digits = cur.take(len)?;
            if len > 8 {
                return Ok(Scalar::Other);
            }
            // Little-endian magnitude of at most 8 bytes: fits a u64.
            let magnitude = digits
                .iter()
                .rev()
                .fold(0u64, |acc, &d| acc << 8 | u64::from(d));
            let value = i128::from(magnitude);
            Scalar::Integer(if negative { -value } else { value })
        }
        _ => Scalar::Other,
    })
}

/// The top-level fields of a map term, as `(key_start, value_start)` offsets; see [`map_fields`].
#[derive(Debug, Clone)]
pub struct MapFields<'a> {
    buf: &'a [u8],
    next: usize,
    remaining: u32,
    failed: bool,
}

/// For a term that is a map (tag 116): iterates its `(key_start, value_start)` offsets, top level
/// only, validating each key and value with [`skip_term`]. The iterator stops after the first
/// error.
pub fn map_fields(buf: &[u8], pos: usize) -> Result<MapFields<'_>, EtfError> {
    let mut cur = Cursor { buf, pos };
    if cur.tag()? != tag::MAP {
        return Err(EtfError::NotAMap);
    }
    let arity = cur.u32()?;
    cur.plausible(2 * arity as u64)?;
    Ok(MapFields {
        buf,
        next: cur.pos,
        remaining: arity as u32, // read from a u32 field
        failed: false,
    })
}

impl MapFields<'_> {
    /// Number of fields not yet returned.
    pub fn remaining(&self) -> usize {
        self.remaining as usize
    }

    /// The offset just past the map, once every field has been read without error.
    pub fn end(&self) -> Option<usize> {
        (self.remaining == 0 && !self.failed).then_some(self.next)
    }
}

impl Iterator for MapFields<'_> {
    type Item = Result<(usize, usize), EtfError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 || self.failed {
            return None;
        }
        let key = self.next;
        let field =
            skip_term(self.buf, key).and_then(|value| Ok((value, skip_term(self.buf, value)?)));
        match field {
            Ok((value, end)) => {
                self.next = end;
                self.remaining -= 1;
                Some(Ok((key, value)))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Appends a complete versioned ETF list `[E1, ..., En]` whose elements are already-encoded terms
/// without version byte; no elements give the empty list (131, 106). The count written is the
/// number of items actually yielded (at most `u32::MAX`), whatever the iterator's size hint says.
pub fn write_list<'a>(items: impl IntoIterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[VERSION, tag::LIST, 0, 0, 0, 0]);
    let mut count: u32 = 0;
    for item in items.into_iter().take(u32::MAX as usize) {
        out.extend_from_slice(item);
        count += 1;
    }
    if count == 0 {
        out.truncate(start);
        out.extend_from_slice(&[VERSION, tag::NIL]);
        return;
    }
    let count_at = start + 2;
    out[count_at..count_at + 4].copy_from_slice(&count.to_be_bytes()); // written just above
    out.push(tag::NIL);
}

/// ETF tags (erts `external.h`).
pub mod tag {
    /// `NEW_FLOAT_EXT`: a float as 8 bytes, big-endian IEEE 754 double.
    pub const NEW_FLOAT: u8 = 70;
    /// `BIT_BINARY_EXT`: a bitstring: 4-byte length, the number of bits used in the last byte, then
    /// the bytes.
    pub const BIT_BINARY: u8 = 77;
    /// A zlib-compressed term (4-byte uncompressed size, then the data); rejected with
    /// [`EtfError::Compressed`](super::EtfError::Compressed).
    pub const COMPRESSED: u8 = 80;
    /// `NEW_PID_EXT`: a pid: node atom, then 4-byte id, serial and creation.
    pub const NEW_PID: u8 = 88;
    /// `NEW_PORT_EXT`: a port: node atom, then 4-byte id and creation.
    pub const NEW_PORT: u8 = 89;
    /// `NEWER_REFERENCE_EXT`: a reference: 2-byte word count, node atom, 4-byte creation, then the
    /// 4-byte id words.
    pub const NEWER_REFERENCE: u8 = 90;
    /// `SMALL_INTEGER_EXT`: an integer in 0..=255, one byte.
    pub const SMALL_INTEGER: u8 = 97;
    /// `INTEGER_EXT`: a signed 32-bit integer, big-endian.
    pub const INTEGER: u8 = 98;
    /// `FLOAT_EXT`: the old float format, 31 bytes of text.
    pub const FLOAT: u8 = 99;
    /// `ATOM_EXT`: the old Latin-1 atom with a 2-byte length.
    pub const ATOM: u8 = 100;
    /// `REFERENCE_EXT`: the old reference: node atom, 4-byte id, 1-byte creation.
    pub const REFERENCE: u8 = 101;
    /// `PORT_EXT`: the old port: node atom, 4-byte id, 1-byte creation.
    pub const PORT: u8 = 102;
    /// `PID_EXT`: the old pid: node atom, 4-byte id and serial, 1-byte creation.
    pub const PID: u8 = 103;
    /// `SMALL_TUPLE_EXT`: a tuple with a 1-byte arity; its elements follow.
    pub const SMALL_TUPLE: u8 = 104;
    /// `LARGE_TUPLE_EXT`: a tuple with a 4-byte arity; its elements follow.
    pub const LARGE_TUPLE: u8 = 105;
    /// `NIL_EXT`: the empty list `[]`, also the tail of a proper list.
    pub const NIL: u8 = 106;
    /// `STRING_EXT`: a list of bytes (integers 0..=255) with a 2-byte length.
    pub const STRING: u8 = 107;
    /// `LIST_EXT`: a list: 4-byte element count, the elements, then the tail (`NIL` when proper).
    pub const LIST: u8 = 108;
    /// `BINARY_EXT`: a binary: 4-byte length, then the bytes.
    pub const BINARY: u8 = 109;
    /// `SMALL_BIG_EXT`: an integer of up to 255 bytes: 1-byte length, sign byte, little-endian
    /// magnitude. Erlang uses it for integers beyond 32 bits, such as ms timestamps.
    pub const SMALL_BIG: u8 = 110;
    /// `LARGE_BIG_EXT`: an integer with a 4-byte length, sign byte, little-endian magnitude.
    pub const LARGE_BIG: u8 = 111;
    /// `NEW_FUN_EXT`: a fun; its 4-byte size counts the whole fun, the size field included.
    pub const NEW_FUN: u8 = 112;
    /// `EXPORT_EXT`: `fun M:F/A`; three terms follow: module, function, arity.
    pub const EXPORT: u8 = 113;
    /// `NEW_REFERENCE_EXT`: a reference: 2-byte word count, node atom, 1-byte creation, then the
    /// 4-byte id words.
    pub const NEW_REFERENCE: u8 = 114;
    /// `SMALL_ATOM_EXT`: the old Latin-1 atom with a 1-byte length.
    pub const SMALL_ATOM: u8 = 115;
    /// `MAP_EXT`: a map: 4-byte arity, then that many key/value pairs.
    pub const MAP: u8 = 116;
    /// `ATOM_UTF8_EXT`: a UTF-8 atom with a 2-byte length.
    pub const ATOM_UTF8: u8 = 118;
    /// `SMALL_ATOM_UTF8_EXT`: a UTF-8 atom with a 1-byte length (what OTP 25 writes).
    pub const SMALL_ATOM_UTF8: u8 = 119;
    /// `V4_PORT_EXT`: a port: node atom, 8-byte id, 4-byte creation.
    pub const V4_PORT: u8 = 120;
}

/// A position in a buffer; every read is bounds-checked before it advances.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], EtfError> {
        let end = self.pos.checked_add(len).ok_or(EtfError::Truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or(EtfError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn skip(&mut self, len: usize) -> Result<(), EtfError> {
        self.take(len).map(drop)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EtfError> {
        self.take(N)?.try_into().map_err(|_| EtfError::Truncated)
    }

    fn tag(&mut self) -> Result<u8, EtfError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn u8(&mut self) -> Result<usize, EtfError> {
        Ok(u8::from_be_bytes(self.array()?).into())
    }

    fn u16(&mut self) -> Result<usize, EtfError> {
        Ok(u16::from_be_bytes(self.array()?).into())
    }

    fn u32(&mut self) -> Result<usize, EtfError> {
        Ok(u32::from_be_bytes(self.array()?) as usize)
    }

    /// Each term takes at least one byte, so a container announcing more terms than there are
    /// bytes left is rejected before any of them is read.
    fn plausible(&self, terms: u64) -> Result<u64, EtfError> {
        if terms > self.remaining() as u64 {
            return Err(EtfError::TooManyElements);
        }
        Ok(terms)
    }

    /// Reads the name of an atom whose tag was just read; `None` when `tag` is no atom tag.
    fn atom_name(&mut self, tag: u8) -> Result<Option<&'a [u8]>, EtfError> {
        let len = match tag {
            tag::ATOM | tag::ATOM_UTF8 => self.u16()?,
            tag::SMALL_ATOM | tag::SMALL_ATOM_UTF8 => self.u8()?,
            _ => return Ok(None),
        };
        self.take(len).map(Some)
    }

    /// Skips the node-name atom embedded in pids, ports and references.
    fn node_atom(&mut self) -> Result<(), EtfError> {
        let tag = self.tag()?;
        match self.atom_name(tag)? {
            Some(_) => Ok(()),
            None => Err(EtfError::ExpectedAtom(tag)),
        }
    }

    /// Reads one term's own bytes (a whole scalar, or a container's header) and returns how many
    /// nested terms follow it.
    fn step(&mut self) -> Result<u64, EtfError> {
        let tag = self.tag()?;
        if self.atom_name(tag)?.is_some() {
            return Ok(0);
        }
        match tag {
            tag::SMALL_INTEGER => self.skip(1)?,
            tag::INTEGER => self.skip(4)?,
            tag::FLOAT => self.skip(31)?,
            tag::NEW_FLOAT => self.skip(8)?,
            tag::NIL => {}
            tag::SMALL_TUPLE => {
                let arity = self.u8()?;
                return self.plausible(arity as u64);
            }
            tag::LARGE_TUPLE => {
                let arity = self.u32()?;
                return self.plausible(arity as u64);
            }
            tag::MAP => {
                let arity = self.u32()?;
                return self.plausible(2 * arity as u64);
            }
            // The elements, then the tail.
            tag::LIST => {
                let len = self.u32()?;
                return self.plausible(len as u64 + 1);
            }
            // Module, function, arity.
            tag::EXPORT => return self.plausible(3),
            tag::STRING => {
                let len = self.u16()?;
                self.skip(len)?;
            }
            tag::BINARY => {
                let len = self.u32()?;
                self.skip(len)?;
            }
            tag::BIT_BINARY => {
                let len = self.u32()?;
                self.skip(1)?;
                self.skip(len)?;
            }
            tag::SMALL_BIG => {
                let len = self.u8()?;
                self.skip(1 + len)?;
            }
            tag::LARGE_BIG => {
                let len = self.u32()?;
                self.skip(1)?;
                self.skip(len)?;
            }
            tag::NEW_PID | tag::V4_PORT => {
                self.node_atom()?;
                self.skip(12)?;
            }
            tag::PID => {
                self.node_atom()?;
                self.skip(9)?;
            }
            tag::NEW_PORT => {
                self.node_atom()?;
                self.skip(8)?;
            }
            tag::PORT | tag::REFERENCE => {
                self.node_atom()?;
                self.skip(5)?;
            }
            tag::NEWER_REFERENCE => {
                let words = self.u16()?;
                self.node_atom()?;
                self.skip(4 + 4 * words)?;
            }
            tag::NEW_REFERENCE => {
                let words = self.u16()?;
                self.node_atom()?;
                self.skip(1 + 4 * words)?;
            }
            // The size covers the whole fun including the size field itself.
            tag::NEW_FUN => {
                let size = self.u32()?;
                self.skip(size.checked_sub(4).ok_or(EtfError::BadFunSize)?)?;
            }
            tag::COMPRESSED => return Err(EtfError::Compressed),
            other => return Err(EtfError::UnknownTag(other)),
        }
        Ok(0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `term_to_binary(#{node_id => <<1,2>>, ttl => 300})` on OTP 25.
    pub(crate) const SMALL_MAP: &[u8] = &[
        131, 116, 0, 0, 0, 2, 119, 7, b'n', b'o', b'd', b'e', b'_', b'i', b'd', 109, 0, 0, 0, 2, 1,
        2, 119, 3, b't', b't', b'l', 98, 0, 0, 1, 44,
    ];

    /// `term_to_binary({[1, "ab", 2.5, -3], self(), make_ref(), fun lists:map/2,
    ///   <<1:3>>, 1 bsl 64, 'ok', #{}})`, hand-assembled.
    fn assorted() -> Vec<u8> {
        let node: &[u8] = &[
            119, 13, b'n', b'o', b'n', b'o', b'd', b'e', b'@', b'n', b'o', b'h', b'o', b's', b't',
        ];
        let mut t = vec![131, 104, 8];
        // [1, "ab", 2.5, -3]: list of 4 with a string and a float, proper tail.
        t.extend([108, 0, 0, 0, 4, 97, 1, 107, 0, 2, b'a', b'b', 70]);
        t.extend(2.5f64.to_be_bytes());
        t.extend([98, 0xff, 0xff, 0xff, 0xfd, 106]);
        // self()
        t.push(88);
        t.extend(node);
        t.extend([0, 0, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0]);
        // make_ref()
        t.extend([90, 0, 3]);
        t.extend(node);
        t.extend([0; 4 + 12]);
        // fun lists:map/2
        t.extend([
            113, 119, 5, b'l', b'i', b's', b't', b's', 119, 3, b'm', b'a', b'p', 97, 2,
        ]);
        // <<1:3>>
        t.extend([77, 0, 0, 0, 1, 3, 0b0010_0000]);
        // 1 bsl 64
        t.extend([110, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        // ok (old ATOM_EXT)
        t.extend([100, 0, 2, b'o', b'k']);
        // #{}
        t.extend([116, 0, 0, 0, 0]);
        t
    }

    #[test]
    fn skips_real_terms() {
        assert_eq!(skip_term(SMALL_MAP, 1), Ok(SMALL_MAP.len()));
        let t = assorted();
        assert_eq!(skip_term(&t, 1), Ok(t.len()));
        // A term inside a larger buffer ends where it ends.
        let mut longer = SMALL_MAP.to_vec();
        longer.extend([1, 2, 3]);
        assert_eq!(skip_term(&longer, 1), Ok(SMALL_MAP.len()));
    }

    #[test]
    fn skips_every_scalar_tag() {
        let node = [115, 1, b'n'];
        let with_node = |tag: u8, before: &[u8], after: usize| {
            let mut t = vec![tag];
            t.extend(before);
            t.extend(node);
            t.extend(vec![0; after]);
            t
        };
        let cases: Vec<Vec<u8>> = vec![
            [&[99u8][..], &[b'1'; 31]].concat(),
            vec![111, 0, 0, 0, 2, 1, 5, 6],
            with_node(103, &[], 9),
            with_node(89, &[], 8),
            with_node(102, &[], 5),
            with_node(120, &[], 12),
            with_node(101, &[], 5),
            with_node(114, &[0, 2], 1 + 8),
            vec![105, 0, 0, 0, 1, 106],
            vec![118, 0, 1, b'x'],
            [&[112u8, 0, 0, 0, 10][..], &[0; 6]].concat(),
        ];
        for t in cases {
            assert_eq!(skip_term(&t, 0), Ok(t.len()), "{t:?}");
        }
    }

    #[test]
    fn every_cut_of_a_valid_term_is_an_error() {
        for term in [SMALL_MAP.to_vec(), assorted()] {
            for cut in 1..term.len() {
                assert!(skip_term(&term[..cut], 1).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn huge_announced_counts_are_rejected_at_once() {
        assert_eq!(
            skip_term(&[108, 255, 255, 255, 255, 106], 0),
            Err(EtfError::TooManyElements)
        );
        assert_eq!(
            skip_term(&[116, 255, 255, 255, 255, 106], 0),
            Err(EtfError::TooManyElements)
        );
        assert_eq!(
            skip_term(&[105, 255, 255, 255, 255, 106], 0),
            Err(EtfError::TooManyElements)
        );
        assert_eq!(
            map_fields(&[116, 0, 0, 0, 2, 97, 1], 0).err(),
            Some(EtfError::TooManyElements)
        );
        assert_eq!(
            skip_term(&[109, 255, 255, 255, 255, 1], 0),
            Err(EtfError::Truncated)
        );
        assert_eq!(skip_term(&[112, 0, 0, 0, 2], 0), Err(EtfError::BadFunSize));
        assert_eq!(
            skip_term(&[112, 255, 255, 255, 255], 0),
            Err(EtfError::Truncated)
        );
    }

    #[test]
    fn deep_nesting_is_rejected_without_recursion() {
        let depth = 100_000;
        let mut lists = [108, 0, 0, 0, 1].repeat(depth);
        lists.extend(vec![106; depth + 1]);
        assert_eq!(skip_term(&lists, 0), Err(EtfError::TooDeep));
        let mut tuples = [104, 1].repeat(depth);
        tuples.push(106);
        assert_eq!(skip_term(&tuples, 0), Err(EtfError::TooDeep));
        // Exactly MAX_DEPTH containers are fine.
        let mut ok = [104, 1].repeat(MAX_DEPTH);
        ok.push(106);
        assert_eq!(skip_term(&ok, 0), Ok(ok.len()));
        ok.splice(0..0, [104, 1]);
        assert_eq!(skip_term(&ok, 0), Err(EtfError::TooDeep));
    }

    #[test]
    fn work_per_call_is_capped() {
        let list = |n: usize| {
            let mut t = vec![108];
            t.extend((n as u32).to_be_bytes());
            t.extend([97, 0].repeat(n));
            t.push(106);
            t
        };
        // The list, its elements and its tail.
        let fits = list(MAX_TERMS - 2);
        assert_eq!(skip_term(&fits, 0), Ok(fits.len()));
        assert_eq!(
            skip_term(&list(MAX_TERMS - 1), 0),
            Err(EtfError::TooManyTerms)
        );
    }

    #[test]
    fn bad_tags_are_reported() {
        assert_eq!(skip_term(&[42], 0), Err(EtfError::UnknownTag(42)));
        assert_eq!(
            skip_term(&[80, 0, 0, 0, 1, 0], 0),
            Err(EtfError::Compressed)
        );
        assert_eq!(skip_term(&[88, 97, 1], 0), Err(EtfError::ExpectedAtom(97)));
        assert_eq!(skip_term(&[], 0), Err(EtfError::Truncated));
        assert_eq!(skip_term(&[106], 5), Err(EtfError::Truncated));
    }

    #[test]
    fn reads_scalars() {
        assert_eq!(scalar(SMALL_MAP, 6), Ok(Scalar::Atom(b"node_id")));
        assert_eq!(scalar(SMALL_MAP, 15), Ok(Scalar::Binary(&[1, 2])));
        assert_eq!(scalar(SMALL_MAP, 27), Ok(Scalar::Integer(300)));
        assert_eq!(scalar(&[97, 200], 0), Ok(Scalar::Integer(200)));
        assert_eq!(
            scalar(&[98, 255, 255, 255, 255], 0),
            Ok(Scalar::Integer(-1))
        );
        assert_eq!(scalar(&[100, 0, 2, b'o', b'k'], 0), Ok(Scalar::Atom(b"ok")));
        assert_eq!(scalar(&[115, 2, b'o', b'k'], 0), Ok(Scalar::Atom(b"ok")));
        assert_eq!(scalar(&[118, 0, 2, b'o', b'k'], 0), Ok(Scalar::Atom(b"ok")));
        // 1764160000000 (a ms timestamp) is a SMALL_BIG.
        let ms = 1_764_160_000_000u64;
        let mut big = vec![110, 6, 0];
        big.extend(&ms.to_le_bytes()[..6]);
        assert_eq!(scalar(&big, 0), Ok(Scalar::Integer(ms.into())));
        assert_eq!(scalar(&[110, 1, 1, 7], 0), Ok(Scalar::Integer(-7)));
        let max = [110, 8, 0, 255, 255, 255, 255, 255, 255, 255, 255];
        assert_eq!(scalar(&max, 0), Ok(Scalar::Integer(u64::MAX.into())));
        assert_eq!(
            scalar(&[110, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 0),
            Ok(Scalar::Other)
        );
        assert_eq!(scalar(&[106], 0), Ok(Scalar::Other));
        assert_eq!(scalar(&[109, 0, 0, 0, 3, 1], 0), Err(EtfError::Truncated));
    }

    #[test]
    fn iterates_map_fields() {
        let term = strip_version(SMALL_MAP).unwrap();
        let mut fields = map_fields(term, 0).unwrap();
        assert_eq!(fields.remaining(), 2);
        assert_eq!(fields.next(), Some(Ok((5, 14))));
        assert_eq!(fields.end(), None);
        assert_eq!(fields.next(), Some(Ok((21, 26))));
        assert_eq!(fields.next(), None);
        assert_eq!(fields.end(), Some(term.len()));
        assert_eq!(map_fields(&[106], 0).err(), Some(EtfError::NotAMap));
        // A bad value stops the iteration.
        let bad = [116, 0, 0, 0, 2, 97, 1, 42, 97, 1, 97, 2];
        let mut fields = map_fields(&bad, 0).unwrap();
        assert_eq!(fields.next(), Some(Err(EtfError::UnknownTag(42))));
        assert_eq!(fields.next(), None);
        assert_eq!(fields.end(), None);
    }

    #[test]
    fn version_byte() {
        assert_eq!(strip_version(&[131, 106]), Ok(&[106][..]));
        assert_eq!(strip_version(&[106]), Err(EtfError::MissingVersion));
        assert_eq!(strip_version(&[]), Err(EtfError::MissingVersion));
    }

    #[test]
    fn writes_lists() {
        let mut out = vec![7];
        write_list(std::iter::empty(), &mut out);
        assert_eq!(out, [7, 131, 106]);
        out.clear();
        let items: [&[u8]; 2] = [&[97, 1], &[106]];
        write_list(items, &mut out);
        assert_eq!(out, [131, 108, 0, 0, 0, 2, 97, 1, 106, 106]);
        assert_eq!(skip_term(&out, 1), Ok(out.len()));
    }
}
