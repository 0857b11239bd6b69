//! Feeds arbitrary bytes, split at an arbitrary point, to the legacy request
//! and response decoders: they may return errors, never panic or loop.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rexec::legacy::{RequestCodec, ResponseCodec};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let split = (split as usize).min(data.len());

    let mut codec = RequestCodec::new();
    let mut buf = BytesMut::from(&data[..split]);
    for chunk in [&data[split..], &[][..]] {
        // Decode everything the buffer holds; each success must consume bytes.
        for _ in 0..1024 {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(_)) => assert!(buf.len() < before || before == 0, "decoded without consuming"),
                Ok(None) | Err(_) => break,
            }
        }
        buf.extend_from_slice(chunk);
    }
    let _ = codec.decode_eof(&mut buf);

    let mut codec = ResponseCodec::new();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = codec.decode(&mut buf) {}
    let _ = codec.decode_eof(&mut buf);
});
