//! Header parsing shared by the tc and XDP programs: Ethernet (with up to two VLAN
//! tags), IPv4, IPv6 (with a bounded walk over extension headers) and the ports of
//! TCP, UDP, UDP-Lite and SCTP.
//!
//! Headers are copied out with the kernel's load-bytes helpers rather than read
//! through direct packet pointers: offsets here are variable (VLAN tags, IPv4
//! options, IPv6 extension headers), and LLVM lowers a bounds check and the access
//! at a variable offset to two pointers the verifier cannot relate. The helpers also
//! read non-linear skbs, so no pull is needed.

use aya_ebpf::{
    helpers::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;
const IPV6_EXT_MAX: usize = 4;

/// Copies `N` bytes at `offset` out of the packet; false when the packet is shorter.
pub trait Loader {
    fn load<const N: usize>(&self, offset: usize, buf: &mut [u8; N]) -> bool;
    /// The packet's linear data as (start, end) addresses, for direct reads at
    /// constant offsets (the verifier tracks those; it cannot track variable ones).
    fn linear(&self) -> (usize, usize);
}

impl Loader for TcContext {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize, buf: &mut [u8; N]) -> bool {
        // SAFETY: `buf` is a valid stack buffer of exactly N bytes.
        unsafe {
            bpf_skb_load_bytes(
                self.skb.skb.cast(),
                offset as u32,
                buf.as_mut_ptr().cast(),
                N as u32,
            ) == 0
        }
    }

    #[inline(always)]
    fn linear(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }
}

impl Loader for XdpContext {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize, buf: &mut [u8; N]) -> bool {
        // SAFETY: `buf` is a valid stack buffer of exactly N bytes.
        unsafe {
            bpf_xdp_load_bytes(self.ctx, offset as u32, buf.as_mut_ptr().cast(), N as u32) == 0
        }
    }

    #[inline(always)]
    fn linear(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }
}

/// What the filter looks at. Addresses are raw network-order words.
#[derive(Clone, Copy)]
pub struct PacketMeta {
    /// 4, 6, or 0 for non-IP.
    pub family: u8,
    pub proto: u8,
    /// True when `sport`/`dport` were read (a port-carrying L4 header of a first
    /// fragment).
    pub has_ports: bool,
    pub sport: u16,
    pub dport: u16,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

impl PacketMeta {
    pub const fn new() -> Self {
        Self {
            family: 0,
            proto: 0,
            has_ports: false,
            sport: 0,
            dport: 0,
            src: [0; 4],
            dst: [0; 4],
        }
    }
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn word(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Fills `meta`, which must be fresh (`PacketMeta::new()`), from the packet. Returns
/// false when a header the packet claims to have is missing (truncated packet).
/// `meta` is caller-owned because the verifier forbids returning a pointer into a
/// callee's stack, which is how a large returned struct would be lowered.
#[inline(always)]
pub fn parse<L: Loader>(pkt: &L, meta: &mut PacketMeta) -> bool {
    parse_into(pkt, meta).is_some()
}

/// Ethernet + IPv4 without options + the 4 port bytes: the common packet.
const FAST_V4_LEN: usize = ETH_HLEN + 20 + 4;

/// Reads a `T` at a constant `offset` of the linear data; the caller has checked
/// that `FAST_V4_LEN` bytes are there.
#[inline(always)]
fn at<T: Copy>(start: usize, offset: usize) -> T {
    // SAFETY: offset + size_of::<T>() <= FAST_V4_LEN, checked by the caller.
    unsafe { core::ptr::read_unaligned((start + offset) as *const T) }
}

#[inline(always)]
fn parse_into<L: Loader>(pkt: &L, meta: &mut PacketMeta) -> Option<()> {
    // Fast path: read only the fields the filter needs, straight from the linear
    // data at constant offsets (no copy, no helper call; the verifier tracks constant
    // offsets). Anything else takes the helper path below.
    let (start, end) = pkt.linear();
    if start + FAST_V4_LEN <= end
        && at::<u16>(start, 12) == ETH_P_IP.to_be()
        && at::<u8>(start, ETH_HLEN) == 0x45
    {
        meta.family = 4;
        meta.proto = at(start, ETH_HLEN + 9);
        meta.src[0] = at(start, ETH_HLEN + 12);
        meta.dst[0] = at(start, ETH_HLEN + 16);
        if u16::from_be(at(start, ETH_HLEN + 6)) & 0x1fff == 0 && carries_ports(meta.proto) {
            meta.sport = u16::from_be(at(start, ETH_HLEN + 20));
            meta.dport = u16::from_be(at(start, ETH_HLEN + 22));
            meta.has_ports = true;
        }
        return Some(());
    }
    parse_slow(pkt, meta)
}

#[inline(always)]
fn ipv4_fields(h: &[u8], meta: &mut PacketMeta) {
    meta.family = 4;
    meta.proto = h[9];
    meta.src[0] = word(h, 12);
    meta.dst[0] = word(h, 16);
}

#[inline(always)]
fn carries_ports(proto: u8) -> bool {
    matches!(
        proto,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_UDPLITE
    )
}

/// Everything else: VLAN tags, IPv4 options, IPv6 and its extension headers, short
/// packets.
#[inline(always)]
fn parse_slow<L: Loader>(pkt: &L, meta: &mut PacketMeta) -> Option<()> {
    let mut two = [0u8; 2];
    let mut l3 = ETH_HLEN;
    pkt.load(12, &mut two).then_some(())?;
    let mut ethertype = u16::from_be_bytes(two);
    // Up to two VLAN tags (802.1ad outer + 802.1Q inner).
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        pkt.load(l3 + 2, &mut two).then_some(())?;
        ethertype = u16::from_be_bytes(two);
        l3 += VLAN_HLEN;
        if ethertype == ETH_P_8021Q {
            pkt.load(l3 + 2, &mut two).then_some(())?;
            ethertype = u16::from_be_bytes(two);
            l3 += VLAN_HLEN;
        }
    }

    let l4 = match ethertype {
        ETH_P_IP => {
            let mut h = [0u8; 20];
            pkt.load(l3, &mut h).then_some(())?;
            let ihl = ((h[0] & 0x0f) as usize) * 4;
            if ihl < 20 {
                return Some(()); // malformed: stays family 0, never matches a family
            }
            ipv4_fields(&h, meta);
            if be16(&h, 6) & 0x1fff != 0 {
                return Some(()); // a later fragment carries no L4 header
            }
            l3 + ihl
        }
        ETH_P_IPV6 => {
            let mut h = [0u8; 40];
            pkt.load(l3, &mut h).then_some(())?;
            meta.family = 6;
            for i in 0..4 {
                meta.src[i] = word(&h, 8 + 4 * i);
                meta.dst[i] = word(&h, 24 + 4 * i);
            }
            let mut next = h[6];
            let mut off = l3 + 40;
            let mut ext = [0u8; 4];
            for _ in 0..IPV6_EXT_MAX {
                match next {
                    IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                        pkt.load(off, &mut ext).then_some(())?;
                        next = ext[0];
                        off += (ext[1] as usize + 1) * 8;
                    }
                    IPPROTO_FRAGMENT => {
                        pkt.load(off, &mut ext).then_some(())?;
                        next = ext[0];
                        off += 8;
                        if be16(&ext, 2) & 0xfff8 != 0 {
                            meta.proto = next;
                            return Some(()); // a later fragment carries no L4 header
                        }
                    }
                    _ => break,
                }
            }
            meta.proto = next;
            off
        }
        _ => return Some(()),
    };

    if carries_ports(meta.proto) {
        let mut ports = [0u8; 4];
        pkt.load(l4, &mut ports).then_some(())?;
        meta.sport = be16(&ports, 0);
        meta.dport = be16(&ports, 2);
        meta.has_ports = true;
    }
    Some(())
}
