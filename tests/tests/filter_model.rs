//! The eBPF packet parser and filter against a userspace model of them.
//!
//! The real program, loaded and armed by a real agent (`inject loss --percent 100`
//! with a filter, so a packet is dropped exactly when it matches), runs on frames
//! handed to it by BPF_PROG_TEST_RUN: generated ones (Ethernet with 0-2 VLAN tags,
//! IPv4 with options and fragments, IPv6 with extension-header chains, TCP, UDP,
//! SCTP, UDP-Lite, ICMP and other protocols, addresses and ports around the filter's
//! edges) and the same frames mutated (bytes flipped, cut short). Each verdict must
//! be what the model below says. The model is written from the rules the data path
//! documents, not from its code: one pass over the bytes, no shared types.
//!
//! The generator is seeded (printed), so a failure is reproducible.
use faultline_tests::{Agent, Pair, limits_file, netns::IFACE, test_run::test_run};

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_UNSPEC: u32 = u32::MAX; // -1

/// xorshift64*: small, seedable, good enough to spread test inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
}

// ------------------------------------------------------------------ the model

#[derive(Clone, Copy, Debug, PartialEq)]
enum Family {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug)]
struct Cidr {
    family: Family,
    addr: [u8; 16],
    prefix: u32,
}

impl Cidr {
    fn parse(s: &str) -> Self {
        let (a, p) = s.split_once('/').unwrap();
        let prefix: u32 = p.parse().unwrap();
        let ip: std::net::IpAddr = a.parse().unwrap();
        let mut addr = [0u8; 16];
        let family = match ip {
            std::net::IpAddr::V4(v) => {
                addr[..4].copy_from_slice(&v.octets());
                Family::V4
            }
            std::net::IpAddr::V6(v) => {
                addr.copy_from_slice(&v.octets());
                Family::V6
            }
        };
        Self {
            family,
            addr,
            prefix,
        }
    }

    fn contains(&self, addr: &[u8]) -> bool {
        (0..self.prefix as usize).all(|bit| {
            let m = 0x80u8 >> (bit % 8);
            addr[bit / 8] & m == self.addr[bit / 8] & m
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Ports {
    Either(u16, u16),
    Src(u16, u16),
    Dst(u16, u16),
}

#[derive(Clone, Debug)]
struct Model {
    args: Vec<&'static str>,
    src: Option<Cidr>,
    dst: Option<Cidr>,
    proto: Option<u8>,
    ports: Option<Ports>,
}

/// What the parser documents it takes from a frame.
#[derive(Debug, Default)]
struct Seen {
    family: Option<Family>,
    proto: u8,
    src: Vec<u8>,
    dst: Vec<u8>,
    ports: Option<(u16, u16)>,
}

fn carries_ports(p: u8) -> bool {
    matches!(p, 6 | 17 | 132 | 136)
}

/// Parses `f` as the data path documents: Ethernet, up to two VLAN tags (an outer
/// 802.1Q or 802.1ad, then an inner 802.1Q), IPv4 (IHL below 5 is not IP; a non-first
/// fragment has no ports), IPv6 (at most 4 hop-by-hop / routing / destination /
/// fragment headers walked; a non-first fragment has no ports). `None` when a header
/// the frame announces is cut short.
fn parse(f: &[u8]) -> Option<Seen> {
    let be16 =
        |at: usize| -> Option<u16> { Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?])) };
    let need = |end: usize| (end <= f.len()).then_some(());
    let mut s = Seen::default();
    let mut l3 = 14;
    let mut et = be16(12)?;
    if et == 0x8100 || et == 0x88a8 {
        et = be16(l3 + 2)?;
        l3 += 4;
        if et == 0x8100 {
            et = be16(l3 + 2)?;
            l3 += 4;
        }
    }
    let l4 = match et {
        0x0800 => {
            need(l3 + 20)?;
            let ihl = usize::from(f[l3] & 0x0f) * 4;
            if ihl < 20 {
                return Some(Seen::default());
            }
            s.family = Some(Family::V4);
            s.proto = f[l3 + 9];
            s.src = f[l3 + 12..l3 + 16].to_vec();
            s.dst = f[l3 + 16..l3 + 20].to_vec();
            if be16(l3 + 6)? & 0x1fff != 0 {
                return Some(s);
            }
            l3 + ihl
        }
        0x86dd => {
            need(l3 + 40)?;
            s.family = Some(Family::V6);
            s.src = f[l3 + 8..l3 + 24].to_vec();
            s.dst = f[l3 + 24..l3 + 40].to_vec();
            let mut next = f[l3 + 6];
            let mut off = l3 + 40;
            for _ in 0..4 {
                match next {
                    0 | 43 | 60 => {
                        need(off + 4)?;
                        next = f[off];
                        off += (usize::from(f[off + 1]) + 1) * 8;
                    }
                    44 => {
                        need(off + 4)?;
                        next = f[off];
                        let frag = be16(off + 2)?;
                        off += 8;
                        if frag & 0xfff8 != 0 {
                            s.proto = next;
                            return Some(s);
                        }
                    }
                    _ => break,
                }
            }
            s.proto = next;
            off
        }
        _ => return Some(s),
    };
    if carries_ports(s.proto) {
        need(l4 + 4)?;
        s.ports = Some((be16(l4)?, be16(l4 + 2)?));
    }
    Some(s)
}

impl Model {
    fn new(args: &[&'static str]) -> Self {
        let mut m = Model {
            args: args.to_vec(),
            src: None,
            dst: None,
            proto: None,
            ports: None,
        };
        let range = |v: &str| -> (u16, u16) {
            match v.split_once('-') {
                Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                None => (v.parse().unwrap(), v.parse().unwrap()),
            }
        };
        for pair in args.chunks(2) {
            match pair[0] {
                "--src" => m.src = Some(Cidr::parse(pair[1])),
                "--dst" => m.dst = Some(Cidr::parse(pair[1])),
                "--proto" => {
                    m.proto = Some(match pair[1] {
                        "tcp" => 6,
                        "udp" => 17,
                        "icmp" => 1,
                        "icmpv6" => 58,
                        "sctp" => 132,
                        n => n.parse().unwrap(),
                    })
                }
                "--port" => {
                    let (a, b) = range(pair[1]);
                    m.ports = Some(Ports::Either(a, b));
                }
                "--sport" => {
                    let (a, b) = range(pair[1]);
                    m.ports = Some(Ports::Src(a, b));
                }
                "--dport" => {
                    let (a, b) = range(pair[1]);
                    m.ports = Some(Ports::Dst(a, b));
                }
                other => panic!("model: unknown flag {other}"),
            }
        }
        m
    }

    /// Whether the fault applies to frame `f`.
    fn matches(&self, f: &[u8]) -> bool {
        let Some(s) = parse(f) else {
            return false; // cut short: passed untouched
        };
        let family = self.src.or(self.dst).map(|c| c.family);
        if let Some(want) = family
            && s.family != Some(want)
        {
            return false;
        }
        if let Some(c) = self.src
            && !c.contains(&s.src)
        {
            return false;
        }
        if let Some(c) = self.dst
            && !c.contains(&s.dst)
        {
            return false;
        }
        if let Some(p) = self.proto
            && p != s.proto
        {
            return false;
        }
        let within = |p: u16, (lo, hi): (u16, u16)| lo <= p && p <= hi;
        match (self.ports, s.ports) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(Ports::Either(a, b)), Some((sp, dp))) => within(sp, (a, b)) || within(dp, (a, b)),
            (Some(Ports::Src(a, b)), Some((sp, _))) => within(sp, (a, b)),
            (Some(Ports::Dst(a, b)), Some((_, dp))) => within(dp, (a, b)),
        }
    }
}

// ------------------------------------------------------------------ the generator

/// An address near `c` (inside, at its edges, just outside) or anywhere.
fn address(r: &mut Rng, c: Option<Cidr>, v6: bool) -> Vec<u8> {
    let len = if v6 { 16 } else { 4 };
    let mut a: Vec<u8> = (0..len).map(|_| r.byte()).collect();
    if let Some(c) = c
        && (c.family == Family::V6) == v6
        && r.chance(70)
    {
        // Keep the prefix, perhaps flipping its last bit (just outside).
        for bit in 0..c.prefix as usize {
            let m = 0x80u8 >> (bit % 8);
            a[bit / 8] = (a[bit / 8] & !m) | (c.addr[bit / 8] & m);
        }
        if c.prefix > 0 && r.chance(25) {
            let bit = c.prefix as usize - 1;
            a[bit / 8] ^= 0x80 >> (bit % 8);
        }
    }
    a
}

fn port(r: &mut Rng, m: &Model) -> u16 {
    let edges: Vec<u16> = match m.ports {
        Some(Ports::Either(a, b) | Ports::Src(a, b) | Ports::Dst(a, b)) => {
            vec![a, b, a.wrapping_sub(1), b.wrapping_add(1), a + (b - a) / 2]
        }
        None => vec![],
    };
    if !edges.is_empty() && r.chance(70) {
        r.pick(&edges)
    } else {
        r.next() as u16
    }
}

fn frame(r: &mut Rng, m: &Model) -> Vec<u8> {
    let mut f: Vec<u8> = (0..12).map(|_| r.byte()).collect();
    // 0, 1 or 2 VLAN tags (and the odd unwalked combination).
    match r.below(6) {
        0 => f.extend([0x81, 0x00, r.byte(), r.byte()]),
        1 => f.extend([
            0x88,
            0xa8,
            r.byte(),
            r.byte(),
            0x81,
            0x00,
            r.byte(),
            r.byte(),
        ]),
        2 => f.extend([
            0x81,
            0x00,
            r.byte(),
            r.byte(),
            0x81,
            0x00,
            r.byte(),
            r.byte(),
        ]),
        3 if r.chance(30) => f.extend([
            0x88,
            0xa8,
            r.byte(),
            r.byte(),
            0x88,
            0xa8,
            r.byte(),
            r.byte(),
        ]),
        _ => {}
    }
    if r.chance(10) {
        // Neither IPv4 nor IPv6.
        f.extend([r.byte(), r.byte()]);
        f.extend((0..40).map(|_| r.byte()));
        return f;
    }
    // Mostly the filter's own family, when it has one.
    let v6 = match m.src.or(m.dst).map(|c| c.family) {
        Some(fam) if r.chance(80) => fam == Family::V6,
        _ => r.chance(50),
    };
    let proto = if let Some(p) = m.proto.filter(|_| r.chance(60)) {
        p
    } else {
        let any = r.byte();
        r.pick(&[6, 17, 132, 136, 1, 58, 47, any])
    };
    let src = address(r, m.src, v6);
    let dst = address(r, m.dst, v6);
    if v6 {
        f.extend([0x86, 0xdd]);
        let mut h = vec![0x60, 0, 0, 0, 0, 0, 0, 64];
        h.extend(&src);
        h.extend(&dst);
        // Extension headers: hop-by-hop, routing, destination, fragment.
        let mut chain: Vec<u8> = Vec::new();
        for _ in 0..r.below(6) {
            chain.push(r.pick(&[0, 43, 60, 44]));
        }
        h[6] = *chain.first().unwrap_or(&proto);
        let mut ext = Vec::new();
        for (i, kind) in chain.iter().enumerate() {
            let next = *chain.get(i + 1).unwrap_or(&proto);
            if *kind == 44 {
                let offset: u16 = if r.chance(30) {
                    (r.below(100) as u16 + 1) << 3
                } else {
                    0
                };
                let more = u16::from(r.chance(50));
                ext.extend([next, 0]);
                ext.extend((offset | more).to_be_bytes());
                ext.extend([r.byte(), r.byte(), r.byte(), r.byte()]);
            } else {
                let units = r.below(3) as u8;
                ext.extend([next, units]);
                ext.extend((0..(6 + 8 * usize::from(units))).map(|_| r.byte()));
            }
        }
        f.extend(h);
        f.extend(ext);
    } else {
        f.extend([0x08, 0x00]);
        let options = if r.chance(25) { r.below(11) as u8 } else { 0 };
        let ihl = if r.chance(3) {
            r.below(5) as u8
        } else {
            5 + options
        };
        let frag: u16 = match r.below(10) {
            0 => 0x2000, // MF, first fragment
            1 => (r.below(0x1fff) as u16 + 1) | (0x2000 * u16::from(r.chance(50))),
            _ => 0x4000 * u16::from(r.chance(50)), // DF or nothing
        };
        let mut h = vec![0x40 | ihl, 0, 0, 0, 0, 0];
        h.extend(frag.to_be_bytes());
        h.extend([64, proto, 0, 0]);
        h.extend(&src);
        h.extend(&dst);
        h.extend((0..usize::from(options) * 4).map(|_| r.byte()));
        f.extend(h);
    }
    let (sp, dp) = (port(r, m), port(r, m));
    f.extend(sp.to_be_bytes());
    f.extend(dp.to_be_bytes());
    f.extend((0..r.below(40)).map(|_| r.byte()));
    f
}

/// The same frame, damaged: bytes flipped, or cut short (never below the 14 bytes of
/// an Ethernet header, which BPF_PROG_TEST_RUN requires).
fn mutate(r: &mut Rng, mut f: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + r.below(3) {
        match r.below(3) {
            0 if f.len() > 14 => f.truncate(14 + r.below(f.len() as u64 - 14) as usize),
            _ => {
                let i = r.below(f.len() as u64) as usize;
                f[i] ^= 1 << r.below(8);
            }
        }
    }
    f
}

// ------------------------------------------------------------------ the kernel

fn hex(f: &[u8]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_kernel_filter_decides_every_packet_as_the_model_does() {
    let pair = Pair::new();
    let limits = limits_file("100%", "300s");
    let seed = std::env::var("FAULTLINE_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("seed {seed} (FAULTLINE_MODEL_SEED reproduces it)");
    let mut r = Rng(seed);
    let filters: [&[&'static str]; 6] = [
        &[
            "--src",
            "10.1.0.0/16",
            "--proto",
            "udp",
            "--dport",
            "1000-2000",
        ],
        &["--dst", "fd00:1:2::/48", "--proto", "tcp", "--port", "443"],
        &["--proto", "sctp", "--sport", "5000-5001"],
        &["--dst", "192.168.7.0/24"],
        &["--src", "2001:db8::/32", "--dst", "2001:db8:0:1::/64"],
        &["--port", "53", "--src", "0.0.0.0/0"],
    ];
    const FRAMES: usize = 2500;
    for filter in filters {
        let model = Model::new(filter);
        let mut args = vec![
            "--limits",
            limits.to_str().unwrap(),
            "inject",
            "loss",
            "--iface",
            IFACE,
            "--direction",
            "ingress",
            "--percent",
            "100",
            "--duration",
            "120s",
        ];
        args.extend(filter);
        let (agent, armed) = Agent::start(&pair.b.name, &pair.b.state_dir(), &args);
        let ids: Vec<u32> = armed["program_ids"]
            .as_array()
            .expect("program ids")
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        // The tc ingress program (kernel names are cut to 15 bytes).
        let info = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| ids.contains(&p.id()) && p.name_as_str() == Some("faultline_ingre"))
            .unwrap_or_else(|| panic!("no faultline_ingress among programs {ids:?}"));
        let fd = info.fd().expect("program fd");
        let (mut matched, mut cut, mut refused) = (0, 0, 0);
        for i in 0..FRAMES {
            let mut f = frame(&mut r, &model);
            if i % 3 == 2 {
                f = mutate(&mut r, f);
            }
            let want = model.matches(&f);
            // The kernel runs no frame whose Ethernet type announces IPv4 or IPv6
            // without the fixed header being there (EINVAL), so a frame cut short
            // there cannot reach the program through this path.
            let et = u16::from_be_bytes([f[12], f[13]]);
            let short_l3 =
                (et == 0x0800 && f.len() < 14 + 20) || (et == 0x86dd && f.len() < 14 + 40);
            let got = match test_run(&fd, &f, 1) {
                Ok(run) => run.retval,
                Err(e) => {
                    assert!(
                        short_l3 && e.raw_os_error() == Some(libc::EINVAL),
                        "BPF_PROG_TEST_RUN refused {} ({e})",
                        hex(&f)
                    );
                    refused += 1;
                    continue;
                }
            };
            assert!(!short_l3, "the kernel ran a frame it refuses: {}", hex(&f));
            assert!(
                got == TC_ACT_SHOT || got == TC_ACT_UNSPEC,
                "verdict {got} for {}",
                hex(&f)
            );
            assert_eq!(
                got == TC_ACT_SHOT,
                want,
                "filter {:?}: the kernel {} frame {} (seed {seed}, frame {i}); the model parses it as {:?}",
                model.args,
                if got == TC_ACT_SHOT {
                    "dropped"
                } else {
                    "passed"
                },
                hex(&f),
                parse(&f)
            );
            matched += usize::from(want);
            cut += usize::from(parse(&f).is_none());
        }
        eprintln!(
            "{:?}: {FRAMES} frames, {matched} matched, {cut} cut short inside a header \
             (plus {refused} the kernel refuses to run); kernel and model agree",
            model.args
        );
        // Both outcomes must be exercised, or the comparison proves little.
        assert!(
            matched > FRAMES / 30 && matched < FRAMES - FRAMES / 30,
            "{matched} of {FRAMES} matched: the generator misses this filter"
        );
        agent.stop();
    }
}
