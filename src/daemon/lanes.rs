//! The daemon's lanes: `pipeline.lanes` threads that decode and aggregate
//! the predictions partitions in parallel, while the loop (the closer)
//! joins, watermarks, closes and writes.
//!
//! The loop's closer (`super::closer`) hands each predictions partition's
//! run of a micro-batch to the lane that owns the partition
//! ([`Lanes::dispatch`]: a partition goes to the lane with the fewest
//! partitions when first read, and stays there until it is revoked). A
//! lane decodes the run with its own decoder and dictionaries, aggregates
//! it into the partition's panes ([`LaneWorker`]) and answers with one
//! [`LaneDone`]; the closer applies the answers in the order it dispatched
//! the runs, so the rows do not depend on the number of lanes.
//!
//! Once everything dispatched before is applied, the lanes hand a
//! partition's panes over to the engine ([`Lanes::hand_over`]) when it is
//! revoked, when it goes idle (so the windows it stops holding close with
//! its part) and at a shutdown without a state dir; a checkpoint takes a
//! copy of every lane's panes instead ([`Lanes::snapshot`]), and the panes
//! a checkpoint restored go to the lane that takes their partition over,
//! as they were, so a restart changes no row, not even in the last bits.
//!
//! Threads: one per lane (`driftwatch-lane-k`), owning its `LaneWorker`.
//! It takes work from an unbounded channel (the loop bounds what is in
//! flight: [`IN_FLIGHT_BATCHES`]) and answers on one of its own; it ends
//! when the loop drops its work sender.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::time::Duration;

use crate::config::Config;
use crate::decode::{DecodeCounters, Invalid};
use crate::engine::Engine;
use crate::engine::lane::LaneOutput;
use crate::lanes::{LaneIds, LaneMessage, LaneWorker, Translated};
use crate::model::ModelRegistry;
use crate::sources::kafka::{KafkaSourceError, Location, SourceBatch};
use crate::telemetry::Telemetry;
use crate::window::{PartitionId, PartitionPanes};

/// Micro-batches dispatched to the lanes and not yet applied, at most:
/// enough that every lane has the next run queued while the loop applies
/// one; beyond it the loop waits for the oldest, and the consumer for the
/// loop (so at most this many plus the consumer's channel are in memory).
pub const IN_FLIGHT_BATCHES: usize = 8;

/// What the loop has a lane do.
pub enum LaneWork {
    /// Decode and aggregate messages `messages` of `batch` (one
    /// predictions partition's run).
    Run {
        batch: Arc<SourceBatch>,
        messages: Range<usize>,
        partition: PartitionId,
        /// Event times from this instant on are rejected (`max_future_skew`).
        accept_before_ms: i64,
        /// The models' frontiers and the host clock as the loop knows them.
        frontiers: Vec<Option<i64>>,
        clock_limit: Option<i64>,
        /// The partition is new to the lane: its clocks in the loop, and
        /// the panes a checkpoint restored for it.
        seed: Option<(Vec<Option<i64>>, Vec<PartitionPanes>)>,
    },
    /// Hand over these partitions' panes; `forget` them (revoked).
    HandOver { partitions: Vec<PartitionId>, forget: bool },
    /// Send a copy of every partition's panes (a checkpoint).
    Snapshot,
}

/// A lane's answer to one [`LaneWork`].
pub struct LaneDone {
    pub message: LaneMessage,
    /// The run's invalid predictions: (index in the batch's messages, why).
    pub invalid: Vec<(usize, Invalid)>,
}

/// The lanes as the loop sees them.
pub struct Lanes {
    work: Vec<Sender<LaneWork>>,
    done: Vec<Receiver<LaneDone>>,
    ids: Vec<LaneIds>,
    /// Which lane owns each predictions partition it was given.
    owner: BTreeMap<PartitionId, usize>,
    /// Owned partitions whose lane holds no panes (handed over since their
    /// last run).
    empty: BTreeSet<PartitionId>,
    max_categories: usize,
}

impl Lanes {
    /// Starts `count` lanes (at least one) in `scope`, each from a copy of
    /// `registry` (the loop's dictionaries, restored or new).
    pub fn spawn<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        config: &Config,
        registry: &ModelRegistry,
        count: usize,
        telemetry: Arc<Telemetry>,
        topic: &str,
    ) -> Result<(Lanes, Vec<std::thread::ScopedJoinHandle<'scope, ()>>), KafkaSourceError> {
        let count = count.max(1);
        let mut lanes = Lanes {
            work: Vec::with_capacity(count),
            done: Vec::with_capacity(count),
            ids: vec![LaneIds::new(config, registry); count],
            owner: BTreeMap::new(),
            empty: BTreeSet::new(),
            max_categories: config.pipeline.max_categories_per_feature,
        };
        let mut threads = Vec::with_capacity(count);
        for number in 0..count {
            let (work, works) = channel();
            let (answers, done) = channel();
            let lane = LaneThread {
                worker: LaneWorker::new(config, registry, 1).map_err(KafkaSourceError::Lanes)?,
                telemetry: telemetry.clone(),
                topic: topic.to_string(),
                reported: DecodeCounters::default(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("driftwatch-lane-{number}"))
                .spawn_scoped(scope, move || lane.run(works, answers))
                .map_err(KafkaSourceError::Thread)?;
            threads.push(thread);
            lanes.work.push(work);
            lanes.done.push(done);
        }
        Ok((lanes, threads))
    }

    /// Hands one predictions partition's run (`messages` of `batch`) to
    /// its lane, which becomes its owner if it had none (the lane with the
    /// fewest partitions; seeded with the partition's clocks in `engine`
    /// and the panes a checkpoint restored there, which only the lanes
    /// started after the restore know the ids of). Returns the lane.
    pub fn dispatch(
        &mut self,
        batch: &Arc<SourceBatch>,
        messages: Range<usize>,
        partition: PartitionId,
        accept_before_ms: i64,
        engine: &mut Engine,
    ) -> Result<usize, KafkaSourceError> {
        let (lane, seed) = match self.owner.get(&partition) {
            Some(lane) => (*lane, None),
            None => {
                let mut owned = vec![0usize; self.work.len()];
                for lane in self.owner.values() {
                    owned[*lane] += 1;
                }
                let lane = (0..owned.len()).min_by_key(|lane| owned[*lane]).unwrap_or(0);
                self.owner.insert(partition, lane);
                (lane, Some((engine.partition_clocks(partition), engine.take_partition_panes(partition))))
            }
        };
        self.empty.remove(&partition);
        let work = LaneWork::Run {
            batch: batch.clone(),
            messages,
            partition,
            accept_before_ms,
            frontiers: engine.model_frontiers(),
            clock_limit: engine.clock_limit(),
            seed,
        };
        self.work[lane].send(work).map_err(|_| KafkaSourceError::LaneStopped(lane))?;
        Ok(lane)
    }

    /// Lane `lane`'s next answer if it is there.
    pub fn try_done(&self, lane: usize) -> Result<Option<LaneDone>, KafkaSourceError> {
        match self.done[lane].try_recv() {
            Ok(done) => Ok(Some(done)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(KafkaSourceError::LaneStopped(lane)),
        }
    }

    /// Lane `lane`'s next answer, waiting up to `timeout`.
    pub fn wait_done(&self, lane: usize, timeout: Duration) -> Result<Option<LaneDone>, KafkaSourceError> {
        match self.done[lane].recv_timeout(timeout) {
            Ok(done) => Ok(Some(done)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(KafkaSourceError::LaneStopped(lane)),
        }
    }

    /// Moves lane `lane`'s answer into `registry`'s ids.
    pub fn translate(&mut self, lane: usize, registry: &mut ModelRegistry, message: LaneMessage) -> Translated {
        self.ids[lane].translate(registry, message, self.max_categories)
    }

    /// A copy of every lane's panes, per partition and model, in
    /// `registry`'s ids. Only when nothing dispatched is still unanswered.
    pub fn snapshot(
        &mut self,
        registry: &mut ModelRegistry,
    ) -> Result<Vec<(PartitionId, Vec<PartitionPanes>)>, KafkaSourceError> {
        for (lane, work) in self.work.iter().enumerate() {
            work.send(LaneWork::Snapshot).map_err(|_| KafkaSourceError::LaneStopped(lane))?;
        }
        let mut panes = Vec::new();
        for lane in 0..self.done.len() {
            let done = self.done[lane].recv().map_err(|_| KafkaSourceError::LaneStopped(lane))?;
            panes.extend(self.translate(lane, registry, done.message).panes);
        }
        Ok(panes)
    }

    /// Has the owners of `partitions` (`None`: every partition) hand over
    /// their panes, and `forget` the partitions (revoked); returns what
    /// they handed over, in the loop's ids. Only when nothing dispatched is
    /// still unanswered (the answers come next on each lane).
    pub fn hand_over(
        &mut self,
        partitions: Option<&BTreeSet<PartitionId>>,
        forget: bool,
        registry: &mut ModelRegistry,
    ) -> Result<Vec<LaneOutput>, KafkaSourceError> {
        let mut by_lane: BTreeMap<usize, Vec<PartitionId>> = BTreeMap::new();
        for (partition, lane) in &self.owner {
            let wanted = partitions.is_none_or(|p| p.contains(partition));
            if wanted && (forget || !self.empty.contains(partition)) {
                by_lane.entry(*lane).or_default().push(*partition);
            }
        }
        for (lane, partitions) in &by_lane {
            let work = LaneWork::HandOver { partitions: partitions.clone(), forget };
            self.work[*lane].send(work).map_err(|_| KafkaSourceError::LaneStopped(*lane))?;
        }
        let mut handed_over = Vec::new();
        for (lane, partitions) in by_lane {
            let done = self.done[lane].recv().map_err(|_| KafkaSourceError::LaneStopped(lane))?;
            handed_over.extend(self.translate(lane, registry, done.message).handed_over);
            for partition in partitions {
                if forget {
                    self.owner.remove(&partition);
                    self.empty.remove(&partition);
                } else {
                    self.empty.insert(partition);
                }
            }
        }
        Ok(handed_over)
    }

    /// Of `partitions`, those a lane may hold panes of.
    pub fn holding(&self, partitions: &BTreeSet<PartitionId>) -> BTreeSet<PartitionId> {
        partitions.iter().filter(|p| self.owner.contains_key(*p) && !self.empty.contains(*p)).copied().collect()
    }
}

/// What one lane thread owns.
struct LaneThread {
    worker: LaneWorker,
    telemetry: Arc<Telemetry>,
    /// The predictions topic (invalid events are counted and logged per topic).
    topic: String,
    /// The decoder's counters as last added to the telemetry.
    reported: DecodeCounters,
}

impl LaneThread {
    fn run(mut self, works: Receiver<LaneWork>, answers: Sender<LaneDone>) {
        for work in works {
            let mut done = LaneDone { message: LaneMessage::default(), invalid: Vec::new() };
            match work {
                LaneWork::Run { batch, messages, partition, accept_before_ms, frontiers, clock_limit, seed } => {
                    if let Some((clocks, panes)) = seed {
                        self.worker.seed(partition, clocks, panes);
                    }
                    self.worker.decoder.accept_times_before(accept_before_ms);
                    for index in messages {
                        let message = &batch.messages()[index];
                        if let Err(invalid) = self.worker.push_prediction(batch.payload(message)) {
                            let location = Location { topic: &self.topic, partition, offset: message.offset };
                            self.telemetry.invalid_event(&self.topic, &location.to_string(), &invalid);
                            done.invalid.push((index, invalid));
                        }
                    }
                    self.worker.aggregate(partition, &frontiers, clock_limit, &mut done.message);
                }
                LaneWork::HandOver { partitions, forget } => {
                    for partition in partitions {
                        self.worker.hand_over(partition, forget, &mut done.message);
                    }
                }
                LaneWork::Snapshot => self.worker.snapshot(&mut done.message),
            }
            self.worker.tell_new_names(&mut done.message);
            self.report_counters();
            if answers.send(done).is_err() {
                return; // the loop has gone
            }
        }
    }

    /// Adds what the decoder counted since the last report to the telemetry.
    fn report_counters(&mut self) {
        let now = &self.worker.decoder.counters;
        let delta = DecodeCounters {
            features_over_cap: now.features_over_cap - self.reported.features_over_cap,
            segments_over_cap: now.segments_over_cap - self.reported.segments_over_cap,
            versions_over_cap: now.versions_over_cap - self.reported.versions_over_cap,
            type_errors: now.type_errors - self.reported.type_errors,
        };
        self.telemetry.add_decode_counters(&delta);
        self.reported = now.clone();
    }
}
