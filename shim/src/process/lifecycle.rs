//! The calls that change what runs: create, start, exec, kill, pause and resume, delete,
//! update, and a process's stdin and terminal. Each asks the state table first
//! ([`Process::check`] / [`Process::apply`]) and publishes its event under the table lock
//! together with the change it announces.

use std::{collections::HashMap, fs, sync::Arc, time::Duration, time::Instant, time::SystemTime};

use tether_protos::{
    events::task::{
        TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskPaused, TaskResumed, TaskStart,
    },
    protobuf::well_known_types::any::Any,
    topics,
};
use tether_runtime::{CreateOpts, CriuOpts, ExecOpts, RestoreOpts};

use super::{checkpoint::criu_failure, state::Op, Container, CreateRequest, ExitInfo, Process, Table};
use crate::{
    bundle,
    cgroup::{self, Cgroup},
    config::Settings,
    error::{Error, Result},
    events::timestamp,
    idle, logger, mount, resources,
    stdio::{ProcessIo, StdioSpec},
};

impl Table {
    /// Creates a container: mounts its rootfs, prepares stdio, has the executor create it.
    /// /tasks/create is published before the init can be seen to exit.
    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<u32> {
        bundle::validate_id(&req.id)?;
        let facts = bundle::check(&req.bundle, req.rootfs.is_empty())?;
        {
            let map = self.lock();
            let mut creating = self.creating.lock().unwrap();
            if map.contains_key(&req.id) || !creating.insert(req.id.clone()) {
                return Err(Error::AlreadyExists(format!("container {}", req.id)));
            }
        }
        let result = self.create_reserved(&req, facts).await;
        self.creating.lock().unwrap().remove(&req.id);
        result
    }

    async fn create_reserved(self: &Arc<Self>, req: &CreateRequest, facts: bundle::SpecFacts) -> Result<u32> {
        // The new container's init is moved into its cgroup.
        cgroup::start_migration_grace_period(&self.reaper);
        let settings = Settings::from_options(&self.namespace, req.options.as_ref())?;
        let options = req.options.as_ref().map(|o| (o.type_url.as_str(), o.value.len()));
        log::debug!("{}: runtime options {options:?}: the {:?} executor", req.id, settings.executor);
        if let Some(level) = settings.log_level {
            logger::set_level(level.filter());
        }
        if let Some(ms) = settings.idle_trim_ms {
            idle::SHIM.set_after(Duration::from_millis(ms));
        }
        let settings_json = serde_json::to_vec(&settings).expect("settings serialise");
        fs::write(req.bundle.join(bundle::SETTINGS), settings_json)
            .map_err(|e| Error::io(format!("writing {} in the bundle", bundle::SETTINGS), e))?;
        let executor = self.executors.executor(&settings)?;

        let rootfs = if req.rootfs.is_empty() {
            None
        } else {
            let target = req.bundle.join("rootfs");
            mount::mount_all(req.rootfs.clone(), target.clone()).await?;
            Some(target)
        };
        let undo_mount = || {
            if let Some(t) = &rootfs {
                mount::unmount(t);
            }
        };

        let (mut io, stdio, console) = match ProcessIo::prepare(&req.stdio, &req.id, &self.namespace).await {
            Ok(p) => p,
            Err(e) => {
                undo_mount();
                return Err(e);
            }
        };
        let spawned = Instant::now();
        let opts = CreateOpts {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            pid_file: req.bundle.join(bundle::INIT_PID),
            console_socket: console.as_ref().map(|c| c.path().to_path_buf()),
            stdio,
            no_pivot_root: false,
            no_new_keyring: false,
        };
        let created = match &req.checkpoint {
            None => executor.create(opts).await.map_err(Error::from),
            Some(image) => {
                let criu = CriuOpts {
                    image_path: image.clone(),
                    work_path: req.bundle.join(bundle::CRIU_WORK),
                    terminal: req.stdio.terminal,
                    ..Default::default()
                };
                let restored = executor.restore(RestoreOpts { create: opts, criu: criu.clone() }).await;
                restored.map_err(|e| criu_failure(e, &criu.work_path, &req.bundle, "restore"))
            }
        };
        let pid = match created.and_then(|pid| io.start(console).map(|()| pid)) {
            Ok(pid) => pid,
            Err(e) => {
                let _ = executor.delete(&req.id, true).await;
                undo_mount();
                return Err(e);
            }
        };

        let mut init = Process::new("", req.stdio.clone());
        init.pid = pid;
        init.io = Some(Arc::new(io));
        // A restored container already runs: its exit waits until Start has announced it.
        init.starting = req.checkpoint.is_some();
        let cgroup = Cgroup::of_pid(pid)
            .inspect_err(|e| log::warn!("container {}: cannot read its cgroup: {e}; no stats or OOM events", req.id))
            .ok();
        if let Some(cg) = &cgroup {
            if let Err(e) = self.oom.watch(&req.id, cg) {
                log::warn!("container {}: cannot watch for OOM kills: {e}", req.id);
            }
        }
        self.journal.open(&req.id, &req.bundle);
        let container = Container {
            bundle: req.bundle.clone(),
            executor,
            init,
            execs: HashMap::new(),
            deferred_init_exit: None,
            rootfs,
            cgroup,
            restored: req.checkpoint.is_some(),
            owns_pid_namespace: facts.owns_pid_namespace,
            lifecycle: Arc::default(),
        };
        {
            let mut map = self.lock();
            map.insert(req.id.clone(), container);
            // Announced before the init is supervised: its exit cannot go out first.
            self.events.publish(
                topics::TASK_CREATE_EVENT_TOPIC,
                &TaskCreate {
                    container_id: req.id.clone(),
                    bundle: req.bundle.display().to_string(),
                    rootfs: req.rootfs.clone(),
                    io: Some(TaskIO {
                        stdin: req.stdio.stdin.clone(),
                        stdout: req.stdio.stdout.clone(),
                        stderr: req.stdio.stderr.clone(),
                        terminal: req.stdio.terminal,
                        ..Default::default()
                    })
                    .into(),
                    pid: pid as u32,
                    ..Default::default()
                },
            );
        }
        let handle = self.supervise(&req.id, "", pid, spawned);
        // A Delete may have come in since the insert: then the handle has nobody to serve.
        let _ = self.with(&req.id, |c| {
            c.init.handle = Some(handle);
            Ok(())
        });
        self.watch_vanishing(&req.id, "");
        Ok(pid as u32)
    }

    /// Starts the init (empty `exec_id`) or an exec; returns its pid. An exit that comes
    /// while it starts is reported after /tasks/start (or /tasks/exec-started).
    pub async fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32> {
        let lifecycle = self.lifecycle(id)?;
        let _serial = lifecycle.lock().await;
        if !exec_id.is_empty() {
            return self.start_exec(id, exec_id).await;
        }
        let (executor, restored) = self.with(id, |c| {
            c.init.check(Op::Start)?;
            c.init.starting = true;
            Ok((c.executor.clone(), c.restored))
        })?;
        let result = if restored { Ok(()) } else { executor.start(id).await.map_err(Error::from) };
        let started = self.with(id, |c| {
            c.init.starting = false;
            result?;
            c.init.apply(Op::Start)?;
            let pid = c.init.pid as u32;
            self.events.publish(
                topics::TASK_START_EVENT_TOPIC,
                &TaskStart { container_id: id.into(), pid, ..Default::default() },
            );
            Ok(pid)
        });
        self.release_early_exit(id, "");
        started
    }

    async fn start_exec(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32> {
        let (executor, stdio, spec, bundle_dir) = self.with(id, |c| {
            c.init.check(Op::StartExec)?;
            let (executor, bundle_dir) = (c.executor.clone(), c.bundle.clone());
            let p = c.process_mut(exec_id)?;
            p.check(Op::Start)?;
            p.starting = true;
            Ok((executor, p.stdio.clone(), p.spec.clone(), bundle_dir))
        })?;
        let started = self.run_exec(id, exec_id, &executor, &stdio, &spec, &bundle_dir).await;
        let recorded = self.with(id, |c| {
            let p = c.process_mut(exec_id)?;
            p.starting = false;
            let (pid, io, handle) = started?;
            p.pid = pid;
            p.io = Some(Arc::new(io));
            p.handle = Some(handle);
            p.apply(Op::Start)?;
            self.events.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                &TaskExecStarted {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    pid: pid as u32,
                    ..Default::default()
                },
            );
            Ok(pid as u32)
        });
        self.watch_vanishing(id, exec_id);
        self.release_early_exit(id, exec_id);
        // An init that exited while this exec started may have been waiting for it.
        self.release_init_exit(id);
        recorded
    }

    /// Runs the runtime's exec for `exec_id`; its pid, stdio and supervision handle.
    async fn run_exec(
        &self,
        id: &str,
        exec_id: &str,
        executor: &Arc<dyn tether_runtime::Executor>,
        stdio: &StdioSpec,
        spec: &[u8],
        bundle_dir: &std::path::Path,
    ) -> Result<(i32, ProcessIo, Arc<crate::pidfd::Handle>)> {
        // The exec'd process joins the container's cgroup.
        cgroup::start_migration_grace_period(&self.reaper);
        let spec_file = bundle::exec_spec(bundle_dir, exec_id);
        let pid_file = bundle::exec_pid(bundle_dir, exec_id);
        fs::write(&spec_file, spec).map_err(|e| Error::io("writing the exec's process spec", e))?;
        let (mut io, streams, console) = ProcessIo::prepare(stdio, id, &self.namespace).await?;
        let spawned = Instant::now();
        let result = executor
            .exec(
                id,
                ExecOpts {
                    process_spec: spec_file.clone(),
                    pid_file: pid_file.clone(),
                    console_socket: console.as_ref().map(|c| c.path().to_path_buf()),
                    stdio: streams,
                },
            )
            .await
            .map_err(Error::from)
            .and_then(|pid| io.start(console).map(|()| pid));
        let _ = fs::remove_file(&spec_file);
        let _ = fs::remove_file(&pid_file);
        let pid = result?;
        Ok((pid, io, self.supervise(id, exec_id, pid, spawned)))
    }

    /// Hands on an exit that came while the process was starting (see `exits`), now that its
    /// start has been announced (or has failed).
    fn release_early_exit(self: &Arc<Self>, id: &str, exec_id: &str) {
        let early = self.with(id, |c| Ok(c.process_mut(exec_id)?.early_exit.take()));
        if let Ok(Some(exit)) = early {
            self.handle_exit_apart(id, exec_id, exit);
        }
    }

    /// Registers an exec process (started later by [`Table::start`]).
    pub fn exec(&self, id: &str, exec_id: &str, spec: Vec<u8>, stdio: StdioSpec) -> Result<()> {
        bundle::validate_id(exec_id)?;
        serde_json::from_slice::<serde_json::Value>(&spec)
            .ok()
            .filter(serde_json::Value::is_object)
            .ok_or_else(|| Error::InvalidArgument(format!("exec {exec_id}: the process spec is not a JSON object")))?;
        self.with(id, |c| {
            c.init.check(Op::AddExec)?;
            if c.execs.contains_key(exec_id) {
                return Err(Error::AlreadyExists(format!("exec {exec_id}")));
            }
            let mut p = Process::new(exec_id, stdio);
            p.spec = spec;
            c.execs.insert(exec_id.to_string(), p);
            self.events.publish(
                topics::TASK_EXEC_ADDED_EVENT_TOPIC,
                &TaskExecAdded { container_id: id.into(), exec_id: exec_id.into(), ..Default::default() },
            );
            Ok(())
        })
    }

    /// Sends a signal to the init (with `all`, to every process of the container) or an exec.
    /// With `all`, whatever is left in the container's cgroup is signalled even after its init
    /// has exited.
    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let vanished = self.notice_vanished(id, exec_id);
        let (executor, handle) = self.with(id, |c| {
            let p = c.process(exec_id)?;
            let whole_container = all && exec_id.is_empty();
            if !whole_container {
                p.check(Op::Kill)?;
            }
            Ok((c.executor.clone(), p.handle.clone()))
        })?;
        let finished = || Error::NotFound(format!("process {exec_id:?} of {id} has already finished"));
        if exec_id.is_empty() {
            if vanished && !all {
                return Err(finished());
            }
            return Ok(executor.kill(id, signal, all).await?);
        }
        if vanished {
            return Err(finished());
        }
        // An exec is not the runtime's to signal: it is our child, named by its handle so that
        // a recycled pid is never signalled.
        let handle = handle.ok_or_else(|| Error::FailedPrecondition(format!("exec {exec_id} has no process yet")))?;
        handle.signal(signal as i32).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => finished(),
            Some(libc::EINVAL) => Error::InvalidArgument(format!("invalid signal {signal}")),
            _ => Error::io(format!("signalling exec {exec_id}"), e),
        })
    }

    /// Freezes the container.
    pub async fn pause(&self, id: &str) -> Result<()> {
        self.freeze(id, Op::Pause).await
    }

    /// Thaws the container.
    pub async fn resume(&self, id: &str) -> Result<()> {
        self.freeze(id, Op::Resume).await
    }

    /// Pause or Resume (`op`).
    async fn freeze(&self, id: &str, op: Op) -> Result<()> {
        let lifecycle = self.lifecycle(id)?;
        let _serial = lifecycle.lock().await;
        let executor = self.with(id, |c| {
            c.init.check(op)?;
            Ok(c.executor.clone())
        })?;
        if op == Op::Pause {
            executor.pause(id).await?;
        } else {
            executor.resume(id).await?;
        }
        self.with(id, |c| {
            c.init.apply(op)?;
            let container_id = id.into();
            if op == Op::Pause {
                self.events
                    .publish(topics::TASK_PAUSED_EVENT_TOPIC, &TaskPaused { container_id, ..Default::default() });
            } else {
                self.events
                    .publish(topics::TASK_RESUMED_EVENT_TOPIC, &TaskResumed { container_id, ..Default::default() });
            }
            Ok(())
        })
    }

    /// Deletes a stopped (or never started) process; deleting the init removes the container.
    /// Waits for a Start of the same container in flight, so that no process it starts is
    /// left running unknown.
    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        let lifecycle = self.lifecycle(id)?;
        let _serial = lifecycle.lock().await;
        if !exec_id.is_empty() {
            return self.with(id, |c| {
                let p = c.process(exec_id)?;
                p.check(Op::Delete)?;
                let (code, at) = p.exit_fields();
                let pid = p.pid as u32;
                c.execs.remove(exec_id);
                Ok(ExitInfo { pid, code, at })
            });
        }
        let executor = self.with(id, |c| {
            c.init.check(Op::Delete)?;
            Ok(c.executor.clone())
        })?;
        executor.delete(id, true).await?;
        // Only once the runtime let go: a failed delete leaves the container, still watched.
        self.oom.unwatch(id);
        let (c, info) = {
            let mut map = self.lock();
            let c = map.remove(id).ok_or_else(|| Error::NotFound(format!("container {id}")))?;
            let (code, at) = match c.init.exited {
                Some(e) => (e.code, e.at),
                // Deleted before it ran: the runtime killed it.
                None => (128 + libc::SIGKILL as u32, SystemTime::now()),
            };
            let pid = c.init.pid as u32;
            self.events.publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                &TaskDelete {
                    container_id: id.into(),
                    pid,
                    exit_status: code,
                    exited_at: Some(timestamp(at)).into(),
                    ..Default::default()
                },
            );
            (c, ExitInfo { pid, code, at })
        };
        // containerd learns the exit from this answer.
        self.journal.close(id);
        if let Some(t) = &c.rootfs {
            mount::unmount(t);
        }
        let _ = fs::remove_file(c.bundle.join(bundle::SETTINGS));
        self.changed.notify_waiters();
        // Hand freed memory back to the system: a long-lived shim of a pod should shrink
        // when its containers go.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        Ok(info)
    }

    /// Applies new resource limits (an OCI `LinuxResources`, JSON in `resources`).
    pub async fn update(&self, id: &str, resources: &Any) -> Result<()> {
        let json = resources::validate(resources)?;
        let executor = self.with(id, |c| {
            c.init.check(Op::Update)?;
            Ok(c.executor.clone())
        })?;
        Ok(executor.update(id, &json).await?)
    }

    pub(super) fn io(&self, id: &str, exec_id: &str) -> Result<Arc<ProcessIo>> {
        self.with(id, |c| {
            let p = c.process(exec_id)?;
            p.io.clone().ok_or_else(|| Error::FailedPrecondition(format!("{} has no stdio yet", p.name())))
        })
    }

    /// Closes a process's stdin (CloseIO).
    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        self.io(id, exec_id)?.close_stdin();
        Ok(())
    }

    /// Resizes a process's terminal.
    pub fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        self.io(id, exec_id)?.resize(width, height)
    }
}
