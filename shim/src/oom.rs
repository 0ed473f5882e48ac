//! OOM events: one task on the loop watches the memory cgroup of every container this shim serves and
//! publishes `/tasks/oom` when the kernel OOM-kills a process in one of them.
//!
//! The kernel signals an OOM through an eventfd registered on `memory.oom_control` (cgroup v1)
//! or a change of `memory.events` (cgroup v2, watched with inotify). Either way the event only
//! says "look": the `oom_kill` counter decides whether a kill happened, and each increase is
//! published once. The exit path calls [`OomMonitor::check`] before it publishes a task's exit,
//! so that `/tasks/oom` always precedes the `/tasks/exit` of a process the kernel killed,
//! whichever of the two the shim notices first.

use std::{
    collections::HashMap,
    fs::{self, File},
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::sys::{
    epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout},
    eventfd::{EfdFlags, EventFd},
    inotify::{AddWatchFlags, InitFlags, Inotify},
};
use tether_protos::{events::task::TaskOOM, topics};
use tokio::io::unix::AsyncFd;

use crate::{cgroup::Cgroup, events::Publisher, rt};

/// How often, and how many times, a fired trigger's kill count is read again.
const RECHECK_INTERVAL: Duration = Duration::from_millis(50);
const RECHECKS: u32 = 20;

/// How the kernel tells us to look at a cgroup's OOM counter.
enum Trigger {
    /// cgroup v1: an eventfd registered in `cgroup.event_control` for this `memory.oom_control`
    /// (which must stay open for the registration to live).
    V1 { eventfd: EventFd, _oom_control: File },
    /// cgroup v2: inotify on `memory.events`.
    V2(Inotify),
}

impl Trigger {
    fn open(cgroup: &Cgroup) -> io::Result<Trigger> {
        let dir = cgroup.memory_dir().ok_or_else(|| io::Error::other("the container has no memory cgroup"))?;
        match cgroup {
            Cgroup::V1(_) => {
                let oom_control = File::open(dir.join("memory.oom_control"))?;
                let eventfd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
                fs::write(
                    dir.join("cgroup.event_control"),
                    format!("{} {}", eventfd.as_raw_fd(), oom_control.as_raw_fd()),
                )?;
                Ok(Trigger::V1 { eventfd, _oom_control: oom_control })
            }
            Cgroup::V2(_) => {
                let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
                inotify.add_watch(&dir.join("memory.events"), AddWatchFlags::IN_MODIFY)?;
                Ok(Trigger::V2(inotify))
            }
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Trigger::V1 { eventfd, .. } => eventfd.as_fd(),
            Trigger::V2(inotify) => inotify.as_fd(),
        }
    }

    /// Consumes the pending notification so that epoll stops reporting it.
    fn drain(&self) {
        match self {
            Trigger::V1 { eventfd, .. } => {
                let _ = eventfd.read();
            }
            Trigger::V2(inotify) => while matches!(inotify.read_events(), Ok(e) if !e.is_empty()) {},
        }
    }
}

struct Watch {
    token: u64,
    cgroup: Cgroup,
    /// The `oom_kill` count already published (or present before the watch began).
    reported: u64,
    trigger: Trigger,
}

#[derive(Default)]
struct Watches {
    next_token: u64,
    by_id: HashMap<String, Watch>,
}

/// Watches containers' memory cgroups for OOM kills. One epoll fd, watched by a task on the
/// loop, serves them all; a watch holds two fds (v1) or one (v2) until [`OomMonitor::unwatch`].
pub struct OomMonitor {
    epoll: Epoll,
    /// A duplicate of `epoll`'s fd, registered with the loop.
    fired: AsyncFd<OwnedFd>,
    watches: Mutex<Watches>,
    events: Arc<Publisher>,
}

impl OomMonitor {
    /// Starts the monitor's task on the loop; OOM events go to `events`.
    pub fn start(events: Arc<Publisher>) -> io::Result<Arc<OomMonitor>> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let monitor =
            Arc::new(OomMonitor { fired: rt::watch(epoll.0.try_clone()?)?, epoll, watches: Mutex::default(), events });
        rt::spawn(monitor.clone().run());
        Ok(monitor)
    }

    /// The triggers that fired since the last look (none when `epoll_wait` would block).
    fn fired(&self, ready: &mut [EpollEvent]) -> io::Result<usize> {
        match self.epoll.wait(ready, EpollTimeout::ZERO) {
            Ok(0) => Err(io::ErrorKind::WouldBlock.into()),
            Ok(n) => Ok(n),
            Err(e) => Err(e.into()),
        }
    }

    async fn run(self: Arc<Self>) {
        let mut ready = [EpollEvent::empty(); 16];
        // Containers whose trigger fired before their kill was counted, with the re-reads
        // left: cgroup v1 notifies when the cgroup enters OOM, just before the kernel picks
        // and kills a victim, and does not notify again for the kill.
        let mut rechecks: HashMap<String, u32> = HashMap::new();
        loop {
            let readable = self.fired.readable();
            let fired = if rechecks.is_empty() {
                Some(readable.await)
            } else {
                tokio::select! {
                    r = readable => Some(r),
                    () = tokio::time::sleep(RECHECK_INTERVAL) => None,
                }
            };
            let n = match fired.map(|guard| guard.map(|mut g| g.try_io(|_| self.fired(&mut ready)))) {
                None | Some(Ok(Err(_))) => 0,
                Some(Ok(Ok(Ok(n)))) => n,
                Some(Ok(Ok(Err(e)))) | Some(Err(e)) => {
                    log::error!("oom monitor: epoll: {e}; OOM events are no longer reported");
                    return;
                }
            };
            let mut watches = self.watches.lock().unwrap();
            for ev in &ready[..n] {
                let Some((id, watch)) = watches.by_id.iter_mut().find(|(_, w)| w.token == ev.data()) else {
                    continue;
                };
                watch.trigger.drain();
                if !publish_new_kills(&self.events, id, watch) {
                    rechecks.insert(id.clone(), RECHECKS);
                }
            }
            if n == 0 {
                rechecks.retain(|id, left| {
                    let Some(watch) = watches.by_id.get_mut(id) else { return false };
                    *left -= 1;
                    !publish_new_kills(&self.events, id, watch) && *left > 0
                });
            }
        }
    }
}

/// What the process table needs of an OOM monitor: the seam that lets its tests run
/// without cgroups to watch.
pub trait OomWatch: Send + Sync {
    /// Starts watching the cgroup of container `id`. Kills that happened before are not
    /// reported.
    fn watch(&self, id: &str, cgroup: &Cgroup) -> io::Result<()>;
    /// Publishes `/tasks/oom` for container `id` if the kernel has OOM-killed in its cgroup
    /// since the last report. Called before the container's exits are published.
    fn check(&self, id: &str);
    /// Stops watching container `id` and closes the watch's fds.
    fn unwatch(&self, id: &str);
}

impl OomWatch for OomMonitor {
    fn watch(&self, id: &str, cgroup: &Cgroup) -> io::Result<()> {
        let trigger = Trigger::open(cgroup)?;
        let mut watches = self.watches.lock().unwrap();
        let token = watches.next_token;
        watches.next_token += 1;
        self.epoll.add(trigger.fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))?;
        let watch = Watch { token, cgroup: cgroup.clone(), reported: cgroup.oom_kills().unwrap_or(0), trigger };
        if let Some(old) = watches.by_id.insert(id.to_string(), watch) {
            let _ = self.epoll.delete(old.trigger.fd());
        }
        Ok(())
    }

    fn check(&self, id: &str) {
        let mut watches = self.watches.lock().unwrap();
        if let Some(watch) = watches.by_id.get_mut(id) {
            publish_new_kills(&self.events, id, watch);
        }
    }

    fn unwatch(&self, id: &str) {
        if let Some(watch) = self.watches.lock().unwrap().by_id.remove(id) {
            let _ = self.epoll.delete(watch.trigger.fd());
        }
    }
}

/// Publishes `/tasks/oom` if the cgroup's kill count grew; says whether it did.
fn publish_new_kills(events: &Publisher, id: &str, watch: &mut Watch) -> bool {
    // A cgroup that is gone (the eventfd also fires on removal) reads as no count.
    let Some(kills) = watch.cgroup.oom_kills() else { return false };
    let grew = kills > watch.reported;
    if grew {
        log::info!("container {id}: {} OOM kill(s)", kills - watch.reported);
        watch.reported = kills;
        events.publish(topics::TASK_OOM_EVENT_TOPIC, &TaskOOM { container_id: id.to_string(), ..Default::default() });
    }
    grew
}
