//! Compiles `proto/` into Rust (prost + tonic) with the vendored protoc, and keeps
//! a descriptor set with source info so reflection (grpcurl `describe`) shows the
//! proto comments.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // `bytes` fields as `Bytes`: output chunks go from pipe to frame without a copy.
    config.bytes(["."]);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("rexec_descriptor.bin"))
        .compile_with_config(
            config,
            &[
                "proto/rexec/v1/rexec.proto",
                "proto/rexec/v1/files.proto",
                "proto/rexec/v1/nats.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
