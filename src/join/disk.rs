//! The label join of one model (or shadow version) on disk: the same rule
//! as [`super::ModelJoin`] — pairs by event id in either order, within
//! `label_horizon` by event times, duplicates counted, expiry at the
//! watermark, a cap with eviction — with its entries in the
//! [`JoinStore`] instead of memory.
//!
//! In memory stay only counts: per expiry bucket (a 65,536th of the
//! horizon, at least a millisecond), how many waiting predictions, early
//! labels and remembered pairs expire in it. Expiry and eviction move one
//! time, `gone_below`: an entry part whose expiry time is below it is gone
//! at once (every read checks), and the compaction filter removes it from
//! disk later. A bucket's waiting predictions and labels are counted as
//! expired (or evicted) when the whole bucket is gone, so the counters
//! trail the memory join's by at most a bucket of event time and their
//! totals are the same. Eviction at the cap evicts the oldest bucket.
//!
//! Recent writes wait in an overlay (up to [`OVERLAY_ENTRIES`]) and reach
//! the store as one batch, written by a thread of its own (one batch in
//! flight; the join goes on meanwhile, and reads the batch's entries from
//! memory until the write is done); reads look at the overlay first, then
//! the batch in flight. A micro-batch's entries are read ahead in one
//! batched, sorted lookup ([`DiskJoin::prefetch`]) of those not in memory;
//! an entry read ahead is forgotten when written. If the store fails, the
//! overlay keeps the writes (a failed batch's come back to it) and retries
//! (nothing is lost; the failure shows in readiness).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use super::store::{JoinStore, STORE_KEY_LEN, WriteBatch, store_key};
use super::{JoinCounters, JoinKey, KeyMap, ModelJoin, PairOutcome, PendingLabel, PendingPrediction, Side, Target};

/// Most writes kept in memory before they go to the store as one batch.
pub const OVERLAY_ENTRIES: usize = 32_768;
/// Expiry buckets per horizon.
const BUCKETS_PER_HORIZON: i64 = 65_536;

const HAS_PREDICTION: u8 = 1;
const HAS_LABEL: u8 = 2;
const HAS_COMPLETED: u8 = 4;
const HAS_OUTCOME: u8 = 8;
/// The longest encoded entry.
const ENTRY_MAX_LEN: usize = 1 + 37 + 25 + 8 + 13;

/// What the join knows of one event id: each part with its expiry time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Entry {
    prediction: Option<(i64, PendingPrediction)>,
    label: Option<(i64, PendingLabel)>,
    /// A pair made for this id, remembered until this time.
    completed: Option<i64>,
    /// The remembered pair's outcome (models with shadow versions).
    outcome: Option<PairOutcome>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.prediction.is_none() && self.label.is_none() && self.completed.is_none()
    }

    fn encode(&self, out: &mut [u8; ENTRY_MAX_LEN]) -> usize {
        let mut writer = Writer { out, at: 1 };
        let mut flags = 0;
        if let Some((expire_at, p)) = self.prediction {
            flags |= HAS_PREDICTION;
            writer.i64(expire_at);
            writer.u32(p.series);
            writer.i64(p.event_time_ms);
            writer.target(p.predicted);
            writer.i64(p.score.to_bits() as i64);
        }
        if let Some((expire_at, l)) = self.label {
            flags |= HAS_LABEL;
            writer.i64(expire_at);
            writer.i64(l.label_time_ms);
            writer.target(l.actual);
        }
        if let Some(expire_at) = self.completed {
            flags |= HAS_COMPLETED;
            writer.i64(expire_at);
        }
        if let Some(o) = self.outcome {
            flags |= HAS_OUTCOME;
            writer.out[writer.at] = o.correct as u8;
            writer.at += 1;
            writer.u32(o.series);
            writer.i64(o.event_time_ms);
        }
        let len = writer.at;
        out[0] = flags;
        len
    }

    /// `None` for bytes this build did not write (read as absent).
    fn decode(bytes: &[u8]) -> Option<Entry> {
        let (&flags, rest) = bytes.split_first()?;
        let mut reader = Reader { bytes: rest };
        let mut entry = Entry::default();
        if flags & HAS_PREDICTION != 0 {
            let expire_at = reader.i64()?;
            let series = reader.u32()?;
            let event_time_ms = reader.i64()?;
            let predicted = reader.target()?;
            let score = f64::from_bits(reader.i64()? as u64);
            entry.prediction = Some((expire_at, PendingPrediction { series, event_time_ms, predicted, score }));
        }
        if flags & HAS_LABEL != 0 {
            let expire_at = reader.i64()?;
            let label_time_ms = reader.i64()?;
            let actual = reader.target()?;
            entry.label = Some((expire_at, PendingLabel { label_time_ms, actual }));
        }
        if flags & HAS_COMPLETED != 0 {
            entry.completed = Some(reader.i64()?);
        }
        if flags & HAS_OUTCOME != 0 {
            let (&correct, rest) = reader.bytes.split_first()?;
            reader.bytes = rest;
            let series = reader.u32()?;
            let event_time_ms = reader.i64()?;
            entry.outcome = Some(PairOutcome { correct: correct != 0, series, event_time_ms });
        }
        reader.bytes.is_empty().then_some(entry)
    }

    /// The latest expiry time of its parts.
    fn latest_expiry(&self) -> Option<i64> {
        [self.prediction.map(|(t, _)| t), self.label.map(|(t, _)| t), self.completed].into_iter().flatten().max()
    }
}

/// The latest expiry time of a stored entry (the compaction filter's).
#[cfg_attr(not(feature = "join-store"), allow(dead_code))]
pub(super) fn latest_expiry(bytes: &[u8]) -> Option<i64> {
    Entry::decode(bytes)?.latest_expiry()
}

struct Writer<'a> {
    out: &'a mut [u8; ENTRY_MAX_LEN],
    at: usize,
}

impl Writer<'_> {
    fn i64(&mut self, value: i64) {
        self.out[self.at..self.at + 8].copy_from_slice(&value.to_le_bytes());
        self.at += 8;
    }
    fn u32(&mut self, value: u32) {
        self.out[self.at..self.at + 4].copy_from_slice(&value.to_le_bytes());
        self.at += 4;
    }
    fn target(&mut self, target: Target) {
        match target {
            Target::Class(class) => {
                self.out[self.at] = 0;
                self.at += 1;
                self.i64(i64::from(class));
            }
            Target::Value(value) => {
                self.out[self.at] = 1;
                self.at += 1;
                self.i64(value.to_bits() as i64);
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.bytes.split_at_checked(N)?;
        self.bytes = rest;
        head.try_into().ok()
    }
    fn i64(&mut self) -> Option<i64> {
        self.take::<8>().map(i64::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn target(&mut self) -> Option<Target> {
        let [tag] = self.take::<1>()?;
        let bits = self.i64()?;
        match tag {
            0 => u32::try_from(bits).ok().map(Target::Class),
            1 => Some(Target::Value(f64::from_bits(bits as u64))),
            _ => None,
        }
    }
}

/// Entries expiring in one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BucketCounts {
    predictions: u64,
    labels: u64,
    completed: u64,
}

impl BucketCounts {
    fn total(&self) -> u64 {
        self.predictions + self.labels + self.completed
    }
}

/// What a checkpoint keeps of a disk join: its counts and times, not its
/// entries (those are in the store's checkpoint beside the file).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DiskJoinState {
    /// The join's key prefix in the store.
    pub store_prefix: u64,
    bucket_ms: i64,
    buckets: Vec<(i64, BucketCounts)>,
    gone_below: i64,
    all_gone: bool,
    horizon_ms: i64,
    counters: JoinCounters,
}

/// One join on disk (see the module doc).
pub struct DiskJoin {
    store: Arc<JoinStore>,
    prefix: u64,
    overlay: KeyMap<Option<Entry>>,
    /// Entries read ahead as the store held them (absent: empty), none of
    /// them written since; at most a micro-batch's.
    prefetched: KeyMap<Entry>,
    /// The keys of a read-ahead, and their store keys (kept for their
    /// allocation).
    prefetch_join_keys: Vec<JoinKey>,
    prefetch_keys: Vec<[u8; STORE_KEY_LEN]>,
    /// The overlay's keys in order, as a flush writes them (kept for its
    /// allocation).
    flush_order: Vec<JoinKey>,
    /// The allocation of the last batch written, the next overlay's.
    spare_overlay: KeyMap<Option<Entry>>,
    /// The overlay's last batch, while a thread writes it.
    in_flight: Option<InFlight>,
    /// The overlay's length at which the next batch is written (higher
    /// than `overlay_entries` after a failed write: retries back off).
    flush_at: usize,
    /// [`OVERLAY_ENTRIES`] (tests write smaller batches).
    overlay_entries: usize,
    /// Bucket index (expiry time / `bucket_ms`) → what expires in it.
    buckets: BTreeMap<i64, BucketCounts>,
    bucket_ms: i64,
    totals: BucketCounts,
    /// Entry parts expiring before this time are gone.
    gone_below: i64,
    /// `gone_below` as the compaction filter reads it.
    shared_gone_below: Arc<AtomicI64>,
    /// Everything is gone (the end of input).
    all_gone: bool,
    horizon_ms: i64,
    max_pending: u64,
    pub counters: JoinCounters,
}

/// A batch of writes being written to the store by a thread of its own
/// (`driftwatch-join-write`, started by [`DiskJoin::write`] when the
/// overlay is full, joined before the next batch, by [`DiskJoin::flush`],
/// and when the join is dropped).
struct InFlight {
    /// The batch's entries, read from here until it is written (the
    /// writer encodes them).
    entries: Arc<KeyMap<Option<Entry>>>,
    /// Gives back the write's outcome and the key-order buffer.
    writer: std::thread::JoinHandle<(Result<(), super::store::JoinStoreError>, Vec<JoinKey>)>,
}

/// `entries` of the join under `prefix` as one write batch, in key order
/// (the store's write buffer inserts a sorted run much faster than random
/// keys); `order` is a buffer for the keys.
fn batch_of(prefix: u64, entries: &KeyMap<Option<Entry>>, order: &mut Vec<JoinKey>) -> WriteBatch {
    order.clear();
    order.extend(entries.keys().copied());
    order.sort_unstable();
    let mut batch = WriteBatch::default();
    let mut bytes = [0u8; ENTRY_MAX_LEN];
    for key in order.iter() {
        let stored = store_key(prefix, *key);
        match &entries[key] {
            Some(entry) => {
                let len = entry.encode(&mut bytes);
                batch.put(stored, &bytes[..len]);
            }
            None => batch.delete(stored),
        }
    }
    batch
}

impl Drop for DiskJoin {
    fn drop(&mut self) {
        self.finish_in_flight();
    }
}

impl std::fmt::Debug for DiskJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskJoin")
            .field("prefix", &self.prefix)
            .field("totals", &self.totals)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl DiskJoin {
    /// An empty join under key prefix `prefix` of `store`.
    pub fn new(store: Arc<JoinStore>, prefix: u64, horizon_ms: i64, max_pending: usize) -> Self {
        let shared_gone_below = store.gone_below(prefix);
        shared_gone_below.store(i64::MIN, Ordering::Relaxed);
        DiskJoin {
            store,
            prefix,
            overlay: KeyMap::default(),
            prefetched: KeyMap::default(),
            prefetch_join_keys: Vec::new(),
            prefetch_keys: Vec::new(),
            flush_order: Vec::new(),
            spare_overlay: KeyMap::default(),
            in_flight: None,
            flush_at: OVERLAY_ENTRIES,
            overlay_entries: OVERLAY_ENTRIES,
            buckets: BTreeMap::new(),
            bucket_ms: (horizon_ms / BUCKETS_PER_HORIZON).max(1),
            totals: BucketCounts::default(),
            gone_below: i64::MIN,
            shared_gone_below,
            all_gone: false,
            horizon_ms,
            max_pending: max_pending.max(1) as u64,
            counters: JoinCounters::default(),
        }
    }

    /// The join's state for a checkpoint (after [`Self::flush`], with the
    /// store checkpointed at the same point).
    pub fn state(&self) -> DiskJoinState {
        DiskJoinState {
            store_prefix: self.prefix,
            bucket_ms: self.bucket_ms,
            buckets: self.buckets.iter().map(|(bucket, counts)| (*bucket, *counts)).collect(),
            gone_below: self.gone_below,
            all_gone: self.all_gone,
            horizon_ms: self.horizon_ms,
            counters: self.counters,
        }
    }

    /// The join a checkpoint kept, over the store restored from the same
    /// checkpoint, with the current cap. Entries keep the expiry times
    /// they were written with; new ones take `horizon_ms`.
    pub fn restored(store: Arc<JoinStore>, state: DiskJoinState, horizon_ms: i64, max_pending: usize) -> Self {
        let mut join = DiskJoin::new(store, state.store_prefix, horizon_ms, max_pending);
        join.bucket_ms = state.bucket_ms.max(1);
        for (bucket, counts) in state.buckets {
            join.totals.predictions += counts.predictions;
            join.totals.labels += counts.labels;
            join.totals.completed += counts.completed;
            join.buckets.insert(bucket, counts);
        }
        join.set_gone_below(state.gone_below);
        join.all_gone = state.all_gone;
        join.counters = state.counters;
        join
    }

    pub fn store(&self) -> &Arc<JoinStore> {
        &self.store
    }

    /// Its horizon and cap.
    pub fn limits(&self) -> (i64, usize) {
        (self.horizon_ms, self.max_pending as usize)
    }

    /// The key prefix of its entries in the store.
    pub fn prefix(&self) -> u64 {
        self.prefix
    }

    /// Takes over a memory join's entries and counters (a checkpoint
    /// written before the store), keeping this one's horizon and cap.
    pub fn absorb(&mut self, other: ModelJoin) {
        self.counters = other.counters;
        for &std::cmp::Reverse((expire_at, key, side)) in other.queue.iter() {
            let mut entry = self.read(key);
            match side {
                Side::Prediction => match other.predictions.get(&key) {
                    Some(p) if p.event_time_ms.saturating_add(other.horizon_ms) == expire_at => {
                        entry.prediction = Some((expire_at, *p));
                        self.count(expire_at, |c| &mut c.predictions, 1);
                    }
                    _ => continue,
                },
                Side::Label => match other.labels.get(&key) {
                    Some(l) if l.label_time_ms.saturating_add(other.horizon_ms) == expire_at => {
                        entry.label = Some((expire_at, *l));
                        self.count(expire_at, |c| &mut c.labels, 1);
                    }
                    _ => continue,
                },
                Side::Completed => {
                    if other.completed.get(&key) != Some(&expire_at) {
                        continue;
                    }
                    entry.completed = Some(expire_at);
                    entry.outcome = other.outcomes.get(&key).copied();
                    self.count(expire_at, |c| &mut c.completed, 1);
                }
            }
            self.write(key, entry);
        }
    }

    /// Predictions and labels waiting (including those gone but not yet
    /// counted, in a bucket not wholly passed).
    pub fn pending(&self) -> usize {
        (self.totals.predictions + self.totals.labels) as usize
    }

    #[inline]
    fn visible(&self, expire_at: i64) -> bool {
        !self.all_gone && expire_at >= self.gone_below
    }

    /// Reads the entries of `keys` ahead, in one batched lookup (keys
    /// sorted, as the store's files are), for the reads of a micro-batch.
    /// What was read ahead before is forgotten.
    pub fn prefetch(&mut self, keys: impl IntoIterator<Item = JoinKey>) {
        self.prefetched.clear();
        self.prefetch_join_keys.clear();
        let (overlay, in_flight) = (&self.overlay, self.in_flight.as_ref().map(|f| &f.entries));
        let in_memory = |key: &JoinKey| overlay.contains_key(key) || in_flight.is_some_and(|f| f.contains_key(key));
        self.prefetch_join_keys.extend(keys.into_iter().filter(|key| !in_memory(key)));
        // Sorted as numbers: the order of their big-endian store keys (one
        // prefix), without comparing bytes.
        self.prefetch_join_keys.sort_unstable();
        self.prefetch_join_keys.dedup();
        let prefix = self.prefix;
        self.prefetch_keys.clear();
        self.prefetch_keys.extend(self.prefetch_join_keys.iter().map(|key| store_key(prefix, *key)));
        let (keys, prefetched) = (&self.prefetch_join_keys, &mut self.prefetched);
        self.store.get_sorted(&self.prefetch_keys, |index, bytes| {
            prefetched.insert(keys[index], bytes.and_then(Entry::decode).unwrap_or_default());
        });
    }

    /// What the join knows of `key`, without the parts that are gone.
    fn read(&self, key: JoinKey) -> Entry {
        let in_flight = || self.in_flight.as_ref().and_then(|f| f.entries.get(&key));
        let mut entry = match self.overlay.get(&key).or_else(in_flight) {
            Some(entry) => entry.unwrap_or_default(),
            None => match self.prefetched.get(&key) {
                Some(entry) => *entry,
                None => self
                    .store
                    .get(&store_key(self.prefix, key), |bytes| bytes.and_then(Entry::decode).unwrap_or_default()),
            },
        };
        if entry.prediction.is_some_and(|(t, _)| !self.visible(t)) {
            entry.prediction = None;
        }
        if entry.label.is_some_and(|(t, _)| !self.visible(t)) {
            entry.label = None;
        }
        if entry.completed.is_some_and(|t| !self.visible(t)) {
            entry.completed = None;
            entry.outcome = None;
        }
        entry
    }

    fn write(&mut self, key: JoinKey, entry: Entry) {
        self.prefetched.remove(&key);
        self.overlay.insert(key, (!entry.is_empty()).then_some(entry));
        if self.overlay.len() >= self.flush_at {
            self.flush_in_background();
        }
    }

    /// Writes waiting in memory for the store (the overlay and the batch in
    /// flight).
    pub fn overlay_len(&self) -> usize {
        self.overlay.len() + self.in_flight.as_ref().map_or(0, |f| f.entries.len())
    }

    /// Hands the overlay to a thread that writes it to the store as one
    /// batch, once the batch before it is written.
    fn flush_in_background(&mut self) {
        self.finish_in_flight();
        if self.overlay.len() < self.flush_at {
            // The batch in flight failed and came back: retry later.
            return;
        }
        let entries = Arc::new(std::mem::replace(&mut self.overlay, std::mem::take(&mut self.spare_overlay)));
        let (store, prefix, shared) = (Arc::clone(&self.store), self.prefix, Arc::clone(&entries));
        let mut order = std::mem::take(&mut self.flush_order);
        let writer = std::thread::Builder::new().name("driftwatch-join-write".into()).spawn(move || {
            let batch = batch_of(prefix, &shared, &mut order);
            drop(shared);
            (store.write(batch), order)
        });
        match writer {
            Ok(writer) => self.in_flight = Some(InFlight { entries, writer }),
            Err(_) => {
                // No thread to be had: written here.
                self.overlay = Arc::unwrap_or_clone(entries);
                self.flush();
            }
        }
    }

    /// Waits for the batch in flight. If its write failed, its entries wait
    /// in the overlay again (but where written since), and the next try is
    /// when the overlay has grown by half.
    fn finish_in_flight(&mut self) {
        let Some(InFlight { entries, writer }) = self.in_flight.take() else { return };
        let written = match writer.join() {
            Ok((written, order)) => {
                self.flush_order = order;
                written
            }
            Err(_) => Err(super::store::JoinStoreError::Failing {
                path: self.store.path().display().to_string(),
                failure: "the join store's writer thread panicked".to_string(),
            }),
        };
        // The writer has ended: the entries are this join's alone again.
        let mut entries = Arc::unwrap_or_clone(entries);
        match written {
            Ok(()) => {
                self.flush_at = self.overlay_entries;
                entries.clear();
                self.spare_overlay = entries;
            }
            Err(_) => {
                for (key, entry) in entries {
                    self.overlay.entry(key).or_insert(entry);
                }
                self.flush_at = self.overlay.len() + self.overlay.len() / 2 + 1;
            }
        }
    }

    /// Writes every write waiting in memory to the store (the batch in
    /// flight, then the overlay), before it returns; on failure keeps them
    /// and tries again when the overlay has grown by half.
    pub fn flush(&mut self) {
        self.finish_in_flight();
        if self.overlay.is_empty() {
            return;
        }
        let batch = batch_of(self.prefix, &self.overlay, &mut self.flush_order);
        match self.store.write(batch) {
            Ok(()) => {
                self.overlay.clear();
                self.flush_at = self.overlay_entries;
            }
            Err(_) => self.flush_at = self.overlay.len() + self.overlay.len() / 2 + 1,
        }
    }

    fn count(&mut self, expire_at: i64, field: impl Fn(&mut BucketCounts) -> &mut u64, delta: i64) {
        let bucket = expire_at.div_euclid(self.bucket_ms);
        let counts = self.buckets.entry(bucket).or_default();
        let value = field(counts);
        *value = value.saturating_add_signed(delta);
        let empty = counts.total() == 0;
        let total = field(&mut self.totals);
        *total = total.saturating_add_signed(delta);
        if empty {
            self.buckets.remove(&bucket);
        }
    }

    fn make_room(&mut self) {
        while self.totals.total() >= self.max_pending {
            let Some((bucket, counts)) = self.buckets.pop_first() else { break };
            self.counters.evicted += counts.predictions + counts.labels;
            self.subtract(counts);
            self.set_gone_below((bucket + 1).saturating_mul(self.bucket_ms));
        }
    }

    fn subtract(&mut self, counts: BucketCounts) {
        self.totals.predictions -= counts.predictions;
        self.totals.labels -= counts.labels;
        self.totals.completed -= counts.completed;
    }

    fn set_gone_below(&mut self, time: i64) {
        if time > self.gone_below {
            self.gone_below = time;
            self.shared_gone_below.store(time, Ordering::Relaxed);
        }
    }

    #[inline]
    fn within_horizon(&self, prediction_time_ms: i64, label_time_ms: i64) -> bool {
        label_time_ms.saturating_sub(prediction_time_ms) <= self.horizon_ms
    }

    /// Remembers the pair just made in `entry` until the horizon has
    /// passed `time_ms`.
    fn remember_pair(&mut self, entry: &mut Entry, time_ms: i64) {
        self.make_room();
        let expire_at = time_ms.saturating_add(self.horizon_ms);
        if let Some(old) = entry.completed.replace(expire_at) {
            self.count(old, |c| &mut c.completed, -1);
        }
        entry.outcome = None;
        self.count(expire_at, |c| &mut c.completed, 1);
    }

    /// As [`ModelJoin::on_prediction`].
    pub fn on_prediction(&mut self, key: JoinKey, prediction: PendingPrediction) -> Option<PendingLabel> {
        let mut entry = self.read(key);
        if let Some((label_expiry, label)) = entry.label
            && self.within_horizon(prediction.event_time_ms, label.label_time_ms)
        {
            entry.label = None;
            self.count(label_expiry, |c| &mut c.labels, -1);
            self.counters.matched += 1;
            self.remember_pair(&mut entry, prediction.event_time_ms.max(label.label_time_ms));
            self.write(key, entry);
            return Some(label);
        }
        if entry.prediction.is_some() || entry.completed.is_some() {
            self.counters.duplicate_predictions += 1;
            return None;
        }
        self.make_room();
        let expire_at = prediction.event_time_ms.saturating_add(self.horizon_ms);
        entry.prediction = Some((expire_at, prediction));
        self.count(expire_at, |c| &mut c.predictions, 1);
        self.write(key, entry);
        None
    }

    /// As [`ModelJoin::on_label`].
    pub fn on_label(&mut self, key: JoinKey, label: PendingLabel) -> Option<PendingPrediction> {
        let mut entry = self.read(key);
        if let Some((prediction_expiry, prediction)) = entry.prediction
            && self.within_horizon(prediction.event_time_ms, label.label_time_ms)
        {
            entry.prediction = None;
            self.count(prediction_expiry, |c| &mut c.predictions, -1);
            self.counters.matched += 1;
            self.remember_pair(&mut entry, prediction.event_time_ms.max(label.label_time_ms));
            self.write(key, entry);
            return Some(prediction);
        }
        if entry.label.is_some() || entry.completed.is_some() {
            self.counters.duplicate_labels += 1;
            return None;
        }
        self.make_room();
        let expire_at = label.label_time_ms.saturating_add(self.horizon_ms);
        entry.label = Some((expire_at, label));
        self.count(expire_at, |c| &mut c.labels, 1);
        self.write(key, entry);
        None
    }

    /// As [`ModelJoin::record_outcome`].
    pub fn record_outcome(&mut self, key: JoinKey, outcome: PairOutcome) {
        let mut entry = self.read(key);
        if entry.completed.is_some() {
            entry.outcome = Some(outcome);
            self.write(key, entry);
        }
    }

    /// As [`ModelJoin::outcome`].
    pub fn outcome(&self, key: JoinKey) -> Option<PairOutcome> {
        self.read(key).outcome
    }

    /// As [`ModelJoin::expire`]: entries expiring before `watermark` are
    /// gone at once; a bucket's are counted once all of it is.
    pub fn expire(&mut self, watermark: i64) {
        if watermark == i64::MAX {
            self.all_gone = true;
            self.set_gone_below(i64::MAX);
            while let Some((_, counts)) = self.buckets.pop_first() {
                self.count_expired(counts);
            }
            return;
        }
        if watermark <= self.gone_below {
            return;
        }
        self.set_gone_below(watermark);
        while let Some(entry) = self.buckets.first_entry() {
            if (entry.key() + 1).saturating_mul(self.bucket_ms) > watermark {
                break;
            }
            let counts = entry.remove();
            self.count_expired(counts);
        }
    }

    fn count_expired(&mut self, counts: BucketCounts) {
        self.counters.predictions_expired += counts.predictions;
        self.counters.labels_unmatched += counts.labels;
        self.subtract(counts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::join::join_key;

    fn store() -> (tempfile::TempDir, Arc<JoinStore>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = JoinStore::open(&dir.path().join("joins"), 16 << 20).expect("opens");
        (dir, store)
    }

    #[test]
    fn entries_round_trip_through_their_encoding() {
        let entry = Entry {
            prediction: Some((
                7,
                PendingPrediction { series: 3, event_time_ms: -5, predicted: Target::Class(9), score: f64::NAN },
            )),
            label: Some((8, PendingLabel { label_time_ms: 11, actual: Target::Value(-0.25) })),
            completed: Some(i64::MAX),
            outcome: Some(PairOutcome { correct: true, series: 2, event_time_ms: 4 }),
        };
        let mut bytes = [0u8; ENTRY_MAX_LEN];
        let len = entry.encode(&mut bytes);
        assert_eq!(len, ENTRY_MAX_LEN);
        let back = Entry::decode(&bytes[..len]).expect("decodes");
        assert_eq!(format!("{back:?}"), format!("{entry:?}"), "NaN scores compare by their text");
        assert_eq!(Entry::decode(&bytes[..len - 1]), None, "a truncated entry reads as absent");
        assert_eq!(latest_expiry(&bytes[..len]), Some(i64::MAX));
    }

    /// The disk join pairs, expires, counts duplicates and evicts as the
    /// memory join does, on a random stream (ids drawn from a small set, so
    /// duplicates, early labels and labels past the horizon all occur),
    /// with the overlay flushed to the store at random points (under a cap
    /// the two evict differently, so only the accounting is compared). The
    /// counters are compared once everything has expired (in between the
    /// disk join counts a bucket at a time).
    /// While the store takes no writes, a join's writes wait in memory
    /// (past the usual batch, retried as it grows), labels find the
    /// predictions waiting there, and once the store is rebuilt everything
    /// reaches it.
    #[test]
    fn writes_wait_in_memory_while_the_store_fails_and_reach_it_after_the_rebuild() {
        let dir = tempfile::tempdir().expect("temp dir");
        let live = dir.path().join("joins");
        let store = JoinStore::open(&live, 16 << 20).expect("opens");
        let mut join = DiskJoin::new(Arc::clone(&store), 7, 3_600_000, 10_000_000);
        let prediction = |i: usize| PendingPrediction {
            series: 1,
            event_time_ms: i as i64,
            predicted: Target::Class((i % 2) as u32),
            score: 0.5,
        };
        let label = |i: usize| PendingLabel { label_time_ms: i as i64, actual: Target::Class(1) };
        let key = |i: usize| join_key(&format!("e{i}"));
        join.on_prediction(key(0), prediction(0));
        join.flush();
        // Its directory becomes a file: the flush fails, and RocksDB then
        // refuses every write.
        std::fs::rename(&live, dir.path().join("joins.away")).expect("moves");
        std::fs::write(&live, b"not a directory").expect("writes a file");
        assert!(store.flush().is_err());
        let waiting = 3 * OVERLAY_ENTRIES;
        for i in 1..=waiting {
            assert_eq!(join.on_prediction(key(i), prediction(i)), None);
        }
        assert!(store.failure().is_some(), "the failed writes are reported");
        assert_eq!(join.overlay_len(), waiting, "every write waits in memory");
        assert_eq!(join.on_label(key(waiting), label(waiting)).map(|p| p.event_time_ms), Some(waiting as i64));
        assert_eq!(join.on_label(key(0), label(0)).map(|p| p.event_time_ms), Some(0), "read from the store");

        store.rebuild().expect("rebuilds");
        join.flush();
        assert_eq!(join.overlay_len(), 0, "written once the store takes writes");
        assert!(store.failure().is_none());
        for i in [1, OVERLAY_ENTRIES, waiting - 1] {
            assert_eq!(join.on_label(key(i), label(i)).map(|p| p.event_time_ms), Some(i as i64), "prediction {i}");
        }
        assert_eq!(join.counters.matched, 5);
    }

    #[test]
    fn a_disk_join_pairs_and_counts_as_the_memory_join_does_with_entries_read_ahead_and_written_behind() {
        for seed in 0..24u64 {
            let (_dir, store) = store();
            let mut rng = crate::rng::Rng::new(seed);
            let horizon = 1_000;
            let cap = if seed % 3 == 0 { 40 } else { 1_000_000 };
            let mut memory = ModelJoin::new(horizon, cap);
            let mut disk = DiskJoin::new(Arc::clone(&store), seed, horizon, cap);
            // Half the seeds write batches of 16 entries: many batches in
            // flight while the join reads, reads ahead and flushes.
            if seed % 2 == 1 {
                disk.overlay_entries = 16;
                disk.flush_at = 16;
            }
            let mut time = 0i64;
            let mut events = 0u64;
            for step in 0..3_000 {
                time += (rng.next_u64() % 7) as i64;
                let id = format!("e{}", rng.next_u64() % 400);
                let key = join_key(&id);
                let jitter = (rng.next_u64() % 2_500) as i64 - 1_200;
                events += 1;
                if rng.next_u64().is_multiple_of(2) {
                    let p = PendingPrediction {
                        series: (rng.next_u64() % 3) as u32,
                        event_time_ms: time,
                        predicted: Target::Class((rng.next_u64() % 2) as u32),
                        score: (rng.next_u64() % 100) as f64 / 100.0,
                    };
                    let (d, m) = (disk.on_prediction(key, p), memory.on_prediction(key, p));
                    assert!(d == m || cap < 1_000, "seed {seed} step {step}: {d:?} != {m:?}");
                } else {
                    let l = PendingLabel {
                        label_time_ms: time + jitter,
                        actual: Target::Class((rng.next_u64() % 2) as u32),
                    };
                    let (d, m) = (disk.on_label(key, l), memory.on_label(key, l));
                    assert!(d == m || cap < 1_000, "seed {seed} step {step}: {d:?} != {m:?}");
                }
                if cap > 1_000 {
                    let watermark = time - 300;
                    memory.expire(watermark);
                    disk.expire(watermark);
                }
                if rng.next_u64().is_multiple_of(97) {
                    disk.flush();
                }
                if rng.next_u64().is_multiple_of(11) {
                    // Ids read ahead, as the engine does for a micro-batch:
                    // what was read ahead must stay right through the
                    // writes and flushes that follow.
                    let ahead: Vec<JoinKey> =
                        (0..30).map(|_| join_key(&format!("e{}", rng.next_u64() % 400))).collect();
                    disk.prefetch(ahead);
                }
            }
            memory.expire(i64::MAX);
            disk.expire(i64::MAX);
            // Every prediction and label was paired, a duplicate, expired
            // or evicted: counted once.
            let accounted = |c: JoinCounters| {
                2 * c.matched
                    + c.duplicate_predictions
                    + c.duplicate_labels
                    + c.predictions_expired
                    + c.labels_unmatched
                    + c.evicted
            };
            assert_eq!(accounted(disk.counters), events, "seed {seed}");
            assert_eq!(accounted(memory.counters), events, "seed {seed}");
            if cap > 1_000 {
                assert_eq!(disk.counters, memory.counters, "seed {seed}");
            } else {
                // At the cap the disk join evicts a bucket at a time.
                assert!(disk.counters.evicted > 0, "seed {seed}: the cap was reached");
            }
            assert_eq!(disk.pending(), 0);
        }
    }
}
