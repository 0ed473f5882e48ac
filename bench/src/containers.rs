//! Containers through containerd, the way a user makes them: `ctr` against the private
//! containerd, timed exactly (see `timed`).

use std::time::{Duration, Instant};

use tether_tests::{env::RunBuilder, Env};

use crate::alternate::in_parallel;
use crate::targets::Target;
use crate::timed::{self, Finished};

/// How long one ctr call may take (a burst on a busy machine can be slow).
pub const CTR_TIMEOUT: Duration = Duration::from_secs(120);
/// What idle containers run.
pub const SLEEP: [&str; 2] = ["sleep", "1000000"];
/// The annotation that puts containers in one shim (tether and the Go shim both honour it).
pub const GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";

/// `ctr ARGS` in the benchmark's namespace; an error unless it exits 0.
pub fn ctr(env: &Env, args: &[String]) -> Result<Finished, String> {
    timed::run(env.ctr.command(args), None, CTR_TIMEOUT)?.success()
}

/// `ctr run` of `id` on `target`, with `flags` applied to the run, running `cmd`.
pub fn run(
    env: &Env,
    target: &Target,
    id: &str,
    flags: impl FnOnce(RunBuilder) -> RunBuilder,
    cmd: &[&str],
) -> Result<Finished, String> {
    ctr(env, &flags(target.run(env, id)).args(cmd))
}

/// Starts every container of `ids` detached and sleeping, `in_flight` at a time, all in one
/// shim when `group` is given. Returns the wall time from the first start to the last; an
/// error (after removing what did start) if any failed.
pub fn start_sleepers(
    env: &Env,
    target: &Target,
    ids: &[String],
    in_flight: usize,
    group: Option<&str>,
) -> Result<Duration, String> {
    let started = Instant::now();
    let outcomes = in_parallel(ids, in_flight, |id| {
        run(
            env,
            target,
            id,
            |r| match group {
                Some(g) => r.detach().annotation(GROUP_ANNOTATION, g),
                None => r.detach(),
            },
            &SLEEP,
        )
    });
    let wall = started.elapsed();
    let failed: Vec<String> = outcomes
        .into_iter()
        .filter_map(|o| match o {
            Some(Ok(_)) => None,
            Some(Err(e)) => Some(e),
            None => Some("interrupted".into()),
        })
        .collect();
    if let Some(first) = failed.first() {
        remove(env, ids, in_flight);
        return Err(format!("{} of {} containers did not start; first: {first}", failed.len(), ids.len()));
    }
    Ok(wall)
}

/// Kills and removes the tasks and containers `ids` (whatever state they are in), `in_flight`
/// at a time. Best effort: what is left is removed at teardown.
pub fn remove(env: &Env, ids: &[String], in_flight: usize) {
    let each = |id: &String| {
        // `task rm -f` kills the task and waits for it before deleting it.
        let _ = ctr(env, &["task".into(), "rm".into(), "-f".into(), id.clone()]);
        let _ = ctr(env, &["container".into(), "rm".into(), id.clone()]);
    };
    // Removal must happen even after a Ctrl-C: not through in_parallel, which stops then.
    std::thread::scope(|scope| {
        for chunk in ids.chunks(ids.len().div_ceil(in_flight.max(1)).max(1)) {
            scope.spawn(move || chunk.iter().for_each(each));
        }
    });
}
