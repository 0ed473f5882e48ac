//! Ctrl-C: the first SIGINT or SIGTERM asks the run to stop after the current step, so that
//! everything it started is cleaned up (containers, shims, mounts, containerd); a second one
//! exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};

static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// Installs the handlers (once, before anything is started).
pub fn install() {
    let flag = STOP.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it only fires once `flag` is already set: the second signal.
        signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone()).expect("signal handler");
        signal_hook::flag::register(sig, flag.clone()).expect("signal handler");
    }
}

/// True once a stop was asked for.
pub fn requested() -> bool {
    STOP.get().is_some_and(|f| f.load(Ordering::Relaxed))
}
