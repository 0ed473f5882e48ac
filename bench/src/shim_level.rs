//! Figures 6 and 7, straight to the shim (see `launch`): how long a shim takes to start and
//! serve, and a whole container lifecycle driven over ttrpc as containerd drives it.

use std::time::Instant;

use serde_json::Value;
use tether_tests::Env;

use crate::alternate::{alternate, series};
use crate::launch::Launch;
use crate::options::Options;
use crate::results::{Figure, Unit};
use crate::targets::Target;

fn millis_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// `start` until a Connect is answered (then Shutdown, untimed).
pub fn start(env: &Env, targets: &[Target], spec: &Value, opts: &Options) -> Figure {
    let collected = alternate(
        "shim start",
        targets,
        |t| t.name.to_string(),
        opts.warmup,
        opts.shim_start,
        |t, round| {
            let mut launch = Launch::prepare(env, t, spec, &format!("ss-{}-{round}", t.name), &["/bin/true"])?;
            let t0 = Instant::now();
            launch.start_shim()?;
            launch.connect()?;
            let ms = millis_since(t0);
            launch.shutdown()?;
            launch.finish()?;
            Ok(ms)
        },
    );
    let mut f =
        Figure::new("shim_start", "shim start (start → served Connect)", Unit::Millis, series(&collected, |v| *v));
    f.notes.push(
        "the `start` process (which spawns the serving shim and prints its address), a ttrpc dial, one Connect".into(),
    );
    f
}

/// `start` → Create → Start → Wait → Delete → Shutdown of /bin/true.
pub fn lifecycle(env: &Env, targets: &[Target], spec: &Value, opts: &Options) -> Figure {
    let collected = alternate(
        "shim lifecycle",
        targets,
        |t| t.name.to_string(),
        opts.warmup,
        opts.shim_lifecycle,
        |t, round| {
            let mut launch = Launch::prepare(env, t, spec, &format!("sl-{}-{round}", t.name), &["/bin/true"])?;
            let t0 = Instant::now();
            launch.start_shim()?;
            launch.create("", "")?;
            launch.start()?;
            launch.wait()?;
            launch.delete()?;
            launch.shutdown()?;
            let ms = millis_since(t0);
            launch.finish()?;
            Ok(ms)
        },
    );
    let mut f = Figure::new(
        "shim_lifecycle",
        "shim-level lifecycle (start, Create, Start, Wait, Delete, Shutdown)",
        Unit::Millis,
        series(&collected, |v| *v),
    );
    f.notes.push(
        "the bench launches each shim as containerd 1.6 does and drives it over ttrpc; the rootfs is a bind mount the shim makes at Create"
            .into(),
    );
    f
}
