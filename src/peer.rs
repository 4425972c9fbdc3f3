//! Who is on the other end of a request: the TCP peer, and — only when that peer is a trusted
//! proxy (`TRUSTED_PROXIES`, by default loopback and private ranges) — the client address and
//! page scheme the proxy vouches for (`X-Real-IP`, `X-Forwarded-Proto`, as nginx.conf sets them).
//! A header from anyone else is ignored: otherwise any client could name its own address and
//! dodge the per-address limits. Set once per connection by [`crate::server`]; what is limited
//! per address is the API's business (`http::api`), what counts as same-origin `http::origin`'s.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The networks whose forwarding headers are believed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Loopback and the private ranges: where a reverse proxy of this deployment sits (nginx on
    /// the same host, or compose's private network).
    pub const DEFAULT: &'static str =
        "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7";

    /// Comma-separated networks (`10.0.0.0/8`) or addresses; `none` trusts nobody.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        if spec.eq_ignore_ascii_case("none") || spec.is_empty() {
            return Ok(Self(Vec::new()));
        }
        spec.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse::<IpNet>()
                    .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "TRUSTED_PROXIES: {part:?} is not a network (10.0.0.0/8) or address"
                        )
                    })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl Default for TrustedProxies {
    fn default() -> Self {
        Self::parse(Self::DEFAULT).unwrap_or(Self(Vec::new()))
    }
}

/// The page scheme, as far as this replica can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The TCP peer of a connection, and whether its forwarding headers count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    pub trusted: bool,
}

impl Peer {
    pub fn new(addr: SocketAddr, trusted: &TrustedProxies) -> Self {
        Self {
            addr,
            trusted: trusted.contains(addr.ip()),
        }
    }

    /// The client's address: `X-Real-IP` from a trusted proxy, else the peer itself.
    pub fn client_ip(&self, headers: &HeaderMap) -> IpAddr {
        let forwarded = self
            .trusted
            .then(|| headers.get("x-real-ip")?.to_str().ok()?.trim().parse().ok())
            .flatten();
        forwarded.unwrap_or(self.addr.ip()).to_canonical()
    }

    /// The scheme the browser used: `X-Forwarded-Proto` from a trusted proxy, else plain HTTP
    /// (a replica itself serves no TLS).
    pub fn scheme(&self, headers: &HeaderMap) -> Scheme {
        let forwarded = self
            .trusted
            .then(|| headers.get("x-forwarded-proto")?.to_str().ok())
            .flatten();
        match forwarded {
            Some(proto) if proto.trim().eq_ignore_ascii_case("https") => Scheme::Https,
            _ => Scheme::Http,
        }
    }
}

/// What a per-address limit is keyed on: the address, except that an IPv6 client is its /64 (one
/// host is handed a whole /64, and could otherwise take a fresh bucket per address).
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn peer(addr: &str) -> Peer {
        Peer::new(addr.parse().unwrap(), &TrustedProxies::default())
    }

    #[test]
    fn forwarding_headers_count_only_from_a_trusted_proxy() {
        let h = headers(&[("x-real-ip", "203.0.113.7"), ("x-forwarded-proto", "https")]);
        let nginx = peer("127.0.0.1:5000");
        assert_eq!(
            nginx.client_ip(&h),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(nginx.scheme(&h), Scheme::Https);
        let compose = peer("172.18.0.5:5000");
        assert!(compose.trusted);
        let stranger = peer("198.51.100.1:5000");
        assert_eq!(
            stranger.client_ip(&h),
            "198.51.100.1".parse::<IpAddr>().unwrap(),
            "a client cannot name its own address"
        );
        assert_eq!(stranger.scheme(&h), Scheme::Http);
    }

    #[test]
    fn a_trusted_proxy_without_headers_or_with_garbage_is_the_peer() {
        let nginx = peer("127.0.0.1:5000");
        assert_eq!(nginx.client_ip(&HeaderMap::new()), nginx.addr.ip());
        let garbage = headers(&[("x-real-ip", "not-an-ip"), ("x-forwarded-proto", "gopher")]);
        assert_eq!(nginx.client_ip(&garbage), nginx.addr.ip());
        assert_eq!(nginx.scheme(&garbage), Scheme::Http);
    }

    #[test]
    fn the_trusted_list_parses_networks_addresses_and_none() {
        let list = TrustedProxies::parse("10.1.0.0/16, 192.0.2.9").unwrap();
        assert!(list.contains("10.1.2.3".parse().unwrap()));
        assert!(list.contains("192.0.2.9".parse().unwrap()));
        assert!(!list.contains("127.0.0.1".parse().unwrap()), "narrowed");
        assert!(
            list.contains("::ffff:10.1.2.3".parse().unwrap()),
            "a v4 peer on a dual-stack socket"
        );
        assert!(
            !TrustedProxies::parse("none")
                .unwrap()
                .contains("127.0.0.1".parse().unwrap())
        );
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("nginx").is_err());
    }

    #[test]
    fn ipv6_clients_are_limited_per_64() {
        let a = limit_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = limit_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        let other = limit_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, other);
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(limit_key(v4), v4);
    }
}
