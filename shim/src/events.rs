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
    protobuf::{well_known_types::{any::Any, timestamp::Timestamp}, Message, MessageDyn},
    shim::{events::ForwardRequest, events_ttrpc::EventsClient, event::Envelope},
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

/// Packs a message into an `Any` the way containerd's typeurl names protobuf messages.
pub fn to_any(msg: &dyn MessageDyn) -> Any {
    let mut any = Any::new();
    any.type_url = msg.descriptor_dyn().full_name().to_string();
    any.value = msg.write_to_bytes_dyn().unwrap_or_default();
    any
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
        let spilled = self.spill.as_ref().is_some_and(|s| s.len() > 0);
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
/// [`MEMORY_EVENTS`] they wait in a file. Without an events address (standalone use) events
/// are only logged.
pub struct Publisher {
    namespace: String,
    queue: Mutex<Queue>,
    changed: Condvar,
    /// Told of every event containerd has accepted.
    on_delivered: OnceLock<Box<dyn Fn(&Envelope) + Send + Sync>>,
}

impl Publisher {
    /// Starts the publishing thread for containerd's ttrpc address (`TTRPC_ADDRESS`).
    pub fn start(address: Option<String>, namespace: &str) -> Arc<Publisher> {
        let publisher = Arc::new(Publisher {
            namespace: namespace.to_string(),
            queue: Mutex::new(Queue { memory: VecDeque::new(), spill: None }),
            changed: Condvar::new(),
            on_delivered: OnceLock::new(),
        });
        if let Some(address) = address.filter(|a| !a.is_empty()) {
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
    pub fn publish(&self, topic: &str, event: &dyn MessageDyn) {
        log::debug!("event {topic}: {event}");
        let mut env = Envelope::new();
        env.timestamp = Some(timestamp(SystemTime::now())).into();
        env.namespace = self.namespace.clone();
        env.topic = topic.to_string();
        env.event = Some(to_any(event)).into();
        let mut q = self.queue.lock().unwrap();
        q.push(env);
        self.changed.notify_all();
    }

    /// Events not yet delivered.
    pub fn pending(&self) -> usize {
        self.queue.lock().unwrap().len()
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
}
