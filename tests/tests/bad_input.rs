//! Bad requests, straight to a serving shim as containerd would send them: each gets the
//! right ttrpc code and a message that says what is wrong, and the shim serves on.

use std::fs;
use std::path::{Path, PathBuf};

use tether_protos::{
    api,
    protobuf::well_known_types::empty::Empty,
    runc_options::CheckpointOptions,
    ttrpc::{self, Code},
};
use tether_tests::containerd::mounted_below;
use tether_tests::env::Env;
use tether_tests::secs;
use tether_tests::shim::{code_of, exec_request, message_of, ShimClient};
use tether_tests::Case;

tether_tests::for_each_executor!(
    bad_creates_are_invalid_arguments,
    bad_process_requests_get_clear_codes,
    inputs_that_once_panicked_the_shim_are_refused,
    shim_socket_and_state_are_root_only,
);

const LOOP: &str = "while :; do sleep 0.1; done";

/// A bundle `name` whose config.json is the anchor's, with its root at `<bundle>/rootfs`
/// (where Create mounts the request's rootfs) and `edit` applied.
fn bundle(env: &Env, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = env.work().join(name);
    fs::create_dir_all(dir.join("rootfs")).unwrap();
    let text = fs::read(env.containerd.bundle(&env.ns, "anchor").join("config.json")).unwrap();
    let mut spec: serde_json::Value = serde_json::from_slice(&text).unwrap();
    spec["root"]["path"] = "rootfs".into();
    // Its own cgroup: a failed create removes the cgroup it was given.
    spec["linux"]["cgroupsPath"] = format!("/{}/{name}", env.ns).into();
    edit(&mut spec);
    fs::write(dir.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    dir
}

fn rootfs_mount(source: &Path) -> api::Mount {
    api::Mount {
        type_: "bind".into(),
        source: source.display().to_string(),
        options: vec!["rbind".into(), "ro".into()],
        ..Default::default()
    }
}

/// A Create for this test's executor.
fn create(env: &Env, id: &str, bundle: &Path, rootfs: Vec<api::Mount>) -> api::CreateTaskRequest {
    api::CreateTaskRequest {
        id: id.into(),
        bundle: bundle.display().to_string(),
        rootfs,
        options: env.runtime_options().into(),
        ..Default::default()
    }
}

#[track_caller]
fn expect<T: std::fmt::Debug>(what: &str, result: Result<T, ttrpc::Error>, code: Code, needle: &str) {
    let err = match result {
        Ok(v) => panic!("{what}: succeeded ({v:?}), expected {code:?}"),
        Err(e) => e,
    };
    let message = message_of(&err);
    println!("{what}: {:?} {message}", code_of(&err));
    assert_eq!(code_of(&err), code, "{what}: {message}");
    assert!(message.contains(needle), "{what}: message {message:?} lacks {needle:?}");
}

/// A test's world with a running container `anchor` and a client of its shim, or None
/// (after saying why) where the scenario is tether's alone.
fn anchored(test: &str, case: Case) -> Option<(Env, ShimClient)> {
    let env = Env::for_case(test, case)?;
    if !env.tether_only(test) {
        return None;
    }
    env.run("anchor").detach().run(&["sh", "-c", LOOP]).expect_ok();
    env.ctr.wait_status("anchor", "RUNNING", secs(10));
    let shim = ShimClient::for_task(&env, "anchor");
    Some((env, shim))
}

/// After the bad requests, the shim serves the anchor as before, and no failed Create of
/// `ids` left a task behind.
fn still_serving(env: &Env, shim: &ShimClient, ids: &[&str]) {
    assert_eq!(env.ctr.status("anchor").as_deref(), Some("RUNNING"));
    env.exec("anchor", "after", &["echo", "still-served"]).expect_ok();
    for id in ids {
        let state = api::StateRequest { id: id.to_string(), ..Default::default() };
        expect("a failed create leaves no task", shim.call::<api::StateResponse>("State", &state), Code::NOT_FOUND, id);
    }
}

/// Create: the bundle, its config, its rootfs, its process, its stdio, its id.
fn bad_creates_are_invalid_arguments(case: Case) {
    let Some((env, shim)) = anchored("bad_creates_are_invalid_arguments", case) else { return };
    let call_create = |req: &api::CreateTaskRequest| shim.call::<api::CreateTaskResponse>("Create", req);
    let missing = env.work().join("no-such-bundle");
    expect("missing bundle", call_create(&create(&env, "b1", &missing, vec![])), Code::INVALID_ARGUMENT, "config.json");
    expect(
        "empty bundle path",
        call_create(&create(&env, "b1", Path::new(""), vec![])),
        Code::INVALID_ARGUMENT,
        "bundle",
    );
    let garbled = bundle(&env, "garbled", |_| {});
    fs::write(garbled.join("config.json"), "{\"ociVersion\": ").unwrap();
    expect(
        "config.json that does not parse",
        call_create(&create(&env, "b2", &garbled, vec![])),
        Code::INVALID_ARGUMENT,
        "does not parse",
    );
    let no_root = bundle(&env, "no-root", |_| {});
    fs::remove_dir(no_root.join("rootfs")).unwrap();
    expect("rootfs dir missing", call_create(&create(&env, "b3", &no_root, vec![])), Code::INVALID_ARGUMENT, "rootfs");
    let b4 = bundle(&env, "bad-mount", |_| {});
    let gone = env.work().join("no-such-rootfs");
    expect(
        "rootfs mount source missing",
        call_create(&create(&env, "b4", &b4, vec![rootfs_mount(&gone)])),
        Code::INVALID_ARGUMENT,
        "does not exist",
    );
    let b5 = bundle(&env, "no-binary", |s| s["process"]["args"] = serde_json::json!(["/no/such/binary"]));
    expect(
        "binary missing in the container",
        call_create(&create(&env, "b5", &b5, vec![rootfs_mount(&env.rootfs)])),
        Code::INVALID_ARGUMENT,
        "/no/such/binary",
    );
    let b6 = bundle(&env, "bad-stdio", |_| {});
    let mut req = create(&env, "b6", &b6, vec![rootfs_mount(&env.rootfs)]);
    req.stdout = env.work().join("no-such-dir/stdout").display().to_string();
    expect("stdio path that cannot be opened", call_create(&req), Code::INVALID_ARGUMENT, "stdout");
    expect("empty id", call_create(&create(&env, "", &b6, vec![])), Code::INVALID_ARGUMENT, "invalid id");
    expect(
        "path traversal in the id",
        call_create(&create(&env, "../x", &b6, vec![])),
        Code::INVALID_ARGUMENT,
        "invalid id",
    );
    let anchor_bundle = env.containerd.bundle(&env.ns, "anchor");
    expect(
        "duplicate id",
        call_create(&create(&env, "anchor", &anchor_bundle, vec![])),
        Code::ALREADY_EXISTS,
        "anchor",
    );
    for dir in [&b4, &b5, &b6] {
        assert!(mounted_below(dir).is_empty(), "a failed create left mounts: {:?}", mounted_below(dir));
    }
    still_serving(&env, &shim, &["b1", "b2", "b3", "b4", "b5", "b6"]);
}

/// Exec ids, unknown processes, wrong states.
fn bad_process_requests_get_clear_codes(case: Case) {
    let Some((env, shim)) = anchored("bad_process_requests_get_clear_codes", case) else { return };
    shim.call::<Empty>("Exec", &exec_request("anchor", "e1", &["sleep", "1000"])).unwrap();
    shim.call::<api::StartResponse>(
        "Start",
        &api::StartRequest { id: "anchor".into(), exec_id: "e1".into(), ..Default::default() },
    )
    .unwrap();
    expect(
        "duplicate exec id",
        shim.call::<Empty>("Exec", &exec_request("anchor", "e1", &["true"])),
        Code::ALREADY_EXISTS,
        "e1",
    );
    expect(
        "exec id with a slash",
        shim.call::<Empty>("Exec", &exec_request("anchor", "a/b", &["true"])),
        Code::INVALID_ARGUMENT,
        "invalid id",
    );
    let unknown =
        || api::KillRequest { id: "anchor".into(), exec_id: "nosuch".into(), signal: 9, ..Default::default() };
    expect("kill of an unknown exec", shim.call::<Empty>("Kill", &unknown()), Code::NOT_FOUND, "nosuch");
    let resize = |exec_id: &str| api::ResizePtyRequest {
        id: "anchor".into(),
        exec_id: exec_id.into(),
        width: 80,
        height: 25,
        ..Default::default()
    };
    expect("resize of an unknown exec", shim.call::<Empty>("ResizePty", &resize("nosuch")), Code::NOT_FOUND, "nosuch");
    let close =
        api::CloseIORequest { id: "anchor".into(), exec_id: "nosuch".into(), stdin: true, ..Default::default() };
    expect("close-io of an unknown exec", shim.call::<Empty>("CloseIO", &close), Code::NOT_FOUND, "nosuch");
    expect(
        "resize of a process without a terminal",
        shim.call::<Empty>("ResizePty", &resize("")),
        Code::FAILED_PRECONDITION,
        "terminal",
    );
    let start = api::StartRequest { id: "anchor".into(), ..Default::default() };
    expect(
        "start twice",
        shim.call::<api::StartResponse>("Start", &start),
        Code::FAILED_PRECONDITION,
        "cannot start a running container",
    );
    let delete = api::DeleteRequest { id: "anchor".into(), ..Default::default() };
    expect(
        "delete of a running task",
        shim.call::<api::DeleteResponse>("Delete", &delete),
        Code::FAILED_PRECONDITION,
        "running",
    );
    let state = api::StateRequest { id: "nosuch".into(), ..Default::default() };
    expect("state of an unknown task", shim.call::<api::StateResponse>("State", &state), Code::NOT_FOUND, "nosuch");
    let unwritable = CheckpointOptions { image_path: "/proc/tether-cannot-write/image".into(), ..Default::default() };
    expect(
        "checkpoint to a path that is not writable",
        shim.checkpoint("anchor", &unwritable),
        Code::INVALID_ARGUMENT,
        "/proc/tether-cannot-write",
    );
    still_serving(&env, &shim, &[]);
}

/// Inputs that once panicked the shim, and with it every container it serves.
fn inputs_that_once_panicked_the_shim_are_refused(case: Case) {
    let Some((env, shim)) = anchored("inputs_that_once_panicked_the_shim_are_refused", case) else { return };
    let call_create = |req: &api::CreateTaskRequest| shim.call::<api::CreateTaskResponse>("Create", req);
    let b7 = bundle(&env, "bad-logger-uri", |_| {});
    let mut req = create(&env, "b7", &b7, vec![rootfs_mount(&env.rootfs)]);
    req.stdout = "binary:///bin/true?tag=%\u{e9}t\u{e9}".into();
    req.stderr = req.stdout.clone();
    expect("a % escape before a multi-byte character", call_create(&req), Code::INVALID_ARGUMENT, "hex digits");
    expect(
        "an Update whose CPU list spans all of u32",
        shim.update("anchor", r#"{"cpu":{"cpus":"0-4294967295"}}"#),
        Code::INVALID_ARGUMENT,
        "cpu.cpus",
    );
    let long = "e".repeat(253);
    expect(
        "an exec id too long to name its spec file",
        shim.call::<Empty>("Exec", &exec_request("anchor", &long, &["true"])),
        Code::INVALID_ARGUMENT,
        "invalid id",
    );
    expect(
        "a container id too long to name files",
        call_create(&create(&env, &long, &b7, vec![rootfs_mount(&env.rootfs)])),
        Code::INVALID_ARGUMENT,
        "invalid id",
    );
    assert!(mounted_below(&b7).is_empty(), "a failed create left mounts: {:?}", mounted_below(&b7));
    still_serving(&env, &shim, &["b7"]);
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

fn shim_socket_and_state_are_root_only(case: Case) {
    let Some(env) = Env::for_case("root_only", case) else { return };
    if !env.tether_only("shim_socket_and_state_are_root_only") {
        return;
    }
    env.run("c1").detach().no_options().run(&["sh", "-c", LOOP]).expect_ok();
    env.ctr.wait_status("c1", "RUNNING", secs(10));
    let address = fs::read_to_string(env.containerd.bundle(&env.ns, "c1").join("address")).unwrap();
    let socket = PathBuf::from(address.trim().trim_start_matches("unix://"));
    assert_eq!(mode_of(&socket), 0o600, "the shim socket {} is root's alone", socket.display());
    // The runtime's state (default root) and everything tether created on the way to it.
    for dir in [PathBuf::from("/run/tether"), Path::new("/run/tether").join(&env.ns)] {
        assert_eq!(mode_of(&dir) & 0o077, 0, "{} is not open to others ({:o})", dir.display(), mode_of(&dir));
    }
    env.ctr.kill("c1", "SIGKILL", false).expect_ok();
    env.ctr.wait_status("c1", "STOPPED", secs(10));
    assert_eq!(env.ctr.rm_task("c1"), 137);
}
