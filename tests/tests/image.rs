//! The image archive `cargo xtask dist` writes loads, as the name the manifests use
//! and with the digests it declares, into each runtime a team may feed it to: podman
//! (tests/tests/container.rs runs it there), containerd's `ctr import` and `docker
//! load` — the last two from Debian's packages, each daemon on private state; and
//! its binaries name no directory of the machine that built them.
use faultline_tests::{
    container::{image_archive, text},
    loaders::{Containerd, Docker, digests, mounts_under},
};

#[test]
fn the_archive_loads_into_containerd_and_docker_under_its_name_and_digests() {
    let (archive, reference) = image_archive();
    assert!(
        archive.exists(),
        "{} is missing: run `cargo xtask dist` (cargo xtask test does)",
        archive.display()
    );
    let want = digests(&archive);
    // Where the daemons keep things by default: each must stay as it was.
    let host_paths = [
        "/etc/docker/key.json",
        "/run/docker",
        "/var/lib/docker",
        "/run/containerd",
        "/var/lib/containerd",
        "/opt/containerd",
    ];
    let before: Vec<bool> = host_paths
        .iter()
        .map(|p| std::path::Path::new(p).exists())
        .collect();
    let archive = archive.display().to_string();

    let containerd = Containerd::start();
    // Unpacked into the copying snapshotter: containerd reads every layer against
    // the diff IDs the config declares (a wrong one fails the import).
    let out = containerd.ctr(&["images", "import", "--snapshotter", "native", &archive]);
    assert!(out.status.success(), "ctr images import: {}", text(&out));
    // What a pod's bare `image: faultline:0.1.0` resolves to on a containerd node.
    let qualified = format!("docker.io/library/{reference}");
    let out = containerd.ctr(&["images", "ls"]);
    let listing = text(&out);
    let row = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(qualified.as_str()))
        .unwrap_or_else(|| panic!("ctr images ls has no {qualified}:\n{listing}"));
    assert!(
        row.split_whitespace().any(|f| f == want.manifest),
        "containerd holds {qualified} with another manifest than the archive's {}: {row}",
        want.manifest
    );
    let out = containerd.ctr(&["images", "check", "--snapshotter", "native"]);
    assert!(
        // Columns: REF TYPE DIGEST STATUS SIZE UNPACKED.
        text(&out).lines().any(|l| l.starts_with(&qualified)
            && l.contains(" complete ")
            && l.split_whitespace().last() == Some("true")),
        "ctr images check: {}",
        text(&out)
    );

    let docker = Docker::start(&containerd);
    let out = docker.docker(&["load", "--input", &archive]);
    assert!(out.status.success(), "docker load: {}", text(&out));
    assert!(
        text(&out).contains(&format!("Loaded image: {reference}")),
        "docker load: {}",
        text(&out)
    );
    let out = docker.docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}} {{.Config.User}} {{index .Config.Labels \"org.opencontainers.image.version\"}}",
        &reference,
    ]);
    assert!(out.status.success(), "docker image inspect: {}", text(&out));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{} 65532:65532 {version}", want.config),
        "docker's image ID is the config digest; the coordinator's default user and the \
         version label come with it"
    );

    let dirs = [docker.dir.to_path_buf(), containerd.dir.to_path_buf()];
    docker.stop();
    containerd.stop();
    for dir in dirs {
        assert_eq!(mounts_under(&dir), Vec::<String>::new(), "mounts left");
        assert!(!dir.exists(), "{} left", dir.display());
    }
    for (path, existed) in host_paths.iter().zip(before) {
        assert_eq!(
            std::path::Path::new(path).exists(),
            existed,
            "{path} was made by a daemon"
        );
    }
}

/// What made two checkouts of one commit build two images: absolute paths the
/// compiler wrote into the binaries (panic locations, generated files, the eBPF
/// object's BTF). `dist` remaps them; none may be left in the image's layer.
#[test]
fn the_image_names_neither_the_checkout_nor_the_cargo_home() {
    let (archive, _) = image_archive();
    let layer = faultline_tests::loaders::layer(&archive);
    let checkout = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .display()
        .to_string();
    let cargo_home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").expect("HOME")));
    for path in [checkout, cargo_home] {
        let hits = layer
            .windows(path.len())
            .filter(|w| *w == path.as_bytes())
            .count();
        assert_eq!(hits, 0, "the image's layer names {path} {hits} times");
    }
    // The remapped names are there instead (the check above looks at the right bytes).
    assert!(
        layer.windows(11).any(|w| w == b"/faultline/"),
        "no remapped path in the layer"
    );
}
