//! The in-kernel traffic filter: family, CIDRs, protocol and port range.

use faultline_common::{
    FAMILY_ANY, Filter, PORT_MATCH_DST, PORT_MATCH_EITHER, PORT_MATCH_NONE, PORT_MATCH_SRC,
};

use crate::packet::PacketMeta;

#[inline(always)]
fn in_prefix(addr: &[u32; 4], want: &[u32; 4], mask: &[u32; 4]) -> bool {
    (addr[0] & mask[0]) == want[0]
        && (addr[1] & mask[1]) == want[1]
        && (addr[2] & mask[2]) == want[2]
        && (addr[3] & mask[3]) == want[3]
}

#[inline(always)]
fn in_range(port: u16, f: &Filter) -> bool {
    port >= f.port_lo && port <= f.port_hi
}

#[inline(always)]
pub fn matches(f: &Filter, m: &PacketMeta) -> bool {
    if f.family != FAMILY_ANY && f.family != m.family {
        return false;
    }
    if f.has_src != 0 && !in_prefix(&m.src, &f.src_addr, &f.src_mask) {
        return false;
    }
    if f.has_dst != 0 && !in_prefix(&m.dst, &f.dst_addr, &f.dst_mask) {
        return false;
    }
    if f.proto != 0 && f.proto != m.proto {
        return false;
    }
    if f.port_match == PORT_MATCH_NONE {
        return true;
    }
    if !m.has_ports {
        return false;
    }
    match f.port_match {
        PORT_MATCH_SRC => in_range(m.sport, f),
        PORT_MATCH_DST => in_range(m.dport, f),
        PORT_MATCH_EITHER => in_range(m.sport, f) || in_range(m.dport, f),
        _ => false,
    }
}
