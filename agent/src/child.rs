//! The contract between the daemon and an order's child, in the contract's own
//! messages (`faultline_proto::v1`): the child (`faultline-agent __order`) reads the
//! `FaultSpec` the coordinator sent on its stdin, and reports with `ChildReport`
//! messages on its stdout — armed, its readings, its counters, removed, or the error
//! that stopped it. Each message is length-delimited protobuf. No command line is
//! rebuilt from an order and no output is scraped: what crosses is typed both ways.
//!
//! This file is the framing, pure and fuzzed (tests/fuzz: bytes from a child are
//! read here, and must never make the daemon panic or allocate without bound).
use prost::Message;

/// The largest message either side accepts; an order or a report is a few hundred
/// bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// `m`, length-delimited, ready to write.
pub fn frame(m: &impl Message) -> Vec<u8> {
    m.encode_length_delimited_to_vec()
}

/// Why a stream of frames cannot be read on.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a message announces {0} bytes; at most {MAX_MESSAGE} are accepted")]
    TooLarge(u64),
    #[error("a length prefix is longer than ten bytes")]
    BadLength,
    #[error("a message does not decode: {0}")]
    Decode(String),
}

/// Splits a byte stream into messages, whatever the chunks it arrives in.
#[derive(Debug, Default)]
pub struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    /// Appends bytes as they arrive.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `None` until one has fully arrived. After an error
    /// the stream cannot be trusted; the caller stops reading it.
    pub fn next_message<M: Message + Default>(&mut self) -> Result<Option<M>, FrameError> {
        let mut len: u64 = 0;
        let mut prefix = 0;
        loop {
            let Some(&b) = self.buf.get(prefix) else {
                return Ok(None);
            };
            if prefix == 10 {
                return Err(FrameError::BadLength);
            }
            len |= u64::from(b & 0x7f) << (7 * prefix);
            prefix += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if len > MAX_MESSAGE as u64 {
            return Err(FrameError::TooLarge(len));
        }
        let end = prefix + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let message =
            M::decode(&self.buf[prefix..end]).map_err(|e| FrameError::Decode(e.to_string()));
        self.buf.drain(..end);
        message.map(Some)
    }

    /// Bytes received that do not make a whole message yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use faultline_proto::v1::{
        ChildArmed, ChildError, ChildReport, FaultReadings, FaultSpec, GcReadings, child_report,
        fault_readings,
    };

    use super::*;

    #[test]
    fn messages_cross_in_any_chunks() {
        let reports = [
            ChildReport {
                report: Some(child_report::Report::Armed(ChildArmed {
                    detail: "gc pressure on x".into(),
                })),
            },
            ChildReport {
                report: Some(child_report::Report::Readings(FaultReadings {
                    kind: Some(fault_readings::Kind::Gc(GcReadings {
                        usage_bytes: 1 << 26,
                        psi_some_avg10: 1.5,
                        reclaimed_pages: 300,
                    })),
                })),
            },
            ChildReport {
                report: Some(child_report::Report::Error(ChildError {
                    message: "x".repeat(1000),
                    refused: true,
                })),
            },
        ];
        let bytes: Vec<u8> = reports.iter().flat_map(frame).collect();
        for chunk in [1, 2, 7, bytes.len()] {
            let mut f = Frames::default();
            let mut got = Vec::new();
            for c in bytes.chunks(chunk) {
                f.push(c);
                while let Some(r) = f.next_message::<ChildReport>().unwrap() {
                    got.push(r);
                }
            }
            assert_eq!(got, reports, "chunks of {chunk}");
            assert_eq!(f.pending(), 0);
        }
    }

    #[test]
    fn a_hostile_stream_is_an_error_not_an_allocation() {
        let mut f = Frames::default();
        f.push(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            f.next_message::<FaultSpec>(),
            Err(FrameError::TooLarge(_))
        ));
        let mut f = Frames::default();
        f.push(&[0x80; 11]);
        assert_eq!(f.next_message::<FaultSpec>(), Err(FrameError::BadLength));
        let mut f = Frames::default();
        f.push(&[2, 0xff, 0xff]);
        assert!(matches!(
            f.next_message::<FaultSpec>(),
            Err(FrameError::Decode(_))
        ));
    }
}
