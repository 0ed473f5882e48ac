//! Compiles tether's own .proto files with the pure-Rust protobuf parser (no protoc needed).

use std::{env, fs, path::PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let protos = ["proto/runtimeoptions.proto", "proto/debug.proto", "proto/bootstrap.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Codegen::new()
        .inputs(protos)
        .include("proto")
        .rust_protobuf()
        // The shim serves on its event loop (async server); tether-ctl calls it plainly.
        .customize(Customize { async_server: true, ..Default::default() })
        .rust_protobuf_customize(ProtobufCustomize::default().generate_accessors(true))
        .out_dir(&out)
        .run()
        .expect("compiling tether's .proto files");

    // `include!` rejects inner attributes, which the generator emits at the top of each file.
    for entry in fs::read_dir(&out).expect("reading OUT_DIR") {
        let path = entry.expect("OUT_DIR entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).expect("reading generated file");
            let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("#!") && !l.starts_with("//!")).collect();
            fs::write(&path, kept.join("\n")).expect("writing generated file");
        }
    }
}
