//! Generates the gRPC contract's Rust code from `proto/faultline/v1/faultline.proto`
//! with protox (a pure-Rust protobuf compiler, so no system protoc is needed) and
//! tonic-prost-build, and keeps the encoded descriptor set for gRPC reflection.
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/faultline/v1/faultline.proto";
    println!("cargo:rerun-if-changed={proto}");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_file(proto)?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("faultline_v1_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure().compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
