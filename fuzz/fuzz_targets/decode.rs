//! Feeds arbitrary bytes to every decoder that sees untrusted input: the wire messages, the
//! bounded ETF walker and the provider parser. Any panic, overflow or sanitizer report is a bug;
//! so is a decoded message that does not survive its own encode/decode round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use macula_dht::etf;
use macula_dht::wire::{Request, Response};
use macula_dht::ProviderRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::decode(data) {
        assert_eq!(Request::decode(&req.encode()).as_ref(), Ok(&req));
    }
    if let Ok(resp) = Response::decode(data) {
        assert_eq!(Response::decode(&resp.encode()).as_ref(), Ok(&resp));
    }
    let _ = etf::skip_term(data, 0);
    if let Ok(term) = etf::strip_version(data) {
        let _ = etf::skip_term(term, 0);
    }
    let _ = ProviderRecord::parse(data);
});
