//! Builds the eBPF object with aya-build so that a plain `cargo build` of the agent
//! embeds up-to-date programs. The eBPF crate needs a toolchain whose LLVM matches
//! bpf-linker's and `-Z build-std=core`; `cargo xtask setup` provides both (Debian's
//! rustc, linked into rustup as `faultline-bpf`). See README, "Toolchain".
fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=FAULTLINE_BPF_TOOLCHAIN");
    let toolchain =
        std::env::var("FAULTLINE_BPF_TOOLCHAIN").unwrap_or_else(|_| "faultline-bpf".to_owned());
    // build-std is unstable; the distribution rustc is a stable compiler.
    // SAFETY: build scripts are single-threaded at this point.
    // The nested cargo's progress lines would each surface as a build warning;
    // quiet mode keeps only its real diagnostics.
    unsafe {
        std::env::set_var("RUSTC_BOOTSTRAP", "1");
        std::env::set_var("CARGO_TERM_QUIET", "true");
    }
    let package = aya_build::Package {
        name: "faultline-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain)).map_err(|e| {
        anyhow::anyhow!(
            "building the eBPF programs failed ({e:#}).\n\
             Run `cargo xtask setup` once to install the eBPF toolchain."
        )
    })
}
