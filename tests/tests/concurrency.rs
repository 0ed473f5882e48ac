//! Delete, Exec, Stats, Kill and Wait on one task at the same time, from separate
//! connections, as containerd and the kubelet make them: every call returns, none deadlocks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use tether_protos::{api, protobuf::well_known_types::empty::Empty, ttrpc::Code};
use tether_tests::env::Env;
use tether_tests::secs;
use tether_tests::shim::{code_of, exec_request, ShimClient};
use tether_tests::Case;

/// One call a looping thread makes on the shim.
type Call = dyn Fn(&ShimClient) -> Result<(), String> + Send;

tether_tests::for_each_executor!(concurrent_calls_on_one_task_never_deadlock,);

/// How long the whole hammering may take before it counts as a deadlock.
const DEADLINE: Duration = Duration::from_secs(120);
const EXECS: usize = 30;

fn concurrent_calls_on_one_task_never_deadlock(case: Case) {
    let Some(env) = Env::for_case("concurrency", case) else { return };
    let env = Arc::new(env);
    // The Go shim answers a Delete of a running task with Unknown, not FailedPrecondition.
    if !env.tether_only("concurrent_calls_on_one_task_never_deadlock") {
        return;
    }
    env.run("c1").detach().run(&["sh", "-c", "while :; do sleep 0.1; done"]).expect_ok();
    env.ctr.wait_status("c1", "RUNNING", secs(10));

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = mpsc::channel::<(&'static str, Result<(), String>)>();
    let spawn = |name: &'static str, body: Box<dyn FnOnce(ShimClient) -> Result<(), String> + Send>| {
        let shim = ShimClient::for_task(&env, "c1");
        let tx = done_tx.clone();
        thread::spawn(move || {
            let _ = tx.send((name, body(shim)));
        });
    };
    let looping = |stop: &Arc<AtomicBool>, calls: &Arc<AtomicUsize>, f: Box<Call>| {
        let (stop, calls) = (stop.clone(), calls.clone());
        Box::new(move |shim: ShimClient| {
            while !stop.load(Ordering::Relaxed) {
                f(&shim)?;
                calls.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }) as Box<dyn FnOnce(ShimClient) -> Result<(), String> + Send>
    };

    // Execs that run and are waited for and deleted, one after another.
    let exec_calls = calls.clone();
    spawn(
        "exec",
        Box::new(move |shim| {
            for i in 0..EXECS {
                let id = format!("e{i}");
                shim.call::<Empty>("Exec", &exec_request("c1", &id, &["true"]))
                    .map_err(|e| format!("exec {id}: {e}"))?;
                let start = api::StartRequest { id: "c1".into(), exec_id: id.clone(), ..Default::default() };
                shim.call::<api::StartResponse>("Start", &start).map_err(|e| format!("start {id}: {e}"))?;
                let wait = api::WaitRequest { id: "c1".into(), exec_id: id.clone(), ..Default::default() };
                let exit = shim.call::<api::WaitResponse>("Wait", &wait).map_err(|e| format!("wait {id}: {e}"))?;
                if exit.exit_status != 0 {
                    return Err(format!("exec {id} exited {}", exit.exit_status));
                }
                let delete = api::DeleteRequest { id: "c1".into(), exec_id: id.clone(), ..Default::default() };
                shim.call::<api::DeleteResponse>("Delete", &delete).map_err(|e| format!("delete {id}: {e}"))?;
                exec_calls.fetch_add(4, Ordering::Relaxed);
            }
            Ok(())
        }),
    );
    spawn(
        "stats",
        looping(&stop, &calls, Box::new(|shim| shim.stats("c1").map(drop).map_err(|e| format!("stats: {e}")))),
    );
    spawn(
        "kill",
        looping(
            &stop,
            &calls,
            Box::new(|shim| {
                // SIGWINCH: delivered, and ignored by the shell.
                let kill = api::KillRequest { id: "c1".into(), signal: 28, ..Default::default() };
                shim.call::<Empty>("Kill", &kill).map(drop).map_err(|e| format!("kill: {e}"))
            }),
        ),
    );
    spawn(
        "delete",
        looping(
            &stop,
            &calls,
            Box::new(|shim| {
                let delete = api::DeleteRequest { id: "c1".into(), ..Default::default() };
                match shim.call::<api::DeleteResponse>("Delete", &delete) {
                    Err(e) if code_of(&e) == Code::FAILED_PRECONDITION => Ok(()),
                    other => Err(format!("delete of the running task: {other:?}")),
                }
            }),
        ),
    );
    spawn(
        "wait",
        Box::new(|shim| {
            let wait = api::WaitRequest { id: "c1".into(), ..Default::default() };
            let exit = shim.call::<api::WaitResponse>("Wait", &wait).map_err(|e| format!("wait: {e}"))?;
            (exit.exit_status == 137).then_some(()).ok_or(format!("init exited {}", exit.exit_status))
        }),
    );
    drop(done_tx);

    let mut finished = Vec::new();
    let first = done_rx.recv_timeout(DEADLINE).expect("no call finished: deadlock");
    finished.push(first);
    assert_eq!(finished[0].0, "exec", "the exec thread ends first: {:?}", finished[0]);
    stop.store(true, Ordering::Relaxed);
    for _ in 0..3 {
        finished.push(done_rx.recv_timeout(DEADLINE).expect("a looping caller hangs: deadlock"));
    }
    // The init goes; the waiter returns with its status.
    env.ctr.kill("c1", "SIGKILL", false).expect_ok();
    finished.push(done_rx.recv_timeout(DEADLINE).expect("Wait never returned"));
    for (name, result) in &finished {
        assert!(result.is_ok(), "{name}: {result:?}");
    }
    println!("{} calls made concurrently with {EXECS} execs", calls.load(Ordering::Relaxed));
    assert_eq!(env.ctr.rm_task("c1"), 137);
}
