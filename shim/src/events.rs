//! Task events to containerd: an ordered queue drained by one task on the shim's loop that
//! publishes each event to containerd's ttrpc events service, retrying (never dropping) while
//! containerd is away, and giving up on an event that containerd itself refuses, after a few
//! tries. The queue keeps a bounded number of events in memory and spills the rest to a file.
//! No thread of its own: publishing is a queue push from any thread, and the delivering, its
//! retries and its connection to containerd are tasks on the loop ([`rt`]).

use std::{
    collections::VecDeque,
    path::PathBuf,
    pin::pin,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use tokio::{net::UnixStream, sync::Notify};

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
    shim::{event::Envelope, events::ForwardRequest, events_ttrpc_async::EventsClient},
    ttrpc::{self, r#async::transport::Socket},
};

use crate::{rt, spill::Spill};

/// How long one publish attempt may take before it counts as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// The pauses between two attempts to publish an event: doubling from the first, up to the
/// longest.
#[derive(Clone, Copy)]
struct Backoff {
    first: Duration,
    max: Duration,
}

const BACKOFF: Backoff = Backoff { first: Duration::from_millis(50), max: Duration::from_secs(2) };
/// How many undelivered events are kept in memory; later ones wait in the spill file.
pub const MEMORY_EVENTS: usize = 256;
/// The most bytes of events the spill file holds: a few hundred thousand events, far more than
/// a containerd restart leaves behind, and little disk.
const SPILL_LIMIT: u64 = 64 << 20;
/// How many times an event is offered to a containerd that answers it with an error before
/// it is dropped: the first try and five more, as containerd's Go shim does.
pub const MAX_ATTEMPTS: u32 = 6;

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
    /// The sequence number of the last event that left the queue: events are queued in
    /// sequence order and leave it in queue order, so every event up to it has left it.
    delivered_seq: u64,
    /// Events never queued (the spill was full), in order: they count as gone already.
    skipped: VecDeque<u64>,
}

impl History {
    /// Remembers an event; returns its sequence number.
    fn record(&mut self, topic: &str, at: SystemTime, event: Vec<u8>, text_of: fn(&[u8]) -> String) -> u64 {
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
        self.last_seq
    }

    /// The front event left the queue: accepted by containerd (`delivered`), or dropped.
    fn settled_one(&mut self, delivered: bool) {
        self.delivered_seq += 1;
        let seq = self.delivered_seq;
        if let Some(r) = self.events.iter_mut().rev().find(|r| r.seq == seq) {
            r.delivered = delivered;
        }
        while self.skipped.front() == Some(&(self.delivered_seq + 1)) {
            self.skipped.pop_front();
            self.delivered_seq += 1;
        }
    }
}

/// Undelivered events, oldest first: those in memory, then those spilled.
struct Queue {
    memory: VecDeque<Envelope>,
    /// Where the spill file is made.
    spill_dir: PathBuf,
    /// Made at the first overflow.
    spill: Option<Spill>,
}

impl Queue {
    fn len(&self) -> usize {
        self.memory.len() + self.spill.as_ref().map_or(0, Spill::len)
    }

    /// Queues an event; returns false when it was dropped because the spill is full.
    fn push(&mut self, env: Envelope) -> bool {
        let spilled = self.spill.as_ref().is_some_and(|s| !s.is_empty());
        if !spilled && self.memory.len() < MEMORY_EVENTS {
            self.memory.push_back(env);
            return true;
        }
        let dir = &self.spill_dir;
        let spill = self.spill.get_or_insert_with(|| {
            log::warn!(
                "more than {MEMORY_EVENTS} events undelivered; spilling the rest to a file in {}",
                dir.display()
            );
            Spill::new(dir, SPILL_LIMIT)
        });
        spill.push(env.write_to_bytes().expect("an envelope encodes"))
    }

    /// Drops the front event (delivered, or given up on) and refills memory from the spill, in
    /// order.
    fn pop_front(&mut self) {
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
/// Guarantees: events are delivered one at a time in queue order. An event that cannot reach
/// containerd stays at the front and is retried with backoff until it is delivered (or the
/// shim exits), so a containerd restart loses nothing, however long containerd is away: past
/// [`MEMORY_EVENTS`] they wait in a file (itself bounded, see [`Spill`]). An event containerd
/// answers with an error status is offered [`MAX_ATTEMPTS`] times, then dropped with a
/// warning naming its topic, so that one bad event never holds up those after it. Without an
/// events address (standalone use) nothing is queued: events are only recorded, for the debug
/// service's followers.
///
/// The delivering is one task on the shim's loop ([`rt`]), not a thread: it sleeps on
/// [`Notify`] while the queue is empty and on the loop's timer between retries, and talks to
/// containerd through ttrpc's async client, whose connection is two more tasks on the loop.
pub struct Publisher {
    namespace: String,
    /// Whether a task publishes to containerd.
    publishing: bool,
    queue: Mutex<Queue>,
    /// Guarded apart from the queue: followers and dumps never wait on a spill file.
    history: Mutex<History>,
    /// Wakes the delivering task when an event is queued. `notify_one` keeps a permit while the
    /// task is busy, so an event queued between its look at the queue and its wait still
    /// wakes it.
    queued: Notify,
    /// Wakes every [`Publisher::flush`] when an event leaves the queue.
    settled: Notify,
    /// Wakes followers ([`Publisher::recorded_after`]) when an event is recorded.
    recorded: Notify,
    /// Told of every event containerd has accepted.
    on_delivered: OnceLock<Box<OnDelivered>>,
}

/// What is told of each event containerd has accepted.
type OnDelivered = dyn Fn(&Envelope) + Send + Sync;

impl Publisher {
    /// Starts publishing to containerd's ttrpc address (`TTRPC_ADDRESS`): a task on the shim's
    /// loop ([`rt::spawn`]), which delivers only while the loop runs. Events that overflow
    /// memory are spilled to a file in `spill_dir`. Without an address, events are only
    /// recorded and no task is started.
    pub fn start(address: Option<String>, namespace: &str, spill_dir: PathBuf) -> Arc<Publisher> {
        let sink = address.filter(|a| !a.is_empty()).map(|address| Containerd { address, client: None });
        Publisher::with_sink(namespace, spill_dir, sink, BACKOFF)
    }

    fn with_sink(namespace: &str, spill_dir: PathBuf, sink: Option<impl Sink>, backoff: Backoff) -> Arc<Publisher> {
        let publisher = Arc::new(Publisher {
            namespace: namespace.to_string(),
            publishing: sink.is_some(),
            queue: Mutex::new(Queue { memory: VecDeque::new(), spill_dir, spill: None }),
            history: Mutex::default(),
            queued: Notify::new(),
            settled: Notify::new(),
            recorded: Notify::new(),
            on_delivered: OnceLock::new(),
        });
        if let Some(sink) = sink {
            rt::spawn(publisher.clone().deliver(sink, backoff));
        }
        publisher
    }

    /// Has `f` called with each event once containerd has accepted it (set once). `f` runs on
    /// the shim's loop, before the next event is offered: it must be short and never block.
    pub fn on_delivered(&self, f: impl Fn(&Envelope) + Send + Sync + 'static) {
        if self.on_delivered.set(Box::new(f)).is_err() {
            panic!("Publisher::on_delivered is set once");
        }
    }

    /// Queues `event` under `topic`, stamped now, and records it for followers. Callable from
    /// any thread, under other locks: it never waits on containerd or on the loop (only on
    /// the queue's lock, and on the spill file's write once memory is full).
    pub fn publish<M: Named>(&self, topic: &str, event: &M) {
        let at = SystemTime::now();
        let any = to_any(event);
        // The topic and size only: a message's text takes reflection (see `Named`), which
        // would keep a third of a MiB in every shim that logs at debug level. `tether-ctl
        // events` shows the fields.
        log::debug!("event {topic} ({} bytes)", any.value.len());
        let recorded = any.value.clone();
        let mut env = Envelope::new();
        env.timestamp = Some(timestamp(at)).into();
        env.namespace = self.namespace.clone();
        env.topic = topic.to_string();
        env.event = Some(any).into();
        // Queue and record under the queue's lock, so that sequence order is queue order.
        let mut q = self.queue.lock().unwrap();
        let seq = self.history.lock().unwrap().record(topic, at, recorded, text_of::<M>);
        self.recorded.notify_waiters();
        if self.publishing {
            if !q.push(env) {
                self.history.lock().unwrap().skipped.push_back(seq);
            }
            self.queued.notify_one();
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

    /// The remembered events after sequence number `after` (none may be there yet). Events
    /// older than the last [`HISTORY`] are gone.
    pub fn recorded_since(&self, after: u64) -> Vec<Recorded> {
        self.history.lock().unwrap().events.iter().filter(|r| r.seq > after).cloned().collect()
    }

    /// The remembered events after sequence number `after`, waiting up to `wait` (on the
    /// loop, without blocking it) for one when there is none yet. Events older than the last
    /// [`HISTORY`] are gone.
    pub async fn recorded_after(&self, after: u64, wait: Duration) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the look at the history, so an event recorded in between
            // still wakes this follower.
            let recorded = self.recorded.notified();
            let mut recorded = pin!(recorded);
            recorded.as_mut().enable();
            let found = self.recorded_since(after);
            if !found.is_empty() {
                return found;
            }
            if tokio::time::timeout_at(deadline, recorded).await.is_err() {
                return self.recorded_since(after);
            }
        }
    }

    /// Waits until every queued event is delivered (or given up on), at most `timeout`;
    /// returns whether the queue is empty. Meant for the loop at shutdown: it never blocks the
    /// thread, and the delivering task it waits for runs on that same loop. Needs a tokio
    /// runtime with a timer.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let drained = async {
            loop {
                // Registered before the look at the queue, so a settling in between is seen.
                let settled = self.settled.notified();
                let mut settled = pin!(settled);
                settled.as_mut().enable();
                if self.pending() == 0 {
                    return;
                }
                settled.await;
            }
        };
        tokio::time::timeout(timeout, drained).await.is_ok()
    }

    /// The delivering task: offers the front event to `sink` until it is settled, then the
    /// next; sleeps while the queue is empty. Runs for the life of the loop.
    async fn deliver(self: Arc<Self>, mut sink: impl Sink, pace: Backoff) {
        let mut backoff = pace.first;
        // Error answers containerd gave the front event so far.
        let mut rejected = 0;
        loop {
            // Memory only empties once the spill has been read back into it. (The guard is
            // dropped at the end of this statement, never held across an await.)
            let front = self.queue.lock().unwrap().memory.front().cloned();
            let Some(env) = front else {
                self.queued.notified().await;
                continue;
            };
            let result = sink.forward(&env).await;
            if result.is_ok() {
                if let Some(f) = self.on_delivered.get() {
                    f(&env);
                }
            }
            if self.settle(&env, result, &mut rejected) {
                backoff = pace.first;
                rejected = 0;
                self.settled.notify_waiters();
            } else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(pace.max);
            }
        }
    }

    /// Takes `env`, the front event, off the queue if `result` settles it (delivered, or
    /// refused [`MAX_ATTEMPTS`] times counting `rejected`); returns whether it did. Reading the
    /// spill back into memory here is a short read of a local file, done on the loop.
    fn settle(&self, env: &Envelope, result: Result<(), Failure>, rejected: &mut u32) -> bool {
        let mut q = self.queue.lock().unwrap();
        let delivered = match result {
            Ok(()) => true,
            Err(Failure::Unreachable(e)) => {
                log::warn!("publishing event {} failed ({} queued), will retry: {e}", env.topic, q.len());
                return false;
            }
            Err(Failure::Rejected(e)) => {
                *rejected += 1;
                if *rejected < MAX_ATTEMPTS {
                    log::warn!("containerd refused event {} ({rejected} of {MAX_ATTEMPTS} tries): {e}", env.topic);
                    return false;
                }
                log::warn!("dropping event {}: containerd refused it {MAX_ATTEMPTS} times, last with: {e}", env.topic);
                false
            }
        };
        q.pop_front();
        self.history.lock().unwrap().settled_one(delivered);
        true
    }
}

/// Why an event did not reach containerd.
#[derive(Debug)]
enum Failure {
    /// containerd could not be reached or did not answer (it is restarting, or down):
    /// retried for as long as it takes.
    Unreachable(String),
    /// containerd answered with an error status for this event: retried a few times.
    Rejected(String),
}

/// Where the delivering task sends events: containerd's events service, or a test's fake.
#[async_trait]
trait Sink: Send + 'static {
    /// Offers one event; `Ok` once it was accepted.
    async fn forward(&mut self, env: &Envelope) -> Result<(), Failure>;
}

/// containerd's ttrpc events service at `address`, dialled on first use and again after a
/// failure to reach it.
struct Containerd {
    address: String,
    client: Option<EventsClient>,
}

#[async_trait]
impl Sink for Containerd {
    /// One attempt, connecting included, takes at most [`PUBLISH_TIMEOUT`].
    async fn forward(&mut self, env: &Envelope) -> Result<(), Failure> {
        let mut req = ForwardRequest::new();
        req.envelope = Some(env.clone()).into();
        // The connection is out of `self.client` while in use: when the attempt times out, it
        // is dropped with it (its tasks end) and the next attempt dials again.
        match tokio::time::timeout(PUBLISH_TIMEOUT, self.offer(&req)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Unreachable(format!("no answer within {PUBLISH_TIMEOUT:?}"))),
        }
    }
}

impl Containerd {
    async fn offer(&mut self, req: &ForwardRequest) -> Result<(), Failure> {
        let client = match self.client.take() {
            Some(c) => c,
            None => connect(&self.address).await.map_err(|e| Failure::Unreachable(format!("{}: {e}", self.address)))?,
        };
        match client.forward(ttrpc::context::with_timeout(PUBLISH_TIMEOUT.as_nanos() as i64), req).await {
            Ok(_) => {
                self.client = Some(client);
                Ok(())
            }
            // An answer: the connection works and containerd looked at the event. Only
            // UNAVAILABLE and DEADLINE_EXCEEDED say it may take it later as it is.
            Err(ttrpc::Error::RpcStatus(status))
                if !matches!(status.code(), ttrpc::Code::UNAVAILABLE | ttrpc::Code::DEADLINE_EXCEEDED) =>
            {
                self.client = Some(client);
                Err(Failure::Rejected(format!("{:?}: {}", status.code(), status.message())))
            }
            Err(e) => Err(Failure::Unreachable(e.to_string())),
        }
    }
}

/// An events client on containerd's unix socket at `address` (a path, or `unix://` and a
/// path, as `TTRPC_ADDRESS` gives it). The connect does not block the loop: a unix socket's
/// connect completes at once or fails (a full backlog is a failure, retried later).
async fn connect(address: &str) -> Result<EventsClient, String> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    let stream = UnixStream::connect(path).await.map_err(|e| e.to_string())?;
    Ok(EventsClient::new(ttrpc::r#async::Client::new(Socket::from(stream))))
}

#[cfg(test)]
mod tests {
    use std::{future::Future, thread};

    use super::*;

    /// Runs `f` to its end on this test's thread; the publisher's task runs on the test loop
    /// ([`rt::handle`]), whose thread drives the timers `f` waits on.
    fn block_on<F: Future>(f: F) -> F::Output {
        rt::handle().block_on(f)
    }

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
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue { memory: VecDeque::new(), spill_dir: dir.path().into(), spill: None };
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
            q.pop_front();
        }
        assert_eq!(q.memory.front().map(|e| e.topic.as_str()), Some("/test/late"));
        q.pop_front();
        assert_eq!(q.len(), 0);
    }

    /// A containerd that answers each event as `answer` says, given its topic and how many
    /// times it was offered before; it tells of every offer.
    struct Fake {
        answer: fn(&str, u32) -> Result<(), Failure>,
        offers: std::sync::mpsc::Sender<(String, bool)>,
        tries: std::collections::HashMap<String, u32>,
    }

    #[async_trait]
    impl Sink for Fake {
        async fn forward(&mut self, env: &Envelope) -> Result<(), Failure> {
            let tries = self.tries.entry(env.topic.clone()).or_default();
            let result = (self.answer)(&env.topic, *tries);
            *tries += 1;
            let _ = self.offers.send((env.topic.clone(), result.is_ok()));
            result
        }
    }

    /// Publishes `topics` to a [`Fake`] answering with `answer`; returns every offer made
    /// until the queue emptied, and the publisher.
    fn offers(answer: fn(&str, u32) -> Result<(), Failure>, topics: &[&str]) -> (Vec<(String, bool)>, Arc<Publisher>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let fake = Fake { answer, offers: tx, tries: Default::default() };
        let quick = Backoff { first: Duration::from_millis(1), max: Duration::from_millis(2) };
        let publisher = Publisher::with_sink("ns", std::env::temp_dir(), Some(fake), quick);
        for topic in topics {
            publisher.publish(topic, &TaskStart::default());
        }
        assert!(block_on(publisher.flush(Duration::from_secs(10))), "the queue empties");
        (rx.try_iter().collect(), publisher)
    }

    #[test]
    fn an_event_containerd_refuses_is_dropped_after_a_few_tries() {
        let refuse_bad = |topic: &str, _| match topic {
            "/bad" => Err(Failure::Rejected("InvalidArgument: no".into())),
            _ => Ok(()),
        };
        let (offers, publisher) = offers(refuse_bad, &["/first", "/bad", "/after"]);
        let bad = offers.iter().filter(|(t, _)| t == "/bad").count();
        assert_eq!(bad, MAX_ATTEMPTS as usize, "offered a bounded number of times");
        assert_eq!(offers.last(), Some(&("/after".to_string(), true)), "the next event still goes out");
        assert!(publisher.undelivered().is_empty());
        let delivered: Vec<bool> = publisher.recorded_since(0).iter().map(|r| r.delivered).collect();
        assert_eq!(delivered, [true, false, true]);
    }

    #[test]
    fn an_event_is_retried_for_as_long_as_containerd_is_unreachable() {
        // Far more failures than a refused event gets tries: the outage ends, and it goes out.
        let down_for_a_while = |_: &str, tries| match tries {
            0..20 => Err(Failure::Unreachable("connection refused".into())),
            _ => Ok(()),
        };
        let (offers, publisher) = offers(down_for_a_while, &["/tasks/exit"]);
        assert_eq!(offers.len(), 21);
        assert_eq!(offers.last(), Some(&("/tasks/exit".to_string(), true)));
        assert!(publisher.recorded_since(0)[0].delivered);
    }

    #[test]
    fn events_are_recorded_in_order_for_followers() {
        let publisher = Publisher::start(None, "ns", std::env::temp_dir());
        assert!(block_on(publisher.recorded_after(0, Duration::from_millis(10))).is_empty());
        let start = |id: &str| TaskStart { container_id: id.into(), pid: 7, ..Default::default() };
        publisher.publish("/tasks/start", &start("a"));
        publisher.publish("/tasks/start", &start("b"));
        let all = publisher.recorded_since(0);
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(all[1].text(), "container_id: \"b\" pid: 7");
        let later = publisher.recorded_since(1);
        assert_eq!(later.iter().map(|r| r.seq).collect::<Vec<_>>(), [2]);
        // Without containerd nothing is queued for it, and nothing waits on a flush.
        assert_eq!(publisher.pending(), 0);
        assert!(block_on(publisher.flush(Duration::ZERO)));
    }

    #[test]
    fn a_follower_is_woken_by_the_next_event() {
        let publisher = Publisher::start(None, "ns", std::env::temp_dir());
        assert!(block_on(publisher.recorded_after(0, Duration::from_millis(10))).is_empty());
        let p = publisher.clone();
        let follower = rt::spawn(async move { p.recorded_after(0, Duration::from_secs(10)).await });
        thread::sleep(Duration::from_millis(50));
        publisher.publish("/tasks/start", &TaskStart::default());
        let got = block_on(follower).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].topic, "/tasks/start");
        // Already there: no wait.
        let again = block_on(publisher.recorded_after(0, Duration::from_secs(10)));
        assert_eq!(again.iter().map(|r| r.seq).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn overflowing_events_go_out_in_order_once_containerd_is_back() {
        // Unreachable for the first offers: the queue fills past memory into the spill file,
        // and everything goes out, in order, once containerd answers.
        let down_then_up = |topic: &str, tries| match (topic, tries) {
            ("/test/0", 0..5) => Err(Failure::Unreachable("connection refused".into())),
            _ => Ok(()),
        };
        let n = MEMORY_EVENTS * 2 + 3;
        let topics: Vec<String> = (0..n).map(|i| format!("/test/{i}")).collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        let (offers, publisher) = offers(down_then_up, &topics);
        let delivered: Vec<&str> = offers.iter().filter(|(_, ok)| *ok).map(|(t, _)| t.as_str()).collect();
        assert_eq!(delivered, topics);
        assert_eq!(publisher.pending(), 0);
        assert!(publisher.undelivered().is_empty());
    }

    #[test]
    fn a_flush_gives_up_at_its_deadline() {
        let never = |_: &str, _| Err(Failure::Unreachable("connection refused".into()));
        let (tx, _rx) = std::sync::mpsc::channel();
        let fake = Fake { answer: never, offers: tx, tries: Default::default() };
        // One offer within the test: the task then sleeps, instead of retrying for the rest of
        // the test binary's life.
        let slow = Backoff { first: Duration::from_secs(600), max: Duration::from_secs(600) };
        let publisher = Publisher::with_sink("ns", std::env::temp_dir(), Some(fake), slow);
        publisher.publish("/tasks/exit", &TaskExit::default());
        let started = std::time::Instant::now();
        assert!(!block_on(publisher.flush(Duration::from_millis(100))));
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(publisher.pending(), 1, "kept for a later try");
        assert_eq!(publisher.undelivered().len(), 1);
    }

    #[test]
    fn history_is_bounded() {
        let publisher = Publisher::start(None, "ns", std::env::temp_dir());
        for _ in 0..HISTORY + 5 {
            publisher.publish("/tasks/start", &TaskStart::default());
        }
        let all = publisher.recorded_since(0);
        assert_eq!(all.len(), HISTORY);
        assert_eq!(all[0].seq, 6);
    }
}
