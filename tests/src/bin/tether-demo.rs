//! tether-demo: a private containerd with tether on its PATH runs a busybox container (with
//! each of tether's executors), shows it in `ctr task ls`, execs into it, stops it, and tears
//! everything down.
//!
//!     cargo build --workspace && cargo run -p tether-tests --bin tether-demo
//!
//! Needs root, containerd, runc and busybox-static (see .ci/run). It builds nothing itself:
//! the shim is taken from the cargo target dir. TETHER_TEST_RUNTIME=io.containerd.runc.v2 runs
//! the same demo with containerd's Go shim.

use std::time::Duration;

use tether_tests::{Daemon, Env, Output, Runtime, TetherConfig};

fn show(title: &str, shown: &str, out: &Output) {
    println!("\n==> {title}\n$ {shown}");
    for line in out.stdout.replace('\r', "").lines() {
        println!("  {line}");
    }
    for line in out.stderr.lines().filter(|l| !l.trim().is_empty()) {
        println!("  (stderr) {line}");
    }
    if !out.ok() {
        let status = out.code.map(|c| c.to_string()).unwrap_or_else(|| "none".into());
        println!("  (exit status {status})");
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("tether-demo starts containerd and runs containers: run it as root");
        std::process::exit(1);
    }
    let runtime = Runtime::from_env();
    println!("==> starting a private containerd (runtime under test: {})", runtime.name);
    let env = Env::with_runtime("tether-demo", runtime.clone(), Daemon::V1);
    let result = demo(&env, &runtime);
    if let Err(why) = &result {
        eprintln!(
            "\ntether-demo: {why}\n---- containerd log (last 40 lines) ----\n{}",
            tether_tests::containerd::tail(&env.containerd.log(), 40)
        );
    }
    println!("\n==> tearing down the private containerd");
    drop(env);
    match result {
        Ok(()) => println!("done."),
        Err(_) => std::process::exit(1),
    }
}

fn demo(env: &Env, runtime: &Runtime) -> Result<(), String> {
    let ctr = &env.ctr;
    println!("    dir:       {}", env.containerd.dir().display());
    println!("    socket:    {}", env.containerd.address().display());
    println!("    namespace: {}", env.ns);
    println!("    rootfs:    {} (busybox-static)", env.rootfs.display());
    println!("    (below, `ctr` stands for `ctr --address SOCKET -n NAMESPACE`)");
    let sh = "ctr";
    let rt = &runtime.name;

    let hello = format!("echo hello from busybox, run through {rt}; exit 3");
    let out = env.run("hello").rm().run(&["sh", "-c", &hello]);
    show(
        "a foreground container: output and exit status come back",
        &format!("{sh} run --runtime {rt} --rm --rootfs ROOTFS hello sh -c 'echo hello ...; exit 3'"),
        &out,
    );
    if out.code != Some(3) {
        return Err("the foreground run did not exit with status 3".into());
    }

    if runtime.is_tether() {
        // The same with the native executor: libcontainer inside the shim, no runc.
        let config = TetherConfig { executor: Some("native".into()), ..Default::default() }
            .write(&env.work().join("native.toml"));
        let out = env.run("hello-native").rm().config_path(&config).run(&[
            "sh",
            "-c",
            "echo hello from libcontainer inside tether; exit 4",
        ]);
        show(
            "the same with tether's native executor (config: executor = \"native\")",
            &format!("{sh} run --runtime {rt} --runtime-config-path native.toml --rm --rootfs ROOTFS hello-native sh -c '...; exit 4'"),
            &out,
        );
        if out.code != Some(4) {
            return Err("the native executor's run did not exit with status 4".into());
        }
    }

    let out = env.run("demo").detach().run(&["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]);
    show("a detached container", &format!("{sh} run --runtime {rt} -d --rootfs ROOTFS demo sh -c '...'"), &out);
    if !out.ok() {
        return Err("ctr run -d failed".into());
    }
    ctr.wait_status("demo", "RUNNING", Duration::from_secs(10));
    show("the task list", &format!("{sh} task ls"), &ctr.run(&["task", "ls"]));

    let out = ctr.exec(
        "demo",
        "look",
        &["sh", "-c", "echo \"inside: hostname $(hostname), pid 1 is $(cat /proc/1/comm)\"; ps"],
    );
    show("exec into it", &format!("{sh} task exec --exec-id look demo sh -c '...; ps'"), &out);
    show("its processes, seen from the host", &format!("{sh} task ps demo"), &ctr.run(&["task", "ps", "demo"]));

    ctr.run(&["task", "pause", "demo"]);
    show("paused", &format!("{sh} task pause demo && {sh} task ls"), &ctr.run(&["task", "ls"]));
    ctr.run(&["task", "resume", "demo"]);
    show("resumed", &format!("{sh} task resume demo && {sh} task ls"), &ctr.run(&["task", "ls"]));

    ctr.run(&["task", "kill", "demo"]);
    ctr.wait_status("demo", "STOPPED", Duration::from_secs(10));
    show("stopped (SIGTERM)", &format!("{sh} task kill demo && {sh} task ls"), &ctr.run(&["task", "ls"]));
    let code = ctr.rm_task("demo");
    println!("\n==> removed the task (exit status {code}) and the container");
    ctr.rm_container("demo");
    Ok(())
}
