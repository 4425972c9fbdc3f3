//! Loopback source addresses for load sockets, as the flags name them: `--source-addrs
//! 127.0.0.2-127.0.0.9` (addresses and ranges, comma-separated) or `--source-ips N` (127.0.0.1 …
//! 127.0.0.N). Parsed and checked here; [`crate::socket::Dialer`] binds them in turn.
//!
//! Why several: towards one destination (the front door), each source address has its own
//! ephemeral ports (about 28k with Linux's default range), so one address caps the sockets a
//! machine can open to one nginx. Several load processes, each given addresses of its own, neither
//! share those ports nor run out together.

use std::net::Ipv4Addr;
use std::str::FromStr;

/// More addresses than any run needs (each gives about 28k sockets); the bound catches a typo
/// such as `127.0.0.2-127.255.0.9` before millions of addresses are listed.
pub const MAX_SOURCE_ADDRS: usize = 1024;

/// A checked list of loopback source addresses: not empty, no address twice, at most
/// [`MAX_SOURCE_ADDRS`], each in 127.0.0.1 … 127.255.255.254 (the network and broadcast
/// addresses of 127.0.0.0/8 are not a host's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceAddrs(Vec<Ipv4Addr>);

impl SourceAddrs {
    /// 127.0.0.1 … 127.0.0.`count` (`--source-ips`); `count` ≤ 1 is none: the kernel chooses.
    pub fn first(count: usize) -> Option<Self> {
        if count <= 1 {
            return None;
        }
        let count = count.min(MAX_SOURCE_ADDRS);
        let start = u32::from(Ipv4Addr::new(127, 0, 0, 1));
        Some(Self(
            (0..count as u32)
                .map(|i| Ipv4Addr::from(start + i))
                .collect(),
        ))
    }

    pub fn addrs(&self) -> &[Ipv4Addr] {
        &self.0
    }
}

impl FromStr for SourceAddrs {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut addrs: Vec<Ipv4Addr> = Vec::new();
        for item in spec.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(format!(
                    "`{spec}`: an empty item; write addresses or ranges separated by commas, \
                     e.g. 127.0.0.2-127.0.0.9"
                ));
            }
            let (first, last) = match item.split_once('-') {
                Some((a, b)) => (host(a.trim())?, host(b.trim())?),
                None => {
                    let one = host(item)?;
                    (one, one)
                }
            };
            let (first, last) = (u32::from(first), u32::from(last));
            if first > last {
                return Err(format!("`{item}`: the range ends before it starts"));
            }
            let count = (last - first) as usize + 1;
            if addrs.len() + count > MAX_SOURCE_ADDRS {
                return Err(format!(
                    "`{spec}` names more than {MAX_SOURCE_ADDRS} addresses; each gives about \
                     28k sockets, so a few are enough"
                ));
            }
            for addr in (first..=last).map(Ipv4Addr::from) {
                if addrs.contains(&addr) {
                    return Err(format!("`{spec}` names {addr} twice"));
                }
                addrs.push(addr);
            }
        }
        Ok(Self(addrs))
    }
}

/// One address a socket may be bound to: IPv4 loopback, neither 127.0.0.0 nor 127.255.255.255.
fn host(text: &str) -> Result<Ipv4Addr, String> {
    let addr: Ipv4Addr = text
        .parse()
        .map_err(|_| format!("`{text}` is not an IPv4 address"))?;
    if !addr.is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address (127.0.0.0/8): the load tool binds only those"
        ));
    }
    if addr == Ipv4Addr::new(127, 0, 0, 0) || addr == Ipv4Addr::new(127, 255, 255, 255) {
        return Err(format!(
            "{addr} is the network or broadcast address of 127.0.0.0/8"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> Result<Vec<String>, String> {
        spec.parse::<SourceAddrs>()
            .map(|s| s.addrs().iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_range_lists_every_address_in_it() {
        assert_eq!(
            parse("127.0.0.2-127.0.0.4").unwrap(),
            ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        );
        // Across an octet boundary.
        assert_eq!(
            parse("127.0.0.254-127.0.1.1").unwrap(),
            ["127.0.0.254", "127.0.0.255", "127.0.1.0", "127.0.1.1"]
        );
    }

    #[test]
    fn addresses_and_ranges_mix_in_the_order_given() {
        assert_eq!(
            parse("127.0.0.9, 127.0.0.2-127.0.0.3,127.1.2.3").unwrap(),
            ["127.0.0.9", "127.0.0.2", "127.0.0.3", "127.1.2.3"]
        );
        assert_eq!(parse("127.0.0.5").unwrap(), ["127.0.0.5"]);
        assert_eq!(parse("127.0.0.5-127.0.0.5").unwrap(), ["127.0.0.5"]);
    }

    #[test]
    fn what_is_not_a_list_of_loopback_hosts_is_refused_with_the_reason() {
        let refused = |spec: &str, says: &str| {
            let err = parse(spec).unwrap_err();
            assert!(err.contains(says), "{spec}: {err}");
        };
        refused("10.0.0.2-10.0.0.9", "not a loopback address");
        refused("127.0.0.2-10.0.0.9", "not a loopback address");
        refused("::1", "not an IPv4 address");
        refused("127.0.0.300", "not an IPv4 address");
        refused("localhost", "not an IPv4 address");
        refused("127.0.0.9-127.0.0.2", "ends before it starts");
        refused("127.0.0.2,,127.0.0.3", "an empty item");
        refused("", "an empty item");
        refused("127.0.0.2-", "not an IPv4 address");
        refused("127.0.0.2-127.0.0.4,127.0.0.3", "names 127.0.0.3 twice");
        refused("127.0.0.0-127.0.0.9", "network or broadcast");
        refused("127.255.255.255", "network or broadcast");
        refused("127.0.0.1-127.255.0.0", "more than 1024 addresses");
        // 1,024 in the range, then one more.
        refused("127.0.0.1-127.0.4.0,127.0.4.1", "more than 1024 addresses");
        assert_eq!(
            parse("127.0.0.1-127.0.4.0").unwrap().len(),
            MAX_SOURCE_ADDRS
        );
    }

    #[test]
    fn the_first_n_start_at_127_0_0_1_and_one_means_none() {
        assert_eq!(SourceAddrs::first(0), None);
        assert_eq!(SourceAddrs::first(1), None);
        let three = SourceAddrs::first(3).unwrap();
        assert_eq!(
            three.addrs(),
            [
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3)
            ]
        );
        assert_eq!(
            SourceAddrs::first(usize::MAX).unwrap().addrs().len(),
            MAX_SOURCE_ADDRS
        );
    }
}
