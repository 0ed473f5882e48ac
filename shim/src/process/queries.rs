//! The calls that only look: State, Wait, Pids, Stats, Connect's pid and the debug dump.

use std::collections::HashMap;

use tether_protos::{api, debug, protobuf::well_known_types::any::Any, runc_options::ProcessDetails};

use super::{ExitInfo, Process, Table};
use crate::{
    cgroup::Cgroup,
    error::{Error, Result},
    events::{timestamp, to_any},
};

impl Table {
    /// Whether no container is left (Shutdown may exit the shim).
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty() && self.creating.lock().unwrap().is_empty()
    }

    /// The containers whose init has not stopped (created, running or paused): what a
    /// sandbox's StopSandbox has left to kill.
    pub fn live_containers(&self) -> Vec<String> {
        self.lock().iter().filter(|(_, c)| c.init.status != super::Status::Stopped).map(|(id, _)| id.clone()).collect()
    }

    /// Every container and process, as the debug service shows them (sorted by id).
    pub fn dump(&self) -> Vec<debug::Container> {
        let map = self.lock();
        let mut containers: Vec<debug::Container> = map
            .iter()
            .map(|(id, c)| {
                let mut execs: Vec<&Process> = c.execs.values().collect();
                execs.sort_by(|a, b| a.exec_id.cmp(&b.exec_id));
                debug::Container {
                    id: id.clone(),
                    bundle: c.bundle.display().to_string(),
                    executor: c.executor.name().to_string(),
                    init: Some(c.init.dump()).into(),
                    execs: execs.into_iter().map(Process::dump).collect(),
                    cgroup: c
                        .cgroup
                        .as_ref()
                        .and_then(Cgroup::memory_dir)
                        .map(|d| d.display().to_string())
                        .unwrap_or_default(),
                    ..Default::default()
                }
            })
            .collect();
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        containers
    }

    /// The State response for a process.
    pub fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse> {
        self.notice_vanished(id, exec_id);
        self.with(id, |c| {
            let p = c.process(exec_id)?;
            let (code, at) = p.exit_fields();
            Ok(api::StateResponse {
                id: if exec_id.is_empty() { id.into() } else { exec_id.into() },
                bundle: c.bundle.display().to_string(),
                pid: p.pid as u32,
                status: p.status.api().into(),
                stdin: p.stdio.stdin.clone(),
                stdout: p.stdio.stdout.clone(),
                stderr: p.stdio.stderr.clone(),
                terminal: p.stdio.terminal,
                exit_status: code,
                exited_at: p.exited.map(|_| timestamp(at)).into(),
                exec_id: exec_id.into(),
                ..Default::default()
            })
        })
    }

    /// Resolves once the process has stopped, and reports how.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        self.notice_vanished(id, exec_id);
        loop {
            // Registered before the look, so that a change right after it still wakes us.
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let exited = self.with(id, |c| {
                let p = c.process(exec_id)?;
                Ok(p.exited.map(|e| ExitInfo { pid: p.pid as u32, code: e.code, at: e.at }))
            })?;
            if let Some(exit) = exited {
                return Ok(exit);
            }
            changed.await;
        }
    }

    /// The container's processes, exec processes named by their exec id.
    pub async fn pids(&self, id: &str) -> Result<Vec<api::ProcessInfo>> {
        let (executor, execs) = self.with(id, |c| {
            // Only execs still running: the pid of one that ended may be another process's.
            let execs: HashMap<i32, String> = c
                .execs
                .values()
                .filter(|p| p.handle.as_ref().is_some_and(|h| h.is_running()))
                .map(|p| (p.pid, p.exec_id.clone()))
                .collect();
            Ok((c.executor.clone(), execs))
        })?;
        let pids = executor.ps(id).await?;
        Ok(pids
            .into_iter()
            .map(|pid| {
                let mut info = api::ProcessInfo { pid: pid as u32, ..Default::default() };
                if let Some(exec_id) = execs.get(&pid) {
                    info.info = Some(to_any(&ProcessDetails { exec_id: exec_id.clone(), ..Default::default() })).into();
                }
                info
            })
            .collect())
    }

    /// The container's cgroup metrics, in containerd's message for the host's cgroup mode.
    pub fn stats(&self, id: &str) -> Result<Any> {
        let cgroup =
            self.with(id, |c| c.cgroup.clone().ok_or_else(|| Error::NotFound(format!("cgroup of container {id}"))))?;
        if !cgroup.exists() {
            return Err(Error::NotFound(format!("cgroup of container {id} (it has exited)")));
        }
        Ok(cgroup.metrics())
    }

    /// The init's pid, for Connect (0 when the container is unknown).
    pub fn init_pid(&self, id: &str) -> u32 {
        self.with(id, |c| Ok(c.init.pid as u32)).unwrap_or(0)
    }
}
