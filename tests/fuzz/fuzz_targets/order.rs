//! An order as the daemon hands it to its child (any bytes on the child's stdin):
//! the framing never panics and never allocates past its bound, and an order that
//! decodes crosses its own framing unchanged (byte for byte).
#![no_main]
use faultline_agent::child::{Frames, MAX_MESSAGE, frame};
use faultline_proto::v1::FaultSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut frames = Frames::default();
    frames.push(data);
    let Ok(Some(spec)) = frames.next_message::<FaultSpec>() else {
        return;
    };
    let bytes = frame(&spec);
    assert!(bytes.len() <= MAX_MESSAGE + 10, "{}", bytes.len());
    let mut again = Frames::default();
    again.push(&bytes);
    // Compared as bytes: a NaN percentage is not equal to itself.
    let decoded = again.next_message::<FaultSpec>().expect("frames").expect("whole");
    assert_eq!(frame(&decoded), bytes);
    assert_eq!(again.pending(), 0);
});
