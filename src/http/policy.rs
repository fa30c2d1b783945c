//! The outbound address policy: which IP addresses sluice may connect to when the network
//! (a DID document, a handle, a redirect) names the host.
//!
//! By default only public addresses: every special-purpose range of IANA's IPv4 and IPv6
//! registries is refused (loopback, private, link-local with the cloud metadata address,
//! CGNAT, documentation, benchmarking, multicast, reserved, ULA, …), an address that embeds an
//! IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4) judged by that address. An operator
//! opens ranges with `[network] allowed_networks`, or all of them with `allow_private`.
//!
//! [`AddressPolicy::guarded`] puts the policy into a `reqwest` client: host names are resolved
//! and the refused addresses dropped before any connection (the name fails when none is left),
//! and every redirect hop is checked (reqwest connects to an IP-literal host without asking
//! the resolver, so the hop's literal is checked there). An IP-literal URL is checked by the
//! caller before the first request, with [`AddressPolicy::check_url`]. A refusal is an
//! [`AddressRefused`] in the error's source chain ([`address_refused`] finds it): a permanent
//! failure, not worth retrying until the document names another host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;

/// Redirect hops a guarded client follows before giving up.
pub const MAX_REDIRECTS: usize = 5;

/// Which addresses outbound requests to hosts the network names may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Every address allowed: the guard is off.
    allow_private: bool,
    /// Networks allowed even though special (for example a private PDS at `10.1.2.0/24`).
    allowed: Vec<IpNet>,
}

/// An address the policy refuses, with the host that led to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{host} is at {ip}, a {range} address, which sluice does not connect to \
     ([network] allowed_networks or allow_private opens it)"
)]
pub struct AddressRefused {
    /// The host as the URL or DNS name gave it.
    pub host: String,
    /// The refused address (the first, when a name resolved to several).
    pub ip: IpAddr,
    /// The kind of special range it is in (`loopback`, `private`, …).
    pub range: &'static str,
}

/// A network in `allowed_networks` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a network (CIDR like 10.0.0.0/8 or fd00::/8, or one address)")]
pub struct BadNetwork(pub String);

/// One network of `[network] allowed_networks`: `a.b.c.d/n`, `x::/n`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct AllowedNetwork(IpNet);

impl FromStr for AllowedNetwork {
    type Err = BadNetwork;

    fn from_str(text: &str) -> Result<Self, BadNetwork> {
        parse_network(text).map(AllowedNetwork)
    }
}

impl TryFrom<String> for AllowedNetwork {
    type Error = BadNetwork;

    fn try_from(text: String) -> Result<Self, BadNetwork> {
        text.parse()
    }
}

impl std::fmt::Display for AllowedNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl AddressPolicy {
    /// Public addresses only (the default).
    pub fn public_only() -> Self {
        Self::default()
    }

    /// Every address: no guard (`allow_private = true`).
    pub fn allow_all() -> Self {
        Self { allow_private: true, allowed: Vec::new() }
    }

    /// Public addresses and those of `allowed`.
    pub fn allowing(allowed: Vec<IpNet>) -> Self {
        Self { allow_private: false, allowed }
    }

    /// Public addresses and those of `networks`, or every address when `allow_private`
    /// (`[network]`'s two settings).
    pub fn new(allow_private: bool, networks: &[AllowedNetwork]) -> Self {
        Self { allow_private, allowed: networks.iter().map(|n| n.0).collect() }
    }

    /// The same policy opening `network` too.
    pub fn also_allowing(mut self, network: AllowedNetwork) -> Self {
        self.allowed.push(network.0);
        self
    }

    /// Public addresses and loopback (127.0.0.0/8, ::1): the devnet's and the tests' policy.
    pub fn loopback() -> Self {
        let nets = ["127.0.0.0/8", "::1/128"].map(|n| IpNet::from_str(n).expect("loopback network"));
        Self::allowing(nets.to_vec())
    }

    /// Whether every address is allowed.
    pub fn allows_everything(&self) -> bool {
        self.allow_private
    }

    /// Whether sluice may connect to `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.check_ip("", ip).is_ok()
    }

    /// `Ok` when sluice may connect to `ip`; `host` names where it came from in the refusal.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), AddressRefused> {
        if self.allow_private {
            return Ok(());
        }
        let ip = ip.to_canonical();
        let Some(range) = special_range(ip) else { return Ok(()) };
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        Err(AddressRefused { host: super::truncate_foreign(host), ip, range })
    }

    /// `Ok` unless `url`'s host is an IP literal the policy refuses (a name is checked when
    /// it is resolved, by a [`guarded`](Self::guarded) client).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), AddressRefused> {
        // The URL parser wrote an IP host in its canonical form (IPv6 in brackets, the numeric
        // forms of IPv4 as dotted quads).
        let host = url.host_str().unwrap_or_default();
        match IpAddr::from_str(host.trim_start_matches('[').trim_end_matches(']')) {
            Ok(ip) => self.check_ip(host, ip),
            Err(_) => Ok(()),
        }
    }

    /// As [`check_url`](Self::check_url), for a URL as text; text that is not a URL passes
    /// (the request then fails on its own).
    pub fn check_url_str(&self, url: &str) -> Result<(), AddressRefused> {
        match reqwest::Url::parse(url) {
            Ok(url) => self.check_url(&url),
            Err(_) => Ok(()),
        }
    }

    /// `builder` with the policy installed: names resolved by the system (getaddrinfo) with
    /// refused addresses dropped, every redirect hop checked, at most [`MAX_REDIRECTS`], and no
    /// proxy (a proxy would resolve the host its own way, out of the policy's sight).
    pub fn guarded(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        self.guarded_via(builder, Arc::new(SystemDns))
    }

    /// As [`guarded`](Self::guarded), names resolved by `dns` instead of the system.
    pub fn guarded_via<R: reqwest::dns::Resolve + 'static>(
        &self,
        builder: reqwest::ClientBuilder,
        dns: Arc<R>,
    ) -> reqwest::ClientBuilder {
        let resolver = GuardedDns { policy: self.clone(), inner: dns };
        builder.no_proxy().dns_resolver(Arc::new(resolver)).redirect(self.redirects())
    }

    /// The redirect policy: each hop's IP-literal host checked, at most [`MAX_REDIRECTS`].
    pub fn redirects(&self) -> reqwest::redirect::Policy {
        let policy = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(TooManyRedirects(MAX_REDIRECTS));
            }
            match policy.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        })
    }
}

/// More redirects than a guarded client follows.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("more than {0} redirects")]
pub struct TooManyRedirects(pub usize);

/// The [`AddressRefused`] in `error`'s source chain, when the policy is why it failed.
pub fn address_refused<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a AddressRefused> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(refused) = e.downcast_ref::<AddressRefused>() {
            return Some(refused);
        }
        next = e.source();
    }
    None
}

/// Whether `error` (a request's) failed because the policy refused the address.
pub fn is_address_refused(error: &reqwest::Error) -> bool {
    address_refused(error).is_some()
}

/// One network of `allowed_networks`: `a.b.c.d/n`, `x::/n`, or a bare address (one host).
fn parse_network(text: &str) -> Result<IpNet, BadNetwork> {
    let text = text.trim();
    let bad = || BadNetwork(text.to_string());
    match text.contains('/') {
        true => IpNet::from_str(text).map(|n| n.trunc()).map_err(|_| bad()),
        false => IpAddr::from_str(text).map(IpNet::from).map_err(|_| bad()),
    }
}

/// IPv4 special-purpose ranges (IANA), as (network, prefix length, kind).
const SPECIAL_V4: &[(u32, u8, &str)] = &[
    (0x0000_0000, 8, "\"this network\" (0.0.0.0/8)"),
    (0x0a00_0000, 8, "private"),
    (0x6440_0000, 10, "shared (CGNAT)"),
    (0x7f00_0000, 8, "loopback"),
    (0xa9fe_0000, 16, "link-local"),
    (0xac10_0000, 12, "private"),
    (0xc000_0000, 24, "IETF protocol assignment"),
    (0xc000_0200, 24, "documentation"),
    (0xc058_6300, 24, "6to4 relay anycast"),
    (0xc0a8_0000, 16, "private"),
    (0xc612_0000, 15, "benchmarking"),
    (0xc633_6400, 24, "documentation"),
    (0xcb00_7100, 24, "documentation"),
    (0xe000_0000, 4, "multicast"),
    (0xf000_0000, 4, "reserved"),
];

/// IPv6 special-purpose ranges (IANA) not judged by an embedded IPv4 address.
const SPECIAL_V6: &[(u128, u8, &str)] = &[
    (0, 128, "unspecified"),
    (1, 128, "loopback"),
    (0x0064_ff9b_0001 << 80, 48, "local-use NAT64"),
    (0x0100 << 112, 64, "discard-only"),
    (0x2001 << 112, 23, "IETF protocol assignment (Teredo, ORCHID, benchmarking)"),
    (0x2001_0db8 << 96, 32, "documentation"),
    (0x3fff << 112, 20, "documentation"),
    (0x5f00 << 112, 16, "segment routing"),
    (0xfc00 << 112, 7, "unique local (ULA)"),
    (0xfe80 << 112, 10, "link-local"),
    (0xfec0 << 112, 10, "site-local"),
    (0xff00 << 112, 8, "multicast"),
];

/// The special range `ip` is in (its kind, for messages), or `None` for a public address.
/// Addresses embedding an IPv4 address are judged by it.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    if ip.is_broadcast() {
        return Some("broadcast");
    }
    SPECIAL_V4.iter().find(|(net, len, _)| prefix_match32(bits, *net, *len)).map(|(_, _, kind)| *kind)
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    if let Some(embedded) = embedded_v4(bits) {
        return special_v4(embedded);
    }
    let special = SPECIAL_V6.iter().find(|(net, len, _)| prefix_match128(bits, *net, *len)).map(|(_, _, kind)| *kind);
    match special {
        None if !prefix_match128(bits, 0x2000 << 112, 3) => Some("reserved (not global unicast 2000::/3)"),
        found => found,
    }
}

/// The IPv4 address inside an IPv4-compatible (`::a.b.c.d`, not `::` or `::1`), NAT64
/// (`64:ff9b::/96`) or 6to4 (`2002:AABB:CCDD::/48`) address. IPv4-mapped addresses were
/// made IPv4 already ([`IpAddr::to_canonical`]).
fn embedded_v4(bits: u128) -> Option<Ipv4Addr> {
    let low32 = Ipv4Addr::from(bits as u32);
    if bits >> 32 == 0 && bits > 1 {
        return Some(low32);
    }
    if prefix_match128(bits, 0x0064_ff9b << 96, 96) {
        return Some(low32);
    }
    if prefix_match128(bits, 0x2002 << 112, 16) {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

fn prefix_match32(bits: u32, net: u32, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    bits & mask == net & mask
}

fn prefix_match128(bits: u128, net: u128, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    bits & mask == net & mask
}

/// Names resolved by the system's resolver (getaddrinfo, on tokio's blocking pool), as
/// reqwest's default does.
struct SystemDns;

impl reqwest::dns::Resolve for SystemDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// A resolver that drops the addresses the policy refuses, and fails when none is left.
struct GuardedDns<R> {
    policy: AddressPolicy,
    inner: Arc<R>,
}

impl<R: reqwest::dns::Resolve + 'static> reqwest::dns::Resolve for GuardedDns<R> {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let policy = self.policy.clone();
        let lookup = self.inner.resolve(name);
        Box::pin(async move {
            let found: Vec<SocketAddr> = lookup.await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match policy.check_ip(&host, addr.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            if let (true, Some(refused)) = (allowed.is_empty(), refused) {
                return Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// One address of every special range (and its edges), each refused by default.
    const REFUSED: &[&str] = &[
        "0.0.0.0",
        "0.255.255.255",
        "10.0.0.1",
        "10.255.255.255",
        "100.64.0.1",
        "100.127.255.255",
        "127.0.0.1",
        "127.255.255.254",
        "169.254.169.254",
        "169.254.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.8",
        "192.0.2.1",
        "192.88.99.1",
        "192.168.1.1",
        "198.18.0.1",
        "198.19.255.255",
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "::10.1.2.3",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::7f00:1",
        "64:ff9b:1::1",
        "100::1",
        "2001::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "2001:2::1",
        "2001:db8::1",
        "2002:7f00:1::1",
        "2002:a9fe:a9fe::1",
        "3fff::1",
        "5f00::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "ff02::1",
        "fe00::1",
        "4000::1",
        "::ffff:0:0",
    ];

    /// Public addresses, some right beside a special range.
    const ALLOWED: &[&str] = &[
        "1.1.1.1",
        "8.8.8.8",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "172.15.255.255",
        "172.32.0.0",
        "192.0.1.1",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
        "2606:4700::1111",
        "2a00:1450:4001::1",
        "2001:4860:4860::8888",
        "2400:cb00::1",
    ];

    #[test]
    fn every_special_range_is_refused_by_default() {
        let policy = AddressPolicy::public_only();
        for text in REFUSED {
            assert!(!policy.allows(ip(text)), "{text} is refused");
            assert!(special_range(ip(text)).is_some(), "{text} is special");
        }
        for text in ALLOWED {
            assert!(policy.allows(ip(text)), "{text} is public");
        }
    }

    #[test]
    fn refusals_name_the_host_the_address_and_its_range() {
        let refused = AddressPolicy::public_only().check_ip("metadata.internal", ip("169.254.169.254")).unwrap_err();
        assert_eq!(refused.range, "link-local");
        let text = refused.to_string();
        assert!(text.contains("metadata.internal") && text.contains("169.254.169.254"), "{text}");
        assert_eq!(special_range(ip("::ffff:127.0.0.1")), Some("loopback"));
        assert_eq!(special_range(ip("fd00::1")), Some("unique local (ULA)"));
    }

    #[test]
    fn allowed_networks_open_only_themselves() {
        let nets: Vec<AllowedNetwork> = ["10.1.0.0/16", "127.0.0.1"].iter().map(|n| n.parse().unwrap()).collect();
        let policy = AddressPolicy::new(false, &nets);
        assert!(policy.allows(ip("10.1.2.3")));
        assert!(!policy.allows(ip("10.2.0.1")));
        assert!(policy.allows(ip("127.0.0.1")));
        assert!(policy.allows(ip("::ffff:127.0.0.1")), "a mapped address is judged as its IPv4 address");
        assert!(!policy.allows(ip("127.0.0.2")));
        assert!(!policy.allows(ip("169.254.169.254")));
        let loopback = AddressPolicy::loopback();
        assert!(loopback.allows(ip("127.0.0.3")) && loopback.allows(ip("::1")));
        assert!(!loopback.allows(ip("192.168.0.1")) && !loopback.allows(ip("fe80::1")));
        assert!(AddressPolicy::allow_all().allows(ip("169.254.169.254")));
        assert!("10.0.0.0/33".parse::<AllowedNetwork>().is_err());
        assert!("nope".parse::<AllowedNetwork>().is_err());
        let more = AddressPolicy::public_only().also_allowing("192.168.0.0/16".parse().unwrap());
        assert!(more.allows(ip("192.168.3.4")) && !more.allows(ip("10.0.0.1")));
        assert_eq!(parse_network("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8", "host bits are dropped");
    }

    #[test]
    fn urls_are_checked_by_their_ip_literal_host() {
        let policy = AddressPolicy::public_only();
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(policy.check_url(&url("http://127.0.0.1:8080/x")).is_err());
        assert!(policy.check_url(&url("http://[::1]/x")).is_err());
        assert!(policy.check_url(&url("http://[::ffff:a9fe:a9fe]/")).is_err());
        // The URL parser reads the numeric forms of IPv4 as the address they mean.
        assert!(policy.check_url(&url("http://2130706433/")).is_err());
        assert!(policy.check_url(&url("http://0x7f.1/")).is_err());
        assert!(policy.check_url(&url("https://8.8.8.8/")).is_ok());
        assert!(policy.check_url(&url("https://localhost/")).is_ok(), "names are checked when resolved");
        assert!(policy.check_url_str("http://10.0.0.1/").is_err());
    }

    fn v4_in(net: u32, len: u8) -> impl Strategy<Value = Ipv4Addr> {
        let host_mask = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
        any::<u32>().prop_map(move |r| Ipv4Addr::from((net & !host_mask) | (r & host_mask)))
    }

    proptest! {
        /// Every address of every IPv4 special range is refused, as itself and in each IPv6
        /// form that embeds it.
        #[test]
        fn any_address_of_a_special_v4_range_is_refused(
            (v4, _) in proptest::sample::select(SPECIAL_V4).prop_flat_map(|(n, l, k)| (v4_in(n, l), Just(k))),
        ) {
            let policy = AddressPolicy::public_only();
            let bits = u128::from(u32::from(v4));
            prop_assert!(!policy.allows(IpAddr::V4(v4)));
            prop_assert!(!policy.allows(IpAddr::V6(v4.to_ipv6_mapped())));
            prop_assert!(!policy.allows(IpAddr::V6(Ipv6Addr::from((0x0064_ff9b << 96) | bits))));
            prop_assert!(!policy.allows(IpAddr::V6(Ipv6Addr::from((0x2002 << 112) | (bits << 80)))));
        }

        /// Every address of every IPv6 special range is refused.
        #[test]
        fn any_address_of_a_special_v6_range_is_refused(
            v6 in proptest::sample::select(SPECIAL_V6).prop_flat_map(|(net, len, _)| {
                let host_mask = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                any::<u128>().prop_map(move |r| Ipv6Addr::from((net & !host_mask) | (r & host_mask)))
            }),
        ) {
            prop_assert!(!AddressPolicy::public_only().allows(IpAddr::V6(v6)));
        }

        /// An allowed network opens every address in it and nothing outside it that was refused.
        #[test]
        fn an_allowed_network_opens_exactly_itself(a in any::<u32>(), len in 8u8..=32, b in any::<u32>()) {
            let net = ipnet::Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc();
            let policy = AddressPolicy::allowing(vec![IpNet::V4(net)]);
            let inside = v4_host(net, b);
            prop_assert!(policy.allows(IpAddr::V4(inside)));
            let other = Ipv4Addr::from(b);
            let expected = net.contains(&other) || special_v4(other).is_none();
            prop_assert_eq!(policy.allows(IpAddr::V4(other)), expected);
        }

        /// A parsed network prints back as itself.
        #[test]
        fn networks_round_trip_through_text(a in any::<u32>(), len in 0u8..=32) {
            let net = ipnet::Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc();
            prop_assert_eq!(parse_network(&net.to_string()).unwrap(), IpNet::V4(net));
        }
    }

    fn v4_host(net: ipnet::Ipv4Net, r: u32) -> Ipv4Addr {
        let host_mask = u32::from(net.hostmask());
        Ipv4Addr::from((u32::from(net.network()) & !host_mask) | (r & host_mask))
    }
}
