//! A ttrpc client straight to a running shim, as containerd itself talks to it: for the task
//! API calls that ctr 1.6 has no command for (Update) and for checking status codes exactly.

use std::fs;
use std::time::Duration;

use tether_protos::{
    api,
    protobuf::{
        well_known_types::{any::Any, empty::Empty},
        Message, MessageField,
    },
    runc_options::CheckpointOptions,
    sandbox_api,
    ttrpc::{self, Code},
};

use crate::env::Env;

/// The OCI LinuxResources type URL containerd puts on Update's resources.
pub const LINUX_RESOURCES: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// The task service under the name every shim serves (containerd 1.6/1.7 dial v2; the Go
/// shim of containerd 1.6 knows no other).
const TASK_SERVICE: &str = "containerd.task.v2.Task";
/// containerd 2.x's sandbox service, which a shim sandboxer serves next to the task service.
const SANDBOX_SERVICE: &str = "containerd.runtime.sandbox.v1.Sandbox";
/// How long a call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to one shim's task service.
pub struct ShimClient {
    client: ttrpc::Client,
}

impl ShimClient {
    /// Connects to the shim serving task `id` (its address is in the bundle's `address` file).
    pub fn for_task(env: &Env, id: &str) -> ShimClient {
        ShimClient::try_for_task(env, id).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ShimClient::for_task`], with what went wrong as an error.
    pub fn try_for_task(env: &Env, id: &str) -> Result<ShimClient, String> {
        let file = env.containerd.bundle(&env.ns, id).join("address");
        let address = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        ShimClient::connect(address.trim()).map_err(|e| format!("connecting to shim {}: {e}", address.trim()))
    }

    /// Connects to the shim serving at `address` (`unix:///path`, what `start` prints).
    pub fn connect(address: &str) -> Result<ShimClient, ttrpc::Error> {
        Ok(ShimClient { client: ttrpc::Client::connect(address)? })
    }

    /// Calls task API `method` with `req`.
    pub fn call<Resp: Message>(&self, method: &str, req: &impl Message) -> Result<Resp, ttrpc::Error> {
        self.call_service(TASK_SERVICE, method, req)
    }

    /// Calls `method` of `service` with `req`.
    fn call_service<Resp: Message>(
        &self,
        service: &str,
        method: &str,
        req: &impl Message,
    ) -> Result<Resp, ttrpc::Error> {
        let request = ttrpc::Request {
            service: service.into(),
            method: method.into(),
            timeout_nano: CALL_TIMEOUT.as_nanos() as i64,
            payload: req.write_to_bytes().map_err(|e| ttrpc::Error::Others(e.to_string()))?,
            ..Default::default()
        };
        let response = self.client.request(request)?;
        Resp::parse_from_bytes(&response.payload).map_err(|e| ttrpc::Error::Others(e.to_string()))
    }

    /// Update with `resources`, an OCI LinuxResources JSON object.
    pub fn update(&self, id: &str, resources: &str) -> Result<(), ttrpc::Error> {
        let req = api::UpdateTaskRequest {
            id: id.into(),
            resources: MessageField::some(Any {
                type_url: LINUX_RESOURCES.into(),
                value: resources.as_bytes().to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.call::<Empty>("Update", &req).map(drop)
    }

    /// Stats of task `id`: the metrics Any.
    pub fn stats(&self, id: &str) -> Result<Any, ttrpc::Error> {
        let req = api::StatsRequest { id: id.into(), ..Default::default() };
        let resp: api::StatsResponse = self.call("Stats", &req)?;
        Ok(resp.stats.into_option().unwrap_or_default())
    }
}

impl ShimClient {
    /// Checkpoint with containerd's runc `CheckpointOptions`.
    pub fn checkpoint(&self, id: &str, options: &CheckpointOptions) -> Result<(), ttrpc::Error> {
        let req = api::CheckpointTaskRequest {
            id: id.into(),
            options: MessageField::some(Any {
                type_url: "containerd.runc.v1.CheckpointOptions".into(),
                value: options.write_to_bytes().expect("encoding CheckpointOptions"),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.call::<Empty>("Checkpoint", &req).map(drop)
    }

    /// Create, as containerd sends it.
    pub fn create(&self, req: &api::CreateTaskRequest) -> Result<u32, ttrpc::Error> {
        self.call::<api::CreateTaskResponse>("Create", req).map(|r| r.pid)
    }

    /// Start the init of `id`.
    pub fn start(&self, id: &str) -> Result<u32, ttrpc::Error> {
        let req = api::StartRequest { id: id.into(), ..Default::default() };
        self.call::<api::StartResponse>("Start", &req).map(|r| r.pid)
    }

    /// Kill the init of `id` with `signal`.
    pub fn kill(&self, id: &str, signal: u32) -> Result<(), ttrpc::Error> {
        let req = api::KillRequest { id: id.into(), signal, ..Default::default() };
        self.call::<Empty>("Kill", &req).map(drop)
    }

    /// Wait for the init of `id`; its exit status.
    pub fn wait(&self, id: &str) -> Result<u32, ttrpc::Error> {
        let req = api::WaitRequest { id: id.into(), ..Default::default() };
        self.call::<api::WaitResponse>("Wait", &req).map(|r| r.exit_status)
    }

    /// SandboxMetrics of sandbox `id`: the metric's id and data.
    pub fn sandbox_metrics(&self, id: &str) -> Result<(String, Any), ttrpc::Error> {
        let req = sandbox_api::SandboxMetricsRequest { sandbox_id: id.into(), ..Default::default() };
        let resp: sandbox_api::SandboxMetricsResponse = self.call_service(SANDBOX_SERVICE, "SandboxMetrics", &req)?;
        let metric = resp.metrics();
        Ok((metric.id.clone(), metric.data.clone().unwrap_or_default()))
    }

    /// Delete task `id`; its exit status.
    pub fn delete(&self, id: &str) -> Result<u32, ttrpc::Error> {
        let req = api::DeleteRequest { id: id.into(), ..Default::default() };
        self.call::<api::DeleteResponse>("Delete", &req).map(|r| r.exit_status)
    }
}

/// An Exec request for `args` in container `id`, with the process spec containerd would send.
pub fn exec_request(id: &str, exec_id: &str, args: &[&str]) -> api::ExecProcessRequest {
    let spec = serde_json::json!({ "args": args, "cwd": "/", "env": ["PATH=/bin:/sbin"] });
    api::ExecProcessRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        spec: MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&spec).expect("a JSON process spec"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The status code of a failed call (`UNKNOWN` for transport errors).
pub fn code_of(err: &ttrpc::Error) -> Code {
    match err {
        ttrpc::Error::RpcStatus(s) => s.code(),
        _ => Code::UNKNOWN,
    }
}

/// The status message of a failed call.
pub fn message_of(err: &ttrpc::Error) -> String {
    match err {
        ttrpc::Error::RpcStatus(s) => s.message().to_string(),
        other => other.to_string(),
    }
}
