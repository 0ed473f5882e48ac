//! Checkpoint and restore with CRIU. What works on every host: the checkpoint options reach
//! the runtime binary as its flags, a CRIU failure is a clear error naming CRIU's log and
//! leaves the container running, and a missing CRIU is FailedPrecondition. The end-to-end
//! round trip needs a host where `criu check` passes (Debian's criu 3.17 cannot read this
//! kernel's vdso) and says so when it skips.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tether_protos::{api, runc_options::CheckpointOptions, ttrpc::Code};
use tether_tests::env::{skip, Env, Executor, TetherConfig};
use tether_tests::runtime::recording_runc;
use tether_tests::shim::{code_of, message_of, ShimClient};
use tether_tests::{secs, wait_until, Case, Daemon, Sandboxer};

tether_tests::for_each_daemon!(
    checkpoint_options_reach_the_runtime_and_failures_are_clear,
    missing_criu_is_a_failed_precondition,
    checkpoint_and_restore_round_trip,
    native_checkpoint_failures_are_clear_and_restore_is_unimplemented,
);

/// Counts up in `/count` of the container's rootfs, ten times a second.
const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i > /count; sleep 0.1; done";

/// `Ok` when CRIU works on this host, else what `criu check` said.
fn criu_works() -> Result<(), String> {
    match Command::new("criu").arg("check").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`criu check` fails on this host: {}",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("").trim()
        )),
        Err(e) => Err(format!("criu cannot run: {e}")),
    }
}

/// The last recorded `checkpoint` invocation of the runtime.
fn last_checkpoint_call(record: &Path) -> String {
    fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| l.contains(" checkpoint "))
        .unwrap_or_else(|| panic!("the runtime was never called to checkpoint: {}", record.display()))
        .to_owned()
}

fn checkpoint_options_reach_the_runtime_and_failures_are_clear(daemon: Daemon) {
    let env = Env::new("checkpoint_flags", daemon);
    if !env.tether_only("checkpoint_options_reach_the_runtime_and_failures_are_clear") {
        return;
    }
    let ctr = &env.ctr;
    let record = env.work().join("runtime-calls");
    let wrapper = recording_runc(&env.work().join("bin"), "runc-recorder", &record);
    let config = TetherConfig { binary: Some(wrapper.display().to_string()), ..Default::default() }
        .write(&env.work().join("recorder.toml"));
    env.run("c1").detach().config_path(&config).run(&["sh", "-c", COUNTER]).expect_ok();
    ctr.wait_status("c1", "RUNNING", secs(10));
    let criu = criu_works();

    // ctr 1.6 sends its --image-path/--work-path/--exit only to runtimes named like runc's,
    // so from ctr tether gets containerd's own image dir and picks its work dir in the bundle.
    let bundle = env.containerd.bundle(&env.ns, "c1");
    let out = ctr.run(&["task", "checkpoint", "c1"]);
    let call = last_checkpoint_call(&record);
    assert!(call.contains("checkpoint --image-path "), "{call}");
    assert!(call.contains(&format!("--work-path {}", bundle.join("criu-work").display())), "{call}");
    assert!(call.contains("--leave-running") && call.ends_with(" c1"), "{call}");
    match &criu {
        Ok(()) => {
            out.expect_ok();
        }
        Err(why) => {
            println!("CRIU fails here ({why}); checking the failure is reported well");
            out.expect_failure().expect_stderr("criu log:");
            let kept = bundle.join("criu-dump.log");
            out.expect_stderr(&kept.display().to_string());
            let log = fs::read_to_string(&kept).unwrap_or_else(|e| panic!("{}: {e}", kept.display()));
            assert!(!log.trim().is_empty(), "CRIU's log was kept");
        }
    }
    // Whatever CRIU did, the container runs on and is served.
    assert_eq!(ctr.status("c1").as_deref(), Some("RUNNING"));
    env.exec("c1", "after", &["cat", "/count"]).expect_ok();

    // Every CheckpointOptions field, as the CRI plugin or a containerd client sends them.
    let shim = ShimClient::for_task(&env, "c1");
    let (image, work) = (env.work().join("image2"), env.work().join("work2"));
    let options = CheckpointOptions {
        exit: false,
        open_tcp: true,
        external_unix_sockets: true,
        terminal: true,
        file_locks: true,
        empty_namespaces: vec!["network".into()],
        cgroups_mode: "soft".into(),
        image_path: image.display().to_string(),
        work_path: work.display().to_string(),
        ..Default::default()
    };
    let result = shim.checkpoint("c1", &options);
    let call = last_checkpoint_call(&record);
    for flag in [
        format!("--image-path {}", image.display()),
        format!("--work-path {}", work.display()),
        "--tcp-established".into(),
        "--ext-unix-sk".into(),
        "--shell-job".into(),
        "--file-locks".into(),
        "--empty-ns network".into(),
        "--manage-cgroups-mode soft".into(),
        "--leave-running".into(),
    ] {
        assert!(call.contains(&flag), "{flag} in {call}");
    }
    if criu.is_err() {
        let err = result.expect_err("checkpoint cannot succeed without a working CRIU");
        assert_eq!(code_of(&err), Code::INTERNAL, "{err}");
        assert!(message_of(&err).contains("criu log:"), "{}", message_of(&err));
    }
    assert_eq!(ctr.status("c1").as_deref(), Some("RUNNING"));

    // exit: the runtime is not asked to leave it running, and a checkpoint that works stops it.
    let image = env.work().join("image3");
    let exit = CheckpointOptions { exit: true, image_path: image.display().to_string(), ..Default::default() };
    let result = shim.checkpoint("c1", &exit);
    let call = last_checkpoint_call(&record);
    assert!(call.contains(&format!("--image-path {}", image.display())) && !call.contains("--leave-running"), "{call}");
    if criu.is_ok() {
        result.expect("checkpoint with exit");
        ctr.wait_status("c1", "STOPPED", secs(10));
    } else {
        assert_eq!(code_of(&result.expect_err("no working CRIU")), Code::INTERNAL);
        assert_eq!(ctr.status("c1").as_deref(), Some("RUNNING"), "a failed checkpoint leaves it running");
        ctr.kill("c1", "SIGKILL", false).expect_ok();
        ctr.wait_status("c1", "STOPPED", secs(10));
    }
    assert_eq!(ctr.rm_task("c1"), 137);
}

fn missing_criu_is_a_failed_precondition(daemon: Daemon) {
    let env = Env::new("missing_criu", daemon);
    if !env.tether_only("missing_criu_is_a_failed_precondition") {
        return;
    }
    let ctr = &env.ctr;
    let config = TetherConfig { criu: Some("/nonexistent/criu".into()), ..Default::default() }
        .write(&env.work().join("no-criu.toml"));
    env.run("c1").detach().config_path(&config).run(&["sh", "-c", COUNTER]).expect_ok();
    ctr.wait_status("c1", "RUNNING", secs(10));
    env.expect_code(&ctr.run(&["task", "checkpoint", "c1"]), "failed precondition")
        .expect_stderr("criu is not installed")
        .expect_stderr("/nonexistent/criu");
    assert_eq!(ctr.status("c1").as_deref(), Some("RUNNING"));
    ctr.kill("c1", "SIGKILL", false).expect_ok();
    ctr.wait_status("c1", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("c1"), 137);
}

/// A Create of task `c1-restored` from the checkpoint in `image`, in a bundle of its own
/// with c1's config on the test's rootfs, for the test's executor.
fn restore_request(env: &Env, image: &Path) -> api::CreateTaskRequest {
    let bundle: PathBuf = env.work().join("restored");
    fs::create_dir_all(bundle.join("rootfs")).unwrap();
    fs::copy(env.containerd.bundle(&env.ns, "c1").join("config.json"), bundle.join("config.json")).unwrap();
    api::CreateTaskRequest {
        id: "c1-restored".into(),
        bundle: bundle.display().to_string(),
        rootfs: vec![api::Mount {
            type_: "bind".into(),
            source: env.rootfs.display().to_string(),
            options: vec!["rbind".into(), "rw".into()],
            ..Default::default()
        }],
        checkpoint: image.display().to_string(),
        options: env.runtime_options().into(),
        ..Default::default()
    }
}

fn read_count(rootfs: &Path) -> Option<u64> {
    fs::read_to_string(rootfs.join("count")).ok()?.trim().parse().ok()
}

/// Deletes a task containerd does not know about (the restored one) even if the test fails.
struct RestoredTask<'a> {
    shim: &'a ShimClient,
    id: &'static str,
}

impl Drop for RestoredTask<'_> {
    fn drop(&mut self) {
        let _ = self.shim.kill(self.id, 9);
        let _ = self.shim.wait(self.id);
        let _ = self.shim.delete(self.id);
    }
}

fn checkpoint_and_restore_round_trip(daemon: Daemon) {
    let env = Env::new("checkpoint_restore", daemon);
    if let Err(why) = criu_works() {
        skip("checkpoint_and_restore_round_trip", &format!("needs a working CRIU: {why}"));
        return;
    }
    let ctr = &env.ctr;
    env.run("c1").detach().run(&["sh", "-c", COUNTER]).expect_ok();
    ctr.wait_status("c1", "RUNNING", secs(10));
    wait_until(secs(10), || read_count(&env.rootfs).filter(|&n| n >= 5)).expect("the counter counts");

    // Checkpoint and stop (straight to the shim: ctr 1.6 sends --image-path and --exit only
    // to runc-named runtimes); the count stops where it was.
    let image = env.work().join("image");
    let shim = ShimClient::for_task(&env, "c1");
    let options = CheckpointOptions { exit: true, image_path: image.display().to_string(), ..Default::default() };
    shim.checkpoint("c1", &options).unwrap_or_else(|e| panic!("checkpoint: {e}"));
    assert!(image.join("inventory.img").exists(), "CRIU wrote its images");
    ctr.wait_status("c1", "STOPPED", secs(10));
    let stopped_at = read_count(&env.rootfs).expect("a count");

    // Restore into a new task of the same shim, in a bundle of our own on the same rootfs.
    shim.create(&restore_request(&env, &image)).unwrap_or_else(|e| panic!("restore: {e}"));
    let cleanup = RestoredTask { shim: &shim, id: "c1-restored" };
    shim.start("c1-restored").unwrap_or_else(|e| panic!("start restored: {e}"));
    let resumed = wait_until(secs(10), || read_count(&env.rootfs).filter(|&n| n > stopped_at))
        .expect("the restored counter counts on");
    assert!(resumed <= stopped_at + 20, "it resumed from {stopped_at}, not from the start: now {resumed}");
    drop(cleanup);
    ctr.rm_task("c1");
}

fn native_checkpoint_failures_are_clear_and_restore_is_unimplemented(daemon: Daemon) {
    let Some(env) = Env::for_case(
        "native_checkpoint",
        Case { daemon, executor: Executor::Native, sandboxer: Sandboxer::Podsandbox },
    ) else {
        return;
    };
    let ctr = &env.ctr;
    env.run("c1").detach().run(&["sh", "-c", COUNTER]).expect_ok();
    ctr.wait_status("c1", "RUNNING", secs(10));
    let shim = ShimClient::for_task(&env, "c1");

    // Checkpoint through libcontainer's CRIU client.
    let image = env.work().join("image");
    let options = CheckpointOptions { image_path: image.display().to_string(), ..Default::default() };
    match (criu_works(), shim.checkpoint("c1", &options)) {
        (Ok(()), result) => {
            result.unwrap_or_else(|e| panic!("checkpoint: {e}"));
            assert!(image.join("inventory.img").exists(), "CRIU wrote its images");
        }
        (Err(why), Ok(())) => panic!("checkpoint succeeded although CRIU fails here ({why})"),
        (Err(why), Err(e)) => {
            println!("CRIU fails here ({why}); the checkpoint said: {e}");
            assert_eq!(code_of(&e), Code::INTERNAL, "{e}");
            assert!(message_of(&e).contains("libcontainer checkpoint failed"), "{}", message_of(&e));
        }
    }
    // Whatever CRIU did, the container runs on and is served.
    assert_eq!(ctr.status("c1").as_deref(), Some("RUNNING"));
    env.exec("c1", "after", &["cat", "/count"]).expect_ok();

    // libcontainer cannot restore: a Create from a checkpoint says so, and leaves nothing.
    let req = restore_request(&env, &image);
    let bundle = PathBuf::from(&req.bundle);
    let err = shim.create(&req).expect_err("the native executor cannot restore");
    assert_eq!(code_of(&err), Code::UNIMPLEMENTED, "{err}");
    assert!(message_of(&err).contains("restore"), "{}", message_of(&err));
    assert!(
        tether_tests::containerd::mount_points().iter().all(|m| !m.starts_with(&bundle)),
        "the refused restore left its rootfs mounted"
    );
    ctr.kill("c1", "SIGKILL", false).expect_ok();
    ctr.wait_status("c1", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("c1"), 137);
}
