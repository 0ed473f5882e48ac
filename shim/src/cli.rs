//! The command line containerd uses to launch a shim:
//! `containerd-shim-tether-v2 -namespace NS -address SOCK -publish-binary PATH -id ID
//! [-bundle DIR] [-debug] start|delete`, plus `serve`, which `start` runs in the background,
//! and containerd 2.x's `-info` (introspection, which needs no other flag).
//! Flags follow Go's `flag` package: one or two dashes, `-name value` or `-name=value`.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// What the shim was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start (or find) the serving shim for this task and print its address.
    Start,
    /// Clean up after a dead shim and print a DeleteResponse.
    Delete,
    /// Serve the task API on the listener inherited as fd 3.
    Serve,
    /// Print the version.
    Version,
    /// Print the RuntimeInfo for the runtime options on stdin (containerd 2.x's `-info`).
    Info,
}

/// Parsed flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub action: Action,
    pub namespace: String,
    pub id: String,
    /// containerd's gRPC address (part of the socket name hash).
    pub address: String,
    pub publish_binary: String,
    pub bundle: Option<PathBuf>,
    pub debug: bool,
    /// The socket address `serve` listens on (for the bundle's address file and cleanup).
    pub socket: String,
}

/// Parses `args` (without the program name).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args> {
    let mut out = Args {
        action: Action::Serve,
        namespace: String::new(),
        id: String::new(),
        address: String::new(),
        publish_binary: String::new(),
        bundle: None,
        debug: false,
        socket: String::new(),
    };
    let mut action = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            if action.is_some() {
                return Err(Error::InvalidArgument(format!("unexpected argument {arg:?}")));
            }
            action = Some(match arg.as_str() {
                "start" => Action::Start,
                "delete" => Action::Delete,
                "serve" => Action::Serve,
                other => return Err(Error::InvalidArgument(format!("unknown action {other:?} (start, delete)"))),
            });
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        match name {
            "debug" => out.debug = inline.as_deref().is_none_or(|v| v != "false"),
            "v" | "version" => action = Some(Action::Version),
            "info" => action = Some(Action::Info),
            "namespace" | "id" | "address" | "publish-binary" | "bundle" | "socket" => {
                let value = match inline {
                    Some(v) => v,
                    None => it.next().ok_or_else(|| Error::InvalidArgument(format!("flag -{name} needs a value")))?,
                };
                match name {
                    "namespace" => out.namespace = value,
                    "id" => out.id = value,
                    "address" => out.address = value,
                    "publish-binary" => out.publish_binary = value,
                    "bundle" => out.bundle = Some(value.into()),
                    _ => out.socket = value,
                }
            }
            other => return Err(Error::InvalidArgument(format!("unknown flag -{other}"))),
        }
    }
    out.action = action.unwrap_or(Action::Serve);
    let needs_task = !matches!(out.action, Action::Version | Action::Info);
    if needs_task && (out.namespace.is_empty() || out.id.is_empty()) {
        return Err(Error::InvalidArgument("-namespace and -id are required".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_containerd_start_line() {
        let a =
            parse(v("-namespace default -address /run/c.sock -publish-binary /usr/bin/containerd -id c1 -debug start"))
                .unwrap();
        assert_eq!(a.action, Action::Start);
        assert_eq!(a.namespace, "default");
        assert_eq!(a.id, "c1");
        assert_eq!(a.address, "/run/c.sock");
        assert!(a.debug);
    }

    #[test]
    fn parses_delete_with_bundle_and_equals() {
        let a = parse(v("--namespace=k8s.io -id=c2 -bundle /b delete")).unwrap();
        assert_eq!(a.action, Action::Delete);
        assert_eq!(a.bundle, Some(PathBuf::from("/b")));
        assert!(!a.debug);
    }

    #[test]
    fn rejects_bad_lines() {
        assert!(parse(v("-namespace x start")).is_err());
        assert!(parse(v("-namespace x -id y frobnicate")).is_err());
        assert!(parse(v("-namespace x -id")).is_err());
        assert!(parse(v("-bogus 1 -namespace x -id y")).is_err());
        assert_eq!(parse(v("-v")).unwrap().action, Action::Version);
    }

    #[test]
    fn info_needs_no_task() {
        assert_eq!(parse(v("-info")).unwrap().action, Action::Info);
        assert_eq!(parse(v("-namespace k8s.io -debug -info")).unwrap().action, Action::Info);
    }
}
