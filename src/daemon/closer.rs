//! The closer: the loop's half of the lanes. It hands each predictions
//! partition's run of a micro-batch to the partition's lane
//! ([`Closer::dispatch`]), and applies the lanes' answers to the pipeline
//! in the order it read the runs, decoding and joining the labels runs
//! itself in between ([`Closer::advance`]), so the pipeline sees exactly
//! the sequence one thread saw. A batch whose runs are all applied comes
//! out as a [`Finished`] batch: its invalid events and offsets, for the
//! loop to pass on. Whatever needs everything read so far in the pipeline
//! (a rebalance, a checkpoint, shutdown) [`Closer::drain`]s first.
//!
//! No I/O beyond the lanes' channels and no clock: the daemon's loop
//! drives it, and so does the `daemon_lanes` bench, without Kafka.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::lanes::{LaneDone, Lanes};
use crate::pipeline::Pipeline;
use crate::sources::dead_letters::DeadLetter;
use crate::sources::kafka::{KafkaSourceError, Location, Positions, SourceBatch, Stream};
use crate::window::{PartitionId, PartitionPanes};

/// A micro-batch whose runs are all applied.
pub struct Finished {
    /// Everything the consumer read up to this instant is in the pipeline.
    pub read_until: Instant,
    /// The batch had no message (it only told how far the consumer read).
    pub empty: bool,
    /// Its invalid events (when dead letters are kept).
    pub letters: Vec<DeadLetter>,
    /// The offsets after its runs, per partition.
    pub processed: Positions,
}

/// A micro-batch taken from the consumer whose runs are being applied.
struct PendingBatch {
    batch: Arc<SourceBatch>,
    /// Its runs still to apply, in order.
    parts: VecDeque<Part>,
    /// Event times from this instant on are rejected (`max_future_skew`,
    /// as of when the batch arrived).
    accept_before_ms: i64,
    /// Its invalid events so far, for the dead-letter topic.
    letters: Vec<DeadLetter>,
    /// The offsets after its runs applied so far.
    processed: Positions,
}

/// One (stream, partition) run of a pending batch; `next` is the offset
/// after it.
enum Part {
    /// Decoded and aggregated by `lane`, whose answer it waits for.
    Predictions { lane: usize, partition: i32, next: i64 },
    /// Decoded and joined by the closer when its turn comes.
    Labels { messages: Range<usize>, partition: i32, next: i64 },
}

/// The lanes and the batches in flight (see the module doc).
pub struct Closer {
    lanes: Lanes,
    pending: VecDeque<PendingBatch>,
    predictions_topic: String,
    labels_topic: String,
    /// Invalid events are kept for a dead-letter topic.
    keep_letters: bool,
}

impl Closer {
    pub fn new(lanes: Lanes, predictions_topic: &str, labels_topic: &str, keep_letters: bool) -> Self {
        Closer {
            lanes,
            pending: VecDeque::new(),
            predictions_topic: predictions_topic.to_string(),
            labels_topic: labels_topic.to_string(),
            keep_letters,
        }
    }

    /// Batches taken and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The lane whose answer the oldest pending batch waits for.
    pub fn awaited_lane(&self) -> Option<usize> {
        match self.pending.front()?.parts.front()? {
            Part::Predictions { lane, .. } => Some(*lane),
            Part::Labels { .. } => None,
        }
    }

    /// Lane `lane`'s next answer if it is there.
    pub fn try_done(&self, lane: usize) -> Result<Option<LaneDone>, KafkaSourceError> {
        self.lanes.try_done(lane)
    }

    /// Lane `lane`'s next answer, waiting up to `timeout`.
    pub fn wait_done(&self, lane: usize, timeout: Duration) -> Result<Option<LaneDone>, KafkaSourceError> {
        self.lanes.wait_done(lane, timeout)
    }

    /// Takes a batch from the consumer: each predictions partition's run
    /// goes to its lane; the batch waits until its runs are applied, in
    /// order. Applies what is ready; finished batches go to `finished`.
    pub fn dispatch(
        &mut self,
        pipeline: &mut Pipeline,
        batch: SourceBatch,
        finished: &mut Vec<Finished>,
    ) -> Result<(), KafkaSourceError> {
        let batch = Arc::new(batch);
        let skew_ms = i64::try_from(pipeline.max_future_skew.as_millis()).unwrap_or(i64::MAX);
        let accept_before_ms = chrono::Utc::now().timestamp_millis().saturating_add(skew_ms);
        let mut parts = VecDeque::new();
        let mut start = 0;
        for messages in batch.partitions() {
            let (stream, partition) = (messages[0].stream, messages[0].partition);
            let run = start..start + messages.len();
            start = run.end;
            let next = messages.last().map_or(0, |m| m.offset + 1);
            parts.push_back(match stream {
                Stream::Predictions => {
                    let lane = self.lanes.dispatch(&batch, run, partition, accept_before_ms, &mut pipeline.engine)?;
                    Part::Predictions { lane, partition, next }
                }
                Stream::Labels => Part::Labels { messages: run, partition, next },
            });
        }
        self.pending.push_back(PendingBatch {
            batch,
            parts,
            accept_before_ms,
            letters: Vec::new(),
            processed: Positions::new(),
        });
        self.advance(pipeline, None, finished)
    }

    /// Applies the pending batches' runs in order while their answers are
    /// there (`answer`: the one just taken, for the oldest run); finished
    /// batches go to `finished`.
    pub fn advance(
        &mut self,
        pipeline: &mut Pipeline,
        mut answer: Option<(usize, LaneDone)>,
        finished: &mut Vec<Finished>,
    ) -> Result<(), KafkaSourceError> {
        while let Some(mut pending) = self.pending.pop_front() {
            while let Some(part) = pending.parts.front() {
                match part {
                    Part::Predictions { lane, partition, next } => {
                        let (lane, partition, next) = (*lane, *partition, *next);
                        let done = match answer.take() {
                            Some((answered, done)) => {
                                debug_assert_eq!(answered, lane, "answers come for the oldest run");
                                done
                            }
                            None => match self.lanes.try_done(lane)? {
                                Some(done) => done,
                                None => {
                                    self.pending.push_front(pending);
                                    return Ok(());
                                }
                            },
                        };
                        self.apply_predictions(pipeline, &mut pending, (lane, partition), done);
                        pending.processed.insert((self.predictions_topic.clone(), partition), next);
                    }
                    Part::Labels { messages, partition, next } => {
                        let (messages, partition, next) = (messages.clone(), *partition, *next);
                        self.apply_labels(pipeline, &mut pending, messages, partition);
                        pending.processed.insert((self.labels_topic.clone(), partition), next);
                    }
                }
                pending.parts.pop_front();
            }
            finished.push(Finished {
                read_until: pending.batch.read_until,
                empty: pending.batch.is_empty(),
                letters: pending.letters,
                processed: pending.processed,
            });
        }
        Ok(())
    }

    /// A lane's answer for a predictions run: into the pipeline, in its
    /// ids; its invalid events become dead letters.
    fn apply_predictions(
        &mut self,
        pipeline: &mut Pipeline,
        pending: &mut PendingBatch,
        (lane, partition): (usize, PartitionId),
        done: LaneDone,
    ) {
        let translated = self.lanes.translate(lane, &mut pipeline.registry, done.message);
        for (batch, output) in translated.batches {
            pipeline.apply_lane_output(Some(&batch), output);
        }
        for output in translated.handed_over {
            pipeline.apply_lane_output(None, output);
        }
        if !self.keep_letters {
            return;
        }
        let topic = &self.predictions_topic;
        for (index, invalid) in done.invalid {
            let message = &pending.batch.messages()[index];
            let location = Location { topic, partition, offset: message.offset };
            pending.letters.push(DeadLetter::new(pending.batch.payload(message), invalid, &location));
        }
    }

    /// A labels run, decoded and joined here.
    fn apply_labels(
        &mut self,
        pipeline: &mut Pipeline,
        pending: &mut PendingBatch,
        messages: Range<usize>,
        partition: PartitionId,
    ) {
        pipeline.decoder.accept_times_before(pending.accept_before_ms);
        let topic = &self.labels_topic;
        for message in &pending.batch.messages()[messages] {
            let bytes = pending.batch.payload(message);
            let location = Location { topic, partition, offset: message.offset };
            if let (Err(invalid), true) = (pipeline.decode_label(bytes, &location), self.keep_letters) {
                pending.letters.push(DeadLetter::new(bytes, invalid, &location));
            }
        }
        pipeline.process_labels(partition);
    }

    /// Waits for the lanes until every pending batch is applied.
    pub fn drain(&mut self, pipeline: &mut Pipeline, finished: &mut Vec<Finished>) -> Result<(), KafkaSourceError> {
        while let Some(lane) = self.awaited_lane() {
            if let Some(done) = self.lanes.wait_done(lane, super::TICK)? {
                self.advance(pipeline, Some((lane, done)), finished)?;
            }
        }
        Ok(())
    }

    /// Has the lanes hand `partitions`' panes (`None`: all) over to the
    /// engine once every pending batch is applied; `forget` them (revoked).
    pub fn hand_over(
        &mut self,
        pipeline: &mut Pipeline,
        partitions: Option<&BTreeSet<PartitionId>>,
        forget: bool,
        finished: &mut Vec<Finished>,
    ) -> Result<(), KafkaSourceError> {
        self.drain(pipeline, finished)?;
        for output in self.lanes.hand_over(partitions, forget, &mut pipeline.registry)? {
            pipeline.apply_lane_output(None, output);
        }
        Ok(())
    }

    /// Of `partitions`, those a lane may hold panes of.
    pub fn holding(&self, partitions: &BTreeSet<PartitionId>) -> BTreeSet<PartitionId> {
        self.lanes.holding(partitions)
    }

    /// A copy of every lane's panes in the pipeline's ids, once every
    /// pending batch is applied (what a checkpoint keeps of the lanes).
    pub fn snapshot(
        &mut self,
        pipeline: &mut Pipeline,
        finished: &mut Vec<Finished>,
    ) -> Result<Vec<(PartitionId, Vec<PartitionPanes>)>, KafkaSourceError> {
        self.drain(pipeline, finished)?;
        self.lanes.snapshot(&mut pipeline.registry)
    }
}
