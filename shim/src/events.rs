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

/// How many recent events the shim remembers for `tether-ctl events` and dumps.
const HISTORY: usize = 1024;

/// One event as the shim recorded it, for its debug service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Increases by one per event, from 1.
    pub seq: u64,
    pub topic: String,
    pub at: SystemTime,
    /// The event's fields in protobuf text format.
    pub text: String,
    /// Whether containerd acknowledged it.
    pub delivered: bool,
}

#[derive(Default)]
struct Queue {
    /// Events for containerd, oldest first, each with its sequence number.
    pending: VecDeque<(u64, Envelope)>,
    /// The last [`HISTORY`] events, delivered or not.
    history: VecDeque<Recorded>,
    last_seq: u64,
}

impl Queue {
    fn mark_delivered(&mut self, seq: u64) {
        if let Some(r) = self.history.iter_mut().rev().find(|r| r.seq == seq) {
            r.delivered = true;
        }
    }
}

/// Publishes task events in the order they were queued.
///
/// Guarantees: events are delivered one at a time in queue order; an event that fails to
/// publish stays at the front and is retried with backoff until it is delivered (or the shim
/// exits), so a containerd restart loses nothing. Without an events address (standalone use)
/// nothing is queued: events are only recorded, for the debug service's followers.
pub struct Publisher {
    namespace: String,
    /// Whether a thread publishes to containerd.
    publishing: bool,
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Publisher {
    /// Starts the publishing thread for containerd's ttrpc address (`TTRPC_ADDRESS`).
    pub fn start(address: Option<String>, namespace: &str) -> Arc<Publisher> {
        let address = address.filter(|a| !a.is_empty());
        let publisher = Arc::new(Publisher {
            namespace: namespace.to_string(),
            publishing: address.is_some(),
            queue: Mutex::default(),
            changed: Condvar::new(),
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

    /// Queues `event` under `topic`, stamped now.
    pub fn publish(&self, topic: &str, event: &dyn MessageDyn) {
        log::debug!("event {topic}: {event}");
        let at = SystemTime::now();
        let mut env = Envelope::new();
        env.timestamp = Some(timestamp(at)).into();
        env.namespace = self.namespace.clone();
        env.topic = topic.to_string();
        env.event = Some(to_any(event)).into();
        let mut q = self.queue.lock().unwrap();
        q.last_seq += 1;
        let seq = q.last_seq;
        if q.history.len() == HISTORY {
            q.history.pop_front();
        }
        q.history.push_back(Recorded { seq, topic: topic.to_string(), at, text: event.to_string(), delivered: false });
        if self.publishing {
            q.pending.push_back((seq, env));
        }
        self.changed.notify_all();
    }

    /// Events not yet delivered.
    pub fn pending(&self) -> usize {
        let q = self.queue.lock().unwrap();
        q.pending.len()
    }

    /// The events not yet delivered, oldest first.
    pub fn undelivered(&self) -> Vec<Recorded> {
        let q = self.queue.lock().unwrap();
        q.pending.iter().filter_map(|(seq, _)| q.history.iter().find(|r| r.seq == *seq)).cloned().collect()
    }

    /// The remembered events after sequence number `after`, waiting up to `wait` for one when
    /// there is none yet. Events older than the last [`HISTORY`] are gone.
    pub fn recorded_after(&self, after: u64, wait: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + wait;
        let mut q = self.queue.lock().unwrap();
        loop {
            let found: Vec<Recorded> = q.history.iter().filter(|r| r.seq > after).cloned().collect();
            let now = Instant::now();
            if !found.is_empty() || now >= deadline {
                return found;
            }
            q = self.changed.wait_timeout(q, deadline - now).unwrap().0;
        }
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
            let (seq, env) = env;
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
                    q.mark_delivered(seq);
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

#[cfg(test)]
mod tests {
    use tether_protos::events::task::TaskStart;

    use super::*;

    #[test]
    fn events_are_recorded_in_order_for_followers() {
        let publisher = Publisher::start(None, "ns");
        assert!(publisher.recorded_after(0, Duration::from_millis(10)).is_empty());
        let start = |id: &str| TaskStart { container_id: id.into(), pid: 7, ..Default::default() };
        publisher.publish("/tasks/start", &start("a"));
        publisher.publish("/tasks/start", &start("b"));
        let all = publisher.recorded_after(0, Duration::ZERO);
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(all[1].text.contains("\"b\""), "{:?}", all[1]);
        assert_eq!(publisher.recorded_after(1, Duration::ZERO), all[1..]);
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
