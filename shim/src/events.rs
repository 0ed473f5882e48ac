//! Task events to containerd: an ordered queue drained by one thread that publishes each event
//! to containerd's ttrpc events service, retrying (never dropping) while containerd is away.

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tether_protos::{
    protobuf::{well_known_types::{any::Any, timestamp::Timestamp}, MessageDyn},
    shim::{events::ForwardRequest, events_ttrpc::EventsClient, event::Envelope},
    ttrpc,
};

/// How long one publish attempt may take before it counts as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause between two attempts while containerd is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

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

#[derive(Default)]
struct Queue {
    pending: VecDeque<Envelope>,
}

/// Publishes task events in the order they were queued.
///
/// Guarantees: events are delivered one at a time in queue order; an event that fails to
/// publish stays at the front and is retried with backoff until it is delivered (or the shim
/// exits), so a containerd restart loses nothing. Without an events address (standalone use)
/// events are only logged.
pub struct Publisher {
    namespace: String,
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Publisher {
    /// Starts the publishing thread for containerd's ttrpc address (`TTRPC_ADDRESS`).
    pub fn start(address: Option<String>, namespace: &str) -> Arc<Publisher> {
        let publisher = Arc::new(Publisher {
            namespace: namespace.to_string(),
            queue: Mutex::default(),
            changed: Condvar::new(),
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

    /// Queues `event` under `topic`, stamped now.
    pub fn publish(&self, topic: &str, event: &dyn MessageDyn) {
        log::debug!("event {topic}: {event}");
        let mut env = Envelope::new();
        env.timestamp = Some(timestamp(SystemTime::now())).into();
        env.namespace = self.namespace.clone();
        env.topic = topic.to_string();
        env.event = Some(to_any(event)).into();
        let mut q = self.queue.lock().unwrap();
        q.pending.push_back(env);
        self.changed.notify_all();
    }

    /// Events not yet delivered.
    pub fn pending(&self) -> usize {
        let q = self.queue.lock().unwrap();
        q.pending.len()
    }

    /// Waits until every queued event is delivered, at most `timeout`; returns whether the
    /// queue is empty.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut q = self.queue.lock().unwrap();
        while !q.pending.is_empty() {
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
                while q.pending.is_empty() {
                    q = self.changed.wait(q).unwrap();
                }
                q.pending.front().cloned().expect("queue is not empty")
            };
            let result = match &client {
                Some(c) => forward(c, env),
                None => match connect(address) {
                    Ok(c) => {
                        let r = forward(&c, env);
                        client = Some(c);
                        r
                    }
                    Err(e) => Err(e),
                },
            };
            let mut q = self.queue.lock().unwrap();
            match result {
                Ok(()) => {
                    q.pending.pop_front();
                    backoff = Duration::from_millis(50);
                    self.changed.notify_all();
                }
                Err(e) => {
                    log::warn!(
                        "publishing event to {address} failed ({} queued), will retry: {e}",
                        q.pending.len()
                    );
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
