//! Figures 2–4, end to end through containerd: lifecycle of a container running /bin/true,
//! exec of /bin/true, and a burst of container starts. Each sample is one `ctr` process, so
//! every figure also pays ctr's own start-up; the `ctr alone` series (measured in the same
//! rounds) shows how much that is.

use tether_tests::Env;

use crate::alternate::{alternate, series};
use crate::containers::{self, ctr, start_sleepers, SLEEP};
use crate::options::Options;
use crate::results::{Figure, Unit};
use crate::targets::Target;

/// The series name of a bare ctr call (`ctr version`: process start, dial, one call).
pub const CTR_ALONE: &str = "ctr alone";

/// What a lifecycle round measures: a target, or ctr by itself.
enum Subject<'a> {
    CtrAlone,
    Target(&'a Target),
}

/// create → start → exit of /bin/true → delete: `ctr run --rm ID /bin/true`.
pub fn lifecycle(env: &Env, targets: &[Target], opts: &Options) -> Figure {
    let mut subjects: Vec<Subject> = targets.iter().map(Subject::Target).collect();
    subjects.push(Subject::CtrAlone);
    let name = |s: &Subject| match s {
        Subject::CtrAlone => CTR_ALONE.to_string(),
        Subject::Target(t) => t.name.to_string(),
    };
    let collected =
        alternate("lifecycle via containerd", &subjects, name, opts.warmup, opts.lifecycle, |s, round| match s {
            Subject::CtrAlone => Ok(ctr(env, &["version".into()])?.millis()),
            Subject::Target(t) => {
                let id = format!("lc-{}-{round}", t.name);
                containers::run(env, t, &id, |r| r.rm(), &["/bin/true"]).map(|f| f.millis()).inspect_err(|_| {
                    containers::remove(env, std::slice::from_ref(&id), 1);
                })
            }
        });
    let mut f = Figure::new(
        "lifecycle_e2e",
        "lifecycle via containerd (ctr run --rm /bin/true)",
        Unit::Millis,
        series(&collected, |v| *v),
    );
    f.notes.push(format!(
        "one `ctr run --rm` each: container create, task create (shim start), start, exit, task delete, container delete; \
         `{CTR_ALONE}` is `ctr version`, the part of every sample that is ctr's own process start"
    ));
    f
}

/// exec /bin/true in a running container: `ctr task exec`.
pub fn exec(env: &Env, targets: &[Target], opts: &Options) -> Figure {
    let id = |t: &Target| format!("ex-{}", t.name);
    let mut running = Vec::new();
    for t in targets {
        match start_sleepers(env, t, &[id(t)], 1, None) {
            Ok(_) => running.push(t),
            Err(e) => eprintln!("  exec: {} could not start its container: {e}", t.name),
        }
    }
    let collected = alternate(
        "exec",
        &running,
        |t| t.name.to_string(),
        opts.warmup,
        opts.exec,
        |t, round| {
            let args = env.ctr.exec_args(&[], &id(t), &format!("e{round}"), &["/bin/true"]);
            Ok(ctr(env, &args)?.millis())
        },
    );
    containers::remove(env, &running.iter().map(|t| id(t)).collect::<Vec<_>>(), opts.in_flight);
    let mut f = Figure::new("exec", "exec /bin/true (ctr task exec)", Unit::Millis, series(&collected, |v| *v));
    f.notes.push("one `ctr task exec` each, in a container that sleeps; includes ctr's process start".into());
    f
}

/// `--burst` containers created and started, `--in-flight` at a time: total wall time.
pub fn burst(env: &Env, targets: &[Target], opts: &Options) -> Figure {
    let collected = alternate(
        "burst",
        targets,
        |t| t.name.to_string(),
        0,
        opts.burst_rounds,
        |t, round| {
            let ids: Vec<String> = (0..opts.burst).map(|k| format!("b{round}-{}-{k}", t.name)).collect();
            let wall = start_sleepers(env, t, &ids, opts.in_flight, None)?;
            containers::remove(env, &ids, opts.in_flight);
            Ok(wall.as_secs_f64())
        },
    );
    let mut f = Figure::new(
        "burst",
        format!("burst: {} containers, {} in flight (ctr run -d)", opts.burst, opts.in_flight),
        Unit::Seconds,
        series(&collected, |v| *v),
    );
    f.notes.push(format!(
        "wall time until all {} `ctr run -d {}` returned (tasks running)",
        opts.burst,
        SLEEP.join(" ")
    ));
    f
}
