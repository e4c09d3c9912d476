//! The checked-in gRPC code (`src/grpc/inference.rs`) is exactly what `proto/inference.proto`
//! generates: regenerate with protox (pure Rust, no protoc) and compare. To update after
//! editing the .proto: `SLUICE_UPDATE_PROTO=1 cargo test -p sluice-model-server --test proto_drift`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

#[test]
fn generated_grpc_code_matches_the_proto() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile([root.join("proto/inference.proto")], [root.join("proto")])
        .expect("proto/inference.proto compiles");
    let out = std::env::temp_dir().join(format!("sluice-proto-drift-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .out_dir(&out)
        .compile_fds(fds)
        .expect("code generation succeeds");
    let generated = std::fs::read_to_string(out.join("inference.rs")).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    let checked_in_path = root.join("src/grpc/inference.rs");
    if std::env::var_os("SLUICE_UPDATE_PROTO").is_some() {
        std::fs::write(&checked_in_path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "src/grpc/inference.rs is stale: run SLUICE_UPDATE_PROTO=1 cargo test -p \
         sluice-model-server --test proto_drift"
    );
}
