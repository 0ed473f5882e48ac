//! tether's shim: the pieces of `containerd-shim-tether-v2` (one module per concern), shared
//! with `tether-ctl`, which reads the shim's state over its debug service.

pub mod bootstrap;
pub mod bundle;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod debug;
pub mod error;
pub mod events;
pub mod idle;
pub mod info;
pub mod journal;
pub mod launch;
pub mod logger;
pub mod mount;
pub mod oom;
pub mod pidfd;
pub mod process;
pub mod reaper;
pub mod resources;
pub mod rt;
pub mod sandbox;
pub mod service;
pub mod signals;
pub mod spill;
pub mod stdio;
pub mod sys;
