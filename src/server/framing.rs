//! Spotting a request head that declares both `Content-Length` and
//! `Transfer-Encoding`, which hyper's parser would quietly resolve.
//!
//! hyper 1.13 drops `Content-Length` when `Transfer-Encoding` is present
//! (RFC 9112 §6.3 permits reading the body as chunked and then closing), so
//! the service never sees both. Such a request is a classic request
//! smuggling probe, and fastserve rejects it with 400 instead. The scanner
//! reads the raw head bytes as they arrive from the socket, looking only at
//! the start of each header line, and costs a few comparisons per byte
//! while a head is being read.

/// Longest header-line prefix kept: enough for "transfer-encoding:".
const PREFIX_LEN: usize = 18;

/// Scans one request head at a time.
#[derive(Debug, Default)]
pub struct HeadScanner {
    active: bool,
    /// The first bytes of the current line, lower-cased.
    prefix: [u8; PREFIX_LEN],
    prefix_len: usize,
    /// Bytes in the current line so far, including those past the prefix.
    line_len: usize,
    content_length: bool,
    transfer_encoding: bool,
}

impl HeadScanner {
    /// Starts scanning a new head; the next byte is its first.
    pub fn start(&mut self) {
        *self = Self {
            active: true,
            ..Self::default()
        };
    }

    /// Feeds bytes read from the socket. Returns true once, at the end of a
    /// head that declared both framings.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut conflict = false;
        for &byte in bytes {
            if !self.active {
                break;
            }
            if byte == b'\n' {
                conflict |= self.end_line();
                continue;
            }
            if self.prefix_len < PREFIX_LEN && byte != b'\r' {
                self.prefix[self.prefix_len] = byte.to_ascii_lowercase();
                self.prefix_len += 1;
            }
            if byte != b'\r' {
                self.line_len += 1;
            }
        }
        conflict
    }

    /// Handles the end of a line; returns true at the end of a conflicting head.
    fn end_line(&mut self) -> bool {
        if self.line_len == 0 {
            // The blank line: the head is complete.
            self.active = false;
            return self.content_length && self.transfer_encoding;
        }
        let prefix = &self.prefix[..self.prefix_len];
        self.content_length |= prefix.starts_with(b"content-length:");
        self.transfer_encoding |= prefix.starts_with(b"transfer-encoding:");
        self.prefix_len = 0;
        self.line_len = 0;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> bool {
        let mut scanner = HeadScanner::default();
        scanner.start();
        chunks.iter().any(|chunk| scanner.feed(chunk))
    }

    #[test]
    fn both_framings_detected() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(scan(&[head]));
    }

    #[test]
    fn detected_across_reads_and_case() {
        let head: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\ntransfer-enc",
            b"oding: chunked\r\nCONTENT-",
            b"LENGTH: 3\r",
            b"\n\r\n",
        ];
        assert!(scan(head));
    }

    #[test]
    fn single_framing_passes() {
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
        ]));
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n"
        ]));
    }

    #[test]
    fn body_bytes_after_head_ignored() {
        let bytes =
            b"POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(!scan(&[bytes]));
    }

    #[test]
    fn header_values_do_not_count() {
        let head =
            b"GET / HTTP/1.1\r\nX-Note: content-length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(!scan(&[head]));
    }
}
