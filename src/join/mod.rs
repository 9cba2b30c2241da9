//! Join: pairs each label with its prediction by (model, event_id), in
//! whichever order they arrive, when the label's event time is at most the
//! prediction's plus `label_horizon`.
//!
//! Pending entries are keyed by a 128-bit xxh3 hash of the event id (no
//! per-event allocation, collisions practically impossible) and expire when
//! the model's watermark passes their event time plus the horizon. The
//! number of pending entries per model is capped; at the cap the entry
//! expiring first is evicted and counted. Every prediction that leaves unlabelled and
//! every label that never finds its prediction is counted, never dropped
//! silently.
//!
//! A join lives in memory ([`ModelJoin`]) or, with a state directory, on
//! disk ([`disk::DiskJoin`] in the [`store::JoinStore`]); [`Join`] is
//! either, with the same rule.
//!
//! Architecture invariant: time only comes from event timestamps; the
//! store is the only I/O (local disk).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

pub mod disk;
#[cfg(feature = "join-store")]
pub mod store;
#[cfg(not(feature = "join-store"))]
#[path = "store_disabled.rs"]
pub mod store;

use crate::model::{ClassId, SeriesId};

/// The key of a pending entry: xxh3-128 of the event id.
pub type JoinKey = u128;

/// The length of a key in the join store: join prefix (8 bytes) and join
/// key (16).
pub const STORE_KEY_LEN: usize = 24;

/// The join store's key of `key` in join `prefix`.
#[inline]
pub fn store_key(prefix: u64, key: JoinKey) -> [u8; STORE_KEY_LEN] {
    let mut bytes = [0u8; STORE_KEY_LEN];
    bytes[..8].copy_from_slice(&prefix.to_be_bytes());
    bytes[8..].copy_from_slice(&key.to_be_bytes());
    bytes
}

/// The hash of an event id used as join key.
#[inline]
pub fn join_key(event_id: &str) -> JoinKey {
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
}

/// The key is already a good hash: use its low bits as the map hash.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }
    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

type KeyMap<V> = HashMap<JoinKey, V, BuildHasherDefault<KeyHasher>>;

/// A predicted or actual value.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Target {
    Class(ClassId),
    Value(f64),
}

/// A prediction waiting for its label.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PendingPrediction {
    pub series: SeriesId,
    pub event_time_ms: i64,
    pub predicted: Target,
    /// The event's score (probability of the positive class), NaN if none.
    pub score: f64,
}

/// The outcome of a pair, kept beside the pair while it is remembered when
/// the model has shadow versions, so the other lane's pair of the same
/// event can be compared with it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairOutcome {
    /// Whether the predicted class was the label.
    pub correct: bool,
    /// The prediction's series and event time (whose windows a paired
    /// comparison is credited to).
    pub series: SeriesId,
    pub event_time_ms: i64,
}

/// A label waiting for its prediction.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PendingLabel {
    pub label_time_ms: i64,
    pub actual: Target,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
enum Side {
    Prediction,
    Label,
    /// A pair already made (remembered so a duplicate is not paired again).
    Completed,
}

/// What happened to entries that left the join without a partner.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JoinCounters {
    /// Predictions whose horizon passed without a label.
    pub predictions_expired: u64,
    /// Labels whose horizon passed without a prediction.
    pub labels_unmatched: u64,
    /// Entries evicted because the pending cap was reached.
    pub evicted: u64,
    /// Predictions whose event id was already pending or paired (the first
    /// one is kept).
    pub duplicate_predictions: u64,
    /// Labels whose event id was already paired.
    #[serde(default)]
    pub duplicate_labels: u64,
    pub matched: u64,
}

/// The pending predictions and labels of one model.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ModelJoin {
    predictions: KeyMap<PendingPrediction>,
    labels: KeyMap<PendingLabel>,
    /// Ids paired within the horizon → when they are forgotten: a
    /// prediction or label arriving again for one is a duplicate, never a
    /// second pair. Counts against `max_pending`.
    #[serde(default)]
    completed: KeyMap<i64>,
    /// Outcomes of remembered pairs ([`Self::record_outcome`]); kept only
    /// for models with shadow versions, forgotten with the pair.
    #[serde(default)]
    outcomes: KeyMap<PairOutcome>,
    /// Entries by expiry time, earliest first: (expire_at, key, side).
    /// (Checkpoints before the heap held the same tuples in arrival order.)
    queue: BinaryHeap<Reverse<(i64, JoinKey, Side)>>,
    horizon_ms: i64,
    max_pending: usize,
    pub counters: JoinCounters,
}

impl ModelJoin {
    pub fn new(horizon_ms: i64, max_pending: usize) -> Self {
        ModelJoin {
            predictions: KeyMap::default(),
            labels: KeyMap::default(),
            completed: KeyMap::default(),
            outcomes: KeyMap::default(),
            queue: BinaryHeap::new(),
            horizon_ms,
            max_pending: max_pending.max(1),
            counters: JoinCounters::default(),
        }
    }

    /// Takes over another join's pending entries and counters (from a
    /// checkpoint), keeping this one's horizon and cap.
    pub fn restore(&mut self, other: ModelJoin) {
        self.predictions = other.predictions;
        self.labels = other.labels;
        self.completed = other.completed;
        self.outcomes = other.outcomes;
        self.queue = other.queue;
        self.counters = other.counters;
    }

    pub fn pending(&self) -> usize {
        self.predictions.len() + self.labels.len()
    }

    /// Whether an entry of `key` is held: pending on either side, or a
    /// pair remembered.
    pub fn holds(&self, key: JoinKey) -> bool {
        self.predictions.contains_key(&key) || self.labels.contains_key(&key) || self.completed.contains_key(&key)
    }

    /// Pending entries and remembered pairs together.
    pub fn held(&self) -> usize {
        self.pending() + self.completed.len()
    }

    /// Forgets every entry and counter, keeping the horizon and the cap.
    pub fn clear(&mut self) {
        *self = ModelJoin::new(self.horizon_ms, self.max_pending);
    }

    fn make_room(&mut self) {
        while self.pending() + self.completed.len() >= self.max_pending {
            let Some(Reverse((_, key, side))) = self.queue.pop() else { break };
            let removed = match side {
                Side::Prediction => self.predictions.remove(&key).is_some(),
                Side::Label => self.labels.remove(&key).is_some(),
                // Forgetting a pair early only weakens duplicate detection.
                Side::Completed => {
                    self.completed.remove(&key);
                    self.forget_outcome(key);
                    false
                }
            };
            if removed {
                self.counters.evicted += 1;
            }
        }
    }

    /// A prediction arrives: returns its label if one was waiting, else
    /// keeps the prediction pending.
    pub fn on_prediction(&mut self, key: JoinKey, prediction: PendingPrediction) -> Option<PendingLabel> {
        if let Some(label) = self.labels.get(&key)
            && self.within_horizon(prediction.event_time_ms, label.label_time_ms)
        {
            let label = self.labels.remove(&key).expect("just found");
            self.counters.matched += 1;
            self.remember_pair(key, prediction.event_time_ms.max(label.label_time_ms));
            return Some(label);
        }
        if self.predictions.contains_key(&key) || self.completed.contains_key(&key) {
            self.counters.duplicate_predictions += 1;
            return None;
        }
        self.make_room();
        self.predictions.insert(key, prediction);
        self.queue.push(Reverse((prediction.event_time_ms.saturating_add(self.horizon_ms), key, Side::Prediction)));
        None
    }

    /// A label arrives: returns its prediction if one was waiting, else
    /// keeps the label pending.
    pub fn on_label(&mut self, key: JoinKey, label: PendingLabel) -> Option<PendingPrediction> {
        if let Some(prediction) = self.predictions.get(&key)
            && self.within_horizon(prediction.event_time_ms, label.label_time_ms)
        {
            let prediction = self.predictions.remove(&key).expect("just found");
            self.counters.matched += 1;
            self.remember_pair(key, prediction.event_time_ms.max(label.label_time_ms));
            return Some(prediction);
        }
        if self.labels.contains_key(&key) || self.completed.contains_key(&key) {
            self.counters.duplicate_labels += 1;
            return None;
        }
        self.make_room();
        self.labels.insert(key, label);
        self.queue.push(Reverse((label.label_time_ms.saturating_add(self.horizon_ms), key, Side::Label)));
        None
    }

    /// Keeps the outcome of the pair just made for `key` as long as the pair
    /// is remembered (a pair evicted or expired takes it along).
    pub fn record_outcome(&mut self, key: JoinKey, outcome: PairOutcome) {
        if self.completed.contains_key(&key) {
            self.outcomes.insert(key, outcome);
        }
    }

    /// The outcome of the remembered pair of `key`, if recorded.
    pub fn outcome(&self, key: JoinKey) -> Option<PairOutcome> {
        self.outcomes.get(&key).copied()
    }

    #[inline]
    fn forget_outcome(&mut self, key: JoinKey) {
        if !self.outcomes.is_empty() {
            self.outcomes.remove(&key);
        }
    }

    /// Whether a label at `label_time_ms` is within the horizon of a
    /// prediction at `prediction_time_ms`: the join's rule, decided by event
    /// times alone. (Expiry at the watermark only forgets entries that can
    /// no longer pair; whether a pair forms never depends on when the two
    /// were read.) A label outside the horizon does not pair: it waits, as
    /// if its prediction had expired, and counts as unmatched when it
    /// expires; the prediction counts as expired unlabelled.
    #[inline]
    fn within_horizon(&self, prediction_time_ms: i64, label_time_ms: i64) -> bool {
        label_time_ms.saturating_sub(prediction_time_ms) <= self.horizon_ms
    }

    /// Remembers a pair made at `time_ms` until the horizon has passed it.
    fn remember_pair(&mut self, key: JoinKey, time_ms: i64) {
        self.make_room();
        let expire_at = time_ms.saturating_add(self.horizon_ms);
        self.completed.insert(key, expire_at);
        self.queue.push(Reverse((expire_at, key, Side::Completed)));
    }

    /// Expires entries whose horizon the watermark has passed (all of them
    /// when `watermark` is `i64::MAX`). An entry expires once the watermark
    /// is beyond its event time plus the horizon, not at it: an event at
    /// exactly the watermark is not late, so a label at exactly its
    /// prediction's time plus the horizon may still arrive and joins,
    /// however the stream was cut into micro-batches.
    pub fn expire(&mut self, watermark: i64) {
        while let Some(&Reverse((expire_at, key, side))) = self.queue.peek() {
            if expire_at >= watermark && watermark != i64::MAX {
                break;
            }
            self.queue.pop();
            match side {
                Side::Prediction => {
                    if let Some(p) = self.predictions.get(&key)
                        && p.event_time_ms.saturating_add(self.horizon_ms) == expire_at
                    {
                        self.predictions.remove(&key);
                        self.counters.predictions_expired += 1;
                    }
                }
                Side::Label => {
                    if let Some(l) = self.labels.get(&key)
                        && l.label_time_ms.saturating_add(self.horizon_ms) == expire_at
                    {
                        self.labels.remove(&key);
                        self.counters.labels_unmatched += 1;
                    }
                }
                Side::Completed => {
                    if self.completed.get(&key) == Some(&expire_at) {
                        self.completed.remove(&key);
                        self.forget_outcome(key);
                    }
                }
            }
        }
    }
}

/// A model's (or shadow version's) join, in memory or on disk.
#[derive(Debug)]
pub enum Join {
    Memory(ModelJoin),
    Disk(disk::DiskJoin),
}

impl Join {
    pub fn counters(&self) -> &JoinCounters {
        match self {
            Join::Memory(join) => &join.counters,
            Join::Disk(join) => &join.counters,
        }
    }

    pub fn pending(&self) -> usize {
        match self {
            Join::Memory(join) => join.pending(),
            Join::Disk(join) => join.pending(),
        }
    }

    /// A join in memory: whether it holds an entry of `key` (see
    /// [`ModelJoin::holds`]); one on disk is not asked (a cluster's merger
    /// joins in memory) and answers yes.
    pub fn holds(&self, key: JoinKey) -> bool {
        match self {
            Join::Memory(join) => join.holds(key),
            Join::Disk(_) => true,
        }
    }

    /// A join in memory forgets every entry and counter (one on disk is
    /// left as it is: a cluster's merger joins in memory).
    pub fn clear(&mut self) {
        if let Join::Memory(join) = self {
            join.clear();
        }
    }

    /// A join in memory: its entries and remembered pairs (one on disk: its
    /// pending entries).
    pub fn held(&self) -> usize {
        match self {
            Join::Memory(join) => join.held(),
            Join::Disk(join) => join.pending(),
        }
    }

    #[inline]
    pub fn on_prediction(&mut self, key: JoinKey, prediction: PendingPrediction) -> Option<PendingLabel> {
        match self {
            Join::Memory(join) => join.on_prediction(key, prediction),
            Join::Disk(join) => join.on_prediction(key, prediction),
        }
    }

    #[inline]
    pub fn on_label(&mut self, key: JoinKey, label: PendingLabel) -> Option<PendingPrediction> {
        match self {
            Join::Memory(join) => join.on_label(key, label),
            Join::Disk(join) => join.on_label(key, label),
        }
    }

    /// Reads ahead the entries a micro-batch's `keys` will meet (a disk
    /// join: one batched lookup; in memory, nothing to do).
    pub fn prefetch(&mut self, keys: impl IntoIterator<Item = JoinKey>) {
        if let Join::Disk(join) = self {
            join.prefetch(keys);
        }
    }

    pub fn record_outcome(&mut self, key: JoinKey, outcome: PairOutcome) {
        match self {
            Join::Memory(join) => join.record_outcome(key, outcome),
            Join::Disk(join) => join.record_outcome(key, outcome),
        }
    }

    pub fn outcome(&self, key: JoinKey) -> Option<PairOutcome> {
        match self {
            Join::Memory(join) => join.outcome(key),
            Join::Disk(join) => join.outcome(key),
        }
    }

    #[inline]
    pub fn expire(&mut self, watermark: i64) {
        match self {
            Join::Memory(join) => join.expire(watermark),
            Join::Disk(join) => join.expire(watermark),
        }
    }

    /// Takes over a checkpointed join: a memory join's entries and
    /// counters (into the store, for a disk join), or a disk join's state
    /// (its entries are in the store restored from the same checkpoint).
    pub fn restore(&mut self, other: JoinCheckpoint) {
        match (self, other) {
            (Join::Memory(join), JoinCheckpoint::Memory(other)) => join.restore(other),
            (Join::Disk(join), JoinCheckpoint::Memory(other)) => join.absorb(other),
            (this @ Join::Disk(_), JoinCheckpoint::Disk(state)) => {
                let Join::Disk(join) = this else { unreachable!() };
                let store = Arc::clone(join.store());
                let (horizon_ms, max_pending) = join.limits();
                *this = Join::Disk(disk::DiskJoin::restored(store, state, horizon_ms, max_pending));
            }
            (Join::Memory(_), JoinCheckpoint::Disk(state)) => tracing::error!(
                prefix = state.store_prefix,
                "the checkpoint's join is in a join store, but this run has none (no state dir): its pending entries are dropped"
            ),
        }
    }

    /// A disk join's counts and times for a checkpoint.
    pub fn disk_state(&self) -> Option<disk::DiskJoinState> {
        match self {
            Join::Memory(_) => None,
            Join::Disk(join) => Some(join.state()),
        }
    }

    /// Writes a disk join's recent entries to its store (before the store
    /// is checkpointed).
    pub fn flush(&mut self) {
        if let Join::Disk(join) = self {
            join.flush();
        }
    }

    /// A disk join's writes waiting in memory for its store (0 in memory).
    pub fn waiting_for_store(&self) -> usize {
        match self {
            Join::Memory(_) => 0,
            Join::Disk(join) => join.overlay_len(),
        }
    }
}

/// A checkpoint holds a memory join as it is; a disk join as an empty
/// memory join there, and its counts and times in a field beside it
/// ([`Join::disk_state`]; its entries are in the store's checkpoint beside
/// the file). So every checkpoint's `join` reads as a memory join.
impl serde::Serialize for Join {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Join::Memory(join) => join.serialize(serializer),
            Join::Disk(join) => ModelJoin::new(join.limits().0, 1).serialize(serializer),
        }
    }
}

/// A join read back from a checkpoint: a disk join's state, or a memory
/// join (checkpoints without a join store, or written before it).
#[derive(Debug)]
pub enum JoinCheckpoint {
    Disk(disk::DiskJoinState),
    Memory(ModelJoin),
}

impl JoinCheckpoint {
    /// The join a checkpoint holds: its disk state when it has one.
    pub fn new(memory: ModelJoin, disk: Option<disk::DiskJoinState>) -> Self {
        match disk {
            Some(state) => JoinCheckpoint::Disk(state),
            None => JoinCheckpoint::Memory(memory),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(t: i64) -> PendingPrediction {
        PendingPrediction { series: 0, event_time_ms: t, predicted: Target::Class(1), score: 0.5 }
    }
    fn label(t: i64) -> PendingLabel {
        PendingLabel { label_time_ms: t, actual: Target::Class(0) }
    }

    #[test]
    fn pairs_in_either_order_exactly_once() {
        let mut j = ModelJoin::new(1_000, 100);
        assert_eq!(j.on_prediction(join_key("a"), prediction(10)), None);
        assert_eq!(j.on_label(join_key("a"), label(20)), Some(prediction(10)));
        assert_eq!(j.on_label(join_key("b"), label(30)), None);
        assert_eq!(j.on_prediction(join_key("b"), prediction(5)), Some(label(30)));
        // A second label for an already joined id finds nothing and stays
        // nothing: a later duplicate prediction does not pair with it.
        assert_eq!(j.on_label(join_key("a"), label(40)), None);
        assert_eq!(j.on_prediction(join_key("a"), prediction(50)), None);
        assert_eq!(j.counters.matched, 2);
        assert_eq!((j.counters.duplicate_labels, j.counters.duplicate_predictions), (1, 1));
        assert_eq!(j.pending(), 0);
    }

    #[test]
    fn expires_at_the_horizon_and_counts() {
        let mut j = ModelJoin::new(1_000, 100);
        j.on_prediction(join_key("p"), prediction(0));
        j.on_label(join_key("l"), label(500));
        j.expire(1_000);
        assert_eq!(j.pending(), 2, "at the horizon a label may still come");
        j.expire(1_001);
        assert_eq!(j.counters.predictions_expired, 1);
        j.expire(1_501);
        assert_eq!(j.counters.labels_unmatched, 1);
        assert_eq!(j.pending(), 0);
        // After expiry a late label does not join.
        assert_eq!(j.on_label(join_key("p"), label(1_600)), None);
    }

    /// Whether a pair forms is decided by event times, not by when the two
    /// were read: a label past its prediction's horizon does not pair even
    /// while the prediction is still pending (before, it did whenever the
    /// watermark had not yet expired the prediction, so the same events
    /// paired differently in micro-batches of different sizes).
    #[test]
    fn a_label_past_the_horizon_does_not_pair_even_while_its_prediction_waits() {
        let mut j = ModelJoin::new(1_000, 100);
        j.on_prediction(join_key("p"), prediction(0));
        assert_eq!(j.on_label(join_key("p"), label(1_001)), None);
        j.on_prediction(join_key("q"), prediction(0));
        assert!(j.on_label(join_key("q"), label(1_000)).is_some(), "at the horizon it pairs");
        // Label first, prediction later: the same rule.
        j.on_label(join_key("r"), label(5_000));
        assert_eq!(j.on_prediction(join_key("r"), prediction(3_999)), None);
        j.on_label(join_key("s"), label(5_000));
        assert!(j.on_prediction(join_key("s"), prediction(4_000)).is_some());
        j.expire(i64::MAX);
        assert_eq!(j.counters.matched, 2);
        assert_eq!((j.counters.predictions_expired, j.counters.labels_unmatched), (2, 2));
    }

    #[test]
    fn cap_evicts_oldest_and_counts() {
        let mut j = ModelJoin::new(1_000_000, 3);
        for (i, id) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            j.on_prediction(join_key(id), prediction(i as i64));
        }
        assert_eq!(j.pending(), 3);
        assert_eq!(j.counters.evicted, 2);
        assert_eq!(j.on_label(join_key("a"), label(9)), None);
        assert!(j.on_label(join_key("e"), label(9)).is_some());
    }

    #[test]
    fn duplicate_prediction_keeps_the_first() {
        let mut j = ModelJoin::new(1_000, 10);
        j.on_prediction(join_key("x"), prediction(1));
        j.on_prediction(join_key("x"), prediction(2));
        assert_eq!(j.counters.duplicate_predictions, 1);
        assert_eq!(j.on_label(join_key("x"), label(3)), Some(prediction(1)));
    }
}
