//! The stock-kernel test lane: the agent's kernel-facing tests inside Debian's own
//! kernel (6.1: sch_fq, netem, cgroup v2, no TCX) under qemu/TCG.
//!
//! Everything comes from Debian's archive through apt and is cached in target/vm:
//! the kernel package (unpacked, never installed on the host), the uncompressed
//! vmlinux (booted directly through its PVH entry, about twice as fast as bzImage),
//! and an initramfs with busybox, iproute2, the modules the tests need and the shared
//! libraries of every binary. The test binaries and the agent are shared over 9p.
//! The guest reports its exit code through the isa-debug-exit port: qemu then exits
//! with `(code << 1) | 1`, so a plain poweroff or a panic (exit 0) reads as failure.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{run, setup, workspace_root};

const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "cpio",
    "xz-utils",
    "iproute2",
    "e2fsprogs",
];
/// Modules the tests need; their dependencies are resolved through modules.dep.
const MODULES: &[&str] = &[
    "veth",
    "sch_ingress",
    "cls_bpf",
    "cls_u32",
    "sch_fq",
    "sch_netem",
    "ifb",
    "tun",
    "act_mirred",
    "act_gact",
    "9p",
    "9pnet_virtio",
    "virtio_pci",
    "virtio_blk",
    // ext4 asks for a crc32c implementation at mount time (not a modules.dep edge).
    "crc32c_generic",
    "ext4",
];
/// Test binaries of the tests crate that run in the guest, each with the tests it
/// runs there (libtest filters; empty: all). Of the control plane, the experiments
/// whose node side differs on a stock kernel: cgroup v2 stress, reclaim and cache,
/// and EDT latency; the rest (leases, auth, abort, dead-man) is kernel-independent.
const GUEST_TESTS: &[(&str, &str)] = &[
    ("loss", ""),
    ("bad_input", ""),
    ("stress", ""),
    ("stress_memory", ""),
    ("gc", ""),
    ("cache", ""),
    ("latency", ""),
    (
        "control_plane",
        "a_cpu_stress_experiment gc_pressure_through cache_invalidation_through \
         a_latency_experiment",
    ),
];
/// The workspace binaries the guest tests run.
const GUEST_BINARIES: &[&str] = &["faultline-agent", "faultline-coordinator", "faultline"];
const BOOT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub(crate) struct Kernel {
    pub(crate) version: String,
    pub(crate) vmlinux: PathBuf,
    pub(crate) root: PathBuf,
}

pub(crate) fn cache_dir() -> PathBuf {
    workspace_root().join("target").join("vm")
}

/// The kernel package `linux-image-amd64` points to, e.g. linux-image-6.1.0-56-amd64.
fn kernel_package() -> Result<String> {
    let deps = setup::output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))
        .context("apt-cache depends linux-image-amd64")?;
    deps.lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|p| p.trim().to_owned())
        .context("no kernel package behind linux-image-amd64 (run apt-get update)")
}

pub(crate) fn prepare_kernel(cache: &Path) -> Result<Kernel> {
    let package = kernel_package()?;
    let version = package.trim_start_matches("linux-image-").to_owned();
    let dir = cache.join(&package);
    let root = dir.join("root");
    let vmlinux = dir.join("vmlinux");
    if vmlinux.exists()
        && root
            .join("lib/modules")
            .join(&version)
            .join("modules.dep")
            .exists()
    {
        return Ok(Kernel {
            version,
            vmlinux,
            root,
        });
    }
    println!(
        "vm: fetching {package} from Debian (cached in {})",
        dir.display()
    );
    fs::create_dir_all(&dir)?;
    run(Command::new("apt-get")
        .args(["download", &package])
        .current_dir(&dir))?;
    let deb = fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("downloaded kernel package not found")?;
    let _ = fs::remove_dir_all(&root);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    // The package ships no modules.dep; generate it for this tree only.
    run(Command::new("depmod").arg("-b").arg(&root).arg(&version))?;
    extract_vmlinux(
        &root.join("boot").join(format!("vmlinuz-{version}")),
        &vmlinux,
    )?;
    fs::remove_file(&deb)?;
    Ok(Kernel {
        version,
        vmlinux,
        root,
    })
}

/// bzImage carries the kernel as an xz stream; the raw ELF boots directly (PVH).
fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> Result<()> {
    const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
    let image = fs::read(vmlinuz)?;
    let start = image
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .context("no xz payload in vmlinuz")?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(fs::File::create(out)?)
        .spawn()?;
    use std::io::Write;
    // xz stops reading at the end of its stream; what follows it in the image is
    // not its business, so a broken pipe here is expected.
    match child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&image[start..])
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    if !child.wait()?.success() {
        bail!(
            "xz could not unpack the kernel payload of {}",
            vmlinuz.display()
        );
    }
    Ok(())
}

/// Modules in load order (dependencies first), as paths relative to the modules dir.
/// `modules` and what they depend on, in an order `insmod` accepts.
pub(crate) fn module_order(kernel: &Kernel, modules: &[&str]) -> Result<Vec<String>> {
    let moddir = kernel.root.join("lib/modules").join(&kernel.version);
    let dep = fs::read_to_string(moddir.join("modules.dep"))?;
    let deps: Vec<(String, Vec<String>)> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                m.to_owned(),
                d.split_whitespace().map(str::to_owned).collect(),
            )
        })
        .collect();
    let builtin = fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    fn visit(m: &str, deps: &[(String, Vec<String>)], out: &mut Vec<String>) {
        if out.iter().any(|o| o == m) {
            return;
        }
        if let Some((_, ds)) = deps.iter().find(|(p, _)| p == m) {
            // modules.dep lists a module's dependencies so that the last loads first.
            for d in ds.iter().rev() {
                visit(d, deps, out);
            }
        }
        out.push(m.to_owned());
    }
    let mut order = Vec::new();
    for name in modules {
        let file = format!("/{name}.ko");
        if let Some((path, _)) = deps.iter().find(|(p, _)| p.ends_with(&file)) {
            visit(path, &deps, &mut order);
        } else if !builtin.lines().any(|l| l.ends_with(&file)) {
            bail!(
                "module {name} is neither in modules.dep nor built into {}",
                kernel.version
            );
        }
    }
    Ok(order)
}

/// Shared libraries (and the loader) that `binary` needs, by the path the loader asks for.
fn libraries(binary: &Path, into: &mut BTreeSet<PathBuf>) -> Result<()> {
    into.extend(
        crate::image::libraries(binary)?
            .into_iter()
            .map(|l| l.wanted),
    );
    Ok(())
}

fn copy_into(root: &Path, file: &Path) -> Result<()> {
    let dest = root.join(file.strip_prefix("/").unwrap_or(file));
    fs::create_dir_all(dest.parent().expect("parent"))?;
    fs::copy(file, &dest).with_context(|| format!("copying {}", file.display()))?;
    Ok(())
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /run /tmp /var /mnt
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
ln -s /run /var/run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# No controller is enabled below the root: the agent enables cpu and memory for its
# own groups (a host's init may not have; systemd does only for units that ask).
mount -t bpf bpf /sys/fs/bpf
for m in $(cat /modules.load); do
    insmod "/lib/modules/$m" || echo "vm: insmod $m failed"
done
ip link set lo up
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host0 /mnt
# A small ext4 disk: the guest's only page-cache-backed filesystem (/tmp is tmpfs,
# whose shmem pages no fadvise evicts), for the cache-eviction tests.
for i in $(seq 100); do [ -b /dev/vda ] && break; usleep 50000; done
mkdir -p /scratch
if mount -t ext4 /dev/vda /scratch; then export FAULTLINE_TEST_CACHE_DIR=/scratch; fi
# This kernel has sch_fq: the latency suite must run its EDT checks, not skip them.
export FAULTLINE_EXPECT_EDT=1
# Emulated (TCG): tests that must tolerate the emulator's scheduling say so.
export FAULTLINE_EMULATED=1
echo "vm: $(uname -r) up; cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
cd /mnt && sh ./run.sh
rc=$?
echo "vm: tests exited with $rc"
printf "\\$(printf %o $rc)" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
poweroff -f
"#;

fn build_initramfs(cache: &Path, kernel: &Kernel, libs: &BTreeSet<PathBuf>) -> Result<PathBuf> {
    let root = cache.join("initramfs");
    let _ = fs::remove_dir_all(&root);
    for d in ["bin", "sbin", "usr/sbin", "proc", "sys", "dev", "etc"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static")?;
    for tool in ["/usr/sbin/ip", "/usr/sbin/tc"] {
        copy_into(&root, Path::new(tool))?;
    }
    for lib in libs {
        copy_into(&root, lib)?;
    }
    let moddir = kernel.root.join("lib/modules").join(&kernel.version);
    let order = module_order(kernel, MODULES)?;
    for m in &order {
        let dest = root.join("lib/modules").join(m);
        fs::create_dir_all(dest.parent().expect("parent"))?;
        fs::copy(moddir.join(m), dest)?;
    }
    fs::write(root.join("modules.load"), order.join("\n"))?;
    fs::write(root.join("init"), INIT)?;
    run(Command::new("chmod").arg("+x").arg(root.join("init")))?;
    let image = cache.join("initramfs.cpio");
    cpio(&root, &image)?;
    Ok(image)
}

/// `dir` as a newc cpio archive (what the kernel unpacks as its initramfs).
pub(crate) fn cpio(dir: &Path, image: &Path) -> Result<()> {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
            dir.display(),
            image.display()
        ))
        .status()?;
    if !status.success() {
        bail!("building the initramfs {} failed", image.display());
    }
    Ok(())
}

/// Boots `kernel` with `initramfs` under qemu (TCG, 2 CPUs, 2 GiB, no network, the
/// isa-debug-exit port) with `devices` added, and waits at most `timeout`: the code
/// the guest wrote to the port, or why there is none. `who` prefixes the lines.
pub(crate) fn boot(
    who: &str,
    kernel: &Kernel,
    initramfs: &Path,
    devices: &[String],
    timeout: Duration,
) -> Result<u8> {
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "2048",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-nic", "none", "-kernel"])
        .arg(&kernel.vmlinux)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(devices)
        .stdin(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            bail!("{who}: no result after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let code = status.code().unwrap_or(0);
    println!(
        "{who}: qemu exited with {code} after {:.0}s",
        started.elapsed().as_secs_f64()
    );
    // The port makes qemu exit `(code << 1) | 1`; a poweroff or a panic exits 0.
    if code % 2 == 1 {
        Ok((code >> 1) as u8)
    } else {
        bail!("{who}: the guest stopped without reporting a result (poweroff or panic)")
    }
}

/// What goes into the guest: test executables by name, and the workspace binaries
/// they run.
struct GuestBuild {
    tests: Vec<(String, PathBuf)>,
    binaries: Vec<PathBuf>,
}

/// Builds the guest test binaries and the workspace binaries they run.
fn build_binaries() -> Result<GuestBuild> {
    // The workspace's feature set, as `cargo xtask test` built it: nothing again.
    crate::build_workspace()?;
    let out = crate::cargo()
        .args(["test", "--workspace", "--tests", "--no-run"])
        .args(["--message-format=json"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // Only faultline-tests' own tests (another crate may reuse a test's name).
        let ours = msg["package_id"]
            .as_str()
            .is_some_and(|id| id.contains("#faultline-tests@"));
        let name = msg["target"]["name"].as_str().unwrap_or_default();
        if let Some(exe) = msg["executable"].as_str()
            && ours
            && GUEST_TESTS.iter().any(|(t, _)| *t == name)
        {
            tests.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    if tests.len() != GUEST_TESTS.len() {
        bail!("expected test binaries {GUEST_TESTS:?}, found {tests:?}");
    }
    let binaries = GUEST_BINARIES
        .iter()
        .map(|b| workspace_root().join("target/debug").join(b))
        .collect();
    Ok(GuestBuild { tests, binaries })
}

/// Builds the latency benchmark and the release agent for the guest.
fn build_bench() -> Result<GuestBuild> {
    run(crate::cargo().args(["build", "--release", "--package", "faultline-agent"]))?;
    let out = crate::cargo()
        .args([
            "bench",
            "--package",
            "faultline-tests",
            "--bench",
            "delay",
            "--no-run",
        ])
        .args(["--message-format=json"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the delay benchmark failed");
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|m| m["target"]["name"] == "delay" && m["executable"].is_string())
        .and_then(|m| m["executable"].as_str().map(PathBuf::from))
        .context("no delay benchmark executable in cargo's output")?;
    Ok(GuestBuild {
        tests: vec![("delay".to_owned(), exe)],
        binaries: vec![workspace_root().join("target/release/faultline-agent")],
    })
}

fn suite_filter(name: &str) -> &'static str {
    GUEST_TESTS
        .iter()
        .find(|(t, _)| *t == name)
        .map_or("", |(_, f)| f)
}

pub fn vm_test() -> Result<()> {
    vm_run(false)
}

/// The latency accuracy benchmark inside the stock kernel: EDT and netem side by side.
pub fn vm_bench() -> Result<()> {
    vm_run(true)
}

fn vm_run(bench: bool) -> Result<()> {
    setup::ensure_apt(VM_PACKAGES)?;
    let cache = cache_dir();
    let kernel = prepare_kernel(&cache)?;
    let GuestBuild { tests, binaries } = if bench {
        build_bench()?
    } else {
        build_binaries()?
    };

    let share = cache.join("share");
    let _ = fs::remove_dir_all(&share);
    fs::create_dir_all(&share)?;
    let mut libs = BTreeSet::new();
    for tool in ["/usr/sbin/ip", "/usr/sbin/tc"] {
        libraries(Path::new(tool), &mut libs)?;
    }
    for bin in &binaries {
        libraries(bin, &mut libs)?;
        fs::copy(bin, share.join(bin.file_name().context("binary name")?))?;
    }
    // FAULTLINE_VM_TESTS=<substring> runs only the matching tests (for debugging).
    let only = std::env::var("FAULTLINE_VM_TESTS").ok();
    let mut script = String::from("rc=0\n");
    for (name, exe) in &tests {
        libraries(exe, &mut libs)?;
        fs::copy(exe, share.join(name))?;
        // One test at a time: the guest is emulated, and the statistical tests want
        // the CPU to themselves.
        let args = if bench {
            "--bench".to_owned()
        } else {
            let filter = only.as_deref().unwrap_or_else(|| suite_filter(name));
            format!("--test-threads=1 {filter}")
        };
        script.push_str(&format!(
            "echo \"vm: running {name}\"; ./{name} {args} || rc=1\n"
        ));
    }
    script.push_str("exit $rc\n");
    fs::write(share.join("run.sh"), script)?;
    let initramfs = build_initramfs(&cache, &kernel, &libs)?;
    let disk = cache.join("scratch.ext4");
    let _ = fs::remove_file(&disk);
    fs::File::create(&disk)?.set_len(160 << 20)?;
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk))?;

    println!("vm: booting {} under qemu (TCG)", kernel.version);
    let devices = [
        "-drive".to_owned(),
        format!("file={},if=virtio,format=raw", disk.display()),
        "-virtfs".to_owned(),
        format!(
            "local,path={},mount_tag=host0,security_model=none",
            share.display()
        ),
    ];
    match boot("vm", &kernel, &initramfs, &devices, BOOT_TIMEOUT)? {
        0 => Ok(()),
        code => bail!("vm: tests failed in the guest (exit code {code})"),
    }
}
