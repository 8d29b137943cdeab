//! Reassembling WebSocket messages from data frames (RFC 6455 §5.4), with
//! the checks that decide the close code: 1002 for a broken fragment
//! sequence, 1007 for a text message that is not UTF-8, 1009 for a message
//! over the size limit.

use bytes::{Bytes, BytesMut};

use crate::bridge::session::Message;

/// Close code for a protocol error (RFC 6455 §7.4.1).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code for data that does not match the message type.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code for a message too big to process.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// The kind of a data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFrame {
    Text,
    Binary,
    Continuation,
}

/// Why a message cannot be accepted: the close code and reason to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

/// Joins fragments into messages.
#[derive(Debug)]
pub struct Assembler {
    max_size: usize,
    /// The type of the message being reassembled, if any.
    current: Option<DataFrame>,
    buffer: BytesMut,
}

impl Assembler {
    /// Creates an assembler that accepts messages up to `max_size` bytes.
    pub fn new(max_size: usize) -> Self {
        Self {
            max_size,
            current: None,
            buffer: BytesMut::new(),
        }
    }

    /// Adds a frame; returns the message once its last fragment arrived.
    pub fn push(
        &mut self,
        kind: DataFrame,
        fin: bool,
        payload: Bytes,
    ) -> Result<Option<Message>, Violation> {
        let first = match (kind, self.current) {
            (DataFrame::Continuation, None) => {
                return Err(violation(
                    CLOSE_PROTOCOL_ERROR,
                    "continuation frame without a message",
                ))
            }
            (DataFrame::Continuation, Some(first)) => first,
            (_, Some(_)) => {
                return Err(violation(
                    CLOSE_PROTOCOL_ERROR,
                    "expected a continuation frame",
                ))
            }
            (first, None) => first,
        };
        if self.buffer.len() + payload.len() > self.max_size {
            return Err(violation(CLOSE_TOO_BIG, "message too big"));
        }

        if !fin {
            self.current = Some(first);
            self.buffer.extend_from_slice(&payload);
            return Ok(None);
        }
        let whole = if self.current.is_none() {
            // An unfragmented message: no copy.
            payload
        } else {
            self.current = None;
            self.buffer.extend_from_slice(&payload);
            self.buffer.split().freeze()
        };
        finish(first, whole).map(Some)
    }
}

fn finish(kind: DataFrame, data: Bytes) -> Result<Message, Violation> {
    if kind == DataFrame::Binary {
        return Ok(Message::Binary(data));
    }
    match std::str::from_utf8(&data) {
        Ok(text) => Ok(Message::Text(text.to_owned())),
        Err(_) => Err(violation(
            CLOSE_INVALID_DATA,
            "invalid UTF-8 in a text message",
        )),
    }
}

fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(value: &'static [u8]) -> Bytes {
        Bytes::from_static(value)
    }

    #[test]
    fn fragments_are_joined() {
        let mut asm = Assembler::new(100);
        assert_eq!(asm.push(DataFrame::Text, false, bytes(b"he")), Ok(None));
        assert_eq!(
            asm.push(DataFrame::Continuation, false, bytes(b"l")),
            Ok(None)
        );
        let message = asm.push(DataFrame::Continuation, true, bytes(b"lo"));
        assert_eq!(message, Ok(Some(Message::Text("hello".into()))));
        let message = asm.push(DataFrame::Binary, true, bytes(b"\xff"));
        assert_eq!(message, Ok(Some(Message::Binary(bytes(b"\xff")))));
    }

    #[test]
    fn utf8_split_across_fragments_is_valid() {
        let mut asm = Assembler::new(100);
        asm.push(DataFrame::Text, false, bytes(b"caf\xc3")).unwrap();
        let message = asm.push(DataFrame::Continuation, true, bytes(b"\xa9"));
        assert_eq!(message, Ok(Some(Message::Text("café".into()))));
    }

    #[test]
    fn invalid_utf8_is_1007() {
        let mut asm = Assembler::new(100);
        let err = asm.push(DataFrame::Text, true, bytes(b"\xff")).unwrap_err();
        assert_eq!(err.code, CLOSE_INVALID_DATA);
    }

    #[test]
    fn broken_sequences_are_1002() {
        let mut asm = Assembler::new(100);
        let err = asm
            .push(DataFrame::Continuation, true, bytes(b"x"))
            .unwrap_err();
        assert_eq!(err.code, CLOSE_PROTOCOL_ERROR);

        let mut asm = Assembler::new(100);
        asm.push(DataFrame::Text, false, bytes(b"x")).unwrap();
        let err = asm.push(DataFrame::Binary, true, bytes(b"y")).unwrap_err();
        assert_eq!(err.code, CLOSE_PROTOCOL_ERROR);
    }

    #[test]
    fn size_limit_counts_all_fragments() {
        let mut asm = Assembler::new(4);
        assert!(asm.push(DataFrame::Binary, true, bytes(b"1234")).is_ok());
        asm.push(DataFrame::Binary, false, bytes(b"123")).unwrap();
        let err = asm
            .push(DataFrame::Continuation, true, bytes(b"45"))
            .unwrap_err();
        assert_eq!(err.code, CLOSE_TOO_BIG);
    }
}
