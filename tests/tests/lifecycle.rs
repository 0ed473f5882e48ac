//! Task lifecycle through `ctr`: run -d, ls, exec, ps, pause/resume, kill, rm; foreground runs
//! with output and exit status; stdin; large output; error answers; event order.

use tether_tests::env::{children_of, pid_alive, pid_exists, Env};
use tether_tests::Case;
use tether_tests::{secs, wait_until};

tether_tests::for_each_executor!(
    detached_task_lifecycle,
    foreground_run_output_and_exit_status,
    large_output_is_not_truncated,
    stdin_is_forwarded_and_closed,
    kill_all_signals_every_process,
    init_exit_ends_its_container_without_a_pid_namespace_of_its_own,
    error_answers,
    events_are_published_in_order,
);

const LOOP_UNTIL_TERM: &str = "trap 'exit 7' TERM; while :; do sleep 0.1; done";

fn detached_task_lifecycle(case: Case) {
    let Some(env) = Env::for_case("detached_task_lifecycle", case) else { return };
    let ctr = &env.ctr;

    env.run("c1").detach().run(&["sh", "-c", LOOP_UNTIL_TERM]).expect_ok();
    let task = ctr.wait_status("c1", "RUNNING", secs(10));
    assert!(task.pid > 1, "task ls shows a host pid: {task:?}");
    assert!(pid_exists(task.pid), "init pid {} exists on the host", task.pid);
    assert!(ctr.containers().contains(&"c1".to_owned()));

    // exec: stdout, stderr and the exit status come back through ctr.
    let out = env.exec("c1", "e1", &["sh", "-c", "echo from-exec; echo to-stderr >&2; exit 4"]);
    out.expect_code(4);
    assert_eq!(out.stdout_lines(), ["from-exec"], "{out}");
    assert!(out.stderr.contains("to-stderr"), "{out}");
    // The exec runs inside the container: it sees the init as pid 1.
    let out = env.exec("c1", "e2", &["cat", "/proc/1/cmdline"]);
    out.expect_ok();
    assert!(out.stdout.contains("trap"), "pid 1 in the container is the init: {out}");

    // ps: the init and a running exec, listed with its exec id.
    env.ctr.run(&ctr.exec_args(&["--detach"], "c1", "long-exec", &["sleep", "1000"])).expect_ok();
    let rows = wait_until(secs(10), || {
        let rows = ctr.ps("c1");
        rows.iter().any(|r| r.info.contains("long-exec")).then_some(rows)
    })
    .unwrap_or_else(|| panic!("ps never listed exec long-exec: {:?}", ctr.ps("c1")));
    assert!(rows.iter().any(|r| r.pid == task.pid), "ps lists the init pid {}: {rows:?}", task.pid);
    let exec_pid = rows.iter().find(|r| r.info.contains("long-exec")).unwrap().pid;
    assert_ne!(exec_pid, task.pid);
    assert!(pid_exists(exec_pid));
    // Kill just the exec.
    ctr.run(&["task", "kill", "--exec-id", "long-exec", "-s", "SIGKILL", "c1"]).expect_ok();
    wait_until(secs(10), || (!ctr.ps("c1").iter().any(|r| r.pid == exec_pid)).then_some(()))
        .unwrap_or_else(|| panic!("killed exec still in ps: {:?}", ctr.ps("c1")));
    assert!(
        wait_until(secs(10), || (!pid_exists(exec_pid)).then_some(())).is_some(),
        "the killed exec {exec_pid} was reaped (no zombie left)"
    );
    assert_eq!(ctr.status("c1").as_deref(), Some("RUNNING"), "killing an exec leaves the task running");

    // pause / resume.
    ctr.run(&["task", "pause", "c1"]).expect_ok();
    ctr.wait_status("c1", "PAUSED", secs(10));
    ctr.run(&["task", "resume", "c1"]).expect_ok();
    ctr.wait_status("c1", "RUNNING", secs(10));
    env.exec("c1", "e3", &["true"]).expect_ok();

    // kill (SIGTERM by default): the trap exits 7, and that status is what delete reports.
    ctr.run(&["task", "kill", "c1"]).expect_ok();
    let stopped = ctr.wait_status("c1", "STOPPED", secs(10));
    assert_eq!(stopped.pid, task.pid, "a stopped task keeps its pid in ls");
    assert!(
        wait_until(secs(10), || (!pid_exists(task.pid)).then_some(())).is_some(),
        "the init was reaped (no zombie left)"
    );
    assert_eq!(ctr.rm_task("c1"), 7, "exit status of the init");
    assert!(ctr.task("c1").is_none());
    ctr.rm_container("c1").expect_ok();
    assert!(!ctr.containers().contains(&"c1".to_owned()));
}

fn foreground_run_output_and_exit_status(case: Case) {
    let Some(env) = Env::for_case("foreground_run", case) else { return };
    let out = env.run("f1").rm().run(&["sh", "-c", "echo hi; echo err >&2; exit 3"]);
    out.expect_code(3);
    assert_eq!(out.stdout, "hi\n", "{out}");
    assert!(out.stderr.contains("err"), "{out}");

    env.run("f2").rm().run(&["true"]).expect_ok();
    env.run("f3").rm().run(&["false"]).expect_code(1);
    env.run("f4").rm().run(&["sh", "-c", "exit 255"]).expect_code(255);

    // Without --rm the foreground run deletes the task (not the container).
    env.run("f5").run(&["sh", "-c", "exit 0"]).expect_ok();
    assert!(env.ctr.task("f5").is_none(), "ctr run deleted the task after it exited");
    assert!(env.ctr.containers().contains(&"f5".to_owned()));
    // The container can be run again from its spec by starting a new task.
    let out = env.ctr.run(&["task", "start", "--fifo-dir", &env.ctr.fifo_dir.display().to_string(), "f5"]);
    out.expect_ok();
    env.ctr.rm_container("f5").expect_ok();
    assert!(env.ctr.containers().is_empty(), "--rm removed the others: {:?}", env.ctr.containers());
}

fn large_output_is_not_truncated(case: Case) {
    let Some(env) = Env::for_case("large_output", case) else { return };
    let expected: String = (1..=100_000).map(|i| format!("{i}\n")).collect();

    // Init process: every byte written before the exit arrives before ctr sees the exit.
    let out = env.run("big").rm().timeout(secs(90)).run(&["sh", "-c", "seq 1 100000; exit 5"]);
    out.expect_code(5);
    assert_eq!(out.stdout.len(), expected.len(), "stdout length ({} lines)", out.stdout.lines().count());
    assert!(out.stdout == expected, "stdout content differs");

    // stderr too.
    let out = env.run("big-err").rm().timeout(secs(90)).run(&["sh", "-c", "seq 1 100000 >&2"]);
    out.expect_ok();
    assert!(out.stderr.contains(&expected), "all of stderr arrived ({} bytes)", out.stderr.len());

    // An exec.
    env.run("c1").detach().run(&["sleep", "1000"]).expect_ok();
    env.ctr.wait_status("c1", "RUNNING", secs(10));
    let out = env.ctr.run_for(&env.ctr.exec_args(&[], "c1", "seq", &["seq", "1", "100000"]), secs(90));
    out.expect_ok();
    assert!(out.stdout == expected, "exec stdout: {} bytes of {}", out.stdout.len(), expected.len());
}

fn stdin_is_forwarded_and_closed(case: Case) {
    let Some(env) = Env::for_case("stdin", case) else { return };
    let script = "while read line; do echo \"got:$line\"; done; echo '<eof>'";

    // Init: data typed while it runs reaches it; closing ctr's stdin closes the task's.
    let mut run = env.run("s1").rm().spawn(&["sh", "-c", script]);
    run.write_stdin(b"hello stdin\n");
    assert!(run.wait_for_stdout("got:hello stdin", secs(15)), "echo of stdin: {}", run.stdout_so_far());
    run.write_stdin(b"second line\n");
    assert!(run.wait_for_stdout("got:second line", secs(15)), "second line: {}", run.stdout_so_far());
    run.close_stdin();
    let out = run.finish(secs(15));
    out.expect_ok();
    assert!(out.stdout.ends_with("<eof>\n"), "EOF reached the task after CloseIO: {out}");

    // A megabyte through stdin, all of it counted.
    let data = vec![b'x'; 1 << 20];
    let args = env.run("s2").rm().args(&["wc", "-c"]);
    let out = env.ctr.run_input(&args, &data);
    out.expect_ok();
    assert_eq!(out.stdout.trim(), (1 << 20).to_string(), "{out}");

    // An exec's stdin.
    env.run("c1").detach().run(&["sleep", "1000"]).expect_ok();
    env.ctr.wait_status("c1", "RUNNING", secs(10));
    let mut exec = env.ctr.spawn(&env.ctr.exec_args(&[], "c1", "reader", &["sh", "-c", script]));
    exec.write_stdin(b"to exec\n");
    assert!(exec.wait_for_stdout("got:to exec", secs(15)), "exec echo: {}", exec.stdout_so_far());
    exec.close_stdin();
    let out = exec.finish(secs(15));
    out.expect_ok();
    assert!(out.stdout.ends_with("<eof>\n"), "exec saw EOF: {out}");
}

fn kill_all_signals_every_process(case: Case) {
    let Some(env) = Env::for_case("kill_all", case) else { return };
    let ctr = &env.ctr;
    // An init that ignores SIGTERM, with two children.
    env.run("k1").detach().run(&["sh", "-c", "trap '' TERM; sleep 1000 & sleep 1000 & wait; wait"]).expect_ok();
    let task = ctr.wait_status("k1", "RUNNING", secs(10));
    let pids = wait_until(secs(10), || {
        let rows = ctr.ps("k1");
        (rows.len() >= 3).then_some(rows)
    })
    .unwrap_or_else(|| panic!("ps shows the init and two children: {:?}", ctr.ps("k1")));

    ctr.kill("k1", "SIGKILL", true).expect_ok();
    ctr.wait_status("k1", "STOPPED", secs(10));
    for row in &pids {
        assert!(
            wait_until(secs(10), || (!pid_exists(row.pid)).then_some(())).is_some(),
            "pid {} of the container is gone and reaped",
            row.pid
        );
    }
    assert!(!pid_exists(task.pid));
    assert_eq!(ctr.rm_task("k1"), 137);
}

/// A container that joins another's PID namespace (as in a Kubernetes pod with
/// shareProcessNamespace) has no kernel to end its other processes when its init exits: the
/// shim kills what is left in its cgroup before it reports the exit, as containerd's Go shim
/// does. A worker left behind would hold the container's output open, and containerd 2.x
/// waits for that output to close. Kill with `all` still works on the exited container.
fn init_exit_ends_its_container_without_a_pid_namespace_of_its_own(case: Case) {
    let Some(env) = Env::for_case("pid_namespace_joined", case) else { return };
    let ctr = &env.ctr;
    env.run("pod").detach().run(&["sleep", "1000"]).expect_ok();
    let pod = ctr.wait_status("pod", "RUNNING", secs(10));
    env.run("c1")
        .detach()
        .flag("--with-ns")
        .flag(&format!("pid:/proc/{}/ns/pid", pod.pid))
        .run(&["sh", "-c", "sleep 1001 & while [ ! -e /tmp/go-c1 ]; do sleep 0.05; done; exit 3"])
        .expect_ok();
    let init = ctr.wait_status("c1", "RUNNING", secs(10)).pid;
    let is_worker =
        |pid: &u32| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\x001001"));
    let worker = wait_until(secs(10), || children_of(init).into_iter().find(is_worker))
        .unwrap_or_else(|| panic!("no worker under c1's init {init}"));

    std::fs::write(env.rootfs.join("tmp/go-c1"), "").unwrap();
    ctr.wait_status("c1", "STOPPED", secs(10));
    assert!(!pid_alive(worker), "the worker {worker} was killed before c1's exit was reported");
    assert!(pid_alive(pod.pid), "the namespace's own init {} lives on", pod.pid);
    ctr.kill("c1", "SIGKILL", true).expect_ok();
    assert_eq!(ctr.rm_task("c1"), 3);
    ctr.kill("pod", "SIGKILL", false).expect_ok();
    ctr.wait_status("pod", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("pod"), 137);
}

fn error_answers(case: Case) {
    let Some(env) = Env::for_case("error_answers", case) else { return };
    let ctr = &env.ctr;

    // Unknown container.
    ctr.exec("nosuch", "x", &["true"]).expect_failure().expect_stderr("not found");
    ctr.run(&["task", "kill", "nosuch"]).expect_failure().expect_stderr("not found");

    env.run("c1").detach().run(&["sleep", "1000"]).expect_ok();
    ctr.wait_status("c1", "RUNNING", secs(10));

    // Duplicate container id.
    env.run("c1").detach().run(&["true"]).expect_failure().expect_stderr("already exists");
    // Duplicate exec id.
    ctr.run(&ctr.exec_args(&["--detach"], "c1", "dup", &["sleep", "1000"])).expect_ok();
    ctr.exec("c1", "dup", &["true"]).expect_failure().expect_stderr("already exists");
    // Unknown exec id.
    ctr.run(&["task", "kill", "--exec-id", "nosuch", "c1"]).expect_failure().expect_stderr("not found");
    // An exec whose binary does not exist fails, and the shim carries on.
    ctr.exec("c1", "bad", &["/no/such/binary"]).expect_failure();
    assert_eq!(ctr.status("c1").as_deref(), Some("RUNNING"));
    env.exec("c1", "after-bad", &["echo", "still-here"]).expect_ok();

    // Wrong states.
    env.expect_wrong_state(&ctr.run(&["task", "resume", "c1"]), "cannot resume a running process");
    ctr.run(&["task", "pause", "c1"]).expect_ok();
    ctr.wait_status("c1", "PAUSED", secs(10));
    env.expect_wrong_state(&ctr.run(&["task", "pause", "c1"]), "cannot pause a paused container");
    env.expect_wrong_state(&ctr.exec("c1", "in-paused", &["true"]), "cannot exec in a paused state");
    ctr.run(&["task", "resume", "c1"]).expect_ok();
    ctr.wait_status("c1", "RUNNING", secs(10));
    // containerd itself refuses to delete a running task.
    ctr.run(&["task", "rm", "c1"]).expect_failure().expect_stderr("failed precondition");

    ctr.kill("c1", "SIGKILL", false).expect_ok();
    ctr.wait_status("c1", "STOPPED", secs(10));
    // No exec once the init has exited.
    env.expect_wrong_state(&ctr.exec("c1", "late", &["true"]), "cannot exec in a stopped state");
    env.expect_wrong_state(&ctr.run(&["task", "pause", "c1"]), "cannot pause a stopped container");
    // Killing an exited process is NotFound (the CRI plugin relies on that to ignore it).
    ctr.kill("c1", "SIGKILL", false).expect_failure().expect_stderr("not found");
    // ps of a stopped task is an empty list.
    assert_eq!(ctr.ps("c1"), [], "no process is left in a stopped task");
    assert_eq!(ctr.rm_task("c1"), 137);
    // Gone: everything is NotFound now.
    ctr.run(&["task", "rm", "c1"]).expect_failure().expect_stderr("not found");
}

fn events_are_published_in_order(case: Case) {
    let Some(env) = Env::for_case("events_order", case) else { return };
    let ctr = &env.ctr;
    let events = ctr.subscribe();

    env.run("c1").detach().run(&["sleep", "1000"]).expect_ok();
    let task = ctr.wait_status("c1", "RUNNING", secs(10));
    env.exec("c1", "e1", &["sh", "-c", "exit 2"]).expect_code(2);
    ctr.run(&ctr.exec_args(&["--detach"], "c1", "e2", &["sleep", "1000"])).expect_ok();
    ctr.run(&["task", "pause", "c1"]).expect_ok();
    ctr.wait_status("c1", "PAUSED", secs(10));
    ctr.run(&["task", "resume", "c1"]).expect_ok();
    ctr.wait_status("c1", "RUNNING", secs(10));
    // Killing the init ends the exec too (same pid namespace).
    ctr.kill("c1", "SIGKILL", false).expect_ok();
    ctr.wait_status("c1", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("c1"), 137);

    let seen = events.wait_for("c1", secs(15), |evs| evs.iter().any(|e| e.topic == "/tasks/delete"));
    let topics: Vec<String> = seen
        .iter()
        .map(|e| {
            let who = [e.str("exec_id"), e.str("id")].into_iter().find(|s| !s.is_empty()).unwrap_or("");
            format!("{}[{}]", e.topic, who)
        })
        .collect();
    let pos = |topic: &str, who: &str| -> usize {
        seen.iter()
            .position(|e| e.topic == topic && (who.is_empty() || e.str("exec_id") == who || e.str("id") == who))
            .unwrap_or_else(|| panic!("no {topic} for {who:?} in {topics:?}"))
    };
    let order = [
        pos("/tasks/create", ""),
        pos("/tasks/start", ""),
        pos("/tasks/exec-added", "e1"),
        pos("/tasks/exec-started", "e1"),
        pos("/tasks/exit", "e1"),
        pos("/tasks/exec-added", "e2"),
        pos("/tasks/exec-started", "e2"),
        pos("/tasks/paused", ""),
        pos("/tasks/resumed", ""),
        pos("/tasks/exit", "e2"),
        pos("/tasks/exit", "c1"),
        pos("/tasks/delete", ""),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "event order {order:?} in {topics:?}");

    let create = &seen[order[0]];
    assert_eq!(create.payload["pid"].as_u64(), Some(task.pid as u64), "create carries the init pid");
    assert_eq!(seen[order[4]].exit_status(), 2, "exec e1 exit status");
    assert_eq!(seen[order[10]].exit_status(), 137, "init exit status");
    assert_eq!(seen[order[11]].exit_status(), 137, "delete carries the exit status");
    let exits = seen.iter().filter(|e| e.topic == "/tasks/exit").count();
    assert_eq!(exits, 3, "one exit per process: {topics:?}");
}
