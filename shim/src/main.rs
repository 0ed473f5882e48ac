//! `containerd-shim-tether-v2`: the shim containerd starts for each task (or pod) of the
//! runtime type `io.containerd.tether.v2`.

use std::{
    fs::OpenOptions,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use tether_protos::ttrpc;

use tether_shim::{
    cgroup,
    cli::{self, Action},
    debug::DebugService,
    error::{Error, Result},
    events::Publisher,
    idle, launch, logger,
    oom::OomMonitor,
    process::{Runtimes, Table},
    reaper::Reaper,
    rt,
    sandbox::SandboxService,
    service::TaskService,
    signals::Signal,
};

/// The listener `start` hands to `serve`.
const LISTENER_FD: i32 = 3;
/// How long Shutdown and SIGTERM let pending events go out before the shim exits.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    // The native executor's helper is this binary too; it must stay single-threaded, so it
    // branches off before anything else runs.
    #[cfg(feature = "native")]
    if std::env::args().nth(1).as_deref() == Some(tether_runtime::native::helper::HELPER_ARG) {
        tether_runtime::native::helper::serve();
        return ExitCode::SUCCESS;
    }
    // A shareProcessNamespace pod's init is this binary too (`sandbox::init`).
    if std::env::args().nth(1).as_deref() == Some(tether_shim::sandbox::init::INIT_ARG) {
        tether_shim::sandbox::init::serve();
    }
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("containerd-shim-tether-v2: {e}");
            return ExitCode::from(2);
        }
    };
    logger::init(args.debug);
    let result = match args.action {
        Action::Version => {
            println!("containerd-shim-tether-v2 {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Action::Info => tether_shim::info::info(&mut std::io::stdin().lock()).and_then(|info| launch::print(&info)),
        Action::Start => launch::start(&args).and_then(|reply| launch::print(&reply)),
        Action::Delete => launch::delete(&args).and_then(|resp| launch::print(&resp)),
        Action::Serve => serve(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("containerd-shim-tether-v2: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Points stderr (and so the log) at the bundle's `log` FIFO when containerd reads it.
fn redirect_log() {
    let fifo = OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open("log");
    if let Ok(f) = fifo {
        // SAFETY: dup2 onto stderr of an fd we own.
        unsafe { libc::dup2(f.as_raw_fd(), libc::STDERR_FILENO) };
    }
}

/// SIGUSR1 writes the debug dump to the log, one log line per dump line.
fn dump_on_sigusr1(debug: Arc<DebugService>) -> std::io::Result<()> {
    let mut sigusr1 = Signal::catch(libc::SIGUSR1)?;
    rt::spawn(async move {
        while sigusr1.recv().await.is_ok() {
            for line in tether_shim::debug::render(&debug.dump_now()).lines() {
                log::info!("dump: {line}");
            }
        }
    });
    Ok(())
}

/// Removes the shim's socket: from now on a `start` for its group binds a new shim rather than
/// handing a task to this exiting one, and no new client can reach it.
fn remove_address(socket: &str) {
    let _ = std::fs::remove_file(launch::socket_path(socket));
}

/// Lets the events still queued go out (for at most [`SHUTDOWN_FLUSH`]) and exits 0; never
/// returns. The containers are left as they are: running ones keep running, and containerd
/// finds them again through their bundles. Runs on the loop, which delivers the events.
async fn exit_after_flush(events: &Publisher, why: &str) {
    if !events.flush(SHUTDOWN_FLUSH).await {
        log::warn!("exiting with {} events undelivered", events.pending());
    }
    log::info!("{why}, exiting");
    std::process::exit(0);
}

/// Where the event queue spills: beside the task's state on disk, in the `work` directory
/// containerd links into the bundle (under its root, not its tmpfs state dir), else in the
/// bundle (the shim's working directory) itself.
fn spill_dir() -> PathBuf {
    std::fs::canonicalize("work")
        .ok()
        .filter(|p| p.is_dir())
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| Path::new(".").into())
}

/// The serving shim: subreaper, reaper, events, the task service on the inherited socket, all
/// on one event loop run by this thread (see `rt`).
fn serve(args: &cli::Args) -> Result<()> {
    redirect_log();
    let runtime = rt::start().map_err(|e| Error::io("starting the event loop", e))?;
    let _in_loop = runtime.enter();
    // SIGTERM (a node shutting down, systemd stopping containerd's unit) ends the shim the way
    // Shutdown does; installed first, so that none is missed while the shim sets up.
    let mut term = Signal::catch(libc::SIGTERM).map_err(|e| Error::io("installing the SIGTERM handler", e))?;
    // An arena per thread would keep, for the shim's life, what the rootfs mount's
    // short-lived thread allocated (see `mount`): every thread shares the loop's.
    // SAFETY: mallopt with integer arguments, before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    // SAFETY: prctl with plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        return Err(Error::io("becoming a subreaper", std::io::Error::last_os_error()));
    }
    let reaper = Reaper::start().map_err(|e| Error::io("starting the reaper", e))?;
    // containerd starts a shim to create a task in it: moving that task's init into its
    // cgroup is milliseconds away, so its wait for the kernel can begin now.
    cgroup::start_migration_grace_period(&reaper);
    let events = Publisher::start(std::env::var("TTRPC_ADDRESS").ok(), &args.namespace, spill_dir());
    let oom = OomMonitor::start(events.clone()).map_err(|e| Error::io("starting the OOM monitor", e))?;
    let table = Table::new(&args.namespace, Arc::new(Runtimes::new(reaper.clone())), reaper, events.clone(), oom);
    let debug = Arc::new(DebugService::new(table.clone(), events.clone(), &args.namespace));
    dump_on_sigusr1(debug.clone()).map_err(|e| Error::io("installing the SIGUSR1 handler", e))?;
    let socket = args.socket.clone();
    let shutdown_events = events.clone();
    let end_shim = Arc::new(move |why: &'static str| {
        // The address goes first: a `start` for the same id from now on (`ctr run --rm c1`
        // twice in a row) must bind a new shim, not hand its task to this exiting one.
        remove_address(&socket);
        let events = shutdown_events.clone();
        rt::spawn(async move {
            // Let the Shutdown reply go out, then the events still queued.
            tokio::time::sleep(Duration::from_millis(50)).await;
            exit_after_flush(&events, why).await;
        });
    });
    let sandbox = {
        let end_shim = end_shim.clone();
        Arc::new(SandboxService::new(table.clone(), move || end_shim("ShutdownSandbox")))
    };
    let service = {
        let sandbox = sandbox.clone();
        Arc::new(TaskService::new(table, sandbox.clone(), move || {
            // A sandbox outlives its containers: only ShutdownSandbox ends its shim.
            if !sandbox.holds_shim() {
                end_shim("shutdown: no tasks left");
            }
        }))
    };
    // SAFETY: fd 3 is the listening socket `start` handed over; from here the server alone
    // owns it.
    let server = unsafe { ttrpc::r#async::Server::new().add_unix_listener(LISTENER_FD) }
        .map_err(|e| Error::io("using the inherited listener", std::io::Error::other(e)))?;
    let mut server = server
        .register_service(service.services())
        .register_service(sandbox.service())
        .register_service(debug.service());
    runtime.block_on(server.start()).map_err(|e| Error::io("starting the ttrpc server", std::io::Error::other(e)))?;
    idle::SHIM.start();
    log::info!("serving {} for namespace {} (pid {})", args.socket, args.namespace, std::process::id());
    // The loop runs from here on: every task spawned above (the event publisher among them)
    // makes progress only inside this block_on.
    runtime.block_on(async {
        if term.recv().await.is_ok() {
            log::info!("SIGTERM: leaving the containers running and ending the shim");
            remove_address(&args.socket);
            exit_after_flush(&events, "SIGTERM").await;
        }
    });
    Err(Error::io("waiting for SIGTERM", std::io::Error::other("the signal stream ended")))
}
