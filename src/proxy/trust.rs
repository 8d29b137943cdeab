//! The set of peers whose forwarded headers are believed: IPv4 and IPv6
//! addresses, CIDR ranges, or `*` for every peer.

use std::net::{IpAddr, SocketAddr};

/// An entry of `--forwarded-allow-ips` that is not an address, a range or `*`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid --forwarded-allow-ips entry {entry:?}: expected an IP address (127.0.0.1, ::1), \
     a CIDR range (10.0.0.0/8, fd00::/8) or *"
)]
pub struct InvalidTrustEntry {
    pub entry: String,
}

/// One address range: `addr` with its first `prefix_len` bits significant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Network {
    addr: IpAddr,
    prefix_len: u8,
}

/// Bits before the IPv4 address in an IPv4-mapped IPv6 address.
const MAPPED_PREFIX_LEN: u8 = 96;

impl Network {
    /// Stores an IPv4-mapped IPv6 range (`::ffff:10.0.0.0/104`) as the IPv4
    /// range it covers, since peers are compared in canonical form.
    fn canonical(addr: IpAddr, prefix_len: u8) -> Self {
        match (addr, addr.to_canonical()) {
            (IpAddr::V6(_), IpAddr::V4(v4)) if prefix_len >= MAPPED_PREFIX_LEN => Self {
                addr: IpAddr::V4(v4),
                prefix_len: prefix_len - MAPPED_PREFIX_LEN,
            },
            _ => Self { addr, prefix_len },
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Peers trusted to set forwarded headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedNetworks {
    /// `*` was given: every peer is trusted.
    any: bool,
    networks: Vec<Network>,
}

impl TrustedNetworks {
    /// Parses a comma-separated list such as `127.0.0.1, ::1, 10.0.0.0/8` or `*`.
    /// Empty entries are skipped. Host bits set in a range (`10.0.0.1/8`) are
    /// ignored, so that entry means `10.0.0.0/8`.
    pub fn parse(list: &str) -> Result<Self, InvalidTrustEntry> {
        let mut trusted = Self {
            any: false,
            networks: Vec::new(),
        };
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                trusted.any = true;
                continue;
            }
            let invalid = || InvalidTrustEntry {
                entry: entry.to_owned(),
            };
            let (addr, prefix_len) = match entry.split_once('/') {
                Some((addr, len)) => (addr, Some(len)),
                None => (entry, None),
            };
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            let addr: IpAddr = addr.parse().map_err(|_| invalid())?;
            let max_len = if addr.is_ipv4() { 32 } else { 128 };
            let prefix_len = match prefix_len {
                None => max_len,
                Some(len) => match len.parse::<u8>() {
                    Ok(len) if len <= max_len => len,
                    _ => return Err(invalid()),
                },
            };
            trusted.networks.push(Network::canonical(addr, prefix_len));
        }
        Ok(trusted)
    }

    /// Checks whether `ip` is trusted. IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`)
    /// match the IPv4 entries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.any {
            return true;
        }
        let ip = ip.to_canonical();
        self.networks.iter().any(|network| network.contains(ip))
    }

    /// Checks whether the connection's peer is trusted. A Unix socket peer has no
    /// address and is trusted: only processes allowed to open the socket
    /// file can connect, which is how a proxy in the same pod or host
    /// reaches the server.
    pub fn trusts_peer(&self, peer: Option<SocketAddr>) -> bool {
        match peer {
            None => true,
            Some(addr) => self.contains(addr.ip()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn single_addresses_match_exactly() {
        let trusted = TrustedNetworks::parse("127.0.0.1, ::1").unwrap();
        assert!(trusted.contains(ip("127.0.0.1")));
        assert!(trusted.contains(ip("::1")));
        assert!(!trusted.contains(ip("127.0.0.2")));
        assert!(!trusted.contains(ip("10.0.0.1")));
    }

    #[test]
    fn cidr_ranges_match_their_members() {
        let trusted = TrustedNetworks::parse("10.0.0.0/8,fd00::/8,192.168.1.0/24").unwrap();
        assert!(trusted.contains(ip("10.255.1.2")));
        assert!(!trusted.contains(ip("11.0.0.1")));
        assert!(trusted.contains(ip("fd12:3456::1")));
        assert!(!trusted.contains(ip("fe80::1")));
        assert!(trusted.contains(ip("192.168.1.77")));
        assert!(!trusted.contains(ip("192.168.2.1")));
    }

    #[test]
    fn zero_length_prefix_matches_whole_family() {
        let trusted = TrustedNetworks::parse("0.0.0.0/0").unwrap();
        assert!(trusted.contains(ip("8.8.8.8")));
        assert!(!trusted.contains(ip("2001:db8::1")));
    }

    #[test]
    fn host_bits_in_range_are_ignored() {
        let trusted = TrustedNetworks::parse("127.0.0.1/24").unwrap();
        assert!(trusted.contains(ip("127.0.0.200")));
    }

    #[test]
    fn mapped_ipv4_matches_ipv4_entry() {
        let trusted = TrustedNetworks::parse("127.0.0.0/8").unwrap();
        assert!(trusted.contains(ip("::ffff:127.0.0.1")));
        let trusted = TrustedNetworks::parse("::ffff:10.0.0.1").unwrap();
        assert!(trusted.contains(ip("10.0.0.1")));
        assert!(!trusted.contains(ip("10.0.0.2")));
        assert!(!trusted.contains(ip("203.0.113.9")));
        let trusted = TrustedNetworks::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(trusted.contains(ip("10.200.0.1")));
        assert!(!trusted.contains(ip("11.0.0.1")));
    }

    #[test]
    fn star_trusts_everyone() {
        let trusted = TrustedNetworks::parse("*").unwrap();
        assert!(trusted.any);
        assert!(trusted.contains(ip("203.0.113.9")));
    }

    #[test]
    fn unix_socket_peer_is_trusted() {
        let trusted = TrustedNetworks::parse("127.0.0.1").unwrap();
        assert!(trusted.trusts_peer(None));
        let peer: SocketAddr = "10.1.1.1:4000".parse().unwrap();
        assert!(!trusted.trusts_peer(Some(peer)));
    }

    #[test]
    fn empty_list_trusts_no_address() {
        let trusted = TrustedNetworks::parse(" , ").unwrap();
        assert!(!trusted.contains(ip("127.0.0.1")));
    }

    #[test]
    fn invalid_entries_are_rejected() {
        for entry in [
            "localhost",
            "10.0.0.0/33",
            "::1/129",
            "1.2.3",
            "10.0.0.0/x",
            "unix:",
        ] {
            let err = TrustedNetworks::parse(entry).unwrap_err();
            assert_eq!(err.entry, entry);
        }
    }
}
