//! tether-bench: tether (with its runc and its native executor) against containerd's Go shim
//! `io.containerd.runc.v2`, side by side in one run under one private containerd.
//!
//!     cargo dist && cargo run --release -p tether-bench -- [--quick]
//!
//! Prints a table (median, tail, ratio to Go) and the goals, and writes
//! `tether-bench.json` (every sample) and `tether-bench.svg` (latency distributions). Needs
//! root, containerd, runc and busybox-static, like the integration tests whose harness it uses.

mod alternate;
mod cgroups;
mod containers;
mod exec_storm;
mod goals;
mod interrupt;
mod launch;
mod machine;
mod memory;
mod node_memory;
mod options;
mod pod_memory;
mod pods;
mod procfs;
mod report;
mod results;
mod shim_level;
mod stats;
mod stdio;
mod svg;
mod targets;
mod through_containerd;
mod timed;

use std::path::{Path, PathBuf};

use tether_tests::{runtime, Daemon, Env, Runtime};

use crate::options::{Command, Options};
use crate::report::RunInfo;
use crate::results::Results;
use crate::targets::Target;

fn main() {
    let opts = match options::parse(std::env::args().skip(1)) {
        Ok(Command::Run(o)) => *o,
        Ok(Command::Help) => {
            print!("{}", options::USAGE);
            return;
        }
        Err(e) => {
            eprintln!("tether-bench: {e}");
            std::process::exit(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("tether-bench starts containerd and containers: run it as root");
        std::process::exit(1);
    }
    interrupt::install();
    let shim = choose_shim();
    if !shim.components().any(|c| c.as_os_str() == DIST_PROFILE) {
        eprintln!("warning: measuring {}, not the build for nodes; run `cargo dist` first", shim.display());
    }

    eprintln!("starting a private containerd (tether: {})", shim.display());
    let env = Env::at_info_level("tether-bench", Runtime::tether(), Daemon::V1);
    let targets = Target::selected(&env, &opts.targets);
    let mut info = RunInfo {
        date: machine::now(),
        machine: machine::describe(&targets.iter().map(|t| (t.name.to_string(), t.shim_binary())).collect::<Vec<_>>()),
        options: opts.describe(),
    };
    let results = run(&env, &targets, &opts);
    info.machine.push(("load at end".into(), machine::load()));
    eprintln!("cleaning up (containers, shims, containerd)");
    let namespace = env.ns.clone();
    drop(env);
    // A runtime whose create failed half-way can leave an empty container cgroup that was
    // still busy when the harness removed the namespace's: try once more now.
    tether_tests::containerd::remove_empty_cgroups(&namespace);

    let goals = goals::check(&results);
    println!(
        "\ntether-bench {} on {} ({} CPUs, load at start {})",
        info.date,
        value(&info, "cpu"),
        value(&info, "cpus"),
        value(&info, "load at start")
    );
    print!("{}", report::table(&results));
    println!("{}", goals::summary_line(&goals));
    if let Err(e) = write_outputs(&opts.out, &info, &results, &goals) {
        eprintln!("tether-bench: {e}");
        std::process::exit(1);
    }
    if interrupt::requested() {
        eprintln!("(interrupted: the figures above are partial)");
        std::process::exit(130);
    }
}

/// The cargo profile of `cargo dist` (.cargo/config.toml), and the target it builds for.
const DIST_PROFILE: &str = "dist";
const DIST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The shim to measure: `$TETHER_SHIM_BINARY` if set, else the `cargo dist` build (what nodes
/// run) if there is one, else the one beside this bench. The harness reads the choice from
/// the environment, so containerd gets the same binary.
fn choose_shim() -> PathBuf {
    if std::env::var_os(runtime::SHIM_BINARY_ENV).is_none_or(|v| v.is_empty()) {
        let target_dir = runtime::target_profile_dir().and_then(|d| d.parent().map(Path::to_path_buf));
        let dist = target_dir.map(|t| t.join(DIST_TARGET).join(DIST_PROFILE).join(runtime::SHIM_BINARY));
        if let Some(dist) = dist.filter(|d| runtime::is_executable(d)) {
            // Set while this is the only thread: nothing reads the environment meanwhile.
            std::env::set_var(runtime::SHIM_BINARY_ENV, &dist);
        }
    }
    runtime::tether_shim_binary()
}

fn value<'a>(info: &'a RunInfo, key: &str) -> &'a str {
    info.machine.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or("")
}

/// Every selected figure, in the order, until the user interrupts.
fn run(env: &Env, targets: &[Target], opts: &Options) -> Results {
    let mut results = Results::default();
    let go_on = |figure: &str| opts.wants(figure) && !interrupt::requested();
    if go_on("node-memory") {
        results.figures.extend(node_memory::figures(env, targets, opts));
    }
    if go_on("memory") {
        results.figures.extend(memory::figures(env, targets, opts));
    }
    if go_on("lifecycle") {
        results.figures.push(through_containerd::lifecycle(env, targets, opts));
    }
    if go_on("exec") {
        results.figures.push(through_containerd::exec(env, targets, opts));
    }
    if go_on("burst") {
        results.figures.push(through_containerd::burst(env, targets, opts));
    }
    if go_on("pod-memory") || go_on("pod-start") {
        results.figures.extend(pods::figures(opts));
    }
    let shim_level = ["stdio", "shim-start", "shim-lifecycle", "exec-storm"].iter().any(|f| go_on(f));
    if !shim_level {
        return results;
    }
    // The shim-level figures launch shims on bundles made from the spec containerd writes.
    let spec = match launch::spec_template(env, &targets[0]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot make a bundle template, skipping the shim-level figures: {e}");
            return results;
        }
    };
    if go_on("stdio") {
        results.figures.push(stdio::figure(env, targets, &spec, opts));
    }
    if go_on("shim-start") {
        results.figures.push(shim_level::start(env, targets, &spec, opts));
    }
    if go_on("shim-lifecycle") {
        results.figures.push(shim_level::lifecycle(env, targets, &spec, opts));
    }
    if go_on("exec-storm") {
        results.figures.extend(exec_storm::figures(env, targets, &spec, opts));
    }
    results
}

fn write_outputs(dir: &Path, info: &RunInfo, results: &Results, goals: &[goals::Goal]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let json = serde_json::to_string_pretty(&report::json(info, results, goals)).map_err(|e| e.to_string())?;
    for (name, text) in [("tether-bench.json", json + "\n"), ("tether-bench.svg", svg::render(results))] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
