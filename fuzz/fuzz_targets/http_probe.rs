//! The HTTP-vs-legacy detection on arbitrary bytes: it never panics, once a
//! prefix is HTTP every longer input is too, and the request decoder never
//! hands out as a command text that the probe calls HTTP.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rexec::legacy::{RequestCodec, RequestForm, request_form};
use rexec::legacy::http::{HttpProbe, probe};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let whole = probe(data);
    for cut in 0..=data.len().min(256) {
        if matches!(probe(&data[..cut]), HttpProbe::Http(_)) {
            assert!(matches!(whole, HttpProbe::Http(_)), "HTTP at {cut} but not whole");
        }
    }
    // Text (not a framed request) that is HTTP is never decoded as a command.
    if request_form(data) == RequestForm::Text && matches!(whole, HttpProbe::Http(_)) {
        let mut codec = RequestCodec::new();
        let mut buf = BytesMut::from(data);
        let decoded = match codec.decode(&mut buf) {
            Ok(None) => codec.decode_eof(&mut buf),
            other => other,
        };
        assert!(!matches!(decoded, Ok(Some(_))), "ran HTTP as a command");
    }
});
