//! Structured events of every run, delivered to subscribers: Rust
//! callbacks (called on the thread that emits, so keep them short), and
//! bounded channels for consumers that read at their own pace (an SSE
//! stream): a channel that is full loses the event, and the loss is
//! counted, so that a slow reader never holds a backup up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use alike_core::Recover;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{RunRecord, RunResult};

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A run waits for VMs another run holds.
    JobQueued {
        /// The VM keys it waits for.
        waiting_for: Vec<String>,
    },
    /// A run started.
    JobStarted,
    /// Work on one VM started.
    VmStarted {
        /// The VM.
        vm: String,
    },
    /// Progress of one disk of one VM (at most a few per second per disk).
    Progress {
        /// The VM.
        vm: String,
        /// The disk's position.
        disk: u32,
        /// The phase (`read`, `verify`, `upload`…).
        phase: String,
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// One VM done (well or not).
    VmDone {
        /// The VM.
        vm: String,
        /// `success`, `warning` or `failed`.
        result: String,
        /// The version made.
        version: Option<String>,
        /// Bytes read from the host.
        read_bytes: u64,
        /// Stored bytes added.
        stored_bytes: u64,
    },
    /// Something less good than asked, the run goes on (a change-tracking
    /// fallback, no quiesce).
    Warning {
        /// The VM, when it is about one.
        vm: Option<String>,
        /// What.
        message: String,
    },
    /// A chain step ended (retention, vault, verify).
    StepDone {
        /// The step.
        step: String,
        /// `success`, `warning` or `failed`.
        result: String,
    },
    /// The run failed as a whole or one of its VMs or steps failed.
    Failed {
        /// The VM, when it is about one.
        vm: Option<String>,
        /// The error.
        error: String,
    },
    /// The run ended.
    Finished {
        /// How.
        result: RunResult,
        /// Wall time, seconds.
        elapsed_seconds: f64,
        /// Bytes read, in all.
        read_bytes: u64,
        /// Stored bytes added, in all.
        stored_bytes: u64,
    },
}

impl EventKind {
    /// The event's type name, as serialised (`job_started`, `vm_done`…).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::JobQueued { .. } => "job_queued",
            EventKind::JobStarted => "job_started",
            EventKind::VmStarted { .. } => "vm_started",
            EventKind::Progress { .. } => "progress",
            EventKind::VmDone { .. } => "vm_done",
            EventKind::Warning { .. } => "warning",
            EventKind::StepDone { .. } => "step_done",
            EventKind::Failed { .. } => "failed",
            EventKind::Finished { .. } => "finished",
        }
    }
}

/// One event: a sequence number (increasing within a process), when, which
/// run of which job, and what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Event {
    /// Increasing from 1 within one process.
    pub seq: u64,
    /// When.
    pub time: DateTime<Utc>,
    /// The run.
    pub run: u64,
    /// The job.
    pub job: String,
    /// What.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// The event as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A subscription's handle: [`EventBus::unsubscribe`] ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionId(u64);

impl SubscriptionId {
    /// The id as a number (for bindings that hand it out).
    pub fn get(self) -> u64 {
        self.0
    }
    /// The id of a number [`SubscriptionId::get`] gave.
    pub fn from_raw(n: u64) -> SubscriptionId {
        SubscriptionId(n)
    }
}

/// A callback subscriber.
pub type EventFn = Arc<dyn Fn(&Event) + Send + Sync>;

enum Sub {
    Callback(EventFn),
    Channel(SyncSender<Event>),
}

/// The subscribers of a scheduler's events.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// let bus = alike_sched::EventBus::default();
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let s = seen.clone();
/// bus.subscribe(Arc::new(move |e: &alike_sched::Event| s.lock().unwrap().push(e.kind.name())));
/// let rx = bus.channel(16);
/// bus.emit(7, "nightly", alike_sched::EventKind::JobStarted, "2026-01-01T00:00:00Z".parse().unwrap());
/// assert_eq!(*seen.lock().unwrap(), ["job_started"]);
/// assert_eq!(rx.try_recv().unwrap().run, 7);
/// ```
#[derive(Default)]
pub struct EventBus {
    subs: Mutex<BTreeMap<u64, Sub>>,
    next_id: AtomicU64,
    seq: AtomicU64,
    dropped: AtomicU64,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").field("subscribers", &self.subs.locked().len()).finish()
    }
}

impl EventBus {
    /// Adds a callback, called for every event on the emitting thread.
    pub fn subscribe(&self, f: EventFn) -> SubscriptionId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.subs.locked().insert(id, Sub::Callback(f));
        SubscriptionId(id)
    }

    /// A bounded channel of events (capacity at least 1). When the reader
    /// falls `capacity` behind, new events are dropped for it (counted by
    /// [`EventBus::dropped`]); when the receiver is dropped the
    /// subscription ends.
    pub fn channel(&self, capacity: usize) -> Receiver<Event> {
        let (tx, rx) = sync_channel(capacity.max(1));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.subs.locked().insert(id, Sub::Channel(tx));
        rx
    }

    /// Ends a subscription. Returns whether it existed.
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        self.subs.locked().remove(&id.0).is_some()
    }

    /// Events dropped for channels that were full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Emits an event to every subscriber. Returns it.
    pub fn emit(&self, run: u64, job: &str, kind: EventKind, time: DateTime<Utc>) -> Event {
        let e = Event { seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1, time, run, job: job.to_owned(), kind };
        // Callbacks run outside the lock, so that one may subscribe or unsubscribe.
        let mut callbacks = Vec::new();
        {
            let mut subs = self.subs.locked();
            let mut gone = Vec::new();
            for (id, s) in subs.iter() {
                match s {
                    Sub::Callback(f) => callbacks.push(f.clone()),
                    Sub::Channel(tx) => match tx.try_send(e.clone()) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            self.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(TrySendError::Disconnected(_)) => gone.push(*id),
                    },
                }
            }
            for id in gone {
                subs.remove(&id);
            }
        }
        for f in callbacks {
            // A panicking subscriber must not take the run down with it.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&e))).is_err() {
                tracing::error!(event = e.kind.name(), "an event subscriber panicked");
            }
        }
        e
    }

    /// Emits the `finished` event of a run record.
    pub fn finished(&self, r: &RunRecord, time: DateTime<Utc>) -> Event {
        let (read, _, stored) = r.totals();
        self.emit(
            r.id,
            &r.job,
            EventKind::Finished {
                result: r.result,
                elapsed_seconds: r.elapsed_seconds().unwrap_or(0.0),
                read_bytes: read,
                stored_bytes: stored,
            },
            time,
        )
    }
}
