//! The writer: builds terms as `erlang:term_to_binary(T, [{minor_version, 2}])` does on OTP 25.

use super::{tag, VERSION};

/// Appends external terms to a buffer, byte for byte as `term_to_binary(T, [{minor_version, 2}])`.
///
/// Containers are written as a header followed by their elements: [`Writer::map`] then `arity`
/// key/value pairs, which the caller must give in Erlang's term order (for atom keys, the order of
/// their names). Lengths above `u32::MAX` are cut there, so the output always stays one term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer(Vec<u8>);

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    /// A complete external term: starts with the version byte.
    pub fn new() -> Writer {
        Writer(vec![VERSION])
    }

    /// Term bytes without version byte, as embedded in other terms.
    pub fn unversioned() -> Writer {
        Writer(Vec::new())
    }

    /// The bytes written so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// `MAP_EXT` header; `arity` key/value pairs must follow.
    pub fn map(&mut self, arity: u32) {
        self.0.push(tag::MAP);
        self.0.extend(arity.to_be_bytes());
    }

    /// An atom: `SMALL_ATOM_UTF8_EXT` below 256 bytes, else `ATOM_UTF8_EXT` (cut to 65535 bytes
    /// on a char boundary; Erlang itself refuses atoms over 255 characters).
    pub fn atom(&mut self, name: &str) {
        if let Ok(len) = u8::try_from(name.len()) {
            self.0.extend([tag::SMALL_ATOM_UTF8, len]);
            self.0.extend(name.as_bytes());
            return;
        }
        let mut len = name.len().min(usize::from(u16::MAX));
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        self.0.push(tag::ATOM_UTF8);
        self.0.extend((len as u16).to_be_bytes()); // len <= u16::MAX by the min above
        self.0.extend(&name.as_bytes()[..len]);
    }

    /// `BINARY_EXT`.
    pub fn binary(&mut self, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.0.push(tag::BINARY);
        self.0.extend(len.to_be_bytes());
        self.0.extend(&bytes[..len as usize]);
    }

    /// A non-negative integer: `SMALL_INTEGER_EXT`, `INTEGER_EXT`, or `SMALL_BIG_EXT`.
    pub fn unsigned(&mut self, n: u64) {
        if let Ok(small) = u8::try_from(n) {
            self.0.extend([tag::SMALL_INTEGER, small]);
        } else if let Ok(int) = i32::try_from(n) {
            self.0.push(tag::INTEGER);
            self.0.extend(int.to_be_bytes());
        } else {
            // Little-endian magnitude without high zero bytes: 4 to 8 bytes here.
            let len = 8 - (n.leading_zeros() / 8) as usize;
            self.0.extend([tag::SMALL_BIG, len as u8, 0]);
            self.0.extend(&n.to_le_bytes()[..len]);
        }
    }

    /// A proper list (`LIST_EXT` with a `NIL_EXT` tail), or `NIL_EXT` when empty; `item` writes
    /// each element. At most `u32::MAX` elements are written.
    pub fn list<T>(&mut self, items: &[T], mut item: impl FnMut(&mut Self, &T)) {
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

    /// An already-encoded term without version byte, copied as is.
    pub fn raw(&mut self, term: &[u8]) {
        self.0.extend(term);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{scalar, skip_term, Scalar};
    use super::*;

    fn one(write: impl FnOnce(&mut Writer)) -> Vec<u8> {
        let mut w = Writer::unversioned();
        write(&mut w);
        w.into_bytes()
    }

    #[test]
    fn version_byte() {
        assert_eq!(Writer::new().into_bytes(), [VERSION]);
        assert_eq!(Writer::default(), Writer::new());
        assert!(Writer::unversioned().into_bytes().is_empty());
    }

    #[test]
    fn integers_as_erlang_writes_them() {
        assert_eq!(one(|w| w.unsigned(5)), [97, 5]);
        assert_eq!(one(|w| w.unsigned(255)), [97, 255]);
        assert_eq!(one(|w| w.unsigned(300)), [98, 0, 0, 1, 44]);
        assert_eq!(
            one(|w| w.unsigned(i32::MAX as u64)),
            [98, 127, 255, 255, 255]
        );
        assert_eq!(one(|w| w.unsigned(1 << 31)), [110, 4, 0, 0, 0, 0, 128]);
        assert_eq!(one(|w| w.unsigned(1 << 32)), [110, 5, 0, 0, 0, 0, 0, 1]);
        let max = one(|w| w.unsigned(u64::MAX));
        assert_eq!(max, [110, 8, 0, 255, 255, 255, 255, 255, 255, 255, 255]);
        for n in [1 << 31, 1 << 32, u64::MAX] {
            assert_eq!(
                scalar(&one(|w| w.unsigned(n)), 0),
                Ok(Scalar::Integer(n.into()))
            );
        }
    }

    #[test]
    fn atoms_binaries_maps_lists() {
        assert_eq!(one(|w| w.atom("ok")), [119, 2, b'o', b'k']);
        let long = "a".repeat(256);
        let bytes = one(|w| w.atom(&long));
        assert_eq!(bytes[..3], [118, 1, 0]);
        assert_eq!(skip_term(&bytes, 0), Ok(3 + 256));
        assert_eq!(one(|w| w.binary(b"hi")), [109, 0, 0, 0, 2, b'h', b'i']);
        assert_eq!(one(|w| w.list::<u8>(&[], |_, _| {})), [106]);
        let list = one(|w| w.list(&[1u64, 2], |w, n| w.unsigned(*n)));
        assert_eq!(list, [108, 0, 0, 0, 2, 97, 1, 97, 2, 106]);
        // #{a => <<>>}
        let map = one(|w| {
            w.map(1);
            w.atom("a");
            w.raw(&[109, 0, 0, 0, 0]);
        });
        assert_eq!(map, [116, 0, 0, 0, 1, 119, 1, b'a', 109, 0, 0, 0, 0]);
        assert_eq!(skip_term(&map, 0), Ok(map.len()));
    }
}
