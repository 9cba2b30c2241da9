//! Lanes for `replay`: threads that each read, decode and aggregate a share
//! of the predictions files, in parallel.
//!
//! File k goes to lane k mod N. A lane reads its files in turns of
//! `pipeline.batch_size` lines (the round-robin the replay itself follows),
//! decodes each turn with its own decoder and dictionaries, aggregates the
//! batches into its files' panes ([`LaneAggregator`]) and sends the closer
//! one [`LaneMessage`] per file and turn, through one bounded channel per
//! file. The closer (the replay's loop) takes the messages in the same
//! round-robin order, so what it sees does not depend on the number of
//! lanes; it moves each message from the lane's ids to its own
//! ([`LaneSet::next`]: dictionary entries travel with the message that
//! first used them) and hands it to the engine, which joins, watermarks and
//! closes. Windows are merged in partition order and lateness is judged
//! per partition, so the rows are byte-identical to those of one lane.
//!
//! Threads: one per lane, owning its files, decoder, dictionaries and
//! panes. A lane ends after its last file, or as soon as the closer has
//! gone (a send fails); [`LaneSet`] joins them when dropped.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use datafusion::arrow::array::UInt32Array;

use crate::config::Config;
use crate::decode::{Decoder, PredictionArray, PredictionBatch};
use crate::engine::lane::{LaneAggregator, LaneOutput, PartitionProgress};
use crate::model::{ClassId, FeatureMeta, ModelRegistry, SeriesId};
use crate::sources::files::{FileSourceError, LineSource};
use crate::telemetry::Telemetry;
use crate::window::{PartitionId, PartitionPanes, WindowSpec};

/// How much further than the configured caps (`max_segments_per_model`,
/// `max_versions_per_model`, `max_features_per_model`) a lane tracks
/// series and features; the closer applies the caps themselves. The rows
/// equal one lane's unless a lane meets this many times the cap before a
/// series or feature one lane would keep.
pub const LANE_CAP_FACTOR: usize = 4;

/// Turns each file's channel holds before its lane waits: enough that a
/// lane a little slower on one turn does not stall the closer (a turn
/// holds no feature columns: their summaries are in the panes).
const MESSAGES_PER_FILE: usize = 4;

/// Dictionary entries a lane added for one model since its last message.
#[derive(Debug, Default)]
pub struct NewNames {
    /// (model_version, segment) of each new series, in the lane's id order.
    pub series: Vec<(Arc<str>, Arc<str>)>,
    pub classes: Vec<Arc<str>>,
    pub features: Vec<FeatureMeta>,
}

/// One turn of one file, aggregated by its lane.
#[derive(Debug, Default)]
pub struct LaneMessage {
    /// Per model.
    pub new_names: Vec<NewNames>,
    /// The turn's batches (one per model) and what aggregating them gave.
    pub batches: Vec<(PredictionBatch, LaneOutput)>,
    /// The file ended with this turn: its last contributions, per model.
    pub ended: Option<Vec<LaneOutput>>,
}

/// A turn as the closer takes it: in the closer's ids.
pub struct Turn {
    pub batches: Vec<(PredictionBatch, LaneOutput)>,
    pub ended: Option<Vec<LaneOutput>>,
}

/// The ids a lane's dictionaries map to in the closer's, per model.
#[derive(Debug, Default, Clone)]
struct IdMaps {
    series: Vec<SeriesId>,
    classes: Vec<ClassId>,
    features: Vec<u32>,
}

/// The running lanes, seen from the closer.
pub struct LaneSet {
    /// Per file.
    receivers: Vec<Receiver<Result<LaneMessage, FileSourceError>>>,
    lane_of_file: Vec<usize>,
    /// Per lane, per model.
    maps: Vec<Vec<IdMaps>>,
    threads: Vec<JoinHandle<()>>,
    caps: Caps,
}

/// The registry caps the closer applies again over all lanes' names.
#[derive(Debug, Clone, Copy)]
struct Caps {
    /// (`max_segments_per_model`, `max_versions_per_model`).
    series: (usize, usize),
    features: usize,
}

/// One file's channel from its lane to the closer.
type TurnSender = SyncSender<Result<LaneMessage, FileSourceError>>;

/// What one lane owns.
struct Lane {
    registry: ModelRegistry,
    decoder: Decoder,
    aggregator: LaneAggregator,
    /// (partition, path, its channel).
    files: Vec<(PartitionId, PathBuf, TurnSender)>,
    batch_size: usize,
    telemetry: Arc<Telemetry>,
    topic: String,
}

impl LaneSet {
    /// Starts `lanes` lanes over `files` (file k is partition k). Every
    /// file is opened first, so a missing one fails here.
    pub fn start(
        config: &Config,
        registry: &ModelRegistry,
        files: &[PathBuf],
        lanes: usize,
        telemetry: Arc<Telemetry>,
        topic: &str,
    ) -> Result<LaneSet, String> {
        LineSource::new(files).map_err(|e| e.to_string())?;
        let lanes = lanes.clamp(1, files.len().max(1));
        let spec = WindowSpec::from_config(&config.windows);
        let mut receivers = Vec::with_capacity(files.len());
        let mut owned: Vec<Vec<(PartitionId, PathBuf, TurnSender)>> = (0..lanes).map(|_| Vec::new()).collect();
        for (index, path) in files.iter().enumerate() {
            let (sender, receiver) = sync_channel(MESSAGES_PER_FILE);
            receivers.push(receiver);
            owned[index % lanes].push((PartitionId::try_from(index).unwrap_or(PartitionId::MAX), path.clone(), sender));
        }
        // A lane meets series and features in its own order: were it to
        // cap them as the config says, it could fold one that the closer,
        // which meets them in one lane's order, keeps. So lanes cap at
        // LANE_CAP_FACTOR times the caps (memory stays bounded) and the
        // closer applies the configured caps.
        let mut lane_pipeline = config.pipeline.clone();
        lane_pipeline.max_segments_per_model = lane_pipeline.max_segments_per_model.saturating_mul(LANE_CAP_FACTOR);
        lane_pipeline.max_versions_per_model = lane_pipeline.max_versions_per_model.saturating_mul(LANE_CAP_FACTOR);
        lane_pipeline.max_features_per_model = lane_pipeline.max_features_per_model.saturating_mul(LANE_CAP_FACTOR);
        let mut threads = Vec::with_capacity(lanes);
        for (number, files) in owned.into_iter().enumerate() {
            let lane = Lane {
                registry: registry.clone(),
                decoder: Decoder::new(registry, &lane_pipeline)?,
                aggregator: LaneAggregator::new(spec, config.pipeline.max_categories_per_feature),
                files,
                batch_size: config.pipeline.batch_size.max(1),
                telemetry: telemetry.clone(),
                topic: topic.to_string(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("lane-{number}"))
                .spawn(move || lane.run())
                .map_err(|e| format!("starting lane {number}: {e}"))?;
            threads.push(thread);
        }
        let models = registry.models.len();
        // Every registry starts from the same config and baselines: their
        // first entries (the baselines' features) have the same ids.
        let initial: Vec<IdMaps> = registry
            .models
            .iter()
            .map(|m| IdMaps {
                series: (0..m.series.len() as u32).collect(),
                classes: (0..m.classes.len() as u32).collect(),
                features: (0..m.features.len() as u32).collect(),
            })
            .collect();
        debug_assert_eq!(initial.len(), models);
        Ok(LaneSet {
            receivers,
            lane_of_file: (0..files.len()).map(|index| index % lanes).collect(),
            maps: vec![initial; lanes],
            threads,
            caps: Caps {
                series: (config.pipeline.max_segments_per_model, config.pipeline.max_versions_per_model),
                features: config.pipeline.max_features_per_model,
            },
        })
    }

    /// The next turn of `file`, moved into `registry`'s ids (interning the
    /// names the lane met first).
    pub fn next(&mut self, file: usize, registry: &mut ModelRegistry) -> Result<Turn, FileSourceError> {
        let message = match self.receivers[file].recv() {
            Ok(message) => message?,
            // A lane that stopped without a word panicked; its thread's
            // join says why. Treat the file as ended.
            Err(_) => LaneMessage { ended: Some(Vec::new()), ..LaneMessage::default() },
        };
        let maps = &mut self.maps[self.lane_of_file[file]];
        for (model, names) in message.new_names.into_iter().enumerate() {
            let state = registry.get_mut(model as u32);
            let map = &mut maps[model];
            for (version, segment) in names.series {
                map.series.push(state.series_named(&version, &segment, self.caps.series));
            }
            for class in names.classes {
                map.classes.push(state.classes.intern(&class, usize::MAX).expect("no cap"));
            }
            for feature in names.features {
                let id = state.feature_named(&feature.name, feature.kind, self.caps.features);
                map.features.push(id.unwrap_or(crate::evaluate::NOT_TRACKED));
            }
        }
        let translate_output = |output: &mut LaneOutput, map: &IdMaps| {
            for (series, _) in &mut output.late {
                *series = map.series[*series as usize];
            }
            for ((_, series), state) in &mut output.contributions {
                *series = map.series[*series as usize];
                state.remap(&map.features, &map.classes);
            }
        };
        let batches = message
            .batches
            .into_iter()
            .map(|(batch, mut output)| {
                let map = &maps[batch.model as usize];
                translate_output(&mut output, map);
                (translate_batch(batch, map), output)
            })
            .collect();
        let ended = message.ended.map(|outputs| {
            outputs
                .into_iter()
                .map(|mut output| {
                    let map = &maps[output.model as usize];
                    translate_output(&mut output, map);
                    output
                })
                .collect()
        });
        Ok(Turn { batches, ended })
    }
}

impl Drop for LaneSet {
    fn drop(&mut self) {
        // Lanes still sending see their channel closed and stop.
        self.receivers.clear();
        for thread in self.threads.drain(..) {
            if let Err(panic) = thread.join() {
                tracing::error!(?panic, "a lane panicked");
            }
        }
    }
}

/// The columns the closer uses, in its ids (the features stay in the
/// lane: their summaries are in the contributions).
fn translate_batch(batch: PredictionBatch, map: &IdMaps) -> PredictionBatch {
    let series = UInt32Array::from_iter_values(batch.series.values().iter().map(|s| map.series[*s as usize]));
    let prediction = match batch.prediction {
        PredictionArray::Class(classes) => {
            let translated: UInt32Array = classes.iter().map(|class| class.map(|c| map.classes[c as usize])).collect();
            PredictionArray::Class(translated)
        }
        values => values,
    };
    PredictionBatch {
        model: batch.model,
        series,
        event_time_ms: batch.event_time_ms,
        event_id: batch.event_id,
        prediction,
        score: batch.score,
        latency_ms: batch.latency_ms,
        features: Vec::new(),
        type_errors: Vec::new(),
    }
}

impl Lane {
    fn run(mut self) {
        let models = self.registry.models.len();
        let mut sources: Vec<LineSource> = Vec::with_capacity(self.files.len());
        for (_, path, sender) in &self.files {
            match LineSource::new(std::slice::from_ref(path)) {
                Ok(source) => sources.push(source),
                Err(e) => {
                    let _ = sender.send(Err(e));
                    return;
                }
            }
        }
        let mut panes: Vec<Vec<PartitionPanes>> = vec![vec![PartitionPanes::default(); models]; self.files.len()];
        let mut own: Vec<Vec<Option<i64>>> = vec![vec![None; models]; self.files.len()];
        // Dictionary entries already sent, per model: (series, classes, features).
        let mut sent: Vec<(usize, usize, usize)> =
            self.registry.models.iter().map(|m| (m.series.len(), m.classes.len(), m.features.len())).collect();
        let mut live = vec![true; self.files.len()];
        let mut line = Vec::with_capacity(4096);
        while live.iter().any(|l| *l) {
            for position in 0..self.files.len() {
                if !live[position] {
                    continue;
                }
                let partition = self.files[position].0;
                let mut ended = false;
                for _ in 0..self.batch_size {
                    match sources[position].next_line(&mut line) {
                        Ok(true) => {}
                        Ok(false) => {
                            ended = true;
                            break;
                        }
                        Err(e) => {
                            let _ = self.files[position].2.send(Err(e));
                            return;
                        }
                    }
                    if let Err(invalid) = self.decoder.push_prediction(&mut self.registry, &line) {
                        let location = sources[position].location().to_string();
                        self.telemetry.invalid_event(&self.topic, &location, &invalid);
                    }
                }
                let mut message = LaneMessage::default();
                for batch in self.decoder.finish_predictions() {
                    let model = batch.model as usize;
                    let progress =
                        PartitionProgress { model_frontier: None, own_clock: own[position][model], clock_limit: None };
                    let state = self.registry.get(batch.model);
                    let output =
                        self.aggregator.aggregate(state, &batch, partition, progress, &mut panes[position][model]);
                    own[position][model] = output.own_clock.or(own[position][model]);
                    // The closer needs no feature column.
                    let mut batch = batch;
                    batch.features = Vec::new();
                    batch.type_errors = Vec::new();
                    message.batches.push((batch, output));
                }
                if ended {
                    live[position] = false;
                    let mut last = Vec::new();
                    for (model, model_panes) in panes[position].iter_mut().enumerate() {
                        let contributions = self.aggregator.seal(model_panes, i64::MAX);
                        if !contributions.is_empty() {
                            last.push(LaneOutput {
                                model: model as u32,
                                partition,
                                contributions,
                                ..LaneOutput::default()
                            });
                        }
                    }
                    message.ended = Some(last);
                }
                message.new_names = self
                    .registry
                    .models
                    .iter()
                    .zip(&mut sent)
                    .map(|(state, (series, classes, features))| {
                        let names = NewNames {
                            series: state.series[*series..]
                                .iter()
                                .map(|s| (s.model_version.clone(), s.segment.clone()))
                                .collect(),
                            classes: (*classes..state.classes.len())
                                .map(|id| state.classes.name(id as u32).clone())
                                .collect(),
                            features: state.features[*features..].to_vec(),
                        };
                        (*series, *classes, *features) =
                            (state.series.len(), state.classes.len(), state.features.len());
                        names
                    })
                    .collect();
                if self.files[position].2.send(Ok(message)).is_err() {
                    return; // the closer has stopped
                }
            }
        }
        self.telemetry.add_decode_counters(&self.decoder.counters);
    }
}
