//! Terminals and log URIs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use tether_protos::{api, protobuf::well_known_types::empty::Empty};
use tether_tests::env::Env;
use tether_tests::shim::{exec_request, ShimClient};
use tether_tests::Case;
use tether_tests::{secs, wait_until};

tether_tests::for_each_executor!(
    tty_run_and_resize,
    tty_exec_and_resize,
    log_uri_file,
    log_uri_binary,
    detached_output_waits_for_a_reader,
    output_of_an_exited_process_waits_for_a_late_reader,
    stdin_survives_detach_and_reattach,
);

/// Prints "tty-yes" if stdin is a terminal, then the terminal size once it is `want` (ctr
/// resizes the pty just after the task started, so poll briefly), then exits 6.
fn tty_probe(want: &str) -> String {
    format!(
        "[ -t 0 ] && [ -t 1 ] && echo tty-yes; \
         for i in $(seq 1 100); do s=$(stty size 2>/dev/null); [ \"$s\" = \"{want}\" ] && break; sleep 0.05; done; \
         echo \"size=$s\"; exit 6"
    )
}

fn tty_run_and_resize(case: Case) {
    let Some(env) = Env::for_case("tty_run", case) else { return };
    let out = env.run("t1").rm().tty().run_on_tty(&["sh", "-c", &tty_probe("45 123")], 123, 45);
    out.expect_code(6);
    let lines = out.stdout_lines();
    assert!(lines.iter().any(|l| l == "tty-yes"), "the init has a terminal: {out}");
    assert!(lines.iter().any(|l| l == "size=45 123"), "ResizePty reached the pty: {out}");
}

fn tty_exec_and_resize(case: Case) {
    let Some(env) = Env::for_case("tty_exec", case) else { return };
    env.run("c1").detach().run(&["sleep", "1000"]).expect_ok();
    env.ctr.wait_status("c1", "RUNNING", secs(10));
    let args = env.ctr.exec_args(&["--tty"], "c1", "tty-exec", &["sh", "-c", &tty_probe("30 100")]);
    let out = env.ctr.run_on_tty(&args, 100, 30);
    out.expect_code(6);
    let lines = out.stdout_lines();
    assert!(lines.iter().any(|l| l == "tty-yes"), "the exec has a terminal: {out}");
    assert!(lines.iter().any(|l| l == "size=30 100"), "ResizePty reached the exec's pty: {out}");
    // A non-tty exec next to it still gets pipes.
    let out = env.exec("c1", "plain", &["sh", "-c", "[ -t 1 ] && echo tty || echo no-tty"]);
    out.expect_ok();
    assert_eq!(out.stdout, "no-tty\n");
}

/// Waits until `path` exists and satisfies `pred`; returns its contents.
fn wait_file(path: &Path, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    wait_until(timeout, || {
        last = fs::read_to_string(path).unwrap_or_default();
        pred(&last).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("{} never matched; contents: {last:?}", path.display()))
}

fn log_uri_file(case: Case) {
    let Some(env) = Env::for_case("log_uri_file", case) else { return };
    let log = env.work().join("c1.log");
    let out = env.run("c1").rm().log_uri(&format!("file://{}", log.display())).run(&[
        "sh",
        "-c",
        "echo out1; echo err1 >&2; exit 2",
    ]);
    out.expect_code(2);
    assert_eq!(out.stdout, "", "output went to the file, not to ctr");
    let text = wait_file(&log, secs(5), |t| t.contains("out1") && t.contains("err1"));
    assert_eq!(text.lines().count(), 2, "{text:?}");

    // A detached task's output, all of it.
    let log2 = env.work().join("c2.log");
    env.run("c2").detach().log_uri(&format!("file://{}", log2.display())).run(&["seq", "1", "50000"]).expect_ok();
    env.ctr.wait_status("c2", "STOPPED", secs(20));
    let text = wait_file(&log2, secs(10), |t| t.ends_with("50000\n"));
    let expected: String = (1..=50000).map(|i| format!("{i}\n")).collect();
    assert!(text == expected, "file log has all 50000 lines ({} bytes)", text.len());
    assert_eq!(env.ctr.rm_task("c2"), 0);
}

fn log_uri_binary(case: Case) {
    let Some(env) = Env::for_case("log_uri_binary", case) else { return };
    let dir = env.work().join("binlog");
    fs::create_dir_all(&dir).unwrap();
    // The binary logging protocol: fd 3 = the task's stdout, fd 4 = stderr, fd 5 = a pipe the
    // logger closes when it is ready; CONTAINER_ID / CONTAINER_NAMESPACE in the environment;
    // the URI's query (?dir=X) arrives as arguments ("dir X").
    let logger = env.work().join("logger.sh");
    fs::write(
        &logger,
        "#!/bin/sh\n\
         while [ $# -gt 1 ]; do [ \"$1\" = dir ] && d=\"$2\"; shift 2; done\n\
         echo \"$CONTAINER_NAMESPACE/$CONTAINER_ID\" > \"$d/meta\"\n\
         cat <&3 >\"$d/stdout\" 5>&- &\n\
         cat <&4 >\"$d/stderr\" 5>&- &\n\
         exec 5>&-\n\
         wait\n",
    )
    .unwrap();
    fs::set_permissions(&logger, fs::Permissions::from_mode(0o755)).unwrap();

    let uri = format!("binary://{}?dir={}", logger.display(), dir.display());
    let out = env.run("c1").rm().log_uri(&uri).run(&["sh", "-c", "echo out2; seq 1 20000; echo err2 >&2; exit 0"]);
    out.expect_ok();
    let meta = wait_file(&dir.join("meta"), secs(5), |t| !t.is_empty());
    assert_eq!(meta.trim(), format!("{}/c1", env.ns), "logger environment");
    let stdout = wait_file(&dir.join("stdout"), secs(5), |t| t.ends_with("20000\n"));
    assert!(stdout.starts_with("out2\n1\n2\n"), "{}", &stdout[..stdout.len().min(200)]);
    assert_eq!(stdout.lines().count(), 20001);
    wait_file(&dir.join("stderr"), secs(5), |t| t == "err2\n");
}

fn detached_output_waits_for_a_reader(case: Case) {
    let Some(env) = Env::for_case("detached_output", case) else { return };
    let ctr = &env.ctr;
    // The task writes only once the test creates /tmp/go in the (host-visible) rootfs, after
    // `ctr run -d` has left: nobody reads the stdout FIFO then. The writes must neither fail
    // (no EPIPE/SIGPIPE: the shim holds a read end) nor be dropped; past the pipe buffers
    // they wait until someone attaches. 170 kB is more than a FIFO holds.
    env.run("c1")
        .detach()
        .run(&[
            "sh",
            "-c",
            "while [ ! -e /tmp/go ]; do sleep 0.05; done; echo early; seq 1 30000; echo written > /tmp/flag; \
             trap 'exit 0' TERM; while :; do sleep 0.1; done",
        ])
        .expect_ok();
    let task = ctr.wait_status("c1", "RUNNING", secs(10));
    fs::write(env.rootfs.join("tmp/go"), "").unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(ctr.status("c1").as_deref(), Some("RUNNING"), "the task survives having no reader");
    assert!(tether_tests::env::pid_alive(task.pid));

    let mut attach = ctr.spawn(&["task", "attach", "c1"]);
    assert!(
        attach.wait_for_stdout("\n30000\n", secs(15)),
        "attach got the buffered and held-back output: {} bytes",
        attach.stdout_so_far().len()
    );
    let flag = env.rootfs.join("tmp/flag");
    assert!(wait_until(secs(10), || flag.exists().then_some(())).is_some(), "the writer went on once drained");
    // ctr attach waits for the task, then deletes it.
    ctr.kill("c1", "SIGTERM", false).expect_ok();
    let out = attach.finish(secs(15));
    out.expect_ok();
    let expected: String = std::iter::once("early\n".to_owned()).chain((1..=30000).map(|i| format!("{i}\n"))).collect();
    assert!(
        out.stdout == expected,
        "all output, once, in order ({} bytes of {}; starts {:?})",
        out.stdout.len(),
        expected.len(),
        &out.stdout[..out.stdout.len().min(40)]
    );
    ctr.wait_gone("c1", secs(10));
}

/// A client may open its end of an output FIFO only after the process has exited (containerd's
/// fifo package opens it in the background): what the process wrote must still be there.
fn output_of_an_exited_process_waits_for_a_late_reader(case: Case) {
    let Some(env) = Env::for_case("late_reader", case) else { return };
    if !env.tether_only("output_of_an_exited_process_waits_for_a_late_reader") {
        return;
    }
    env.run("c1").detach().run(&["sh", "-c", "while :; do sleep 0.1; done"]).expect_ok();
    env.ctr.wait_status("c1", "RUNNING", secs(10));
    let shim = ShimClient::for_task(&env, "c1");
    let fifo = env.work().join("late-stdout");
    let path = std::ffi::CString::new(fifo.display().to_string()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo {}", fifo.display());
    let mut req = exec_request("c1", "e1", &["sh", "-c", "echo written-before-exit; seq 1 2000"]);
    req.stdout = fifo.display().to_string();
    shim.call::<Empty>("Exec", &req).unwrap();
    let start = api::StartRequest { id: "c1".into(), exec_id: "e1".into(), ..Default::default() };
    shim.call::<api::StartResponse>("Start", &start).unwrap();
    let wait = api::WaitRequest { id: "c1".into(), exec_id: "e1".into(), ..Default::default() };
    assert_eq!(shim.call::<api::WaitResponse>("Wait", &wait).unwrap().exit_status, 0);

    // Only now does a reader come.
    let reader = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    let mut got = Vec::new();
    let mut reader = std::io::BufReader::new(reader);
    let deadline = std::time::Instant::now() + secs(10);
    let expected: String =
        std::iter::once("written-before-exit\n".to_string()).chain((1..=2000).map(|i| format!("{i}\n"))).collect();
    while got.len() < expected.len() && std::time::Instant::now() < deadline {
        let mut buf = [0u8; 8192];
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("reading the fifo: {e}"),
        }
    }
    assert_eq!(String::from_utf8_lossy(&got), expected, "all the output, for a reader that came after the exit");
    let delete = api::DeleteRequest { id: "c1".into(), exec_id: "e1".into(), ..Default::default() };
    shim.call::<api::DeleteResponse>("Delete", &delete).unwrap();
    env.ctr.kill("c1", "SIGKILL", false).expect_ok();
    env.ctr.wait_status("c1", "STOPPED", secs(10));
    assert_eq!(env.ctr.rm_task("c1"), 137);
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.display().to_string()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

/// Opens `fifo` for writing as an attaching client does, without blocking: retried until the
/// shim holds its read end, for at most `timeout` (a shim that let go of it fails the test
/// instead of hanging it).
fn attach_stdin(fifo: &Path, timeout: Duration) -> fs::File {
    wait_until(timeout, || fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(fifo).ok())
        .unwrap_or_else(|| panic!("no reader on {} within {timeout:?}: the shim let go of stdin", fifo.display()))
}

/// Reads the non-blocking `reader` until what was read ends with `want`, for at most 10 s.
fn read_until(reader: &mut fs::File, got: &mut String, want: &str) {
    let deadline = std::time::Instant::now() + secs(10);
    while !got.ends_with(want) && std::time::Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        match reader.read(&mut buf) {
            Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("reading stdout: {e}"),
        }
    }
    assert!(got.ends_with(want), "stdout {got:?} lacks {want:?}");
}

/// A client that closes its stdin writer without CloseIO has detached, not ended the input:
/// it (or another) may open the FIFO again (`ctr task attach` twice, `kubectl attach` again),
/// and what it writes then reaches the process too. Only CloseIO ends stdin.
fn stdin_survives_detach_and_reattach(case: Case) {
    let Some(env) = Env::for_case("stdin_reattach", case) else { return };
    if !env.tether_only("stdin_survives_detach_and_reattach") {
        return;
    }
    env.run("c1").detach().run(&["sh", "-c", "while :; do sleep 0.1; done"]).expect_ok();
    env.ctr.wait_status("c1", "RUNNING", secs(10));
    let shim = ShimClient::for_task(&env, "c1");
    let (stdin, stdout) = (env.work().join("reattach-stdin"), env.work().join("reattach-stdout"));
    mkfifo(&stdin);
    mkfifo(&stdout);
    let mut reader = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&stdout).unwrap();
    let mut req = exec_request("c1", "e1", &["cat"]);
    req.stdin = stdin.display().to_string();
    req.stdout = stdout.display().to_string();
    shim.call::<Empty>("Exec", &req).unwrap();
    let start = api::StartRequest { id: "c1".into(), exec_id: "e1".into(), ..Default::default() };
    shim.call::<api::StartResponse>("Start", &start).unwrap();

    let mut got = String::new();
    let mut client = attach_stdin(&stdin, secs(5));
    std::io::Write::write_all(&mut client, b"one\n").unwrap();
    drop(client);
    read_until(&mut reader, &mut got, "one\n");
    // Long enough for the shim to see the detach as it would an end of input.
    std::thread::sleep(Duration::from_millis(300));
    let mut client = attach_stdin(&stdin, secs(3));
    std::io::Write::write_all(&mut client, b"two\n").unwrap();
    drop(client);
    read_until(&mut reader, &mut got, "two\n");
    assert_eq!(got, "one\ntwo\n", "everything written before and after the reattach, in order");

    // CloseIO ends it: cat reads EOF and exits 0.
    let close = api::CloseIORequest { id: "c1".into(), exec_id: "e1".into(), stdin: true, ..Default::default() };
    shim.call::<Empty>("CloseIO", &close).unwrap();
    let wait = api::WaitRequest { id: "c1".into(), exec_id: "e1".into(), ..Default::default() };
    assert_eq!(shim.call::<api::WaitResponse>("Wait", &wait).unwrap().exit_status, 0);
    let delete = api::DeleteRequest { id: "c1".into(), exec_id: "e1".into(), ..Default::default() };
    shim.call::<api::DeleteResponse>("Delete", &delete).unwrap();
    env.ctr.kill("c1", "SIGKILL", false).expect_ok();
    env.ctr.wait_status("c1", "STOPPED", secs(10));
    assert_eq!(env.ctr.rm_task("c1"), 137);
}
