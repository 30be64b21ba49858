//! The traffic filter as operators write it (`--src 10.0.0.0/8 --proto udp --port
//! 53`), validated and encoded into the kernel ABI.
use clap::Args;
use faultline_common::{
    FAMILY_ANY, FAMILY_V4, FAMILY_V6, Filter, PORT_MATCH_DST, PORT_MATCH_EITHER, PORT_MATCH_NONE,
    PORT_MATCH_SRC,
};
use ipnet::IpNet;

use crate::errors::UsageError;

pub use faultline_proto::filter::{PortRange, Proto, parse_cidr};

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
        // The rules between fields are the coordinator's too (`faultline_proto::filter`).
        faultline_proto::filter::Filter {
            src: self.src,
            dst: self.dst,
            proto: self.proto,
            port: self.port,
            sport: self.sport,
            dport: self.dport,
        }
        .check()
        .map_err(|e| {
            let flag = match e.field {
                "filter.protocol" => "--proto".to_owned(),
                f => f.replace("filter.", "--"),
            };
            UsageError(format!("{flag}: {}", e.message))
        })?;
        let mut f = Filter {
            family: FAMILY_ANY,
            ..Default::default()
        };
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
