//! The packages under systemd as PID 1: a Debian 12 root (mmdebstrap from Debian's
//! archive with systemd, cached in target/vm/systemd-root) booted with the stock
//! kernel under qemu. The guest installs the packages `dist` built with apt, starts
//! both hardened units, runs an experiment through the CLI, upgrades the agent's
//! package while an effect is active, then stops and removes everything and checks
//! that nothing is left; it reports through the
//! isa-debug-exit port as the VM lane does (qemu exits `(code << 1) | 1`).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{run, setup, vm};

const PACKAGES: &[&str] = &[
    "mmdebstrap",
    "qemu-system-x86",
    "busybox-static",
    "e2fsprogs",
    "cpio",
];
/// What the guest's root has besides Debian's `apt` variant.
const ROOT_PACKAGES: &str = "systemd,systemd-sysv,dbus,iproute2,kmod,udev,procps";
/// What the initramfs loads to mount the root disk.
const ROOT_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"];
const TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The busybox init of the initramfs: the root disk's modules, then systemd.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.load); do insmod "/lib/modules/$m" || echo "guest: insmod $m failed"; done
for i in $(seq 100); do [ -b /dev/vda ] && break; usleep 50000; done
mkdir -p /newroot
mount -t ext4 /dev/vda /newroot || { echo "guest: no root disk"; poweroff -f; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /lib/systemd/systemd
"#;

/// The test, run by a unit of its own once the system is up.
const TEST: &str = r#"#!/bin/sh
# faultline's packages under systemd: install, start, one experiment, stop, remove.
set -u
say() { echo "guest: $*"; }
finish() {
    say "result $1"
    printf "\\$(printf %o "$1")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
    systemctl poweroff --force --force
}
fail() {
    say "FAIL: $*"
    journalctl --no-pager -u faultline-coordinator -u faultline-agent | tail -n 40
    finish 1
}
# faultline's processes by name (comm, 15 characters), not this script's.
daemons='^faultline(-agent|-coord)?$'
# The agent attaches its self-test program to the default-route interface.
modprobe dummy && ip link add eth0 type dummy && ip addr add 10.0.2.15/24 dev eth0 \
    && ip link set eth0 up && ip route add default via 10.0.2.2 || fail "network"
apt-get install -y -qq /root/faultline/faultline-coordinator_*.deb \
    /root/faultline/faultline-agent_*.deb || fail "apt-get install"
node=$(hostname)
faultline-coordinator certs init --dir /etc/faultline/tls --agents "$node" >/dev/null || fail "certs"
faultline-coordinator tokens add --file /etc/faultline/tokens.yaml --name ci --role operator \
    > /root/token || fail "tokens"
# As the README says: the coordinator's dynamic user reads these through the group.
chgrp faultline /etc/faultline/tls/coordinator.key /etc/faultline/tokens.yaml \
    && chmod 0640 /etc/faultline/tls/coordinator.key /etc/faultline/tokens.yaml || fail "chgrp"
printf 'baseline: 2s\nprerequisites:\n  required: [rollback]\n' > /etc/faultline/coordinator.yaml
# The site's settings, as drop-ins: the units themselves stay as packaged.
mkdir -p /etc/systemd/system/faultline-coordinator.service.d \
    /etc/systemd/system/faultline-agent.service.d
printf '[Service]\nEnvironment=FAULTLINE_CONFIG=/etc/faultline/coordinator.yaml\n' \
    > /etc/systemd/system/faultline-coordinator.service.d/site.conf
printf '[Service]\nEnvironment=FAULTLINE_COORDINATOR=https://127.0.0.1:7443\n' \
    > /etc/systemd/system/faultline-agent.service.d/site.conf
systemctl daemon-reload
systemctl start faultline-coordinator || fail "starting the coordinator"
systemctl start faultline-agent || fail "starting the agent"
export FAULTLINE_TOKEN="$(cat /root/token)" FAULTLINE_CA=/etc/faultline/tls/ca.pem \
    FAULTLINE_COORDINATOR=https://127.0.0.1:7443
up=0
for i in $(seq 120); do
    if faultline nodes -o json 2>/dev/null | grep -q '"connected": *true'; then up=1; break; fi
    sleep 0.5
done
[ "$up" = 1 ] || fail "the agent never connected"
say "the agent registered as $node"
faultline run --node "$node" --fault cpu --percent 10 --duration 4s --baseline 2s --wait \
    || fail "the experiment did not pass"
say "experiment passed"
# Today's exposure (the unit files' figures on the build host, tests/tests/deploy.rs)
# or better, now measured on the running units.
for u in faultline-agent:4.6 faultline-coordinator:1.3; do
    name=${u%%:*} most=${u##*:}
    line=$(systemd-analyze security --no-pager "$name.service" | tail -n 1)
    say "$line"
    level=$(echo "$line" | sed -n 's/.*: \([0-9.]*\) .*/\1/p')
    awk -v l="$level" -v m="$most" 'BEGIN { exit !(l != "" && l <= m) }' \
        || fail "$name: exposure '$level' is above $most"
done
# An upgrade while an effect is active: prerm stops the agent (which removes the
# effect), the new files go in, postinst starts the agent again.
faultline run --node "$node" --fault cpu --percent 10 --duration 50s --baseline 2s \
    >/dev/null || fail "the long experiment did not start"
active=0
for i in $(seq 60); do
    faultline-agent status >/dev/null 2>&1; [ $? = 10 ] && { active=1; break; }
    sleep 0.5
done
[ "$active" = 1 ] || fail "faultline-agent status never showed the effect (exit 10)"
say "effect active: $(faultline-agent status | tail -n 1)"
old=$(systemctl show -P MainPID faultline-agent)
dpkg -i /root/faultline/faultline-agent_*.deb || fail "dpkg -i (upgrade)"
systemctl is-active --quiet faultline-agent || fail "the agent was not started again after the upgrade"
new=$(systemctl show -P MainPID faultline-agent)
[ "$new" != "$old" ] || fail "the upgrade did not restart the agent (pid $old)"
ls /sys/fs/cgroup/faultline 2>/dev/null | grep -q -- "-$old\$" \
    && fail "the old agent's stress group outlived the upgrade"
ended=""
for i in $(seq 60); do
    ended=$(faultline experiments | awk 'NR == 2 && $2 ~ /^(completed|aborted|failed)$/ { print $2 }')
    [ -n "$ended" ] && break
    sleep 0.5
done
[ -n "$ended" ] || fail "the experiment under way did not end with the old agent: $(faultline experiments | sed -n 2p)"
faultline-agent status >/dev/null 2>&1; [ $? = 0 ] || fail "an effect is active after the upgrade: $(faultline-agent status)"
say "upgraded with an effect active: the experiment ended $ended, the new agent (pid $new) holds none"
systemctl stop faultline-agent faultline-coordinator || fail "systemctl stop"
pgrep -a "$daemons" && fail "a faultline process outlived systemctl stop"
[ -e /sys/fs/cgroup/faultline ] && [ -n "$(ls -A /sys/fs/cgroup/faultline)" ] \
    && fail "stress cgroups left: $(ls /sys/fs/cgroup/faultline)"
apt-get remove -y -qq faultline-agent faultline-coordinator || fail "apt-get remove"
for f in /usr/bin/faultline-agent /usr/bin/faultline-coordinator /usr/bin/faultline \
    /usr/lib/systemd/system/faultline-agent.service; do
    [ -e "$f" ] && fail "$f left after removal"
done
pgrep -a "$daemons" && fail "a faultline process outlived the removal"
for hook in ingress egress; do
    [ -n "$(tc filter show dev eth0 $hook)" ] && fail "a $hook filter left on eth0"
done
tc qdisc show dev eth0 | grep -q clsact && fail "the clsact qdisc left on eth0"
[ -n "$(ls -A /sys/fs/bpf)" ] && fail "pinned BPF objects left: $(ls -A /sys/fs/bpf)"
# The state directory may stay (`apt purge` removes it), but with no record in it:
# no journal entry, effect record or lock.
left=$(find /run/faultline -type f 2>/dev/null)
[ -n "$left" ] && fail "state left in /run/faultline: $left"
say "installed, ran, stopped and removed; nothing left"
finish 0
"#;

const UNIT: &str = "[Unit]
Description=faultline's package test
After=multi-user.target
[Service]
Type=oneshot
StandardOutput=journal+console
StandardError=journal+console
ExecStart=/usr/local/sbin/faultline-guest-test
[Install]
WantedBy=multi-user.target
";

/// Debian 12 with systemd, from the host's apt sources (cached).
fn root(cache: &Path) -> Result<PathBuf> {
    let root = cache.join("systemd-root");
    let stamp = cache.join("systemd-root.packages");
    if root.join("lib/systemd/systemd").exists()
        && fs::read_to_string(&stamp).is_ok_and(|s| s == ROOT_PACKAGES)
    {
        return Ok(root);
    }
    let _ = fs::remove_dir_all(&root);
    println!(
        "guest: a Debian 12 root with systemd (mmdebstrap, cached in {})",
        root.display()
    );
    run(Command::new("mmdebstrap")
        .args([
            "--variant=apt",
            &format!("--include={ROOT_PACKAGES}"),
            "bookworm",
        ])
        .arg(&root)
        .arg("/etc/apt/sources.list.d/debian.sources"))?;
    fs::write(&stamp, ROOT_PACKAGES)?;
    Ok(root)
}

fn initramfs(cache: &Path, kernel: &vm::Kernel) -> Result<PathBuf> {
    let dir = cache.join("systemd-initramfs");
    let _ = fs::remove_dir_all(&dir);
    for d in ["bin", "proc", "sys", "dev", "lib/modules"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox")).context("busybox-static")?;
    let moddir = kernel.root.join("lib/modules").join(&kernel.version);
    let order = vm::module_order(kernel, ROOT_MODULES)?;
    for m in &order {
        let dest = dir.join("lib/modules").join(m);
        fs::create_dir_all(dest.parent().context("parent")?)?;
        fs::copy(moddir.join(m), dest)?;
    }
    fs::write(dir.join("modules.load"), order.join("\n"))?;
    fs::write(dir.join("init"), INIT)?;
    run(Command::new("chmod").arg("+x").arg(dir.join("init")))?;
    let image = cache.join("systemd-initramfs.cpio");
    vm::cpio(&dir, &image)?;
    Ok(image)
}

/// The root disk: the cached root (hard-linked, never changed), the kernel's
/// modules, the packages and the test.
fn disk(cache: &Path, root: &Path, kernel: &vm::Kernel) -> Result<PathBuf> {
    let stage = cache.join("systemd-stage");
    let _ = fs::remove_dir_all(&stage);
    run(Command::new("cp").arg("-al").arg(root).arg(&stage))?;
    let modules = stage.join("lib/modules");
    fs::create_dir_all(&modules)?;
    run(Command::new("cp")
        .arg("-a")
        .arg(kernel.root.join("lib/modules").join(&kernel.version))
        .arg(&modules))?;
    let packages = stage.join("root/faultline");
    fs::create_dir_all(&packages)?;
    for entry in fs::read_dir(crate::dist::dir())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            fs::copy(&path, packages.join(path.file_name().context("name")?))?;
        }
    }
    // Files written here replace hard links, so the cached root stays as it was.
    let test = stage.join("usr/local/sbin/faultline-guest-test");
    fs::create_dir_all(test.parent().context("parent")?)?;
    fs::write(&test, TEST)?;
    run(Command::new("chmod").arg("+x").arg(&test))?;
    let unit = stage.join("etc/systemd/system/faultline-guest-test.service");
    let _ = fs::remove_file(&unit);
    fs::write(&unit, UNIT)?;
    let wants = stage.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/faultline-guest-test.service",
        wants.join("faultline-guest-test.service"),
    )?;
    let hostname = stage.join("etc/hostname");
    let _ = fs::remove_file(&hostname);
    fs::write(&hostname, "fl-guest\n")?;
    let image = cache.join("systemd-root.ext4");
    let _ = fs::remove_file(&image);
    run(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-d"])
        .arg(&stage)
        .arg(&image)
        .arg("1500M"))?;
    fs::remove_dir_all(&stage)?;
    Ok(image)
}

pub fn systemd_test() -> Result<()> {
    setup::ensure_apt(PACKAGES)?;
    let debs = fs::read_dir(crate::dist::dir())
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "deb"))
                .count()
        })
        .unwrap_or(0);
    if debs != 2 {
        bail!(
            "no packages in {}: run `cargo xtask dist` first",
            crate::dist::dir().display()
        );
    }
    let cache = vm::cache_dir();
    fs::create_dir_all(&cache)?;
    let kernel = vm::prepare_kernel(&cache)?;
    let root = root(&cache)?;
    let initramfs = initramfs(&cache, &kernel)?;
    let disk = disk(&cache, &root, &kernel)?;
    println!("guest: booting Debian 12 with systemd under qemu (TCG)");
    let devices = [
        "-drive".to_owned(),
        format!("file={},if=virtio,format=raw", disk.display()),
    ];
    let result = vm::boot("guest", &kernel, &initramfs, &devices, TIMEOUT);
    let _ = fs::remove_file(&disk);
    match result? {
        0 => Ok(()),
        code => bail!("guest: the package test failed (exit code {code})"),
    }
}
