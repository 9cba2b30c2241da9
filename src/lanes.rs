//! Lanes: what a thread that decodes and aggregates a share of the source
//! partitions owns ([`LaneWorker`]: dictionaries, a decoder, an aggregator
//! and, per partition, panes and clocks), what it tells the closer
//! ([`LaneMessage`]), and how the closer moves that into its own ids
//! ([`LaneIds`]). `replay --lanes` (`drivers/lanes.rs`) and the daemon
//! (`daemon/lanes.rs`) run lanes on threads of their own; this module has
//! no thread, channel or clock.
//!
//! A lane meets series, classes and features in its own order, so its
//! dictionary ids are its own: every message carries the entries the lane
//! added since its previous one ([`NewNames`]), and the closer keeps, per
//! lane, the map from the lane's ids to its own, interning the names as it
//! meets them, applying the configured caps (`max_segments_per_model`,
//! `max_versions_per_model`, `max_features_per_model`) over all lanes'
//! names. A lane caps too, at a factor of the caps ([`LaneWorker::new`]):
//! `replay`, whose rows must not depend on the number of lanes, lets its
//! lanes track [`LANE_CAP_FACTOR`] times as many (capping as the config
//! says, a lane could fold a name that the closer, meeting names in
//! another order, keeps); the daemon's lanes cap as the config says, so
//! what they count over the caps is what one thread counted.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::UInt32Array;

use crate::config::Config;
use crate::decode::{Decoder, Invalid, PredictionArray, PredictionBatch};
use crate::engine::lane::{LaneAggregator, LaneOutput, PartitionProgress};
use crate::model::{ClassId, FeatureMeta, ModelRegistry, SeriesId};
use crate::window::{PartitionId, PartitionPanes, WindowSpec};

/// How much further than the configured caps (`max_segments_per_model`,
/// `max_versions_per_model`, `max_features_per_model`) a lane tracks
/// series and features; the closer applies the caps themselves. The rows
/// equal one lane's unless a lane meets this many times the cap before a
/// series or feature one lane would keep.
pub const LANE_CAP_FACTOR: usize = 4;

/// Dictionary entries a lane added for one model since its last message.
#[derive(Debug, Default)]
pub struct NewNames {
    /// (model_version, segment) of each new series, in the lane's id order.
    pub series: Vec<(Arc<str>, Arc<str>)>,
    pub classes: Vec<Arc<str>>,
    pub features: Vec<FeatureMeta>,
}

/// What a lane made of some input, in its own ids.
#[derive(Debug, Default)]
pub struct LaneMessage {
    /// Per model: the dictionary entries added since the last message.
    pub new_names: Vec<NewNames>,
    /// Prediction batches (feature columns left in the lane: their
    /// summaries are in the panes) and what aggregating them gave.
    pub batches: Vec<(PredictionBatch, LaneOutput)>,
    /// Contributions handed over outside a batch (a partition ended or was
    /// revoked, a partition going idle).
    pub handed_over: Vec<LaneOutput>,
    /// A copy of every partition's panes, per model (for a checkpoint).
    pub panes: Vec<(PartitionId, Vec<PartitionPanes>)>,
}

/// A [`LaneMessage`] in the closer's ids.
#[derive(Debug, Default)]
pub struct Translated {
    pub batches: Vec<(PredictionBatch, LaneOutput)>,
    pub handed_over: Vec<LaneOutput>,
    pub panes: Vec<(PartitionId, Vec<PartitionPanes>)>,
}

/// One partition as a lane holds it: per model, its panes and its own
/// clock (the largest event time it delivered, capped at the host clock).
#[derive(Debug, Clone)]
struct LanePartition {
    panes: Vec<PartitionPanes>,
    own_clock: Vec<Option<i64>>,
}

impl LanePartition {
    fn new(models: usize) -> Self {
        LanePartition { panes: vec![PartitionPanes::default(); models], own_clock: vec![None; models] }
    }
}

/// What one lane owns: its dictionaries (a copy of the closer's at the
/// start, growing on their own), its decoder, its aggregator's scratch
/// space and its partitions' panes and clocks.
pub struct LaneWorker {
    registry: ModelRegistry,
    pub decoder: Decoder,
    aggregator: LaneAggregator,
    partitions: BTreeMap<PartitionId, LanePartition>,
    /// Per model: dictionary entries already told (series, classes, features).
    told: Vec<(usize, usize, usize)>,
}

impl LaneWorker {
    /// A lane starting from `registry` (the closer's dictionaries: every
    /// lane's first ids are the closer's), tracking `cap_factor` times as
    /// many series and features as the config's caps allow (see the
    /// module doc).
    pub fn new(config: &Config, registry: &ModelRegistry, cap_factor: usize) -> Result<LaneWorker, String> {
        let mut pipeline = config.pipeline.clone();
        pipeline.max_segments_per_model = pipeline.max_segments_per_model.saturating_mul(cap_factor);
        pipeline.max_versions_per_model = pipeline.max_versions_per_model.saturating_mul(cap_factor);
        pipeline.max_features_per_model = pipeline.max_features_per_model.saturating_mul(cap_factor);
        Ok(LaneWorker {
            registry: registry.clone(),
            decoder: Decoder::new(registry, &pipeline)?,
            aggregator: LaneAggregator::new(
                WindowSpec::from_config(&config.windows),
                config.pipeline.max_categories_per_feature,
            ),
            partitions: BTreeMap::new(),
            told: registry.models.iter().map(|m| (m.series.len(), m.classes.len(), m.features.len())).collect(),
        })
    }

    /// Decodes one prediction into the decoder's batch.
    pub fn push_prediction(&mut self, bytes: &[u8]) -> Result<(), Invalid> {
        self.decoder.push_prediction(&mut self.registry, bytes)
    }

    /// Starts `partition` where the closer has it: its own clocks (per
    /// model), and the panes a checkpoint restored for it (per model, in
    /// the ids of the registry this lane started from, or none), which
    /// the lane goes on aggregating into as if it had never stopped.
    pub fn seed(&mut self, partition: PartitionId, own_clock: Vec<Option<i64>>, panes: Vec<PartitionPanes>) {
        self.partitions.insert(partition, LanePartition { panes, own_clock });
    }

    /// A copy of every partition's panes, per model, into `message` (what
    /// a checkpoint keeps of the lane; the lane goes on with its own).
    pub fn snapshot(&self, message: &mut LaneMessage) {
        message.panes = self.partitions.iter().map(|(partition, lane)| (*partition, lane.panes.clone())).collect();
    }

    /// Aggregates the predictions decoded since the last call, all read
    /// from `partition`, into the partition's panes; their batches and
    /// what aggregating them gave go to `message`. `model_frontiers` are
    /// the models' frontiers as the closer last knew them (only a
    /// partition that was idle needs them), `clock_limit` the host clock
    /// (`run`).
    pub fn aggregate(
        &mut self,
        partition: PartitionId,
        model_frontiers: &[Option<i64>],
        clock_limit: Option<i64>,
        message: &mut LaneMessage,
    ) {
        let batches = self.decoder.finish_predictions();
        if batches.is_empty() {
            return;
        }
        let models = self.registry.models.len();
        let lane = self.partitions.entry(partition).or_insert_with(|| LanePartition::new(models));
        for mut batch in batches {
            let model = batch.model as usize;
            let progress = PartitionProgress {
                model_frontier: model_frontiers.get(model).copied().flatten(),
                own_clock: lane.own_clock[model],
                clock_limit,
            };
            let state = self.registry.get(batch.model);
            let output = self.aggregator.aggregate(state, &batch, partition, progress, &mut lane.panes[model]);
            lane.own_clock[model] = output.own_clock.or(lane.own_clock[model]);
            batch.features = Vec::new();
            batch.type_errors = Vec::new();
            message.batches.push((batch, output));
        }
    }

    /// Hands over everything `partition`'s panes hold, per model, to
    /// `message` (see [`PartitionPanes::hand_over`]); with `forget`, the
    /// lane drops the partition (revoked) and seeds it again if it comes
    /// back.
    pub fn hand_over(&mut self, partition: PartitionId, forget: bool, message: &mut LaneMessage) {
        let Some(lane) = self.partitions.get_mut(&partition) else { return };
        for (model, panes) in lane.panes.iter_mut().enumerate() {
            let contributions = self.aggregator.hand_over(panes);
            if !contributions.is_empty() {
                message.handed_over.push(LaneOutput {
                    model: model as u32,
                    partition,
                    contributions,
                    ..LaneOutput::default()
                });
            }
        }
        if forget {
            self.partitions.remove(&partition);
        }
    }

    /// The partitions this lane holds panes or clocks of.
    pub fn partitions(&self) -> Vec<PartitionId> {
        self.partitions.keys().copied().collect()
    }

    /// Puts the dictionary entries added since the last call into `message`.
    pub fn tell_new_names(&mut self, message: &mut LaneMessage) {
        message.new_names = self
            .registry
            .models
            .iter()
            .zip(&mut self.told)
            .map(|(state, (series, classes, features))| {
                let names = NewNames {
                    series: state.series[*series..]
                        .iter()
                        .map(|s| (s.model_version.clone(), s.segment.clone()))
                        .collect(),
                    classes: (*classes..state.classes.len()).map(|id| state.classes.name(id as u32).clone()).collect(),
                    features: state.features[*features..].to_vec(),
                };
                (*series, *classes, *features) = (state.series.len(), state.classes.len(), state.features.len());
                names
            })
            .collect();
    }
}

/// The ids one lane's dictionaries map to in the closer's, per model.
#[derive(Debug, Default, Clone)]
struct IdMaps {
    series: Vec<SeriesId>,
    classes: Vec<ClassId>,
    features: Vec<u32>,
}

/// The closer's side of one lane: the map from the lane's ids to its own,
/// and the caps it applies over all lanes' names.
#[derive(Debug, Clone)]
pub struct LaneIds {
    /// Per model.
    maps: Vec<IdMaps>,
    /// (`max_segments_per_model`, `max_versions_per_model`).
    series_caps: (usize, usize),
    max_features: usize,
}

impl LaneIds {
    /// For a lane started from `registry` (the closer's dictionaries, so
    /// the lane's first ids are the closer's).
    pub fn new(config: &Config, registry: &ModelRegistry) -> Self {
        LaneIds {
            maps: registry
                .models
                .iter()
                .map(|m| IdMaps {
                    series: (0..m.series.len() as u32).collect(),
                    classes: (0..m.classes.len() as u32).collect(),
                    features: (0..m.features.len() as u32).collect(),
                })
                .collect(),
            series_caps: (config.pipeline.max_segments_per_model, config.pipeline.max_versions_per_model),
            max_features: config.pipeline.max_features_per_model,
        }
    }

    /// Moves `message` into `registry`'s ids (interning the names the lane
    /// met first): its batches with their outputs, the contributions it
    /// handed over and its panes. (Two lane series the closer's caps fold
    /// into one merge, with `max_categories`.)
    pub fn translate(
        &mut self,
        registry: &mut ModelRegistry,
        message: LaneMessage,
        max_categories: usize,
    ) -> Translated {
        for (model, names) in message.new_names.into_iter().enumerate() {
            let state = registry.get_mut(model as u32);
            let map = &mut self.maps[model];
            for (version, segment) in names.series {
                map.series.push(state.series_named(&version, &segment, self.series_caps));
            }
            for class in names.classes {
                map.classes.push(state.classes.intern(&class, usize::MAX).expect("no cap"));
            }
            for feature in names.features {
                let id = state.feature_named(&feature.name, feature.kind, self.max_features);
                map.features.push(id.unwrap_or(crate::evaluate::NOT_TRACKED));
            }
        }
        let batches = message
            .batches
            .into_iter()
            .map(|(batch, mut output)| {
                let map = &self.maps[batch.model as usize];
                translate_output(&mut output, map);
                (translate_batch(batch, map), output)
            })
            .collect();
        let handed_over = message
            .handed_over
            .into_iter()
            .map(|mut output| {
                let map = &self.maps[output.model as usize];
                translate_output(&mut output, map);
                output
            })
            .collect();
        let panes = message
            .panes
            .into_iter()
            .map(|(partition, models)| {
                let models = models
                    .into_iter()
                    .zip(&self.maps)
                    .map(|(panes, map)| translate_panes(panes, map, max_categories))
                    .collect();
                (partition, models)
            })
            .collect();
        Translated { batches, handed_over, panes }
    }
}

/// A lane's output in the closer's ids.
fn translate_output(output: &mut LaneOutput, map: &IdMaps) {
    for (series, _) in &mut output.late {
        *series = map.series[*series as usize];
    }
    for ((_, series), state) in &mut output.contributions {
        *series = map.series[*series as usize];
        state.remap(&map.features, &map.classes);
    }
}

/// One partition's panes of one model, in the closer's ids.
fn translate_panes(panes: PartitionPanes, map: &IdMaps, max_categories: usize) -> PartitionPanes {
    let mut translated = PartitionPanes { panes: BTreeMap::new(), sealed_through_ms: panes.sealed_through_ms };
    for ((pane, series, skipped), mut state) in panes.panes {
        state.remap(&map.features, &map.classes);
        crate::window::merge_into(
            &mut translated.panes,
            (pane, map.series[series as usize], skipped),
            state,
            max_categories,
        );
    }
    translated
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
