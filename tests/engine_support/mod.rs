//! Test-only ETF writer: builds provider terms the way `term_to_binary/1` does (OTP 25: atoms as
//! SMALL_ATOM_UTF8), for the engine's unit tests, property tests and benches. Trusted input only,
//! so it recurses freely.
#![allow(dead_code)] // each includer uses a part

/// The few term shapes the tests need.
#[derive(Debug, Clone)]
pub enum Term<'a> {
    Atom(&'a str),
    Bin(&'a [u8]),
    Int(i64),
    Map(Vec<(Term<'a>, Term<'a>)>),
}

/// `term_to_binary(Term)`: version byte, then the term.
pub fn encode(term: &Term) -> Vec<u8> {
    let mut out = vec![131];
    write(term, &mut out);
    out
}

/// A provider map with atom keys: `node_id` and `ttl` when given, then `extra` fields.
pub fn provider(node_id: Option<&[u8]>, ttl: Option<i64>, extra: &[(&str, Term)]) -> Vec<u8> {
    let mut fields = Vec::new();
    if let Some(id) = node_id {
        fields.push((Term::Atom("node_id"), Term::Bin(id)));
    }
    if let Some(ttl) = ttl {
        fields.push((Term::Atom("ttl"), Term::Int(ttl)));
    }
    fields.extend(extra.iter().map(|(k, v)| (Term::Atom(k), v.clone())));
    encode(&Term::Map(fields))
}

/// The provider of the memory budget (158 term bytes): `#{advertised_at => 1764160000,
/// endpoint => <<30 bytes>>, metadata => #{version => <<"1.0">>}, node_id => <<32 bytes>>,
/// ttl => 300}`, keys in the order `term_to_binary` writes them.
pub fn sample_provider(node_id: &[u8; 32]) -> Vec<u8> {
    let metadata = Term::Map(vec![(Term::Atom("version"), Term::Bin(b"1.0"))]);
    encode(&Term::Map(vec![
        (Term::Atom("advertised_at"), Term::Int(1_764_160_000)),
        (
            Term::Atom("endpoint"),
            Term::Bin(b"https://node-0001.example:9443"),
        ),
        (Term::Atom("metadata"), metadata),
        (Term::Atom("node_id"), Term::Bin(node_id)),
        (Term::Atom("ttl"), Term::Int(300)),
    ]))
}

fn write(term: &Term, out: &mut Vec<u8>) {
    match term {
        Term::Atom(name) => {
            out.extend([119, name.len() as u8]);
            out.extend(name.as_bytes());
        }
        Term::Bin(bytes) => {
            out.push(109);
            out.extend((bytes.len() as u32).to_be_bytes());
            out.extend(*bytes);
        }
        Term::Int(i @ 0..=255) => out.extend([97, *i as u8]),
        Term::Int(i) => match i32::try_from(*i) {
            Ok(small) => {
                out.push(98);
                out.extend(small.to_be_bytes());
            }
            Err(_) => {
                let digits = i.unsigned_abs().to_le_bytes();
                let len = 8 - digits.iter().rev().take_while(|d| **d == 0).count();
                out.extend([110, len as u8, u8::from(*i < 0)]);
                out.extend(&digits[..len]);
            }
        },
        Term::Map(fields) => {
            out.push(116);
            out.extend((fields.len() as u32).to_be_bytes());
            for (k, v) in fields {
                write(k, out);
                write(v, out);
            }
        }
    }
}
