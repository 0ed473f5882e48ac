//! The exit journal: each container's exits that containerd has not been told of yet, in a
//! small file in its bundle, from the moment they are reaped until their /tasks/exit event is
//! delivered.
//!
//! While the shim lives, its table answers State and Wait and its event queue delivers the
//! exits, however long containerd is away. The journal is what is left if the shim dies
//! first: `delete`, which containerd runs in the bundle of a dead shim's task, reports the
//! init's real exit status from it instead of a made-up SIGKILL.

use std::{
    collections::HashMap,
    fs::{self, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tether_protos::{events::task::TaskExit, protobuf::Message, shim::event::Envelope, topics};

use crate::bundle::EXIT_JOURNAL;

/// One exit, named as its /tasks/exit event names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The container id for an init, else the exec id.
    pub id: String,
    pub pid: u32,
    pub code: u32,
    /// When it exited, since the epoch.
    pub secs: u64,
    pub nanos: u32,
}

impl Entry {
    pub fn new(id: &str, pid: u32, code: u32, at: SystemTime) -> Entry {
        let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        Entry { id: id.into(), pid, code, secs: d.as_secs(), nanos: d.subsec_nanos() }
    }

    pub fn at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::new(self.secs, self.nanos)
    }
}

/// The journals of the containers one shim serves.
#[derive(Default)]
pub struct ExitJournal {
    /// Container id to bundle; the lock also orders the writes to each file.
    bundles: Mutex<HashMap<String, PathBuf>>,
}

impl ExitJournal {
    /// Starts journaling the exits of `container`, whose bundle is `bundle`.
    pub fn open(&self, container: &str, bundle: &Path) {
        self.bundles.lock().unwrap().insert(container.into(), bundle.into());
    }

    /// Stops journaling `container` (deleted: containerd has its exit) and removes its file.
    pub fn close(&self, container: &str) {
        if let Some(bundle) = self.bundles.lock().unwrap().remove(container) {
            let _ = fs::remove_file(bundle.join(EXIT_JOURNAL));
        }
    }

    /// Writes down an exit of a process of `container`.
    pub fn record(&self, container: &str, entry: &Entry) {
        let bundles = self.bundles.lock().unwrap();
        let Some(bundle) = bundles.get(container) else { return };
        let mut line = serde_json::to_vec(entry).expect("an entry serialises");
        line.push(b'\n');
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(bundle.join(EXIT_JOURNAL))
            .and_then(|mut f| f.write_all(&line));
        if let Err(e) = written {
            log::warn!("{container}: journaling the exit of pid {}: {e}", entry.pid);
        }
    }

    /// Strikes out what `delivered` reports, if it is a /tasks/exit event.
    pub fn settle(&self, delivered: &Envelope) {
        if delivered.topic != topics::TASK_EXIT_EVENT_TOPIC {
            return;
        }
        let Some(exit) = delivered.event.as_ref().and_then(|any| TaskExit::parse_from_bytes(&any.value).ok()) else {
            return;
        };
        let bundles = self.bundles.lock().unwrap();
        let Some(bundle) = bundles.get(&exit.container_id) else { return };
        let entries = read(bundle);
        let left: Vec<&Entry> = entries.iter().filter(|e| !(e.id == exit.id && e.pid == exit.pid)).collect();
        if left.len() == entries.len() {
            return;
        }
        if let Err(e) = rewrite(bundle, &left) {
            log::warn!("{}: updating the exit journal: {e}", exit.container_id);
        }
    }
}

/// The journal of `bundle` (empty when there is none).
pub fn read(bundle: &Path) -> Vec<Entry> {
    fs::read_to_string(bundle.join(EXIT_JOURNAL))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Replaces the journal of `bundle` with `entries` (removes it when there are none).
fn rewrite(bundle: &Path, entries: &[&Entry]) -> io::Result<()> {
    let path = bundle.join(EXIT_JOURNAL);
    if entries.is_empty() {
        return fs::remove_file(path);
    }
    let mut text = Vec::new();
    for e in entries {
        text.extend(serde_json::to_vec(e).expect("an entry serialises"));
        text.push(b'\n');
    }
    // A crash leaves either the old journal or the new one.
    let tmp = bundle.join(format!("{EXIT_JOURNAL}.tmp"));
    fs::write(&tmp, text)?;
    fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use tether_protos::protobuf::MessageField;

    use super::*;
    use crate::events::to_any;

    fn exit_event(container: &str, id: &str, pid: u32) -> Envelope {
        let exit = TaskExit { container_id: container.into(), id: id.into(), pid, ..Default::default() };
        Envelope {
            topic: topics::TASK_EXIT_EVENT_TOPIC.into(),
            event: MessageField::some(to_any(&exit)),
            ..Default::default()
        }
    }

    #[test]
    fn exits_stay_until_their_event_is_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let journal = ExitJournal::default();
        journal.open("c1", dir.path());
        let at = SystemTime::now();
        journal.record("c1", &Entry::new("e1", 11, 3, at));
        journal.record("c1", &Entry::new("c1", 10, 9, at));
        assert_eq!(read(dir.path()).len(), 2);
        journal.settle(&exit_event("c1", "e1", 12));
        journal.settle(&exit_event("c2", "e1", 11));
        assert_eq!(read(dir.path()).len(), 2, "only the delivered exit is struck out");
        journal.settle(&exit_event("c1", "e1", 11));
        let left = read(dir.path());
        assert_eq!(left, vec![Entry::new("c1", 10, 9, at)]);
        assert_eq!(left[0].at(), at);
        journal.settle(&exit_event("c1", "c1", 10));
        assert!(!dir.path().join(EXIT_JOURNAL).exists(), "an empty journal is removed");
    }

    #[test]
    fn closing_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let journal = ExitJournal::default();
        journal.open("c1", dir.path());
        journal.record("c1", &Entry::new("c1", 10, 9, SystemTime::now()));
        journal.close("c1");
        assert!(!dir.path().join(EXIT_JOURNAL).exists());
        journal.record("c1", &Entry::new("c1", 10, 9, SystemTime::now()));
        assert!(!dir.path().join(EXIT_JOURNAL).exists(), "a closed journal takes no more");
    }
}
