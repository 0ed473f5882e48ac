//! The pod's containers as the sandbox sees them. StopSandbox stops what is left: containerd's
//! CRI plugin stops every container it knows of before it calls StopSandbox, but another
//! client may have put a task in the sandbox (`ctr run --sandbox`), and the pod must not
//! report stopped while something of it runs.

use std::{sync::Arc, time::Duration};

use tether_protos::ttrpc::Code;

use crate::{
    error::{Error, Result},
    process::Table,
};

/// How long StopSandbox waits for the exits of the containers it killed when containerd
/// names no timeout: a SIGKILLed container's exit is recorded within milliseconds, unless its
/// output stays open (bounded by the exit path's own drain) or the kernel holds it.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the sandbox needs of the shim's process table.
#[async_trait::async_trait]
pub trait PodTasks: Send + Sync {
    /// The containers whose init has not exited.
    fn live(&self) -> Vec<String>;
    /// SIGKILLs every process of container `id` (through the runtime).
    async fn kill(&self, id: &str) -> Result<()>;
    /// Resolves once the init of container `id` has exited and its exit is recorded (and
    /// queued for containerd).
    async fn exited(&self, id: &str) -> Result<()>;
}

#[async_trait::async_trait]
impl PodTasks for Table {
    fn live(&self) -> Vec<String> {
        self.live_containers()
    }

    async fn kill(&self, id: &str) -> Result<()> {
        Table::kill(self, id, "", libc::SIGKILL as u32, true).await
    }

    async fn exited(&self, id: &str) -> Result<()> {
        self.wait(id, "").await.map(drop)
    }
}

/// Kills every container still live, whole (SIGKILL to all its processes), and waits at most
/// `within` until each one's exit is recorded.
pub async fn stop_all(tasks: &Arc<dyn PodTasks>, within: Duration) -> Result<()> {
    let live = tasks.live();
    if live.is_empty() {
        return Ok(());
    }
    log::info!("stopping the sandbox: killing the containers still running: {live:?}");
    let deadline = tokio::time::Instant::now() + within;
    for id in &live {
        match tasks.kill(id).await {
            Ok(()) => {}
            // Gone already (it exited or was deleted meanwhile): nothing is left to stop.
            Err(e) if e.code() == Code::NOT_FOUND => {}
            // Its exit will not come: the wait below says so.
            Err(e) => log::warn!("killing a container of the sandbox: {e}"),
        }
    }
    for id in &live {
        match tokio::time::timeout_at(deadline, tasks.exited(id)).await {
            Ok(Ok(())) | Ok(Err(Error::NotFound(_))) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::Timeout(format!("container {id} did not exit within {within:?} of SIGKILL"))),
        }
    }
    Ok(())
}
