//! Arbitrary bytes into the agent protocol decoder: it must never panic, and
//! every message it accepts must encode back to the same frame.
#![no_main]

use hypercontainer_protocol::codec::{decode_frame, read_message};
use hypercontainer_protocol::FrameDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // One frame from a buffer.
    if let Ok(Some((msg, used))) = decode_frame(data) {
        let frame = msg.to_frame().expect("a decoded message re-encodes");
        assert_eq!(&frame[..], &data[..used], "decoding is canonical");
    }

    // A stream through the incremental decoder, fed in uneven pieces.
    let mut dec = FrameDecoder::new();
    let split = data.first().map_or(1, |b| usize::from(*b % 13) + 1);
    'feed: for chunk in data.chunks(split) {
        dec.feed(chunk);
        loop {
            match dec.next_message() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }

    // The same stream through the blocking reader.
    let mut r = data;
    while let Ok(Some(_)) = read_message(&mut r) {}
});
