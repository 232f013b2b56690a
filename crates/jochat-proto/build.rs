//! Generates the `jochat.v1` and legacy `ChatService` code with the vendored `protoc`, so that no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through the PROTOC environment variable.
    std::env::set_var("PROTOC", protoc);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .codec_path("crate::codec::JoChatCodec")
        .file_descriptor_set_path(out_dir.join("jochat_descriptor.bin"))
        .compile_protos(
            &[
                "proto/jochat/v1/chat.proto",
                "proto/jochat/internal/v1/raft.proto",
                "proto/legacy/chat_service.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
