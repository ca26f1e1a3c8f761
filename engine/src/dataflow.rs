//! The dataflow: timely worker threads that own every view's dataflow.
//!
//! ```text
//!   ingest gate ──Command::Ingest(epoch, rows)──▶ ┌──────────── worker thread ────────────┐
//!   engine API ──Command::CreateView / DropView─▶ │ retained events per stream (by time)  │
//!                                                 │ one differential dataflow per view:   │
//!                                                 │   input ▸ filter/map ▸ aggregate ▸ …  │
//!                                                 │   ▸ publish sink (worker 0) ▸ probe   │
//!                                                 └──────────────┬────────────────────────┘
//!                                       completed epochs' changes ▼
//!                                                           ViewStore (readers, subscribers)
//!                                                               │ the same changes
//!                                   anomaly detectors (per view) ▼ ──▶ `anomalies`
//! ```
//!
//! Timely time is the ingest epoch. Batches are fed as they arrive and the worker keeps
//! stepping, so several epochs are in flight at once; an epoch's changes are published
//! only once the view's probe has passed it, so readers never see half an epoch.
//!
//! The worker keeps every event still within its stream's retention. A new view is
//! seeded with them, and when the watermark moves on, events that fall out of retention
//! are retracted from every view, which keeps state bounded.
//!
//! A dispatcher thread (the caller's) hands each worker an equal share of every batch's
//! events (each retains and retracts its own share) and wakes it; a worker with nothing
//! to do sleeps. With several workers (`workers` > 1) every worker
//! builds every view's dataflow, whose groupings and joins exchange rows by key, and each view's
//! output is exchanged to worker 0, the only one that publishes to the store and runs
//! detectors. Timely's progress tracking is global, so worker 0's probe passing an epoch
//! means every worker's changes for it have arrived: readers still see whole epochs.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::VecCollection;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Exchange, Operator, Probe};
use timely::dataflow::{Scope, StreamVec};
use tokio::sync::oneshot;

use crate::detect::Detector;
use crate::error::{Error, Result};
use crate::expr::Scalar;
use crate::plan::{AggFunc, Aggregate, Node, ViewPlan};
use crate::schema::Stream;
use crate::packed::SharedRow;
use crate::store::{Change, LiveView, ViewStore};
use crate::time::Epoch;
use crate::value::{Row, Value};

/// An accepted event on its way into the dataflow.
#[derive(Clone, Debug)]
pub struct Event {
    /// The row, in stream column order.
    pub row: Row,
    /// Its event time (milliseconds).
    pub ts: i64,
    /// How far behind the stream's watermark it arrived (0 if it was not late).
    pub late_by: i64,
    /// Its multiplicity: 1, except in weighted streams.
    pub weight: isize,
}

/// Events of one stream committed in one epoch.
#[derive(Debug)]
pub struct Batch {
    /// The epoch they were committed in.
    pub epoch: Epoch,
    /// Index of the stream in the engine's stream list.
    pub stream: usize,
    /// The events.
    pub events: Vec<Event>,
    /// The stream's watermark after these events.
    pub watermark: i64,
}

/// How long a view accepts late events and keeps events, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewTime {
    /// Events later than this behind the watermark do not enter the view.
    pub lateness_ms: i64,
    /// Events older than this behind the watermark are retracted from the view.
    pub retention_ms: i64,
}

/// Every view's rows as of one epoch: a consistent cut across views.
pub struct Capture {
    /// The epoch.
    pub epoch: Epoch,
    /// Each view with its rows as of `epoch`.
    pub views: Vec<(crate::store::ViewInfo, Vec<Row>)>,
    /// Each stream's watermark.
    pub watermarks: Vec<(String, i64)>,
}

/// A capture as the worker takes it: O(1) copies of the views' rows, so that listing
/// them ([`Copies::rows`]) happens off the dataflow thread.
pub struct Copies {
    epoch: Epoch,
    views: Vec<(crate::store::ViewInfo, crate::store::RowsAt)>,
    watermarks: Vec<(String, i64)>,
}

impl Copies {
    /// Lists every view's rows.
    pub fn rows(self) -> Capture {
        let views = self.views.into_iter().map(|(info, rows)| (info, rows.rows())).collect();
        Capture { epoch: self.epoch, views, watermarks: self.watermarks }
    }
}

/// Work for the dataflow worker.
pub enum Command {
    /// Feed committed events; the epoch is closed even if there are none, so that
    /// readers waiting for it see it pass.
    Ingest {
        /// The epoch committed.
        epoch: Epoch,
        /// Its events, per stream.
        batches: Vec<Batch>,
    },
    /// Build a view's dataflow and seed it with the retained events.
    CreateView {
        /// The view.
        plan: ViewPlan,
        /// Its time policy (already clamped to its stream's).
        time: ViewTime,
        /// Where to say it runs: once its initial contents (from the retained events) are
        /// published, so that a reader right after sees them.
        reply: oneshot::Sender<Result<()>>,
    },
    /// Attach an anomaly detector to a view's output.
    CreateDetector {
        /// The detector.
        detector: Box<crate::detect::Compiled>,
        /// Where to say it is running.
        reply: oneshot::Sender<Result<()>>,
    },
    /// Detach a detector and retract its rows from `anomalies`.
    DropDetector {
        /// The detector's name.
        name: String,
        /// Where to say it is gone.
        reply: oneshot::Sender<Result<()>>,
    },
    /// Capture every view's rows as of one epoch, the latest every view has completed.
    Capture {
        /// Where to send the epoch and the views' rows.
        reply: oneshot::Sender<Copies>,
    },
    /// Tear a view's dataflow down.
    DropView {
        /// The view's name.
        name: String,
        /// Where to say it is gone.
        reply: oneshot::Sender<Result<()>>,
    },
    /// Stop the worker.
    Shutdown,
}

/// Retained events are kept in buckets of this many milliseconds of event time (one
/// vector per bucket, not per timestamp), and forgotten a bucket at a time.
const BUCKET_MS: i64 = 1000;

fn bucket(ts: i64) -> i64 {
    ts.div_euclid(BUCKET_MS)
}

/// A retained event. (Its row a boxed slice, without a vector's capacity: 40 bytes per
/// retained event, not 48; rows are made with room for exactly their columns, so boxing
/// one does not copy it.)
struct Kept {
    ts: i64,
    row: Box<[Value]>,
    late_by: i64,
    weight: isize,
}

struct RetainedStream {
    /// Retained events by bucket of event time.
    events: BTreeMap<i64, Vec<Kept>>,
    /// For weighted streams, where each (time, row) is in `events` (within its bucket):
    /// equal rows at the same time are merged into one with their weights summed.
    merged: Option<std::collections::HashMap<(i64, Row), usize>>,
    watermark: i64,
    retention_ms: i64,
}

impl RetainedStream {
    /// The retained events with a time in `from..to`.
    fn between(&self, from: i64, to: i64) -> impl Iterator<Item = &Kept> {
        self.events.range(bucket(from)..=bucket(to)).flat_map(|(_, kept)| kept).filter(move |k| k.ts >= from && k.ts < to)
    }

    /// The retained events with a time of `from` or later.
    fn since(&self, from: i64) -> impl Iterator<Item = &Kept> {
        self.events.range(bucket(from)..).flat_map(|(_, kept)| kept).filter(move |k| k.ts >= from)
    }
}

/// One stream feeding a view.
struct ViewInput {
    /// Index of the stream.
    stream: usize,
    /// The filters and maps the plan applies to the stream's rows first, applied to each
    /// event as it is taken in (before any copy; see [`hoist`]).
    steps: Vec<RowStep>,
    session: InputSession<Epoch, Row, isize>,
    /// Events of the stream with a time below this have been retracted from the view.
    expired_before: i64,
}

struct ViewRuntime {
    name: String,
    /// Where its changes go (the store's entry, made by the engine before the view).
    live: Option<Arc<LiveView>>,
    time: ViewTime,
    /// One input per chain of maps and filters the plan applies to a stream first (see
    /// [`hoist`]); several may read one stream.
    inputs: Vec<ViewInput>,
    probe: ProbeHandle<Epoch>,
    output: Rc<RefCell<Vec<Out>>>,
    /// The vector `output` is swapped with when its changes are taken, empty: each keeps
    /// its room between rounds, up to `SPARE_ROOM` changes. (Taken whole and regrown from
    /// empty by doubling every round, to 100,000 changes and more, it cost engine-window's
    /// worker about 1%.)
    spare: Vec<Out>,
    /// Whether an epoch's output never repeats a row (see `Node::changes_are_consolidated`).
    consolidated: bool,
    dataflow: usize,
    /// The latest epoch published to the store.
    published: Epoch,
    /// Whom to tell once the view holds its initial contents: when every epoch below
    /// `seeded_below` is published.
    created: Option<oneshot::Sender<Result<()>>>,
    seeded_below: Epoch,
}

impl ViewRuntime {
    fn admits(&self, input: &ViewInput, ts: i64, late_by: i64) -> bool {
        late_by <= self.time.lateness_ms && ts >= input.expired_before
    }

    /// The time every input has been advanced to (they move together).
    fn time(&self) -> &Epoch {
        self.inputs[0].session.time()
    }
}

/// A view's output on its way to the store: each row packed and hashed where it was
/// computed, on its worker, so that neither the leader nor the store's writer copies
/// or hashes it (see [`SharedRow`]); with its slot in the store's table (see
/// [`Change::slot`]).
type Out = ((SharedRow, u32, u32), Epoch, isize);

/// What the leader hands the store's writer: applied in the order sent.
enum Write {
    /// One epoch's changes to a view.
    Publish(Arc<LiveView>, Epoch, Vec<Change>),
    /// Detector output, consolidated, to `anomalies` as of this epoch (or its own, if later).
    Anomalies(Epoch, Vec<Change>),
    /// Runs once everything sent before is in the store (replies, captures).
    Then(Box<dyn FnOnce() + Send>),
}

/// The thread that applies the leader's changes to the view store, so that the view
/// store's work (its persistent map, the history, waking subscribers, dropping old
/// rows) runs beside the dataflow instead of between its steps. Writes are applied in
/// order; a bounded queue makes the dataflow wait if the store falls behind.
struct Writer {
    store: Arc<ViewStore>,
    queue: Option<mpsc::SyncSender<Write>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The latest epoch sent to `anomalies` (an epoch that changes nothing is sent once).
    anomalies_through: std::cell::Cell<Epoch>,
}

/// Epochs of changes queued for the store's writer at most.
const WRITER_QUEUE: usize = 256;

impl Writer {
    /// A writer with a thread (`threaded`: the leader's), or one that writes in the
    /// caller's thread (the other workers never write).
    fn start(store: Arc<ViewStore>, threaded: bool) -> Writer {
        let (queue, writes) = mpsc::sync_channel::<Write>(WRITER_QUEUE);
        let on_thread = store.clone();
        let thread = threaded
            .then(|| {
                std::thread::Builder::new()
                    .name("weir-store".into())
                    .spawn(move || writes.into_iter().for_each(|write| apply(&on_thread, write)))
                    .map_err(|e| tracing::error!(error = %e, "the view store's writer did not start; the dataflow writes to the store itself"))
                    .ok()
            })
            .flatten();
        Writer { store, queue: thread.is_some().then_some(queue), thread, anomalies_through: std::cell::Cell::new(0) }
    }

    fn send(&self, write: Write) {
        match &self.queue {
            // (the writer is gone only if it panicked: write here rather than lose it)
            Some(queue) => {
                if let Err(mpsc::SendError(write)) = queue.send(write) {
                    apply(&self.store, write);
                }
            }
            None => apply(&self.store, write),
        }
    }

    /// Runs `then` once everything sent before is in the store.
    fn then(&self, then: impl FnOnce() + Send + 'static) {
        self.send(Write::Then(Box::new(then)));
    }

    /// Waits until everything sent before is in the store.
    fn sync(&self) {
        let (done, wait) = mpsc::channel();
        self.then(move || {
            let _ = done.send(());
        });
        let _ = wait.recv();
    }
}

/// Applies one write to the store.
fn apply(store: &ViewStore, write: Write) {
    match write {
        Write::Publish(view, epoch, changes) => view.publish(epoch, changes),
        Write::Anomalies(epoch, changes) => {
            if let Some(view) = store.get(crate::detect::ANOMALIES) {
                view.publish(epoch.max(view.epoch()), changes);
            }
        }
        Write::Then(then) => then(),
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // the writer applies what is queued, then stops
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs the dataflow on `workers` timely worker threads (the current thread dispatches
/// commands to them) until `Shutdown` or until every sender is gone.
pub fn run_worker(workers: usize, streams: Arc<Vec<Stream>>, store: Arc<ViewStore>, commands: Receiver<Command>, start_epoch: Epoch) {
    let workers = workers.max(1);
    // one worker runs on a thread of its own too, behind the same dispatcher: one path
    let config = timely::Config {
        communication: if workers == 1 { timely::CommunicationConfig::Thread } else { timely::CommunicationConfig::Process(workers) },
        worker: timely::WorkerConfig::default(),
    };
    let (senders, receivers): (Vec<Sender<Command>>, Vec<Receiver<Command>>) = (0..workers).map(|_| mpsc::channel()).unzip();
    let receivers: Vec<Mutex<Option<Receiver<Command>>>> = receivers.into_iter().map(|r| Mutex::new(Some(r))).collect();
    let (threads_tx, threads_rx) = mpsc::channel();
    let threads_tx = Mutex::new(threads_tx);
    let guards = timely::execute(config, move |worker| {
        let commands = receivers[worker.index()].lock().unwrap_or_else(|e| e.into_inner()).take().expect("each worker takes its own queue once");
        let _ = threads_tx.lock().unwrap_or_else(|e| e.into_inner()).send((worker.index(), std::thread::current()));
        work(worker, &streams, &store, &commands, start_epoch);
    });
    match guards {
        Ok(guards) => {
            let mut threads: Vec<(usize, std::thread::Thread)> = threads_rx.iter().take(workers).collect();
            threads.sort_by_key(|(i, _)| *i);
            let workers: Vec<(Sender<Command>, std::thread::Thread)> = senders.into_iter().zip(threads.into_iter().map(|(_, t)| t)).collect();
            dispatch(commands, &workers);
            drop(workers);
            drop(guards); // joins the workers
        }
        Err(e) => tracing::error!(error = %e, "the dataflow workers did not start"),
    }
}

/// Hands the engine's commands to the workers: every worker gets an equal share of each
/// batch's events and builds and drops every view; worker 0 alone answers, captures and
/// runs detectors (the workers decide alike, so the others' answers are dropped).
/// A worker waiting for the others parks; each command wakes it.
fn dispatch(commands: Receiver<Command>, workers: &[(Sender<Command>, std::thread::Thread)]) {
    let n = workers.len();
    // false once the worker is gone (it panicked): then the dispatcher stops taking
    // commands, so the engine's sends fail (`ShuttingDown`) instead of going nowhere
    let send = |i: usize, command: Command| -> bool {
        let sent = workers[i].0.send(command).is_ok();
        workers[i].1.unpark();
        sent
    };
    let ignored = || oneshot::channel().0;
    while let Ok(command) = commands.recv() {
        let mut alive = true;
        match command {
            Command::Ingest { epoch, batches } => {
                let mut shares: Vec<Vec<Batch>> = (0..n).map(|_| Vec::with_capacity(batches.len())).collect();
                for mut batch in batches {
                    let size = batch.events.len().div_ceil(n);
                    for (i, share) in shares.iter_mut().enumerate().skip(1).rev() {
                        let events = batch.events.split_off((i * size).min(batch.events.len()));
                        share.push(Batch { epoch: batch.epoch, stream: batch.stream, events, watermark: batch.watermark });
                    }
                    shares[0].push(batch);
                }
                for (i, batches) in shares.into_iter().enumerate() {
                    alive &= send(i, Command::Ingest { epoch, batches });
                }
            }
            Command::CreateView { plan, time, reply } => {
                for i in 1..n {
                    alive &= send(i, Command::CreateView { plan: plan.clone(), time, reply: ignored() });
                }
                alive &= send(0, Command::CreateView { plan, time, reply });
            }
            Command::DropView { name, reply } => {
                for i in 1..n {
                    alive &= send(i, Command::DropView { name: name.clone(), reply: ignored() });
                }
                alive &= send(0, Command::DropView { name, reply });
            }
            command @ (Command::CreateDetector { .. } | Command::DropDetector { .. } | Command::Capture { .. }) => alive &= send(0, command),
            Command::Shutdown => break,
        }
        if !alive {
            tracing::error!("a dataflow worker stopped: the dataflow stops and the engine refuses further work");
            break;
        }
    }
    drop(commands);
    for i in 0..n {
        send(i, Command::Shutdown);
    }
}

/// Events a worker takes from its queue before it steps the dataflow (and the leader
/// publishes). Taking 64 commands at a time, a restart fed its 10M recovered events (in
/// slices of 100,000) 6.4M at a time: the store's writer waited while the dataflow
/// computed them all, and then the dataflow waited for the writer (measured in
/// docs/benchmarks.md).
///
/// Also the most events a worker has taken in that its views have not all passed: while
/// it has more, it steps without taking commands. (A round's events are not always
/// through the views after one step, and a worker that took the next round anyway held
/// several rounds' rows and changes at once when a burst was queued: engine-window's
/// memory beyond the raw data 354–369 bytes per live row against 306–317 with the bound,
/// at the same speed: docs/benchmarks.md.)
///
/// Both are for all the workers together: each takes its share of a batch, and is
/// bounded by its share of this. (Each bounded by the whole, 2 workers held twice the
/// epochs in flight that 1 did.)
const ROUND_EVENTS: usize = 100_000;

/// One worker's loop: takes commands, feeds its inputs, steps the dataflow and (worker 0)
/// publishes completed epochs. A worker with nothing to do (or only waiting for the
/// others' progress) sleeps until a message, its own scheduled work or a command (the
/// dispatcher unparks it) wakes it, leaving the cores to the rest.
fn work(worker: &mut timely::worker::Worker, streams: &Arc<Vec<Stream>>, store: &Arc<ViewStore>, commands: &Receiver<Command>, start_epoch: Epoch) {
    let leader = worker.index() == 0;
    let mut retained: Vec<RetainedStream> = streams
        .iter()
        .map(|s| RetainedStream { events: BTreeMap::new(), watermark: i64::MIN, retention_ms: s.policy.retention_ms, merged: s.weighted.then(Default::default) })
        .collect();
    let mut views: Vec<ViewRuntime> = Vec::new();
    let mut detectors: Vec<Detector> = Vec::new();
    let mut clock_closed_at = 0i64;
    // the epoch every input has been advanced to: all epochs below it are closed
    let mut frontier: Epoch = start_epoch + 1;
    let mut last_epoch: Epoch = start_epoch;
    // only the leader writes to the store
    let writer = Writer::start(store.clone(), leader);
    // the events of each epoch taken in that some view has not passed yet, and their sum
    // (see `ROUND_EVENTS`)
    let mut in_flight: std::collections::VecDeque<(Epoch, usize)> = std::collections::VecDeque::new();
    let mut in_flight_events = 0;
    let round_events = ROUND_EVENTS.div_ceil(worker.peers());

    loop {
        let busy = views.iter().any(|v| v.probe.less_than(v.time()));
        let passed = views.iter().map(|v| v.probe.with_frontier(|f| f.first().copied()).unwrap_or(Epoch::MAX)).min().unwrap_or(Epoch::MAX);
        while let Some(&(epoch, n)) = in_flight.front() {
            if epoch >= passed {
                break;
            }
            in_flight.pop_front();
            in_flight_events -= n;
        }
        let first = if in_flight_events >= round_events {
            None
        } else {
            match commands.try_recv() {
                Ok(c) => Some(c),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => break,
            }
        };
        let mut next = first;
        let mut handled = 0;
        let mut events = 0;
        let mut stop = false;
        while let Some(command) = next.take() {
            match command {
                Command::Ingest { epoch, batches } => {
                    let n = batches.iter().map(|b| b.events.len()).sum::<usize>();
                    events += n;
                    in_flight.push_back((batches.iter().map(|b| b.epoch).fold(epoch, Epoch::max), n));
                    in_flight_events += n;
                    last_epoch = last_epoch.max(epoch);
                    for batch in batches {
                        last_epoch = last_epoch.max(batch.epoch);
                        ingest(batch, &mut retained, &mut views);
                    }
                    frontier = last_epoch + 1;
                    for input in views.iter_mut().flat_map(|v| v.inputs.iter_mut()) {
                        input.session.advance_to(frontier);
                    }
                }
                Command::CreateView { plan, time, reply } => match create_view(worker, streams, store, &retained, &mut views, plan, time, frontier) {
                    // answered once the view holds its initial contents (see `publish`)
                    Ok(()) => views.last_mut().expect("the view just created").created = Some(reply),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Command::CreateDetector { detector, reply } => {
                    let result = if detectors.iter().any(|d| d.name() == detector.def.name) {
                        Err(Error::AlreadyExists(format!("a detector named {} exists", detector.def.name)))
                    } else {
                        let mut d = Detector::new(*detector);
                        // seed it with the view as published so far; later changes follow
                        writer.sync();
                        if let Some(view) = store.get(d.view()) {
                            let rows: Vec<(Row, isize)> = view.snapshot().1.into_iter().map(|r| (r, 1)).collect();
                            d.apply(&rows, crate::time::now_ms());
                            publish_anomalies(&writer, complete_through(&views, last_epoch), d.close(None));
                        }
                        detectors.push(d);
                        Ok(())
                    };
                    writer.then(move || {
                        let _ = reply.send(result);
                    });
                }
                Command::DropDetector { name, reply } => {
                    let result = match detectors.iter().position(|d| d.name() == name) {
                        Some(i) => {
                            let d = detectors.swap_remove(i);
                            publish_anomalies(&writer, complete_through(&views, last_epoch), d.rows().into_iter().map(|r| (r, -1)).collect());
                            Ok(())
                        }
                        None => Err(Error::NotFound(format!("no detector named {name}"))),
                    };
                    writer.then(move || {
                        let _ = reply.send(result);
                    });
                }
                Command::Capture { reply } => {
                    let epoch = complete_through(&views, last_epoch);
                    let watermarks = streams.iter().zip(&retained).filter(|(_, r)| r.watermark != i64::MIN).map(|(s, r)| (s.name.clone(), r.watermark)).collect();
                    // (once the store holds every epoch through `epoch`)
                    let store = store.clone();
                    writer.then(move || {
                        // built-in views outside the dataflow (quota_usage, anomalies) come as they are
                        let views = store.list().into_iter().filter_map(|view| view.copy_at(epoch).map(|rows| (view.info.clone(), rows))).collect();
                        let _ = reply.send(Copies { epoch, views, watermarks });
                    });
                }
                Command::DropView { name, reply } => {
                    let result = match views.iter().position(|v| v.name == name) {
                        Some(i) => {
                            let v = views.swap_remove(i);
                            worker.drop_dataflow(v.dataflow);
                            Ok(())
                        }
                        None => Err(Error::NotFound(format!("no view named {name}"))),
                    };
                    writer.then(move || {
                        let _ = reply.send(result);
                    });
                }
                Command::Shutdown => stop = true,
            }
            handled += 1;
            // take more commands while they are queued, but keep stepping the worker, and
            // publishing: the store's writer works on one round's changes while the
            // dataflow computes the next
            if !stop && handled < 64 && events < round_events {
                next = commands.try_recv().ok();
            }
        }
        if stop {
            break;
        }
        for input in views.iter_mut().flat_map(|v| v.inputs.iter_mut()) {
            input.session.flush();
        }
        if handled == 0 {
            worker.step_or_park(Some(Duration::from_millis(if busy { 1 } else { 200 })));
        } else {
            worker.step();
        }
        if !leader {
            continue;
        }
        publish(&mut views, &mut detectors, &writer, last_epoch);
        // a view whose every series went quiet still closes windows, by the clock
        let now = crate::time::now_ms();
        if !detectors.is_empty() && now - clock_closed_at >= 1000 {
            clock_closed_at = now;
            let changes = detectors.iter_mut().flat_map(|d| d.close(Some(now))).collect();
            publish_anomalies(&writer, complete_through(&views, last_epoch), changes);
        }
    }
}

fn ingest(batch: Batch, retained: &mut [RetainedStream], views: &mut [ViewRuntime]) {
    let stream = &mut retained[batch.stream];
    let epoch = batch.epoch;
    for v in views.iter_mut() {
        for i in 0..v.inputs.len() {
            if v.inputs[i].stream != batch.stream {
                continue;
            }
            v.inputs[i].session.advance_to(epoch);
            for e in &batch.events {
                if v.admits(&v.inputs[i], e.ts, e.late_by) {
                    let input = &mut v.inputs[i];
                    if let Some(row) = prepare(&input.steps, &e.row) {
                        input.session.update(row, e.weight);
                    }
                }
            }
        }
    }
    // (events mostly come in time order: one lookup of the bucket per run of them; a new
    // bucket starts with the room its predecessor took, so that a steady stream's buckets
    // are not grown by doubling, each step copying all they hold so far)
    let mut run: Option<(i64, &mut Vec<Kept>)> = None;
    for e in batch.events {
        let b = bucket(e.ts);
        let at = match run {
            Some((current, at)) if current == b => at,
            _ => {
                let room = stream.events.range(..b).next_back().map_or(0, |(_, before)| before.len());
                stream.events.entry(b).or_insert_with(|| Vec::with_capacity(room))
            }
        };
        match &mut stream.merged {
            Some(index) => match index.entry((e.ts, e.row)) {
                std::collections::hash_map::Entry::Occupied(i) => at[*i.get()].weight += e.weight,
                std::collections::hash_map::Entry::Vacant(v) => {
                    let row = v.key().1.clone();
                    v.insert(at.len());
                    at.push(Kept { ts: e.ts, row: row.into_boxed_slice(), late_by: e.late_by, weight: e.weight });
                }
            },
            None => at.push(Kept { ts: e.ts, row: e.row.into_boxed_slice(), late_by: e.late_by, weight: e.weight }),
        }
        run = Some((b, at));
    }
    stream.watermark = stream.watermark.max(batch.watermark);
    // retract what fell out of each view's retention, then forget what fell out of the stream's
    let watermark = stream.watermark;
    for v in views.iter_mut() {
        let (lateness, retention) = (v.time.lateness_ms, v.time.retention_ms);
        for input in v.inputs.iter_mut().filter(|i| i.stream == batch.stream) {
            let cutoff = watermark.saturating_sub(retention);
            if cutoff > input.expired_before {
                for kept in stream.between(input.expired_before, cutoff) {
                    if kept.late_by <= lateness
                        && let Some(row) = prepare(&input.steps, &kept.row)
                    {
                        input.session.update(row, -kept.weight);
                    }
                }
                input.expired_before = cutoff;
            }
        }
    }
    // (whole buckets: the one holding the cutoff stays until it is wholly behind it)
    let cutoff = bucket(watermark.saturating_sub(stream.retention_ms));
    if stream.events.first_key_value().is_some_and(|(b, _)| *b < cutoff) {
        let kept = stream.events.split_off(&cutoff);
        stream.events = kept;
        if let Some(index) = &mut stream.merged {
            index.retain(|(ts, _), _| bucket(*ts) >= cutoff);
        }
    }
}

fn create_view(
    worker: &mut timely::worker::Worker,
    streams: &[Stream],
    store: &ViewStore,
    retained: &[RetainedStream],
    views: &mut Vec<ViewRuntime>,
    plan: ViewPlan,
    time: ViewTime,
    frontier: Epoch,
) -> Result<()> {
    if views.iter().any(|v| v.name == plan.name) {
        return Err(Error::AlreadyExists(format!("a view named {} exists", plan.name)));
    }
    let sources = plan
        .streams
        .iter()
        .map(|name| streams.iter().position(|s| s.name == *name).ok_or_else(|| Error::NotFound(format!("no stream named {name}"))))
        .collect::<Result<Vec<usize>>>()?;
    let output = Rc::new(RefCell::new(Vec::new()));
    let sink = output.clone();
    let dataflow = worker.next_dataflow_index();
    let consolidated = plan.root.changes_are_consolidated();
    let mut hoisted = Vec::new();
    let root = hoist(&keyed(&plan.root), &mut hoisted);
    if hoisted.is_empty() {
        // (the planner refuses such plans; the view's inputs keep its time, so never build one)
        return Err(Error::Sql("a view must read a stream".into()));
    }
    let count = hoisted.len();
    let (sessions, probe) = worker.dataflow::<Epoch, _, _>(move |scope| {
        let (sessions, collections): (Vec<_>, Vec<_>) = (0..count).map(|_| scope.new_collection::<Row, isize>()).unzip();
        let mut changes = changes_of(&root, &collections, scope);
        if scope.peers() > 1 {
            // worker 0 publishes every view's changes
            changes = changes.exchange(|_| 0);
        }
        // move each update to the sink (no copy); the probe after it passes an epoch only
        // once the sink has taken all of the epoch's updates
        let (probe, _) = changes
            .unary::<CapacityContainerBuilder<Vec<Out>>, _, _, _>(Pipeline, "Publish", move |_, _| {
                move |input, _output| input.for_each(|_, updates| sink.borrow_mut().append(updates))
            })
            .probe();
        (sessions, probe)
    });
    let inputs = hoisted
        .into_iter()
        .zip(sessions)
        .map(|(Hoisted { source, steps, .. }, session)| {
            let stream = sources[source];
            let watermark = retained[stream].watermark;
            let expired_before = if watermark == i64::MIN { i64::MIN } else { watermark.saturating_sub(time.retention_ms) };
            ViewInput { stream, steps, session, expired_before }
        })
        .collect();
    let live = store.get(&plan.name);
    let mut view = ViewRuntime { name: plan.name, live, time, inputs, probe, output, spare: Vec::new(), consolidated, dataflow, published: 0, created: None, seeded_below: frontier };
    for i in 0..view.inputs.len() {
        view.inputs[i].session.advance_to(frontier - 1);
        let source = &retained[view.inputs[i].stream];
        for kept in source.since(view.inputs[i].expired_before) {
            if view.admits(&view.inputs[i], kept.ts, kept.late_by) {
                let input = &mut view.inputs[i];
                if let Some(row) = prepare(&input.steps, &kept.row) {
                    input.session.update(row, kept.weight);
                }
            }
        }
        view.inputs[i].session.advance_to(frontier);
        view.inputs[i].session.flush();
    }
    views.push(view);
    Ok(())
}

/// How many changes a view's spare output vector keeps room for (see `ViewRuntime::spare`).
const SPARE_ROOM: usize = 1 << 17;

/// Hands every view's changes of completed epochs to the store.
fn publish(views: &mut [ViewRuntime], detectors: &mut [Detector], writer: &Writer, last_epoch: Epoch) {
    let mut anomalies = Vec::new();
    let mut created_views = Vec::new();
    for v in views.iter_mut() {
        // every epoch below the probe's frontier is complete
        let complete_below = v.probe.with_frontier(|f| f.first().copied()).unwrap_or(Epoch::MAX);
        let through = last_epoch.min(complete_below.saturating_sub(1));
        if complete_below >= v.seeded_below {
            // (after this round's changes are in the store)
            if let Some(created) = v.created.take() {
                created_views.push(created);
            }
        }
        if through <= v.published && v.output.borrow().is_empty() {
            continue;
        }
        let mut ready: BTreeMap<Epoch, Vec<Change>> = BTreeMap::new();
        let mut output = v.output.borrow_mut();
        let mut pending = std::mem::take(&mut v.spare);
        std::mem::swap(&mut *output, &mut pending);
        // each epoch's changes are gathered into a vector made at their number (not grown
        // by doubling, nor left larger than they need: the store keeps it as the history)
        let mut sizes: Vec<(Epoch, usize)> = Vec::new();
        for (_, t, _) in &pending {
            match sizes.last_mut() {
                Some((epoch, n)) if epoch == t => *n += 1,
                _ => sizes.push((*t, 1)),
            }
        }
        let size = |t: Epoch| sizes.iter().filter(|(epoch, _)| *epoch == t).map(|(_, n)| n).sum();
        for ((row, hash, slot), t, diff) in pending.drain(..) {
            if t < complete_below {
                ready.entry(t).or_insert_with(|| Vec::with_capacity(size(t))).push(Change { row, hash, slot, diff });
            } else {
                output.push(((row, hash, slot), t, diff));
            }
        }
        drop(output);
        // (a view's first epoch holds every retained event's changes: millions)
        pending.shrink_to(SPARE_ROOM);
        v.spare = pending;
        for (epoch, mut changes) in ready {
            if v.consolidated {
                changes.retain(|c| c.diff != 0);
            } else {
                consolidate(&mut changes);
            }
            let now = crate::time::now_ms();
            if detectors.iter().any(|d| d.view() == v.name) {
                let rows: Vec<(Row, isize)> = changes.iter().map(|c| (c.row.to_row(), c.diff)).collect();
                for d in detectors.iter_mut().filter(|d| d.view() == v.name) {
                    d.apply(&rows, now);
                    anomalies.extend(d.close(None));
                }
            }
            if let Some(live) = &v.live {
                writer.send(Write::Publish(live.clone(), epoch, changes));
            }
        }
        if through > v.published {
            if let Some(live) = &v.live {
                writer.send(Write::Publish(live.clone(), through, Vec::new()));
            }
            v.published = through;
        }
    }
    publish_anomalies(writer, complete_through(views, last_epoch), anomalies);
    if !created_views.is_empty() {
        // (once their initial contents are in the store)
        writer.then(move || {
            for created in created_views {
                let _ = created.send(Ok(()));
            }
        });
    }
}

/// Consolidates an epoch's changes: sums the counts of equal rows and drops those that
/// cancel. Usually no row repeats (an aggregate's changed groups differ, so do events):
/// each row's 64-bit hash goes into a table of the distinct rows' positions, and a row
/// is compared only with those of an equal hash. (A table instead of sorting the
/// hashes: `nexmark-q0` spent 14% of its dataflow thread's instructions in that sort.)
fn consolidate(changes: &mut Vec<Change>) {
    let mut first: hashbrown::HashTable<usize> = hashbrown::HashTable::with_capacity(changes.len());
    for j in 0..changes.len() {
        let hash = crate::value::spread(changes[j].hash);
        match first.find(hash, |&i| changes[i].hash == changes[j].hash && changes[i].row == changes[j].row).copied() {
            Some(i) => {
                let diff = std::mem::take(&mut changes[j].diff);
                changes[i].diff += diff;
            }
            None => {
                first.insert_unique(hash, j, |&i| crate::value::spread(changes[i].hash));
            }
        }
    }
    changes.retain(|c| c.diff != 0);
}

/// The epoch every view has published: detector output is complete through it.
fn complete_through(views: &[ViewRuntime], last_epoch: Epoch) -> Epoch {
    views.iter().map(|v| v.published).min().unwrap_or(last_epoch)
}

/// Publishes detector output to `anomalies`, as of `epoch` (or its current epoch, if later).
fn publish_anomalies(writer: &Writer, epoch: Epoch, changes: Vec<(Row, isize)>) {
    if changes.is_empty() && epoch <= writer.anomalies_through.get() {
        return;
    }
    writer.anomalies_through.set(writer.anomalies_through.get().max(epoch));
    let mut changes = changes.into_iter().map(|(row, diff)| Change::new(row, diff)).collect();
    consolidate(&mut changes);
    writer.send(Write::Anomalies(epoch, changes));
}

type Rows<'s> = VecCollection<'s, Epoch, Row, isize>;

/// The plan nodes of a view lowered so far, with their collections.
type Built<'s> = Vec<(Node, Rows<'s>)>;

/// Lowers a plan node into differential operators, once: a subtree that occurs twice in
/// a view's plan (both sides of a self-join over one aggregate, as in Nexmark q5) is
/// computed once and its collection used twice.
fn build<'s>(node: &Node, sources: &[Rows<'s>], scope: Scope<'s, Epoch>, built: &mut Built<'s>) -> Rows<'s> {
    if let Node::Scan { source } = node {
        return sources[*source].clone();
    }
    if let Some((_, rows)) = built.iter().find(|(n, _)| n == node) {
        return rows.clone();
    }
    let rows = lower(node, sources, scope, built);
    built.push((node.clone(), rows.clone()));
    rows
}

/// Lowers a view's plan into the changes to its rows, each packed and hashed on its
/// worker (see [`Out`]): a grouping's own rows, if the plan ends in one, or its last
/// operator's.
fn changes_of<'s>(root: &Node, sources: &[Rows<'s>], scope: Scope<'s, Epoch>) -> StreamVec<'s, Epoch, Out> {
    let mut built = Vec::new();
    if let Node::Aggregate { input, keys, aggregates } = root
        && !keys.is_empty()
        && let Some(slots) = keyed_slots(keys, aggregates)
    {
        let rows = grouping_input(input, sources, scope, &mut built);
        return crate::aggregate::group_shared(rows, Some(keys.len()), aggregates.iter().cloned().zip(slots).collect());
    }
    build(root, sources, scope, &mut built).inner.unary::<CapacityContainerBuilder<Vec<Out>>, _, _, _>(Pipeline, "Pack", |_, _| {
        |input, output| {
            input.for_each(|cap, updates| {
                let mut session = output.session(&cap);
                for (row, t, diff) in updates.drain(..) {
                    let Change { row, hash, slot, diff } = Change::new(row, diff);
                    session.give(((row, hash, slot), t, diff));
                }
            })
        }
    })
}

/// The rows `key ++ inputs` a grouping over `input` takes (see [`keyed`]).
fn grouping_input<'s>(input: &Node, sources: &[Rows<'s>], scope: Scope<'s, Epoch>, built: &mut Built<'s>) -> Rows<'s> {
    match input {
        Node::Map { .. } | Node::Filter { .. } => lower_chain(input, sources, scope, built),
        _ => build(input, sources, scope, built),
    }
}

/// Lowers one plan node (its inputs through [`build`]).
fn lower<'s>(node: &Node, sources: &[Rows<'s>], scope: Scope<'s, Epoch>, built: &mut Built<'s>) -> Rows<'s> {
    match node {
        Node::Scan { source } => sources[*source].clone(),
        Node::Map { .. } | Node::Filter { .. } => lower_chain(node, sources, scope, built),
        // a group per distinct row, with no aggregates
        Node::Distinct { input } => crate::aggregate::group(build(input, sources, scope, built), None, Vec::new()),
        Node::Join { left, right, left_keys, right_keys, residual } => {
            let (l, r) = (build(left, sources, scope, built), build(right, sources, scope, built));
            let residual = residual.clone();
            crate::join::join(l, r, left_keys.clone(), right_keys.clone(), move |l: &Row, r: &Row| {
                let mut row = Vec::with_capacity(l.len() + r.len());
                row.extend_from_slice(l);
                row.extend_from_slice(r);
                residual.as_ref().is_none_or(|p| p.passes(&row)).then_some(row)
            })
        }
        Node::Unnest { input, column, preserve_nulls } => {
            let (column, preserve_nulls) = (*column, *preserve_nulls);
            build(input, sources, scope, built).flat_map(move |row| {
                let items: Arc<Vec<Value>> = match &row[column] {
                    Value::List(items) => items.clone(),
                    Value::Null if preserve_nulls => Arc::new(vec![Value::Null]),
                    _ => Arc::new(Vec::new()),
                };
                // a copy of the row per item but the last, which takes the row itself
                std::iter::repeat_n(row, items.len()).enumerate().map(move |(i, mut out)| {
                    out[column] = items[i].clone();
                    out
                })
            })
        }
        Node::Aggregate { input, keys, aggregates } => {
            // the grouping takes rows `key ++ inputs` (see `keyed`)
            let Some(slots) = keyed_slots(keys, aggregates) else {
                return build(&keyed(node), sources, scope, built);
            };
            let global = keys.is_empty();
            let aggs: Vec<(Aggregate, crate::aggregate::Slot)> = aggregates.iter().cloned().zip(slots).collect();
            let rows = grouping_input(input, sources, scope, built);
            let grouped = crate::aggregate::group(rows, Some(keys.len()), aggs);
            if !global {
                return grouped;
            }
            // A global aggregate has one row even over no input (count 0, sum NULL…):
            // emit that row exactly while the input is empty.
            let empty_row: Row = aggregates.iter().map(|a| if a.func == AggFunc::Count { Value::Int(0) } else { Value::Null }).collect();
            let present = grouped.clone().map(|_| ());
            // (one worker holds the constant, or each would add its own)
            let constant_rows = if scope.index() == 0 { vec![()] } else { Vec::new() };
            let (_constant_input, constant) = scope.new_collection_from(constant_rows);
            let empty = constant.concat(present.negate()).map(move |()| empty_row.clone());
            grouped.concat(empty)
        }
    }
}

/// The plan with each aggregate reading rows `key ++ inputs`: a map below it evaluates
/// the group key's expressions and each distinct aggregate input (see
/// [`crate::aggregate::inputs`]; a `FILTER` becomes `CASE WHEN filter THEN arg END`),
/// and the aggregate groups by the first columns and reads the ones after. The grouping
/// takes those rows as they come, and where the map is hoisted into the view's input
/// (see [`hoist`]) the row it builds from an event is the only copy of it.
fn keyed(node: &Node) -> Node {
    let inner = |n: &Node| Box::new(keyed(n));
    match node {
        Node::Aggregate { input, keys, aggregates } => {
            let k = keys.len();
            let (inputs, slots) = crate::aggregate::inputs(aggregates);
            let mut exprs = keys.clone();
            exprs.extend(inputs.into_iter().map(|(arg, filter)| match filter {
                None => arg,
                Some(filter) => Scalar::Case { operand: None, branches: vec![(filter, arg)], otherwise: None },
            }));
            let aggregates = aggregates
                .iter()
                .zip(slots)
                .map(|(a, slot)| Aggregate {
                    arg: match slot {
                        crate::aggregate::Slot::Column(i) => Scalar::Column(k + i),
                        crate::aggregate::Slot::Constant(v) => Scalar::Literal(v),
                    },
                    filter: None,
                    ..a.clone()
                })
                .collect();
            Node::Aggregate { input: Box::new(Node::Map { input: inner(input), exprs }), keys: (0..k).map(Scalar::Column).collect(), aggregates }
        }
        Node::Scan { .. } => node.clone(),
        Node::Map { input, exprs } => Node::Map { input: inner(input), exprs: exprs.clone() },
        Node::Filter { input, predicate } => Node::Filter { input: inner(input), predicate: predicate.clone() },
        Node::Distinct { input } => Node::Distinct { input: inner(input) },
        Node::Unnest { input, column, preserve_nulls } => Node::Unnest { input: inner(input), column: *column, preserve_nulls: *preserve_nulls },
        Node::Join { left, right, left_keys, right_keys, residual } => {
            Node::Join { left: inner(left), right: inner(right), left_keys: left_keys.clone(), right_keys: right_keys.clone(), residual: residual.clone() }
        }
    }
}

/// Each aggregate's slot if the aggregate is as [`keyed`] leaves it (keys are the row's
/// first columns; each aggregate reads a column after them, or a constant, unfiltered).
fn keyed_slots(keys: &[Scalar], aggregates: &[Aggregate]) -> Option<Vec<crate::aggregate::Slot>> {
    let k = keys.len();
    if keys.iter().enumerate().any(|(i, key)| *key != Scalar::Column(i)) {
        return None;
    }
    aggregates
        .iter()
        .map(|a| match (&a.arg, &a.filter) {
            (Scalar::Column(c), None) if *c >= k => Some(crate::aggregate::Slot::Column(c - k)),
            (Scalar::Literal(v), None) => Some(crate::aggregate::Slot::Constant(v.clone())),
            _ => None,
        })
        .collect()
}

/// A chain of maps and filters, fused into one operator.
fn lower_chain<'s>(node: &Node, sources: &[Rows<'s>], scope: Scope<'s, Epoch>, built: &mut Built<'s>) -> Rows<'s> {
    let (steps, base) = chain(node);
    build(base, sources, scope, built).flat_map(move |row| apply_steps(&steps, row))
}

#[derive(Clone)]
enum RowStep {
    /// A row of the expressions' values. `columns`: the columns it takes, when its
    /// expressions are references to columns in increasing order (a projection), which
    /// a row owned by the step gives up in place rather than copying into a new one.
    /// (Rows are made with room for their values only. A grouping's input rows had room
    /// for the aggregates too, from when a new group kept its first row; since groups
    /// keep packed keys that room went unused: without it engine-window took 0.4% fewer
    /// instructions, engine-hop and nexmark-q5 the same: docs/benchmarks.md.)
    Map { exprs: Vec<Scalar>, columns: Option<Vec<usize>> },
    Filter(Scalar),
}

impl RowStep {
    fn new_map(exprs: &[Scalar]) -> RowStep {
        let columns: Option<Vec<usize>> = exprs.iter().map(|e| if let Scalar::Column(c) = e { Some(*c) } else { None }).collect();
        let columns = columns.filter(|c| c.windows(2).all(|w| w[0] < w[1]));
        RowStep::Map { exprs: exprs.to_vec(), columns }
    }

    /// The projection of `row` onto `columns` (increasing), in place: each taken value
    /// moves forward to its position, and what is left after them is dropped. The row
    /// keeps the room it has (the in-place projection saved `nexmark-q5` 95M
    /// instructions).
    fn project(columns: &[usize], mut row: Row) -> Row {
        for (i, c) in columns.iter().enumerate() {
            // (c ≥ i, and position c still holds its own value: only positions before
            // i and columns before c have moved)
            row.swap(i, *c);
        }
        row.truncate(columns.len());
        row
    }

    fn map(exprs: &[Scalar], row: &[Value]) -> Row {
        let mut out = Vec::with_capacity(exprs.len());
        out.extend(exprs.iter().map(|e| e.eval(row)));
        out
    }
}

/// The maps and filters from `node` down, in the order they apply, and the node below them.
fn chain(node: &Node) -> (Vec<RowStep>, &Node) {
    let mut steps = Vec::new();
    let mut base = node;
    loop {
        let (step, input) = match base {
            Node::Map { input, exprs } => (RowStep::new_map(exprs), input),
            Node::Filter { input, predicate } => (RowStep::Filter(predicate.clone()), input),
            _ => break,
        };
        steps.push(step);
        base = input;
    }
    steps.reverse();
    (steps, base)
}

/// One of a view's inputs: a stream's rows through a chain of maps and filters (maybe
/// none) that the plan applies to them first. `node` is that part of the plan (the chain
/// and its scan), which identifies the input.
struct Hoisted {
    node: Node,
    source: usize,
    steps: Vec<RowStep>,
}

/// The plan with each chain of maps and filters directly over a source (and each bare
/// read of one) taken out into an input of its own, which applies the chain to each event
/// as it takes it in: a filtered-out event is never copied and a projected one is copied
/// only in part, and a source the plan reads through two chains (Nexmark q7: the bids and
/// their aggregate) is copied once per chain and only in part, rather than whole and then
/// again for the second reader. Identical chains (a subtree the plan repeats) share an
/// input, so that [`build`] still lowers the subtree once. The plan's scans then read
/// the inputs (`Scan { source }` is `inputs[source]`).
fn hoist(node: &Node, inputs: &mut Vec<Hoisted>) -> Node {
    match node {
        Node::Scan { .. } | Node::Map { .. } | Node::Filter { .. } => {
            let (steps, base) = chain(node);
            match base {
                Node::Scan { source } => {
                    let i = inputs.iter().position(|input| input.node == *node).unwrap_or_else(|| {
                        inputs.push(Hoisted { node: node.clone(), source: *source, steps });
                        inputs.len() - 1
                    });
                    Node::Scan { source: i }
                }
                _ => match node {
                    Node::Map { input, exprs } => Node::Map { input: Box::new(hoist(input, inputs)), exprs: exprs.clone() },
                    Node::Filter { input, predicate } => Node::Filter { input: Box::new(hoist(input, inputs)), predicate: predicate.clone() },
                    _ => unreachable!("a map or a filter"),
                },
            }
        }
        Node::Aggregate { input, keys, aggregates } => Node::Aggregate { input: Box::new(hoist(input, inputs)), keys: keys.clone(), aggregates: aggregates.clone() },
        Node::Distinct { input } => Node::Distinct { input: Box::new(hoist(input, inputs)) },
        Node::Unnest { input, column, preserve_nulls } => Node::Unnest { input: Box::new(hoist(input, inputs)), column: *column, preserve_nulls: *preserve_nulls },
        Node::Join { left, right, left_keys, right_keys, residual } => Node::Join {
            left: Box::new(hoist(left, inputs)),
            right: Box::new(hoist(right, inputs)),
            left_keys: left_keys.clone(),
            right_keys: right_keys.clone(),
            residual: residual.clone(),
        },
    }
}

/// A stream's row as a view's input takes it: through the hoisted steps (no copy of an
/// event a filter drops; a map's output is the only copy).
fn prepare(steps: &[RowStep], row: &[Value]) -> Option<Row> {
    let mut owned: Option<Row> = None;
    for step in steps {
        let current = owned.as_deref().unwrap_or(row);
        match step {
            // (a projection copies the columns it takes, without evaluating expressions)
            RowStep::Map { columns: Some(columns), .. } => {
                let mut row = Vec::with_capacity(columns.len());
                row.extend(columns.iter().map(|c| current[*c].clone()));
                owned = Some(row);
            }
            RowStep::Map { exprs, .. } => owned = Some(RowStep::map(exprs, current)),
            RowStep::Filter(p) => {
                if !p.passes(current) {
                    return None;
                }
            }
        }
    }
    Some(owned.unwrap_or_else(|| row.to_vec()))
}

fn apply_steps(steps: &[RowStep], mut row: Row) -> Option<Row> {
    for step in steps {
        match step {
            // (not where the row's allocation is over twice what the step needs: whatever
            // keeps the new row would keep all of it)
            RowStep::Map { columns: Some(columns), .. } if row.capacity() <= 2 * columns.len() => row = RowStep::project(columns, row),
            RowStep::Map { exprs, .. } => row = RowStep::map(exprs, &row),
            RowStep::Filter(p) => {
                if !p.passes(&row) {
                    return None;
                }
            }
        }
    }
    Some(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_projection_of_an_owned_row_agrees_with_evaluating_the_map() {
        let row: Row = (0..6).map(Value::Int).collect();
        for columns in [vec![0, 1], vec![1, 3, 5], vec![2], vec![0, 1, 2, 3, 4, 5], vec![4, 5]] {
            let exprs: Vec<Scalar> = columns.iter().map(|c| Scalar::Column(*c)).collect();
            let RowStep::Map { columns: Some(taken), .. } = RowStep::new_map(&exprs) else { panic!("{columns:?} is a projection") };
            let expected = RowStep::map(&exprs, &row);
            let projected = apply_steps(&[RowStep::Map { exprs: exprs.clone(), columns: Some(taken) }], row.clone()).unwrap();
            assert_eq!(projected, expected, "{columns:?}");
        }
        // out of order, repeated or computed: evaluated
        for exprs in [vec![Scalar::Column(1), Scalar::Column(0)], vec![Scalar::Column(1), Scalar::Column(1)], vec![Scalar::Literal(Value::Int(1))]] {
            assert!(matches!(RowStep::new_map(&exprs), RowStep::Map { columns: None, .. }));
        }
    }

    #[test]
    fn consolidating_sums_equal_rows_and_drops_what_cancels() {
        let row = |v: i64| vec![Value::Int(v)];
        let changes = vec![(row(1), 1), (row(2), 1), (row(1), 2), (row(3), -1), (row(2), -1), (row(1), -1), (row(4), 0), (row(3), 1), (row(5), 2)];
        let mut changes = changes.into_iter().map(|(row, diff)| Change::new(row, diff)).collect();
        consolidate(&mut changes);
        let mut changes: Vec<(Row, isize)> = changes.into_iter().map(|c| (c.row.to_row(), c.diff)).collect();
        changes.sort();
        assert_eq!(changes, vec![(row(1), 2), (row(5), 2)]);
    }

    #[test]
    fn an_aggregate_over_a_stream_takes_rows_of_its_key_and_inputs_built_in_the_view_input() {
        use crate::schema::DataType;
        let column = |c| Scalar::Column(c);
        let positive = Scalar::Binary(Box::new(column(1)), crate::expr::BinOp::Gt, Box::new(Scalar::Literal(Value::Int(0))));
        let aggregate = |func, arg, filter| Aggregate { func, arg, distinct: false, filter, output: DataType::Int };
        // GROUP BY col0: count(*), sum(col1), max(col1), count(*) FILTER (WHERE col1 > 0)
        let plan = Node::Aggregate {
            input: Box::new(Node::Scan { source: 0 }),
            keys: vec![column(0)],
            aggregates: vec![
                aggregate(AggFunc::Count, Scalar::Literal(Value::Int(1)), None),
                aggregate(AggFunc::Sum, column(1), None),
                aggregate(AggFunc::Max, column(1), None),
                aggregate(AggFunc::Count, Scalar::Literal(Value::Int(1)), Some(positive.clone())),
            ],
        };
        let keyed_plan = keyed(&plan);
        let Node::Aggregate { keys, aggregates, .. } = &keyed_plan else { panic!("still an aggregate") };
        // the key first, then each distinct input once (sum and max share col1), the filter as a CASE
        assert_eq!(keys, &vec![column(0)]);
        let args: Vec<&Scalar> = aggregates.iter().map(|a| &a.arg).collect();
        assert_eq!(args, vec![&Scalar::Literal(Value::Int(1)), &column(1), &column(1), &column(2)]);
        assert!(aggregates.iter().all(|a| a.filter.is_none()));
        let slots = keyed_slots(keys, aggregates).expect("in keyed form");
        assert_eq!(slots[3], crate::aggregate::Slot::Column(1));
        // the map moves into the view's input
        let mut inputs = Vec::new();
        let hoisted = hoist(&keyed_plan, &mut inputs);
        assert!(matches!(&hoisted, Node::Aggregate { input, .. } if **input == Node::Scan { source: 0 }));
        let steps = &inputs[0].steps;
        let row = prepare(steps, &vec![Value::str("a"), Value::Int(-4)]).expect("no filter drops it");
        assert_eq!(row, vec![Value::str("a"), Value::Int(-4), Value::Null]);
        assert_eq!(prepare(steps, &vec![Value::str("a"), Value::Int(4)]), Some(vec![Value::str("a"), Value::Int(4), Value::Int(1)]));
    }

    #[test]
    fn each_chain_of_maps_and_filters_over_a_source_moves_into_an_input_of_its_own() {
        let keep_positive = Scalar::Binary(Box::new(Scalar::Column(0)), crate::expr::BinOp::Gt, Box::new(Scalar::Literal(Value::Int(0))));
        let filtered = |source| Node::Filter { input: Box::new(Node::Scan { source }), predicate: keep_positive.clone() };
        let projected = |source| Node::Map { input: Box::new(filtered(source)), exprs: vec![Scalar::Column(1)] };
        let scan = |source| Node::Scan { source };
        let join = |left: Node, right: Node| Node::Join { left: Box::new(left), right: Box::new(right), left_keys: vec![Scalar::Column(0)], right_keys: vec![Scalar::Column(0)], residual: None };
        // the whole chain moves into the input, in the order it applies
        let mut inputs = Vec::new();
        assert_eq!(hoist(&projected(0), &mut inputs), scan(0));
        assert_eq!((inputs.len(), inputs[0].source, inputs[0].steps.len()), (1, 0, 2));
        assert_eq!(prepare(&inputs[0].steps, &vec![Value::Int(3), Value::str("a")]), Some(vec![Value::str("a")]));
        assert_eq!(prepare(&inputs[0].steps, &vec![Value::Int(-3), Value::str("a")]), None);
        // a source read through two chains (a self-join) and bare: an input for each
        let mut inputs = Vec::new();
        let hoisted = hoist(&join(join(projected(0), filtered(0)), scan(0)), &mut inputs);
        assert_eq!(hoisted, join(join(scan(0), scan(1)), scan(2)));
        let shape: Vec<(usize, usize)> = inputs.iter().map(|i| (i.source, i.steps.len())).collect();
        assert_eq!(shape, vec![(0, 2), (0, 1), (0, 0)]);
        // the same chain twice (a repeated subtree): one input, read twice
        let mut inputs = Vec::new();
        assert_eq!(hoist(&join(projected(0), projected(0)), &mut inputs), join(scan(0), scan(0)));
        assert_eq!(inputs.len(), 1);
        // two sources: an input for each, in the order the plan reads them
        let mut inputs = Vec::new();
        assert_eq!(hoist(&join(filtered(1), projected(0)), &mut inputs), join(scan(0), scan(1)));
        let shape: Vec<(usize, usize)> = inputs.iter().map(|i| (i.source, i.steps.len())).collect();
        assert_eq!(shape, vec![(1, 1), (0, 2)]);
    }
}
