//! `containerd-shim-tether-v2 -info`: containerd 2.x's introspection of a runtime. containerd
//! writes the runtime options of a handler on the shim's stdin (a protobuf `Any`, or nothing)
//! and reads one `containerd.types.RuntimeInfo` from its stdout: the runtime's name and
//! version, the options echoed, and the OCI Features document of the executor those options
//! select, which containerd consults before it runs a pod with, for instance, idmapped mounts.

use std::io::Read;

use tether_protos::{
    protobuf::{well_known_types::any::Any, Message},
    type_urls,
    types::introspection::{RuntimeInfo, RuntimeVersion},
};

use crate::{
    config::Settings,
    error::{Error, Result},
};

/// The name RuntimeInfo gives: the runtime type containerd knows tether by (containerd's own
/// runc shim puts its runtime type there too).
pub const RUNTIME_NAME: &str = "io.containerd.tether.v2";

/// Reads the runtime options from `stdin` and returns the encoded RuntimeInfo. Options that
/// are not a protobuf `Any`, or that name a config tether cannot read, are an error; no
/// options mean the node's default config, as for a Create.
pub fn info(stdin: &mut impl Read) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    stdin.read_to_end(&mut bytes).map_err(|e| Error::io("reading the runtime options on stdin", e))?;
    let options = if bytes.is_empty() {
        None
    } else {
        let any = Any::parse_from_bytes(&bytes)
            .map_err(|e| Error::InvalidArgument(format!("the runtime options on stdin are not a protobuf Any: {e}")))?;
        Some(any)
    };
    // The namespace only places runtime state, which introspection never touches.
    let settings = Settings::from_options("", options.as_ref())?;
    let info = runtime_info(options, settings.features()?);
    info.write_to_bytes().map_err(|e| Error::encoding("the RuntimeInfo", e))
}

/// The RuntimeInfo for `options` (echoed as given) and an executor's Features JSON.
pub fn runtime_info(options: Option<Any>, features: Option<Vec<u8>>) -> RuntimeInfo {
    RuntimeInfo {
        name: RUNTIME_NAME.into(),
        version: Some(RuntimeVersion { version: env!("CARGO_PKG_VERSION").into(), ..Default::default() }).into(),
        options: options.into(),
        features: features
            .map(|json| Any { type_url: type_urls::OCI_FEATURES.into(), value: json, ..Default::default() })
            .into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use tether_protos::runtimeoptions;

    use super::*;

    fn config_options(body: &str) -> Any {
        let opts = runtimeoptions::Options { config_body: body.into(), ..Default::default() };
        Any { type_url: type_urls::RUNTIME_OPTIONS.into(), value: opts.write_to_bytes().unwrap(), ..Default::default() }
    }

    #[test]
    fn the_message_names_tether_and_echoes_the_options() {
        let options = config_options("executor = \"runc\"\n");
        let info = runtime_info(Some(options.clone()), Some(b"{\"ociVersionMin\":\"1.0.0\"}".to_vec()));
        let decoded = RuntimeInfo::parse_from_bytes(&info.write_to_bytes().unwrap()).unwrap();
        assert_eq!(decoded.name, "io.containerd.tether.v2");
        assert_eq!(decoded.version.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(decoded.options.as_ref(), Some(&options));
        assert_eq!(decoded.features.type_url, "types.containerd.io/opencontainers/runtime-spec/1/features/Features");
        assert_eq!(decoded.features.value, b"{\"ociVersionMin\":\"1.0.0\"}");
        let bare = runtime_info(None, None);
        assert!(bare.options.is_none() && bare.features.is_none(), "{bare:?}");
    }

    #[cfg(feature = "native")]
    #[test]
    fn native_options_give_libcontainers_features() {
        let stdin = config_options("executor = \"native\"\n").write_to_bytes().unwrap();
        let info = RuntimeInfo::parse_from_bytes(&info(&mut stdin.as_slice()).unwrap()).unwrap();
        let features: serde_json::Value = serde_json::from_slice(&info.features.value).unwrap();
        assert_eq!(features["linux"]["mountExtensions"]["idmap"]["enabled"], false, "{features}");
        assert_eq!(info.options.type_url, type_urls::RUNTIME_OPTIONS);
    }

    #[test]
    fn bad_options_are_errors() {
        let err = info(&mut &b"\xff\xff not protobuf"[..]).unwrap_err();
        assert!(err.to_string().contains("not a protobuf Any"), "{err}");
        let stdin = config_options("executor = \"jail\"\n").write_to_bytes().unwrap();
        let err = info(&mut stdin.as_slice()).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err:?}");
        let mut runc = Any { type_url: type_urls::RUNC_OPTIONS.into(), ..Default::default() };
        runc.value = tether_protos::runc_options::Options { binary_name: "/no/such/runc".into(), ..Default::default() }
            .write_to_bytes()
            .unwrap();
        let err = info(&mut runc.write_to_bytes().unwrap().as_slice()).unwrap_err();
        assert!(err.to_string().contains("/no/such/runc"), "{err}");
    }
}
