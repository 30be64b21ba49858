//! The rules every traffic filter, target cgroup path and loss probability obeys,
//! written once: the coordinator checks an order's fields with them where the
//! request enters (so a bad one is exit 2 and nothing starts), and the agent parses
//! its flags with the same functions before anything reaches the kernel.
use std::{fmt, net::IpAddr, path::Path, str::FromStr};

use ipnet::IpNet;

use crate::{limits::Percent, v1::TrafficFilter};

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

/// A CIDR; a bare address means the host itself (/32 or /128).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| format!("'{s}' is not a CIDR (expected e.g. 10.0.0.0/8 or 2001:db8::/32)"))
}

/// A traffic filter with every field parsed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Filter {
    pub src: Option<IpNet>,
    pub dst: Option<IpNet>,
    pub proto: Option<Proto>,
    pub port: Option<PortRange>,
    pub sport: Option<PortRange>,
    pub dport: Option<PortRange>,
}

/// A filter mistake: the field (`filter.port`, ...) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn is_v6(net: &IpNet) -> bool {
    matches!(net, IpNet::V6(_))
}

impl Filter {
    /// The rules between fields: one IP family, ports only with a protocol that has
    /// them, one of port / sport / dport, ICMP only with IPv4.
    pub fn check(&self) -> Result<(), FilterError> {
        let err = |field, message: String| Err(FilterError { field, message });
        if let (Some(s), Some(d)) = (&self.src, &self.dst)
            && is_v6(s) != is_v6(d)
        {
            return err(
                "filter.dst",
                format!(
                    "src {s} and dst {d} are of different IP families; a packet cannot match both"
                ),
            );
        }
        let ports = [
            ("filter.port", self.port),
            ("filter.sport", self.sport),
            ("filter.dport", self.dport),
        ];
        let given: Vec<&str> = ports
            .iter()
            .filter(|(_, p)| p.is_some())
            .map(|(f, _)| *f)
            .collect();
        if given.len() > 1 {
            return err(
                given[1],
                format!("{} and {} exclude each other", given[0], given[1]),
            );
        }
        if let (Some(field), Some(Proto(p))) = (given.first(), self.proto)
            && !matches!(p, 6 | 17 | 132 | 136)
        {
            return err(
                field,
                format!(
                    "a port filter needs a protocol with ports (tcp, udp, sctp), not protocol {p}"
                ),
            );
        }
        let v6 = self.src.iter().chain(&self.dst).any(is_v6);
        if self.proto == Some(Proto(1)) && v6 {
            return err(
                "filter.protocol",
                "icmp is IPv4's ICMP; use icmpv6 with IPv6 addresses".into(),
            );
        }
        Ok(())
    }
}

impl TrafficFilter {
    /// Every field parsed and the rules between them checked; a mistake names its
    /// field.
    pub fn parse(&self) -> Result<Filter, FilterError> {
        fn field<T>(
            name: &'static str,
            text: &str,
            parse: impl Fn(&str) -> Result<T, String>,
        ) -> Result<Option<T>, FilterError> {
            if text.is_empty() {
                return Ok(None);
            }
            parse(text).map(Some).map_err(|message| FilterError {
                field: name,
                message,
            })
        }
        let f = Filter {
            src: field("filter.src", &self.src_cidr, parse_cidr)?,
            dst: field("filter.dst", &self.dst_cidr, parse_cidr)?,
            proto: field("filter.protocol", &self.protocol, str::parse)?,
            port: field("filter.port", &self.port, str::parse)?,
            sport: field("filter.sport", &self.sport, str::parse)?,
            dport: field("filter.dport", &self.dport, str::parse)?,
        };
        f.check()?;
        Ok(f)
    }
}

/// A target cgroup is a path below the cgroup filesystem's root: relative, without
/// `..` (and without a NUL, which no path can hold).
pub fn check_cgroup_path(rel: &str) -> Result<(), String> {
    let p = Path::new(rel);
    if rel.is_empty()
        || rel.contains('\0')
        || p.is_absolute()
        || p.components().any(|c| c.as_os_str() == "..")
    {
        return Err(format!(
            "'{}' must be a path relative to the cgroup root, without '..'",
            rel.escape_debug()
        ));
    }
    Ok(())
}

/// The data path draws loss against a 32-bit random number: its smallest non-zero
/// probability, in percent (about 2.3e-8 %).
pub const LOSS_RESOLUTION_PERCENT: f64 = 100.0 / (1u64 << 32) as f64;

/// A loss probability the data path can carry: 0, or at least its resolution. A
/// smaller non-zero value would be applied as no loss at all while reported as loss.
pub fn check_loss_resolution(p: Percent) -> Result<(), String> {
    let v = p.value();
    if v != 0.0 && v < LOSS_RESOLUTION_PERCENT {
        return Err(format!(
            "{v}% is below the data path's resolution ({LOSS_RESOLUTION_PERCENT:.1e}%): it would \
             drop nothing; give 0 or at least {LOSS_RESOLUTION_PERCENT:.1e}%"
        ));
    }
    Ok(())
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
    fn every_bad_filter_field_is_named() {
        let bad = |f: TrafficFilter| f.parse().unwrap_err();
        let e = bad(TrafficFilter {
            port: "70000".into(),
            ..Default::default()
        });
        assert_eq!(e.field, "filter.port");
        let e = bad(TrafficFilter {
            protocol: "999".into(),
            ..Default::default()
        });
        assert_eq!(e.field, "filter.protocol");
        let e = bad(TrafficFilter {
            src_cidr: "10.0.0.0/33".into(),
            ..Default::default()
        });
        assert_eq!(e.field, "filter.src");
        let e = bad(TrafficFilter {
            dport: "5-1".into(),
            ..Default::default()
        });
        assert!(e.message.contains("reversed"), "{e}");
        let e = bad(TrafficFilter {
            sport: "1".into(),
            dport: "2".into(),
            ..Default::default()
        });
        assert_eq!(e.field, "filter.dport");
        let e = bad(TrafficFilter {
            protocol: "icmp".into(),
            port: "1".into(),
            ..Default::default()
        });
        assert!(e.message.contains("port filter"), "{e}");
        let e = bad(TrafficFilter {
            src_cidr: "10.0.0.0/8".into(),
            dst_cidr: "2001:db8::/32".into(),
            ..Default::default()
        });
        assert!(e.message.contains("different IP families"), "{e}");
        let e = bad(TrafficFilter {
            protocol: "icmp".into(),
            dst_cidr: "2001:db8::1".into(),
            ..Default::default()
        });
        assert_eq!(e.field, "filter.protocol");
        let ok = TrafficFilter {
            src_cidr: "10.200.1.77/24".into(),
            protocol: "udp".into(),
            dport: "53".into(),
            ..Default::default()
        }
        .parse()
        .unwrap();
        assert_eq!(ok.src.unwrap().to_string(), "10.200.1.0/24");
        assert_eq!(TrafficFilter::default().parse(), Ok(Filter::default()));
    }

    #[test]
    fn cgroup_paths_stay_below_the_root() {
        check_cgroup_path("system.slice/app.service").unwrap();
        for bad in ["", "/sys/fs/cgroup/x", "a/../../etc", "..", "a\0b"] {
            assert!(check_cgroup_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn loss_below_the_data_paths_resolution_is_refused() {
        let p = |v: f64| Percent::new(v).unwrap();
        assert!(check_loss_resolution(p(1e-320)).is_err());
        assert!(check_loss_resolution(p(1e-9)).is_err());
        check_loss_resolution(p(0.0)).unwrap();
        check_loss_resolution(p(LOSS_RESOLUTION_PERCENT)).unwrap();
        check_loss_resolution(p(0.5)).unwrap();
    }
}
