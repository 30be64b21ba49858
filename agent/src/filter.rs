//! The traffic filter as operators write it (`--src 10.0.0.0/8 --proto udp --port
//! 53`), validated and encoded into the kernel ABI.
use std::{fmt, net::IpAddr, str::FromStr};

use clap::Args;
use faultline_common::{
    FAMILY_ANY, FAMILY_V4, FAMILY_V6, Filter, PORT_MATCH_DST, PORT_MATCH_EITHER, PORT_MATCH_NONE,
    PORT_MATCH_SRC,
};
use ipnet::IpNet;

use crate::UsageError;

/// An inclusive port range, `N` or `N-M`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| -> Result<u16, String> {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("'{p}' is not a port number (0-65535)"))
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if lo > hi {
            return Err(format!(
                "port range '{s}' is reversed (start {lo} > end {hi})"
            ));
        }
        Ok(Self { lo, hi })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// An IP protocol by name or number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proto(pub u8);

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(Self(match s {
            "tcp" => 6,
            "udp" => 17,
            "icmp" => 1,
            "icmpv6" => 58,
            "sctp" => 132,
            other => other
                .parse::<u8>()
                .ok()
                .filter(|&n| n != 0)
                .ok_or_else(|| {
                    format!("unknown protocol '{other}' (tcp, udp, icmp, icmpv6, sctp or 1-255)")
                })?,
        }))
    }
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    // A bare address means the host itself (/32 or /128).
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| format!("'{s}' is not a CIDR (expected e.g. 10.0.0.0/8 or 2001:db8::/32)"))
}

#[derive(Args, Clone, Debug, Default)]
pub struct FilterArgs {
    /// Match packets from this source CIDR (IPv4 or IPv6).
    #[arg(long, value_parser = parse_cidr)]
    pub src: Option<IpNet>,
    /// Match packets to this destination CIDR (IPv4 or IPv6).
    #[arg(long, value_parser = parse_cidr)]
    pub dst: Option<IpNet>,
    /// Match this L4 protocol: tcp, udp, icmp, icmpv6, sctp or a number.
    #[arg(long)]
    pub proto: Option<Proto>,
    /// Match a source or destination port in N or N-M.
    #[arg(long, conflicts_with_all = ["sport", "dport"])]
    pub port: Option<PortRange>,
    /// Match a source port in N or N-M.
    #[arg(long, conflicts_with = "dport")]
    pub sport: Option<PortRange>,
    /// Match a destination port in N or N-M.
    #[arg(long)]
    pub dport: Option<PortRange>,
}

fn words(net: &IpNet) -> ([u32; 4], [u32; 4]) {
    let mut addr = [0u32; 4];
    let mut mask = [0u32; 4];
    let (a, m): (Vec<u8>, Vec<u8>) = match net {
        IpNet::V4(n) => (n.addr().octets().to_vec(), n.netmask().octets().to_vec()),
        IpNet::V6(n) => (n.addr().octets().to_vec(), n.netmask().octets().to_vec()),
    };
    for (i, (ac, mc)) in a.chunks(4).zip(m.chunks(4)).enumerate() {
        addr[i] = u32::from_ne_bytes([ac[0], ac[1], ac[2], ac[3]]);
        mask[i] = u32::from_ne_bytes([mc[0], mc[1], mc[2], mc[3]]);
    }
    (addr, mask)
}

fn family(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => FAMILY_V4,
        IpNet::V6(_) => FAMILY_V6,
    }
}

impl FilterArgs {
    /// Validates combinations and encodes the filter for the kernel.
    pub fn to_kernel(&self) -> Result<Filter, UsageError> {
        let mut f = Filter {
            family: FAMILY_ANY,
            ..Default::default()
        };
        if let (Some(s), Some(d)) = (&self.src, &self.dst)
            && family(s) != family(d)
        {
            return Err(UsageError(format!(
                "--src {s} and --dst {d} are of different IP families; a packet cannot match both"
            )));
        }
        if let Some(net) = &self.src {
            f.family = family(net);
            f.has_src = 1;
            (f.src_addr, f.src_mask) = words(net);
        }
        if let Some(net) = &self.dst {
            f.family = family(net);
            f.has_dst = 1;
            (f.dst_addr, f.dst_mask) = words(net);
        }
        if let Some(Proto(p)) = self.proto {
            f.proto = p;
        }
        let ports = [
            (self.port, PORT_MATCH_EITHER),
            (self.sport, PORT_MATCH_SRC),
            (self.dport, PORT_MATCH_DST),
        ];
        f.port_match = PORT_MATCH_NONE;
        for (range, mode) in ports {
            if let Some(r) = range {
                f.port_match = mode;
                f.port_lo = r.lo;
                f.port_hi = r.hi;
            }
        }
        if f.port_match != PORT_MATCH_NONE {
            match self.proto {
                Some(Proto(6 | 17 | 132 | 136)) | None => {}
                Some(Proto(p)) => {
                    return Err(UsageError(format!(
                        "a port filter needs a protocol with ports (tcp, udp, sctp), not protocol {p}"
                    )));
                }
            }
        }
        if self.proto == Some(Proto(1)) && f.family == FAMILY_V6 {
            return Err(UsageError(
                "--proto icmp is IPv4's ICMP; use --proto icmpv6 with IPv6 addresses".into(),
            ));
        }
        Ok(f)
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = self.proto {
            parts.push(format!("proto {}", p.0));
        }
        if let Some(s) = &self.src {
            parts.push(format!("src {s}"));
        }
        if let Some(d) = &self.dst {
            parts.push(format!("dst {d}"));
        }
        if let Some(p) = self.port {
            parts.push(format!("port {p}"));
        }
        if let Some(p) = self.sport {
            parts.push(format!("sport {p}"));
        }
        if let Some(p) = self.dport {
            parts.push(format!("dport {p}"));
        }
        if parts.is_empty() {
            "all packets".into()
        } else {
            parts.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_reversed_ranges_are_refused() {
        assert_eq!(
            "53".parse::<PortRange>().unwrap(),
            PortRange { lo: 53, hi: 53 }
        );
        assert_eq!(
            "1000-2000".parse::<PortRange>().unwrap(),
            PortRange { lo: 1000, hi: 2000 }
        );
        let e = "2000-1000".parse::<PortRange>().unwrap_err();
        assert!(e.contains("reversed"), "{e}");
        assert!("70000".parse::<PortRange>().is_err());
        assert!("a-b".parse::<PortRange>().is_err());
    }

    #[test]
    fn cidrs_are_encoded_as_network_order_words() {
        let args = FilterArgs {
            src: Some(parse_cidr("10.200.1.77/24").unwrap()),
            ..Default::default()
        };
        let f = args.to_kernel().unwrap();
        assert_eq!(f.family, FAMILY_V4);
        assert_eq!(f.src_addr[0].to_ne_bytes(), [10, 200, 1, 0]);
        assert_eq!(f.src_mask[0].to_ne_bytes(), [255, 255, 255, 0]);
        let v6 = FilterArgs {
            dst: Some(parse_cidr("2001:db8::1").unwrap()),
            ..Default::default()
        }
        .to_kernel()
        .unwrap();
        assert_eq!(v6.family, FAMILY_V6);
        assert_eq!(v6.dst_mask, [u32::MAX; 4]);
        assert_eq!(v6.dst_addr[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(v6.dst_addr[3].to_ne_bytes(), [0, 0, 0, 1]);
    }

    #[test]
    fn malformed_and_conflicting_filters_are_refused() {
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("not-an-ip").is_err());
        let mixed = FilterArgs {
            src: Some(parse_cidr("10.0.0.0/8").unwrap()),
            dst: Some(parse_cidr("2001:db8::/32").unwrap()),
            ..Default::default()
        };
        assert!(
            mixed
                .to_kernel()
                .unwrap_err()
                .0
                .contains("different IP families")
        );
        let icmp_port = FilterArgs {
            proto: Some(Proto(1)),
            port: Some(PortRange { lo: 1, hi: 1 }),
            ..Default::default()
        };
        assert!(icmp_port.to_kernel().unwrap_err().0.contains("port filter"));
        assert!("bogus".parse::<Proto>().is_err());
        assert!("0".parse::<Proto>().is_err());
    }
}
