//! Task events to containerd: an ordered queue drained by one thread that publishes each event
//! to containerd's ttrpc events service, retrying (never dropping) while containerd is away.
//! The queue keeps a bounded number of events in memory and spills the rest to a file.

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, OnceLock},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tether_protos::{
    cgroups::metrics as cgroups_v1,
    cgroups_v2::metrics as cgroups_v2,
    events::task::{
        TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM,
        TaskPaused, TaskResumed, TaskStart,
    },
    protobuf::{
        well_known_types::{any::Any, timestamp::Timestamp},
        Message, MessageFull,
    },
    runc_options::ProcessDetails,
    shim::{event::Envelope, events::ForwardRequest, events_ttrpc::EventsClient},
    ttrpc,
};

use crate::spill::Spill;

/// How long one publish attempt may take before it counts as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause between two attempts while containerd is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How many undelivered events are kept in memory; later ones wait in the spill file.
pub const MEMORY_EVENTS: usize = 256;

/// A protobuf timestamp for `t`.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// A message that goes to containerd in an `Any`, whose type URL is the message's protobuf
/// full name (containerd's typeurl). The package is spelled out here rather than asked of
/// protobuf's reflection: reflection's first use builds the descriptors of the message's
/// whole proto file and its imports (descriptor.proto among them), a third of a MiB that
/// every shim would then keep for its whole life.
pub trait Named: MessageFull {
    /// The protobuf package the message is declared in.
    const PACKAGE: &'static str;
}

macro_rules! named {
    ($($package:literal: $($message:ty),+;)+) => {
        $($(impl Named for $message {
            const PACKAGE: &'static str = $package;
        })+)+

        /// Each [`Named`] message's type URL, and its full name as reflection gives it.
        #[cfg(test)]
        const NAMED: &[fn() -> (String, String)] = &[$($(
            || (to_any(&<$message>::new()).type_url, <$message>::descriptor().full_name().to_string())
        ),+),+];
    };
}

named! {
    "containerd.events": TaskCreate, TaskStart, TaskExit, TaskDelete, TaskOOM, TaskIO, TaskExecAdded,
        TaskExecStarted, TaskPaused, TaskResumed, TaskCheckpointed;
    "containerd.runc.v1": ProcessDetails;
    "io.containerd.cgroups.v1": cgroups_v1::Metrics;
    "io.containerd.cgroups.v2": cgroups_v2::Metrics;
}

/// Packs a message into an `Any` the way containerd's typeurl names protobuf messages.
pub fn to_any<M: Named>(msg: &M) -> Any {
    let mut any = Any::new();
    any.type_url = format!("{}.{}", M::PACKAGE, M::NAME);
    any.value = msg.write_to_bytes().unwrap_or_default();
    any
}

/// An event's fields in protobuf text format (which takes reflection: only for debugging).
fn text_of<M: MessageFull>(bytes: &[u8]) -> String {
    M::parse_from_bytes(bytes).map(|m| m.to_string()).unwrap_or_else(|e| format!("(does not decode: {e})"))
}

/// How many recent events the shim remembers for `tether-ctl events` and dumps.
const HISTORY: usize = 1024;

/// One event as the shim recorded it, for its debug service.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Increases by one per event, from 1.
    pub seq: u64,
    pub topic: String,
    pub at: SystemTime,
    /// The event, encoded; [`Recorded::text`] decodes it.
    event: Vec<u8>,
    text_of: fn(&[u8]) -> String,
    /// Whether containerd acknowledged it.
    pub delivered: bool,
}

impl Recorded {
    /// The event's fields in protobuf text format.
    pub fn text(&self) -> String {
        (self.text_of)(&self.event)
    }
}

/// The last [`HISTORY`] events, delivered or not.
#[derive(Default)]
struct History {
    events: VecDeque<Recorded>,
    last_seq: u64,
    /// The sequence number of the last event containerd accepted: events are queued in
    /// sequence order and delivered in queue order, so every event up to it is delivered.
    delivered_seq: u64,
}

impl History {
    fn record(&mut self, topic: &str, at: SystemTime, event: Vec<u8>, text_of: fn(&[u8]) -> String) {
        self.last_seq += 1;
        if self.events.len() == HISTORY {
            self.events.pop_front();
        }
        self.events.push_back(Recorded {
            seq: self.last_seq,
            topic: topic.to_string(),
            at,
            event,
            text_of,
            delivered: false,
        });
    }

    fn delivered_one(&mut self) {
        self.delivered_seq += 1;
        let seq = self.delivered_seq;
        if let Some(r) = self.events.iter_mut().rev().find(|r| r.seq == seq) {
            r.delivered = true;
        }
    }
}

/// Undelivered events, oldest first: those in memory, then those spilled.
struct Queue {
    memory: VecDeque<Envelope>,
    /// Made at the first overflow.
    spill: Option<Spill>,
}

impl Queue {
    fn len(&self) -> usize {
        self.memory.len() + self.spill.as_ref().map_or(0, Spill::len)
    }

    fn push(&mut self, env: Envelope) {
        let spilled = self.spill.as_ref().is_some_and(|s| !s.is_empty());
        if !spilled && self.memory.len() < MEMORY_EVENTS {
            self.memory.push_back(env);
            return;
        }
        let spill = self.spill.get_or_insert_with(|| {
            log::warn!("more than {MEMORY_EVENTS} events undelivered; spilling the rest to a file");
            Spill::new(&std::env::temp_dir())
        });
        spill.push(env.write_to_bytes().expect("an envelope encodes"));
    }

    /// Drops the delivered front event and refills memory from the spill, in order.
    fn pop_delivered(&mut self) {
        self.memory.pop_front();
        let Some(spill) = &mut self.spill else { return };
        while self.memory.len() < MEMORY_EVENTS {
            let Some(bytes) = spill.pop() else { break };
            match Envelope::parse_from_bytes(&bytes) {
                Ok(env) => self.memory.push_back(env),
                Err(e) => log::error!("a spilled event does not decode ({e}); it is lost"),
            }
        }
    }
}

/// Publishes task events in the order they were queued.
///
/// Guarantees: events are delivered one at a time in queue order; an event that fails to
/// publish stays at the front and is retried with backoff until it is delivered (or the shim
/// exits), so a containerd restart loses nothing, however long containerd is away: past
/// [`MEMORY_EVENTS`] they wait in a file. Without an events address (standalone use) nothing
/// is queued: events are only recorded, for the debug service's followers.
pub struct Publisher {
    namespace: String,
    /// Whether a thread publishes to containerd.
    publishing: bool,
    queue: Mutex<Queue>,
    /// Guarded apart from the queue: followers and dumps never wait on a spill file.
    history: Mutex<History>,
    changed: Condvar,
    /// Signalled when an event is recorded.
    recorded: Condvar,
    /// Told of every event containerd has accepted.
    on_delivered: OnceLock<Box<OnDelivered>>,
}

/// What is told of each event containerd has accepted.
type OnDelivered = dyn Fn(&Envelope) + Send + Sync;

impl Publisher {
    /// Starts the publishing thread for containerd's ttrpc address (`TTRPC_ADDRESS`).
    pub fn start(address: Option<String>, namespace: &str) -> Arc<Publisher> {
        let address = address.filter(|a| !a.is_empty());
        let publisher = Arc::new(Publisher {
            namespace: namespace.to_string(),
            publishing: address.is_some(),
            queue: Mutex::new(Queue { memory: VecDeque::new(), spill: None }),
            history: Mutex::default(),
            changed: Condvar::new(),
            recorded: Condvar::new(),
            on_delivered: OnceLock::new(),
        });
        if let Some(address) = address {
            let p = publisher.clone();
            thread::Builder::new()
                .name("events".into())
                .spawn(move || p.run(&address))
                .expect("spawning the events thread");
        }
        publisher
    }

    /// Has `f` called with each event once containerd has accepted it (set once).
    pub fn on_delivered(&self, f: impl Fn(&Envelope) + Send + Sync + 'static) {
        if self.on_delivered.set(Box::new(f)).is_err() {
            panic!("Publisher::on_delivered is set once");
        }
    }

    /// Queues `event` under `topic`, stamped now.
    pub fn publish<M: Named>(&self, topic: &str, event: &M) {
        log::debug!("event {topic}: {event}");
        let at = SystemTime::now();
        let any = to_any(event);
        let recorded = any.value.clone();
        let mut env = Envelope::new();
        env.timestamp = Some(timestamp(at)).into();
        env.namespace = self.namespace.clone();
        env.topic = topic.to_string();
        env.event = Some(any).into();
        // Queue and record under the queue's lock, so that sequence order is queue order.
        let mut q = self.queue.lock().unwrap();
        self.history.lock().unwrap().record(topic, at, recorded, text_of::<M>);
        self.recorded.notify_all();
        if self.publishing {
            q.push(env);
            self.changed.notify_all();
        }
    }

    /// Events not yet delivered.
    pub fn pending(&self) -> usize {
        self.queue.lock().unwrap().len()
    }

    /// The remembered events not yet delivered, oldest first.
    pub fn undelivered(&self) -> Vec<Recorded> {
        if !self.publishing {
            return Vec::new();
        }
        let h = self.history.lock().unwrap();
        h.events.iter().filter(|r| r.seq > h.delivered_seq).cloned().collect()
    }

    /// The remembered events after sequence number `after`, waiting up to `wait` for one when
    /// there is none yet. Events older than the last [`HISTORY`] are gone.
    pub fn recorded_after(&self, after: u64, wait: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + wait;
        let mut h = self.history.lock().unwrap();
        loop {
            let found: Vec<Recorded> = h.events.iter().filter(|r| r.seq > after).cloned().collect();
            let now = Instant::now();
            if !found.is_empty() || now >= deadline {
                return found;
            }
            h = self.recorded.wait_timeout(h, deadline - now).unwrap().0;
        }
    }

    /// Waits until every queued event is delivered, at most `timeout`; returns whether the
    /// queue is empty.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut q = self.queue.lock().unwrap();
        while q.len() > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            q = self.changed.wait_timeout(q, deadline - now).unwrap().0;
        }
        true
    }

    fn run(&self, address: &str) {
        let mut client: Option<EventsClient> = None;
        let mut backoff = Duration::from_millis(50);
        loop {
            let env = {
                let mut q = self.queue.lock().unwrap();
                // Memory only empties once the spill has been read back into it.
                while q.memory.is_empty() {
                    q = self.changed.wait(q).unwrap();
                }
                q.memory.front().cloned().expect("queue is not empty")
            };
            let result = match &client {
                Some(c) => forward(c, env.clone()),
                None => match connect(address) {
                    Ok(c) => {
                        let r = forward(&c, env.clone());
                        client = Some(c);
                        r
                    }
                    Err(e) => Err(e),
                },
            };
            if result.is_ok() {
                if let Some(f) = self.on_delivered.get() {
                    f(&env);
                }
            }
            let mut q = self.queue.lock().unwrap();
            match result {
                Ok(()) => {
                    q.pop_delivered();
                    self.history.lock().unwrap().delivered_one();
                    backoff = Duration::from_millis(50);
                    self.changed.notify_all();
                }
                Err(e) => {
                    log::warn!("publishing event to {address} failed ({} queued), will retry: {e}", q.len());
                    client = None;
                    drop(q);
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

fn connect(address: &str) -> Result<EventsClient, String> {
    let fd = containerd_shim::util::connect(address).map_err(|e| e.to_string())?;
    let client = ttrpc::Client::new(fd).map_err(|e| e.to_string())?;
    Ok(EventsClient::new(client))
}

fn forward(client: &EventsClient, env: Envelope) -> Result<(), String> {
    let mut req = ForwardRequest::new();
    req.envelope = Some(env).into();
    client
        .forward(ttrpc::context::with_timeout(PUBLISH_TIMEOUT.as_nanos() as i64), &req)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_are_protobuf_full_names() {
        assert_eq!(NAMED.len(), 14);
        for named in NAMED {
            let (type_url, full_name) = named();
            assert_eq!(type_url, full_name);
        }
    }

    #[test]
    fn overflow_is_spilled_and_comes_back_in_order() {
        let mut q = Queue { memory: VecDeque::new(), spill: None };
        let n = MEMORY_EVENTS * 3 + 7;
        for i in 0..n {
            let mut env = Envelope::new();
            env.topic = format!("/test/{i}");
            q.push(env);
        }
        assert_eq!(q.memory.len(), MEMORY_EVENTS, "memory holds a bounded number");
        assert_eq!(q.len(), n, "nothing dropped");
        for i in 0..n {
            assert_eq!(q.memory.front().map(|e| e.topic.as_str()), Some(format!("/test/{i}").as_str()));
            if i == n / 2 {
                let mut late = Envelope::new();
                late.topic = "/test/late".into();
                q.push(late);
            }
            q.pop_delivered();
        }
        assert_eq!(q.memory.front().map(|e| e.topic.as_str()), Some("/test/late"));
        q.pop_delivered();
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn events_are_recorded_in_order_for_followers() {
        let publisher = Publisher::start(None, "ns");
        assert!(publisher.recorded_after(0, Duration::from_millis(10)).is_empty());
        let start = |id: &str| TaskStart { container_id: id.into(), pid: 7, ..Default::default() };
        publisher.publish("/tasks/start", &start("a"));
        publisher.publish("/tasks/start", &start("b"));
        let all = publisher.recorded_after(0, Duration::ZERO);
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(all[1].text(), "container_id: \"b\" pid: 7");
        let later = publisher.recorded_after(1, Duration::ZERO);
        assert_eq!(later.iter().map(|r| r.seq).collect::<Vec<_>>(), [2]);
        // Without containerd nothing is queued for it, and nothing waits on a flush.
        assert_eq!(publisher.pending(), 0);
        assert!(publisher.flush(Duration::ZERO));
    }

    #[test]
    fn a_follower_is_woken_by_the_next_event() {
        let publisher = Publisher::start(None, "ns");
        let p = publisher.clone();
        let follower = thread::spawn(move || p.recorded_after(0, Duration::from_secs(10)));
        thread::sleep(Duration::from_millis(50));
        publisher.publish("/tasks/start", &TaskStart::default());
        let got = follower.join().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].topic, "/tasks/start");
    }

    #[test]
    fn history_is_bounded() {
        let publisher = Publisher::start(None, "ns");
        for _ in 0..HISTORY + 5 {
            publisher.publish("/tasks/start", &TaskStart::default());
        }
        let all = publisher.recorded_after(0, Duration::ZERO);
        assert_eq!(all.len(), HISTORY);
        assert_eq!(all[0].seq, 6);
    }
}
