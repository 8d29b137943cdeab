//! Following HTTP/1.1 request framing on the raw bytes of a connection.
//!
//! The scanner reads what the socket delivers, before hyper parses it, and
//! keeps track of where each request head starts: it skips a body by its
//! `Content-Length` or by its chunk sizes, so pipelined requests are seen
//! too. For each head it notes what hyper's parsed request no longer shows:
//! whether both `Content-Length` and `Transfer-Encoding` were declared, and
//! the order of the header names when one name repeats with another name in
//! between. It touches each byte of a header name once and jumps over values
//! with `memchr`, except the few values that frame the body.
//!
//! It stops for good at the HTTP/2 preface or at anything hyper rejects
//! (the connection then ends anyway). After a request for an upgrade it
//! pauses until the service reports an ordinary response.

use crate::http::header_order::{NameHasher, NameOrder};

/// Header lines tracked per head; hyper rejects a head with more than 100.
const MAX_TRACKED_HEADERS: usize = 128;

/// The first line of the HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0";

/// Maximum bytes kept while paused after a request for an upgrade. A client
/// sends nothing more before the response as a rule, so past this scanning
/// stops rather than holding more.
const MAX_HELD: usize = 64 * 1024;

/// Maximum length of a header name compared with the framing names, in bytes.
const FRAMING_NAME_LEN: usize = 17;

/// Facts about one request head that hyper's parsed request does not show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadNotes {
    /// Both `Content-Length` and `Transfer-Encoding` were declared.
    pub framing_conflict: bool,
    /// The header names in the order sent, when some name repeats with
    /// another name in between (so hyper's grouping changed the order).
    pub order: Option<NameOrder>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the request line, or in empty lines before it.
    RequestLine,
    /// At the start of a header line or inside its name.
    Name,
    /// Inside a header value that does not frame the body.
    Value,
    /// Inside a `Content-Length` value.
    ContentLength,
    /// Inside a `Transfer-Encoding` value.
    TransferEncoding,
    /// Inside a body of known length.
    Body { remaining: u64 },
    /// Inside a chunk-size line (extensions included).
    ChunkSize {
        size: u64,
        digits: bool,
        extension: bool,
    },
    /// Inside chunk data.
    ChunkData { remaining: u64 },
    /// After chunk data, up to the end of its line.
    ChunkEnd,
    /// Inside the trailer section; `empty` while the line has no bytes yet.
    Trailer { empty: bool },
    /// After a request asking for an upgrade, until the service resumes.
    Paused,
    /// Not HTTP/1.1 requests any more (HTTP/2, or hyper rejects the head).
    Stopped,
}

/// The facts of the head being read.
#[derive(Debug, Default)]
struct Head {
    /// Bytes in the request line so far (none of the leading empty lines).
    line_len: usize,
    /// The start of the request line, to spot the HTTP/2 preface and `CONNECT`.
    request_line: [u8; PREFACE_LINE.len()],
    /// The current header name: length, hash and lower-cased start.
    name_len: usize,
    name_start: [u8; FRAMING_NAME_LEN],
    hasher: NameHasher,
    /// Name hashes of this head's lines, in order.
    names: Vec<u64>,
    /// One bit per name hash seen, to skip the search for new names.
    seen: u64,
    out_of_order: bool,
    too_many: bool,
    /// A `Content-Length` line was sent, valid or not.
    content_length_sent: bool,
    /// The length all `Content-Length` values agreed on so far.
    content_length: Option<u64>,
    /// The `Content-Length` value being read.
    length_digits: Option<u64>,
    content_length_invalid: bool,
    transfer_encoding: bool,
    /// The last transfer coding of the last `Transfer-Encoding` line.
    coding: [u8; 8],
    coding_len: usize,
    upgrade: bool,
}

impl Head {
    /// Ends one `Content-Length` value. hyper accepts repeats of one value
    /// and responds 400 to an empty value or two different ones.
    fn agree_on_length(&mut self) {
        match (self.length_digits.take(), self.content_length) {
            (None, _) => self.content_length_invalid = true,
            (Some(value), Some(agreed)) if value != agreed => self.content_length_invalid = true,
            (Some(value), _) => self.content_length = Some(value),
        }
    }
}

/// Follows the request heads of one connection.
#[derive(Debug)]
pub struct RequestScanner {
    state: State,
    /// Heads completed so far, which is the index of the head being read.
    completed: u64,
    head: Head,
    /// Bytes read while paused, scanned if the connection stays HTTP/1.1.
    held: Vec<u8>,
}

impl Default for RequestScanner {
    fn default() -> Self {
        Self {
            state: State::RequestLine,
            completed: 0,
            head: Head::default(),
            held: Vec::new(),
        }
    }
}

impl RequestScanner {
    /// Scans bytes read from the socket and calls `notable` with the index
    /// and notes of each completed head that has notes.
    pub fn feed(&mut self, mut bytes: &[u8], mut notable: impl FnMut(u64, HeadNotes)) {
        while !bytes.is_empty() {
            let used = match self.state {
                State::Stopped => return,
                State::Paused => {
                    if self.held.len() + bytes.len() > MAX_HELD {
                        self.stop();
                    } else {
                        self.held.extend_from_slice(bytes);
                    }
                    return;
                }
                State::Body { remaining } => {
                    let used = remaining.min(bytes.len() as u64);
                    let remaining = remaining - used;
                    self.state = if remaining == 0 {
                        State::RequestLine
                    } else {
                        State::Body { remaining }
                    };
                    used as usize
                }
                State::ChunkData { remaining } => {
                    let used = remaining.min(bytes.len() as u64);
                    let remaining = remaining - used;
                    self.state = if remaining == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData { remaining }
                    };
                    used as usize
                }
                State::Value | State::ChunkEnd => match memchr::memchr(b'\n', bytes) {
                    None => bytes.len(),
                    Some(end) => {
                        self.state = match self.state {
                            State::Value => State::Name,
                            _ => State::ChunkSize {
                                size: 0,
                                digits: false,
                                extension: false,
                            },
                        };
                        end + 1
                    }
                },
                _ => {
                    self.step(bytes[0], &mut notable);
                    1
                }
            };
            bytes = &bytes[used..];
        }
    }

    /// Lets scanning go on after a request for an upgrade got an ordinary
    /// response, so the connection stays HTTP/1.1. Returns the bytes read
    /// while paused, which the caller feeds next.
    pub fn resume(&mut self) -> Vec<u8> {
        if self.state != State::Paused {
            return Vec::new();
        }
        self.state = State::RequestLine;
        std::mem::take(&mut self.held)
    }

    /// Stops scanning for good, for a connection that switched protocols.
    pub fn stop(&mut self) {
        self.state = State::Stopped;
        self.held = Vec::new();
    }

    /// Handles one byte in a state that reads byte by byte.
    fn step(&mut self, byte: u8, notable: &mut impl FnMut(u64, HeadNotes)) {
        let head = &mut self.head;
        match self.state {
            State::RequestLine => match byte {
                b'\n' if head.line_len == 0 => {}
                b'\n' => {
                    let preface = head.line_len == PREFACE_LINE.len()
                        && head.request_line[..] == *PREFACE_LINE;
                    self.state = if preface { State::Stopped } else { State::Name };
                }
                b'\r' => {}
                _ => {
                    if let Some(slot) = head.request_line.get_mut(head.line_len) {
                        *slot = byte;
                    }
                    head.line_len += 1;
                }
            },
            State::Name => match byte {
                b':' => self.end_name(),
                b'\n' if head.name_len == 0 => self.end_head(notable),
                // A line without a colon: hyper responds 400 and closes.
                b'\n' => self.state = State::Stopped,
                b'\r' => {}
                _ => {
                    let lower = byte.to_ascii_lowercase();
                    if let Some(slot) = head.name_start.get_mut(head.name_len) {
                        *slot = lower;
                    }
                    head.name_len += 1;
                    head.hasher.write(lower);
                }
            },
            State::ContentLength => match byte {
                b'\n' => {
                    head.agree_on_length();
                    self.state = State::Name;
                }
                b',' => head.agree_on_length(),
                b' ' | b'\t' | b'\r' => {}
                b'0'..=b'9' => {
                    let digit = u64::from(byte - b'0');
                    let value = head.length_digits.unwrap_or(0);
                    match value.checked_mul(10).and_then(|n| n.checked_add(digit)) {
                        Some(value) => head.length_digits = Some(value),
                        None => head.content_length_invalid = true,
                    }
                }
                _ => head.content_length_invalid = true,
            },
            State::TransferEncoding => match byte {
                b'\n' => self.state = State::Name,
                b' ' | b'\t' | b'\r' => {}
                b',' => head.coding_len = 0,
                _ => {
                    if let Some(slot) = head.coding.get_mut(head.coding_len) {
                        *slot = byte.to_ascii_lowercase();
                    }
                    head.coding_len += 1;
                }
            },
            State::ChunkSize {
                size,
                digits,
                extension,
            } => {
                self.state = match byte {
                    b'\n' if !digits => State::Stopped,
                    b'\n' if size == 0 => State::Trailer { empty: true },
                    b'\n' => State::ChunkData { remaining: size },
                    _ if extension => self.state,
                    b';' => State::ChunkSize {
                        size,
                        digits,
                        extension: true,
                    },
                    b'\r' | b' ' | b'\t' => self.state,
                    _ => match (byte as char).to_digit(16) {
                        Some(digit) => match size.checked_mul(16) {
                            Some(size) => State::ChunkSize {
                                size: size + u64::from(digit),
                                digits: true,
                                extension,
                            },
                            None => State::Stopped,
                        },
                        None => State::Stopped,
                    },
                };
            }
            State::Trailer { empty } => {
                self.state = match byte {
                    b'\n' if empty => State::RequestLine,
                    b'\n' => State::Trailer { empty: true },
                    b'\r' => self.state,
                    _ => State::Trailer { empty: false },
                };
            }
            State::Value
            | State::ChunkEnd
            | State::Body { .. }
            | State::ChunkData { .. }
            | State::Paused
            | State::Stopped => unreachable!("feed handles {:?} in bulk", self.state),
        }
    }

    /// At the colon: records the name and decides how to read its value.
    fn end_name(&mut self) {
        let head = &mut self.head;
        let name = &head.name_start[..head.name_len.min(FRAMING_NAME_LEN)];
        let hash = std::mem::take(&mut head.hasher).finish();
        let known = head.name_len <= FRAMING_NAME_LEN;
        self.state = match name {
            b"content-length" if known => {
                head.content_length_sent = true;
                State::ContentLength
            }
            b"transfer-encoding" if known => {
                head.transfer_encoding = true;
                head.coding_len = 0;
                State::TransferEncoding
            }
            b"upgrade" if known => {
                head.upgrade = true;
                State::Value
            }
            _ => State::Value,
        };
        head.name_len = 0;

        if head.names.len() >= MAX_TRACKED_HEADERS {
            head.too_many = true;
            return;
        }
        let bit = 1u64 << (hash % 64);
        let repeats_earlier =
            head.names.last() != Some(&hash) && head.seen & bit != 0 && head.names.contains(&hash);
        head.out_of_order |= repeats_earlier;
        head.seen |= bit;
        head.names.push(hash);
    }

    /// At the empty line: reports the head and finds where its body ends.
    fn end_head(&mut self, notable: &mut impl FnMut(u64, HeadNotes)) {
        let head = &mut self.head;
        let index = self.completed;
        self.completed += 1;

        // hyper ignores a Content-Length beside Transfer-Encoding, even one
        // without digits, so any such line counts.
        let framing_conflict = head.transfer_encoding && head.content_length_sent;
        let order = (head.out_of_order && !head.too_many).then(|| NameOrder::new(&head.names));
        if framing_conflict || order.is_some() {
            notable(
                index,
                HeadNotes {
                    framing_conflict,
                    order,
                },
            );
        }

        let connect = head.request_line.starts_with(b"CONNECT ");
        let chunked = head.coding_len == 7 && &head.coding[..7] == b"chunked";
        self.state = if head.upgrade || connect {
            State::Paused
        } else if head.transfer_encoding && chunked {
            State::ChunkSize {
                size: 0,
                digits: false,
                extension: false,
            }
        } else if head.transfer_encoding || head.content_length_invalid {
            // hyper responds 400 and closes the connection.
            State::Stopped
        } else {
            match head.content_length {
                Some(len) if len > 0 => State::Body { remaining: len },
                _ => State::RequestLine,
            }
        };

        // Keep the name list's allocation for the next head.
        let mut names = std::mem::take(&mut head.names);
        names.clear();
        *head = Head {
            names,
            ..Head::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::header_order::name_hash;

    /// Feeds `chunks` and returns the notable heads and the final state.
    fn scan(chunks: &[&[u8]]) -> (Vec<(u64, HeadNotes)>, RequestScanner) {
        let mut scanner = RequestScanner::default();
        let mut found = Vec::new();
        for chunk in chunks {
            scanner.feed(chunk, |index, notes| found.push((index, notes)));
        }
        (found, scanner)
    }

    /// Feeds `bytes` one byte at a time.
    fn scan_bytewise(bytes: &[u8]) -> Vec<(u64, HeadNotes)> {
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        scan(&chunks).0
    }

    fn conflicts(found: &[(u64, HeadNotes)]) -> Vec<u64> {
        found
            .iter()
            .filter(|(_, notes)| notes.framing_conflict)
            .map(|(index, _)| *index)
            .collect()
    }

    #[test]
    fn both_framings_detected() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(conflicts(&scan(&[head]).0), [0]);
    }

    #[test]
    fn detected_across_reads_and_case() {
        let head: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\ntransfer-enc",
            b"oding: chunked\r\nCONTENT-",
            b"LENGTH: 3\r",
            b"\n\r\n",
        ];
        assert_eq!(conflicts(&scan(head).0), [0]);
    }

    #[test]
    fn single_framing_passes() {
        assert!(
            scan(&[b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"])
                .0
                .is_empty()
        );
        assert!(scan(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ])
        .0
        .is_empty());
    }

    #[test]
    fn body_bytes_are_skipped() {
        let bytes =
            b"POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\ntransfer-encoding: chunked\r\n\r\n123456789012";
        let (found, scanner) = scan(&[bytes]);
        assert!(found.is_empty());
        assert_eq!(scanner.completed, 1);
    }

    #[test]
    fn repeated_equal_lengths_frame_the_body() {
        let bytes = b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\ncontent-length: 3\r\n\r\nabcGET";
        let (_, scanner) = scan(&[bytes]);
        assert_eq!(scanner.completed, 1);
        assert_eq!(scanner.state, State::RequestLine);
        assert_eq!(scanner.head.line_len, 3);
    }

    #[test]
    fn header_values_do_not_count() {
        let head =
            b"GET / HTTP/1.1\r\nX-Note: content-length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(scan(&[head]).0.is_empty());
    }

    #[test]
    fn pipelined_heads_after_bodies_are_seen() {
        let bytes: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
            POST /b HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n\
            3;name=value\r\nxyz\r\n0\r\nX-Trailer: 1\r\n\r\n\
            POST /c HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(conflicts(&scan(&[bytes]).0), [2]);
        assert_eq!(conflicts(&scan_bytewise(bytes)), [2]);
    }

    #[test]
    fn leading_empty_lines_are_not_heads() {
        let bytes = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let (_, scanner) = scan(&[bytes]);
        assert_eq!(scanner.completed, 1);
        assert_eq!(scanner.state, State::RequestLine);
    }

    #[test]
    fn order_noted_for_split_names() {
        let grouped = b"GET / HTTP/1.1\r\nA: 1\r\na: 2\r\nB: 3\r\n\r\n";
        assert!(scan(&[grouped]).0.is_empty());

        let bytes = b"GET / HTTP/1.1\r\nHost: h\r\nX-Rep: 1\r\nOther: 2\r\nx-rep: 3\r\n\r\n";
        let found = scan_bytewise(bytes);
        let expected = NameOrder::new(&[
            name_hash(b"host"),
            name_hash(b"x-rep"),
            name_hash(b"other"),
            name_hash(b"x-rep"),
        ]);
        assert_eq!(
            found,
            [(
                0,
                HeadNotes {
                    framing_conflict: false,
                    order: Some(expected)
                }
            )]
        );
    }

    #[test]
    fn http2_preface_stops_scanning() {
        let bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04";
        let (found, scanner) = scan(&[bytes]);
        assert!(found.is_empty());
        assert_eq!(scanner.state, State::Stopped);
    }

    #[test]
    fn pri_method_is_not_the_preface() {
        let bytes = b"PRI /echo HTTP/1.1\r\nHost: a\r\n\r\n\
            POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(conflicts(&scan(&[bytes]).0), [1]);
    }

    #[test]
    fn length_without_digits_beside_chunked_conflicts() {
        for length in ["abc", "", "-1"] {
            let head = format!(
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: {length}\r\n\r\n"
            );
            assert_eq!(conflicts(&scan(&[head.as_bytes()]).0), [0], "{length:?}");
        }
    }

    #[test]
    fn upgrade_pauses_until_resumed() {
        let upgrade = b"GET /ws HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n";
        let framing = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (found, mut scanner) = scan(&[upgrade, &framing[..10]]);
        assert!(found.is_empty());
        assert_eq!(scanner.state, State::Paused);

        // The pipelined head read while paused is scanned on resume.
        let mut found = Vec::new();
        let held = scanner.resume();
        scanner.feed(&held, |index, notes| found.push((index, notes)));
        scanner.feed(&framing[10..], |index, notes| found.push((index, notes)));
        assert_eq!(conflicts(&found), [1]);
    }

    #[test]
    fn switched_protocol_is_not_scanned() {
        let upgrade = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let (_, mut scanner) = scan(&[upgrade]);
        scanner.stop();
        let mut found = Vec::new();
        let frame = b"\x81\x05Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        scanner.feed(frame, |index, notes| found.push((index, notes)));
        assert!(found.is_empty());
        assert!(scanner.resume().is_empty());
        assert_eq!(scanner.state, State::Stopped);
    }

    #[test]
    fn paused_scanner_holds_a_bounded_amount() {
        let upgrade = b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n";
        let (_, mut scanner) = scan(&[upgrade]);
        scanner.feed(&vec![b'x'; MAX_HELD + 1], |_, _| {});
        assert_eq!(scanner.state, State::Stopped);
        assert!(scanner.held.is_empty());
    }

    #[test]
    fn rejected_framing_stops_scanning() {
        for head in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        ] {
            assert_eq!(scan(&[head]).1.state, State::Stopped, "{head:?}");
        }
    }
}
