//! The ttrpc task service: decodes requests, validates them, calls the process table and
//! encodes the answers. It holds no state of its own.

use std::{collections::HashMap, future::Future, path::PathBuf, sync::Arc, time::Instant};

use tether_protos::{
    api,
    protobuf::well_known_types::empty::Empty,
    shim::shim_ttrpc_async::{create_task, Task},
    ttrpc::{self, r#async::TtrpcContext},
};

use crate::{
    error::{Error, Result},
    events::timestamp,
    idle,
    process::{CheckpointRequest, CreateRequest, Table},
    rt,
    sandbox::SandboxService,
    stdio::StdioSpec,
};

/// The task API package names containerd dials: 1.6/1.7 speak v2, 2.x also v3; the messages
/// are the same on the wire.
const TASK_SERVICES: [&str; 2] = ["containerd.task.v2.Task", "containerd.task.v3.Task"];
const GENERATED_SERVICE: &str = "containerd.task.v3.Task";

/// The task service of one shim.
pub struct TaskService {
    table: Arc<Table>,
    /// The shim's sandbox service: a container of its pod gets the pod's files at Create.
    sandbox: Arc<SandboxService>,
    /// Called (once the reply is on its way) when Shutdown finds nothing left to serve.
    on_shutdown: Box<dyn Fn() + Send + Sync>,
}

impl TaskService {
    /// A service over `table`, next to `sandbox`; `on_shutdown` ends the shim.
    pub fn new(
        table: Arc<Table>,
        sandbox: Arc<SandboxService>,
        on_shutdown: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        TaskService { table, sandbox, on_shutdown: Box::new(on_shutdown) }
    }

    /// Runs `f`, a call that changes what runs (it awaits the OCI runtime, or a container's
    /// lifecycle lock), as a task of its own on the loop, traced as `call` on `id`/`exec_id`,
    /// which `f` is handed with the table. The handler only awaits that task: ttrpc drops a
    /// handler whose deadline passes or whose connection closes, and the call must still run
    /// to its end, or the table would keep a Start half done, a Create's id reserved, a
    /// container the runtime made but nobody knows.
    async fn in_task<T, F>(
        &self,
        call: &'static str,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(Arc<Table>, String, String) -> F,
    ) -> ttrpc::Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let work = f(self.table.clone(), id.to_string(), exec_id.to_string());
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        rt::spawn(async move { traced(call, &id, &exec_id, work).await })
            .await
            .unwrap_or_else(|e| Err(Error::io(format!("the task of {call}"), std::io::Error::other(e)).into()))
    }

    /// The ttrpc service, registered under both task API versions, for the shim's async
    /// server.
    pub fn services(self: Arc<Self>) -> HashMap<String, ttrpc::r#async::Service> {
        let mut all = HashMap::new();
        for name in TASK_SERVICES {
            for (service, methods) in create_task(self.clone()) {
                all.insert(service.replacen(GENERATED_SERVICE, name, 1), methods);
            }
        }
        all
    }
}

/// Runs a call with the shim marked busy (it does not trim while a call runs), logged.
async fn traced<T>(call: &str, id: &str, exec_id: &str, f: impl Future<Output = Result<T>>) -> ttrpc::Result<T> {
    let _busy = idle::SHIM.busy();
    logged(call, id, exec_id, f).await
}

/// Logs a call at debug level with its duration and result, and maps the error (for the
/// sandbox service's calls too, with no exec id).
pub(crate) async fn logged<T>(
    call: &str,
    id: &str,
    exec_id: &str,
    f: impl Future<Output = Result<T>>,
) -> ttrpc::Result<T> {
    let started = Instant::now();
    let result = f.await;
    let took = started.elapsed();
    match &result {
        Ok(_) => log::debug!("{call} id={id} exec={exec_id} took={took:?} ok"),
        Err(e) => log::info!("{call} id={id} exec={exec_id} took={took:?} {:?}: {e}", e.code()),
    }
    result.map_err(ttrpc::Error::from)
}

/// Every call is served on the loop. Those that only read the table, the cgroup or a file
/// descriptor are answered in the handler; those that run the runtime or take a container's
/// lifecycle lock run in a task of their own ([`TaskService::in_task`]).
#[async_trait::async_trait]
impl Task for TaskService {
    async fn state(&self, _: &TtrpcContext, req: api::StateRequest) -> ttrpc::Result<api::StateResponse> {
        traced("State", &req.id, &req.exec_id, async { self.table.state(&req.id, &req.exec_id) }).await
    }

    async fn create(&self, _: &TtrpcContext, req: api::CreateTaskRequest) -> ttrpc::Result<api::CreateTaskResponse> {
        let request = CreateRequest {
            id: req.id.clone(),
            bundle: PathBuf::from(&req.bundle),
            rootfs: req.rootfs,
            stdio: StdioSpec { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal },
            options: req.options.into_option(),
            checkpoint: Some(PathBuf::from(&req.checkpoint)).filter(|p| !p.as_os_str().is_empty()),
        };
        let sandbox = self.sandbox.clone();
        self.in_task("Create", &req.id, "", |table, _, _| async move {
            if request.bundle.as_os_str().is_empty() {
                return Err(Error::InvalidArgument("create needs a bundle path".into()));
            }
            sandbox.prepare_container(&request.bundle)?;
            Ok(api::CreateTaskResponse { pid: table.create(request).await?, ..Default::default() })
        })
        .await
    }

    async fn start(&self, _: &TtrpcContext, req: api::StartRequest) -> ttrpc::Result<api::StartResponse> {
        self.in_task("Start", &req.id, &req.exec_id, |table, id, exec_id| async move {
            Ok(api::StartResponse { pid: table.start(&id, &exec_id).await?, ..Default::default() })
        })
        .await
    }

    async fn delete(&self, _: &TtrpcContext, req: api::DeleteRequest) -> ttrpc::Result<api::DeleteResponse> {
        self.in_task("Delete", &req.id, &req.exec_id, |table, id, exec_id| async move {
            let exit = table.delete(&id, &exec_id).await?;
            Ok(api::DeleteResponse {
                pid: exit.pid,
                exit_status: exit.code,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            })
        })
        .await
    }

    async fn pids(&self, _: &TtrpcContext, req: api::PidsRequest) -> ttrpc::Result<api::PidsResponse> {
        self.in_task("Pids", &req.id, "", |table, id, _| async move {
            Ok(api::PidsResponse { processes: table.pids(&id).await?, ..Default::default() })
        })
        .await
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> ttrpc::Result<Empty> {
        self.in_task("Pause", &req.id, "", |table, id, _| async move { table.pause(&id).await.map(|()| Empty::new()) })
            .await
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> ttrpc::Result<Empty> {
        self.in_task(
            "Resume",
            &req.id,
            "",
            |table, id, _| async move { table.resume(&id).await.map(|()| Empty::new()) },
        )
        .await
    }

    async fn checkpoint(&self, _: &TtrpcContext, req: api::CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        let request = CheckpointRequest { path: PathBuf::from(&req.path), options: req.options.into_option() };
        self.in_task("Checkpoint", &req.id, "", |table, id, _| async move {
            table.checkpoint(&id, request).await.map(|()| Empty::new())
        })
        .await
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<Empty> {
        let (signal, all) = (req.signal, req.all);
        self.in_task("Kill", &req.id, &req.exec_id, |table, id, exec_id| async move {
            table.kill(&id, &exec_id, signal, all).await.map(|()| Empty::new())
        })
        .await
    }

    async fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> ttrpc::Result<Empty> {
        let spec = req.spec.into_option().map(|a| a.value);
        let stdio = StdioSpec { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal };
        traced("Exec", &req.id, &req.exec_id, async {
            let spec = spec.ok_or_else(|| Error::InvalidArgument("exec needs a process spec".into()))?;
            self.table.exec(&req.id, &req.exec_id, spec, stdio).map(|()| Empty::new())
        })
        .await
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> ttrpc::Result<Empty> {
        traced("ResizePty", &req.id, &req.exec_id, async {
            self.table.resize_pty(&req.id, &req.exec_id, req.width, req.height).map(|()| Empty::new())
        })
        .await
    }

    async fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> ttrpc::Result<Empty> {
        traced("CloseIO", &req.id, &req.exec_id, async {
            if req.stdin {
                self.table.close_stdin(&req.id, &req.exec_id)?;
            }
            Ok(Empty::new())
        })
        .await
    }

    async fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let resources = req.resources.into_option();
        self.in_task("Update", &req.id, "", |table, id, _| async move {
            let resources = resources.ok_or_else(|| Error::InvalidArgument("update needs resources".into()))?;
            table.update(&id, &resources).await.map(|()| Empty::new())
        })
        .await
    }

    async fn wait(&self, _: &TtrpcContext, req: api::WaitRequest) -> ttrpc::Result<api::WaitResponse> {
        // Not busy: containerd keeps a Wait open for every process, all its life.
        logged("Wait", &req.id, &req.exec_id, async {
            let exit = self.table.wait(&req.id, &req.exec_id).await?;
            Ok(api::WaitResponse {
                exit_status: exit.code,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            })
        })
        .await
    }

    async fn stats(&self, _: &TtrpcContext, req: api::StatsRequest) -> ttrpc::Result<api::StatsResponse> {
        traced("Stats", &req.id, "", async {
            Ok(api::StatsResponse { stats: Some(self.table.stats(&req.id)?).into(), ..Default::default() })
        })
        .await
    }

    async fn connect(&self, _: &TtrpcContext, req: api::ConnectRequest) -> ttrpc::Result<api::ConnectResponse> {
        traced("Connect", &req.id, "", async {
            Ok(api::ConnectResponse {
                shim_pid: std::process::id(),
                task_pid: self.table.init_pid(&req.id),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            })
        })
        .await
    }

    async fn shutdown(&self, _: &TtrpcContext, req: api::ShutdownRequest) -> ttrpc::Result<Empty> {
        traced("Shutdown", &req.id, "", async {
            if self.table.is_empty() {
                (self.on_shutdown)();
            }
            Ok(Empty::new())
        })
        .await
    }
}
