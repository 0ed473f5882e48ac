//! The ttrpc task service: decodes requests, validates them, calls the process table and
//! encodes the answers. It holds no state of its own.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Instant};

use tether_protos::{
    api,
    protobuf::well_known_types::empty::Empty,
    shim::shim_ttrpc::{create_task, Task},
    ttrpc::{self, MethodHandler, TtrpcContext},
};

use crate::{
    error::{Error, Result},
    events::timestamp,
    idle,
    process::{CheckpointRequest, CreateRequest, Table},
    stdio::StdioSpec,
};

/// The task API package names containerd dials: 1.6/1.7 speak v2, 2.x also v3; the messages
/// are the same on the wire.
const TASK_SERVICES: [&str; 2] = ["containerd.task.v2.Task", "containerd.task.v3.Task"];
const GENERATED_SERVICE: &str = "containerd.task.v3.Task";

/// The task service of one shim.
pub struct TaskService {
    table: Arc<Table>,
    /// Called (once the reply is on its way) when Shutdown finds nothing left to serve.
    on_shutdown: Box<dyn Fn() + Send + Sync>,
}

impl TaskService {
    /// A service over `table`; `on_shutdown` ends the shim.
    pub fn new(table: Arc<Table>, on_shutdown: impl Fn() + Send + Sync + 'static) -> Self {
        TaskService { table, on_shutdown: Box::new(on_shutdown) }
    }

    /// The ttrpc method table, registered under both task API versions.
    pub fn methods(self: Arc<Self>) -> HashMap<String, Box<dyn MethodHandler + Send + Sync>> {
        let mut all = HashMap::new();
        for name in TASK_SERVICES {
            for (path, handler) in create_task(self.clone()) {
                all.insert(path.replacen(GENERATED_SERVICE, name, 1), handler);
            }
        }
        all
    }
}

/// Runs a call with the shim marked busy (it does not trim while a call runs), logged.
fn traced<T>(call: &str, id: &str, exec_id: &str, f: impl FnOnce() -> Result<T>) -> ttrpc::Result<T> {
    let _busy = idle::SHIM.busy();
    logged(call, id, exec_id, f)
}

/// Logs a call at debug level with its duration and result, and maps the error.
fn logged<T>(call: &str, id: &str, exec_id: &str, f: impl FnOnce() -> Result<T>) -> ttrpc::Result<T> {
    let started = Instant::now();
    let result = f();
    let took = started.elapsed();
    match &result {
        Ok(_) => log::debug!("{call} id={id} exec={exec_id} took={took:?} ok"),
        Err(e) => log::info!("{call} id={id} exec={exec_id} took={took:?} {:?}: {e}", e.code()),
    }
    result.map_err(ttrpc::Error::from)
}

impl Task for TaskService {
    fn state(&self, _: &TtrpcContext, req: api::StateRequest) -> ttrpc::Result<api::StateResponse> {
        traced("State", &req.id, &req.exec_id, || self.table.state(&req.id, &req.exec_id))
    }

    fn create(&self, _: &TtrpcContext, req: api::CreateTaskRequest) -> ttrpc::Result<api::CreateTaskResponse> {
        traced("Create", &req.id, "", || {
            if req.bundle.is_empty() {
                return Err(Error::InvalidArgument("create needs a bundle path".into()));
            }
            let pid = self.table.create(CreateRequest {
                id: req.id.clone(),
                bundle: PathBuf::from(&req.bundle),
                rootfs: req.rootfs.clone(),
                stdio: StdioSpec {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                },
                options: req.options.clone().into_option(),
                checkpoint: Some(PathBuf::from(&req.checkpoint)).filter(|p| !p.as_os_str().is_empty()),
            })?;
            Ok(api::CreateTaskResponse { pid, ..Default::default() })
        })
    }

    fn start(&self, _: &TtrpcContext, req: api::StartRequest) -> ttrpc::Result<api::StartResponse> {
        traced("Start", &req.id, &req.exec_id, || {
            let pid = self.table.start(&req.id, &req.exec_id)?;
            Ok(api::StartResponse { pid, ..Default::default() })
        })
    }

    fn delete(&self, _: &TtrpcContext, req: api::DeleteRequest) -> ttrpc::Result<api::DeleteResponse> {
        traced("Delete", &req.id, &req.exec_id, || {
            let exit = self.table.delete(&req.id, &req.exec_id)?;
            Ok(api::DeleteResponse {
                pid: exit.pid,
                exit_status: exit.code,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            })
        })
    }

    fn pids(&self, _: &TtrpcContext, req: api::PidsRequest) -> ttrpc::Result<api::PidsResponse> {
        traced("Pids", &req.id, "", || {
            Ok(api::PidsResponse { processes: self.table.pids(&req.id)?, ..Default::default() })
        })
    }

    fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> ttrpc::Result<Empty> {
        traced("Pause", &req.id, "", || self.table.pause(&req.id).map(|()| Empty::new()))
    }

    fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> ttrpc::Result<Empty> {
        traced("Resume", &req.id, "", || self.table.resume(&req.id).map(|()| Empty::new()))
    }

    fn checkpoint(&self, _: &TtrpcContext, req: api::CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        traced("Checkpoint", &req.id, "", || {
            let request =
                CheckpointRequest { path: PathBuf::from(&req.path), options: req.options.clone().into_option() };
            self.table.checkpoint(&req.id, request).map(|()| Empty::new())
        })
    }

    fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<Empty> {
        traced("Kill", &req.id, &req.exec_id, || {
            self.table.kill(&req.id, &req.exec_id, req.signal, req.all).map(|()| Empty::new())
        })
    }

    fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> ttrpc::Result<Empty> {
        traced("Exec", &req.id, &req.exec_id, || {
            let spec = req
                .spec
                .as_ref()
                .map(|a| a.value.clone())
                .ok_or_else(|| Error::InvalidArgument("exec needs a process spec".into()))?;
            let stdio = StdioSpec {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            self.table.exec(&req.id, &req.exec_id, spec, stdio).map(|()| Empty::new())
        })
    }

    fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> ttrpc::Result<Empty> {
        traced("ResizePty", &req.id, &req.exec_id, || {
            self.table.resize_pty(&req.id, &req.exec_id, req.width, req.height).map(|()| Empty::new())
        })
    }

    fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> ttrpc::Result<Empty> {
        traced("CloseIO", &req.id, &req.exec_id, || {
            if req.stdin {
                self.table.close_stdin(&req.id, &req.exec_id)?;
            }
            Ok(Empty::new())
        })
    }

    fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> ttrpc::Result<Empty> {
        traced("Update", &req.id, "", || {
            let resources =
                req.resources.as_ref().ok_or_else(|| Error::InvalidArgument("update needs resources".into()))?;
            self.table.update(&req.id, resources).map(|()| Empty::new())
        })
    }

    fn wait(&self, _: &TtrpcContext, req: api::WaitRequest) -> ttrpc::Result<api::WaitResponse> {
        // Not busy: containerd keeps a Wait open for every process, all its life.
        logged("Wait", &req.id, &req.exec_id, || {
            let exit = self.table.wait(&req.id, &req.exec_id)?;
            Ok(api::WaitResponse {
                exit_status: exit.code,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            })
        })
    }

    fn stats(&self, _: &TtrpcContext, req: api::StatsRequest) -> ttrpc::Result<api::StatsResponse> {
        traced("Stats", &req.id, "", || {
            Ok(api::StatsResponse { stats: Some(self.table.stats(&req.id)?).into(), ..Default::default() })
        })
    }

    fn connect(&self, _: &TtrpcContext, req: api::ConnectRequest) -> ttrpc::Result<api::ConnectResponse> {
        traced("Connect", &req.id, "", || {
            Ok(api::ConnectResponse {
                shim_pid: std::process::id(),
                task_pid: self.table.init_pid(&req.id),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            })
        })
    }

    fn shutdown(&self, _: &TtrpcContext, req: api::ShutdownRequest) -> ttrpc::Result<Empty> {
        traced("Shutdown", &req.id, "", || {
            if self.table.is_empty() {
                (self.on_shutdown)();
            }
            Ok(Empty::new())
        })
    }
}
