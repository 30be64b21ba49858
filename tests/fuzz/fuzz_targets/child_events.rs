//! What a child writes to the daemon (any bytes, arriving in chunks of any size; the
//! first byte picks the size): the daemon's reading never panics, never holds more
//! than it was given, and every report it takes is one the child framed whole.
#![no_main]
use faultline_agent::child::{Frames, frame};
use faultline_proto::v1::ChildReport;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&size, bytes)) = data.split_first() else {
        return;
    };
    let mut frames = Frames::default();
    let mut taken = 0;
    for chunk in bytes.chunks(usize::from(size).max(1)) {
        frames.push(chunk);
        loop {
            match frames.next_message::<ChildReport>() {
                Ok(Some(report)) => taken += frame(&report).len(),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(frames.pending() <= bytes.len());
    }
    // Re-encoding may be shorter (a default field the child wrote out), never longer.
    assert!(taken <= bytes.len(), "{taken} > {}", bytes.len());
});
