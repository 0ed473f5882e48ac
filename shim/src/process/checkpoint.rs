//! Checkpoint: containerd's runc CheckpointOptions decoded, CRIU run through the executor, its
//! log kept in the bundle when it fails.

use std::{
    fs,
    path::{Path, PathBuf},
};

use tether_protos::{events::task::TaskCheckpointed, protobuf::Message, runc_options::CheckpointOptions, topics};
use tether_runtime::{CheckpointOpts, CriuOpts};

use super::{state::Op, CheckpointRequest, Table};
use crate::{
    bundle,
    error::{Error, Result},
};

impl Table {
    /// Checkpoints the container with CRIU, and publishes /tasks/checkpointed.
    pub async fn checkpoint(&self, id: &str, req: CheckpointRequest) -> Result<()> {
        let options = match &req.options {
            Some(any) if !any.type_url.is_empty() => {
                if !any.type_url.ends_with("containerd.runc.v1.CheckpointOptions") {
                    return Err(Error::InvalidArgument(format!(
                        "unsupported checkpoint options type {:?}: tether takes containerd.runc.v1.CheckpointOptions",
                        any.type_url
                    )));
                }
                CheckpointOptions::parse_from_bytes(&any.value)
                    .map_err(|e| Error::InvalidArgument(format!("bad checkpoint options: {e}")))?
            }
            _ => CheckpointOptions::default(),
        };
        let lifecycle = self.lifecycle(id)?;
        let _serial = lifecycle.lock().await;
        let (executor, bundle_dir) = self.with(id, |c| {
            c.init.check(Op::Checkpoint)?;
            Ok((c.executor.clone(), c.bundle.clone()))
        })?;
        let image_path =
            if options.image_path.is_empty() { req.path.clone() } else { options.image_path.clone().into() };
        if image_path.as_os_str().is_empty() {
            return Err(Error::InvalidArgument("checkpoint needs an image path".into()));
        }
        let keep_work = !options.work_path.is_empty();
        let work_path = if keep_work { PathBuf::from(&options.work_path) } else { bundle_dir.join(bundle::CRIU_WORK) };
        for dir in [&image_path, &work_path] {
            fs::create_dir_all(dir)
                .map_err(|e| Error::InvalidArgument(format!("checkpoint directory {}: {e}", dir.display())))?;
        }
        let opts = CheckpointOpts {
            criu: CriuOpts {
                image_path: image_path.clone(),
                work_path: work_path.clone(),
                open_tcp: options.open_tcp,
                external_unix_sockets: options.external_unix_sockets,
                terminal: options.terminal,
                file_locks: options.file_locks,
                empty_namespaces: options.empty_namespaces.clone(),
                cgroups_mode: Some(options.cgroups_mode.clone()).filter(|m| !m.is_empty()),
            },
            leave_running: !options.exit,
        };
        let result = executor.checkpoint(id, &opts).await.map_err(|e| criu_failure(e, &work_path, &bundle_dir, "dump"));
        if !keep_work {
            let _ = fs::remove_dir_all(&work_path);
        }
        result?;
        self.events.publish(
            topics::TASK_CHECKPOINTED_EVENT_TOPIC,
            &TaskCheckpointed {
                container_id: id.into(),
                checkpoint: image_path.display().to_string(),
                ..Default::default()
            },
        );
        Ok(())
    }
}

/// A failed CRIU run (`action` is `dump` or `restore`): keeps CRIU's log in the bundle
/// (`criu-<action>.log`), since the work directory may be removed, and names it in the error.
pub(super) fn criu_failure(err: tether_runtime::Error, work: &Path, bundle_dir: &Path, action: &str) -> Error {
    if !matches!(err, tether_runtime::Error::Runtime { .. }) {
        return err.into();
    }
    let kept = bundle::criu_log(bundle_dir, action);
    match fs::copy(work.join(format!("{action}.log")), &kept) {
        Ok(_) => Error::Criu { message: err.to_string(), log: kept },
        Err(_) => err.into(),
    }
}
