//! A mergeable quantile sketch with a relative-error guarantee: a histogram
//! over the bit patterns of IEEE 754 doubles. Positive doubles order like
//! their bit patterns, so the top 12 bits (sign and exponent) and the
//! next [`MANTISSA_BITS`] mantissa bits index a bucket whose upper bound is
//! at most 2^-7 (0.78%) above its lower bound. A quantile is reported as the
//! midpoint of its bucket, so it is within 0.4% of a value at that rank.
//!
//! Memory is bounded: each sign keeps at most [`MAX_BUCKETS`] buckets (16 KiB),
//! 32 powers of two below its largest magnitude. Values further down (more
//! than 2^32, about 4·10^9, times smaller than the largest of their sign)
//! are counted in the lowest kept bucket (DDSketch's "collapsing lowest"):
//! a quantile that lands there is off by less than 2^-31 (5·10^-10) of that
//! largest magnitude instead of 0.4% of itself. Every other quantile keeps
//! the 0.4% bound, so the upper quantiles of positive values and the lower
//! quantiles of negative ones are never affected.
//!
//! Updating costs a shift and an increment per value (no sorting), merging
//! adds counts, and the result does not depend on merge order: the sketch
//! is exactly mergeable, which partial windows and scale-out rely on. The
//! collapse keeps that: where it folds depends only on the largest bucket,
//! and folding everything below `top − MAX_BUCKETS` into one bucket gives
//! the same counts whether done once on the union of the values or on each
//! part first and again after merging (the top of a union is the largest
//! top of its parts, so the parts' folds are never above the union's).

/// Mantissa bits kept per bucket: 2^7 buckets per power of two.
pub const MANTISSA_BITS: u32 = 7;
const SHIFT: u32 = 52 - MANTISSA_BITS;

/// Buckets kept per sign: 32 powers of two at full resolution (2^7 buckets
/// each), 16 KiB of counts. Values more than 2^32 times below the largest
/// magnitude fold into the lowest bucket, so the error they get is below
/// 2^-31 of the largest magnitude: less than 0.4% of any value within 2^23
/// of the largest, and negligible next to the spread of any distribution
/// that has both. (A sign's whole index space is 2^18 buckets: a feature
/// spanning ±1e-300 to ±1e300 held 2 MB per window before this budget.)
pub const MAX_BUCKETS: u64 = 4096;

/// Counts per bucket for one sign, stored densely between the lowest and
/// highest bucket kept: `offset` is the lowest one's index, `counts` at most
/// [`MAX_BUCKETS`] long, its first and last entries non-zero. Its form
/// depends only on the multiset of values added (see the module's note on
/// order), so equal contents compare equal.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "StoredBuckets")]
struct Buckets {
    offset: u64,
    counts: Vec<u32>,
}

/// Buckets as written by any version (before the budget, a sketch could be
/// wider than [`MAX_BUCKETS`]): read, then brought to the bounded form.
#[derive(serde::Deserialize)]
struct StoredBuckets {
    offset: u64,
    counts: Vec<u32>,
}

impl From<StoredBuckets> for Buckets {
    fn from(stored: StoredBuckets) -> Buckets {
        let StoredBuckets { offset, mut counts } = stored;
        let beyond_finite = offset.checked_add(counts.len() as u64).is_none_or(|end| end > LAST_FINITE_INDEX + 1);
        if beyond_finite {
            // Left as read for `QuantileSketch::validate` to refuse.
            return Buckets { offset, counts };
        }
        let (Some(first), Some(last)) = (counts.iter().position(|&c| c > 0), counts.iter().rposition(|&c| c > 0))
        else {
            return Buckets::default();
        };
        counts.truncate(last + 1);
        counts.drain(..first);
        let mut buckets = Buckets { offset: offset + first as u64, counts };
        buckets.fold_below(floor_of(buckets.top()));
        buckets.counts.shrink_to_fit();
        buckets
    }
}

/// The bit-pattern index of the largest finite magnitude's bucket.
const LAST_FINITE_INDEX: u64 = f64::MAX.to_bits() >> SHIFT;

/// The lowest bucket kept when the highest is `top`.
#[inline]
fn floor_of(top: u64) -> u64 {
    (top + 1).saturating_sub(MAX_BUCKETS)
}

impl Buckets {
    #[inline]
    fn add(&mut self, index: u64, count: u32) {
        if let Some(slot) = index.checked_sub(self.offset).and_then(|i| self.counts.get_mut(i as usize)) {
            *slot = slot.saturating_add(count);
            return;
        }
        self.add_outside(index, count);
    }

    /// The highest bucket's index (of a non-empty set).
    #[inline]
    fn top(&self) -> u64 {
        self.offset + self.counts.len() as u64 - 1
    }

    #[cold]
    fn add_outside(&mut self, index: u64, count: u32) {
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(count);
            return;
        }
        let top = self.top();
        let slot = if index > top {
            self.fold_below(floor_of(index));
            self.extend_to(index);
            self.counts.len() - 1
        } else {
            // Below the lowest bucket: into it once the set is full.
            let index = index.max(floor_of(top));
            self.extend_down_to(index);
            (index - self.offset) as usize
        };
        let slot = &mut self.counts[slot];
        *slot = slot.saturating_add(count);
    }

    /// Folds the buckets below `floor` into the bucket at `floor`.
    fn fold_below(&mut self, floor: u64) {
        if self.counts.is_empty() || floor <= self.offset {
            return;
        }
        let folded = (floor - self.offset).min(self.counts.len() as u64 - 1) as usize;
        let sum = self.counts[..=folded].iter().fold(0u32, |sum, &c| sum.saturating_add(c));
        self.counts.drain(..folded);
        self.counts[0] = sum;
        self.offset = floor;
    }

    /// Reserves room for `len` counts, growing geometrically but never
    /// beyond [`MAX_BUCKETS`].
    fn reserve_for(&mut self, len: usize) {
        if len > self.counts.capacity() {
            let target = (self.counts.capacity() * 2).clamp(len, (MAX_BUCKETS as usize).max(len));
            self.counts.reserve_exact(target - self.counts.len());
        }
    }

    /// Extends the counts up to the bucket `top` (at or above the current top).
    fn extend_to(&mut self, top: u64) {
        let len = (top - self.offset + 1) as usize;
        if len > self.counts.len() {
            self.reserve_for(len);
            self.counts.resize(len, 0);
        }
    }

    /// Extends the counts down to the bucket `low`.
    fn extend_down_to(&mut self, low: u64) {
        if low < self.offset {
            let grow = (self.offset - low) as usize;
            self.reserve_for(self.counts.len() + grow);
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = low;
        }
    }

    fn merge(&mut self, other: &Buckets) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            self.offset = other.offset;
            self.counts.clone_from(&other.counts);
            return;
        }
        let top = self.top().max(other.top());
        let floor = floor_of(top);
        self.fold_below(floor);
        self.extend_down_to(other.offset.max(floor));
        self.extend_to(top);
        for (i, &count) in other.counts.iter().enumerate() {
            if count > 0 {
                let slot = &mut self.counts[((other.offset + i as u64).max(floor) - self.offset) as usize];
                *slot = slot.saturating_add(count);
            }
        }
    }

    fn total(&self) -> u64 {
        self.counts.iter().map(|&c| c as u64).sum()
    }
}

/// The midpoint of the bucket with bit-pattern index `index` (positive).
fn bucket_midpoint(index: u64) -> f64 {
    let low = f64::from_bits(index << SHIFT);
    let high = f64::from_bits(((index + 1) << SHIFT) - 1);
    if high.is_finite() { low + (high - low) / 2.0 } else { low }
}

/// The sketch: negative values, zeros and positive values.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QuantileSketch {
    negative: Buckets,
    zeros: u64,
    positive: Buckets,
}

impl QuantileSketch {
    /// Adds one finite value.
    #[inline]
    pub fn add(&mut self, value: f64) {
        if value > 0.0 {
            self.positive.add(value.to_bits() >> SHIFT, 1);
        } else if value < 0.0 {
            self.negative.add((-value).to_bits() >> SHIFT, 1);
        } else if value == 0.0 {
            self.zeros += 1;
        }
    }

    /// Checks a sketch read from a file: its buckets must lie within the
    /// range of finite values (a hostile offset would otherwise overflow
    /// index arithmetic or allocate without bound when merged).
    pub fn validate(&self) -> Result<(), String> {
        for (side, buckets) in [("negative", &self.negative), ("positive", &self.positive)] {
            let end = buckets.offset.checked_add(buckets.counts.len() as u64);
            if end.is_none_or(|end| end > LAST_FINITE_INDEX + 1) {
                return Err(format!("{side} buckets beyond the largest finite value"));
            }
        }
        Ok(())
    }

    pub fn merge(&mut self, other: &QuantileSketch) {
        self.negative.merge(&other.negative);
        self.positive.merge(&other.positive);
        self.zeros += other.zeros;
    }

    pub fn count(&self) -> u64 {
        self.negative.total() + self.zeros + self.positive.total()
    }

    /// The value at rank `q · (n − 1)` (the rank numpy interpolates at),
    /// within 0.4% relative error; or, for a value more than 2^32 times
    /// smaller than the largest magnitude of its sign, less than 2^-31 of
    /// that largest magnitude away (see [`MAX_BUCKETS`]).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (n - 1) as f64).round() as u64;
        let mut seen = 0u64;
        // Negative values, most negative first (largest magnitude index first).
        for (i, &count) in self.negative.counts.iter().enumerate().rev() {
            seen += count as u64;
            if rank < seen {
                return Some(-bucket_midpoint(self.negative.offset + i as u64));
            }
        }
        seen += self.zeros;
        if rank < seen {
            return Some(0.0);
        }
        for (i, &count) in self.positive.counts.iter().enumerate() {
            seen += count as u64;
            if rank < seen {
                return Some(bucket_midpoint(self.positive.offset + i as u64));
            }
        }
        None
    }

    /// Non-empty buckets in ascending value order: (order key, midpoint, count).
    fn points(&self) -> Vec<(i128, f64, u64)> {
        let mut points = Vec::new();
        for (i, &count) in self.negative.counts.iter().enumerate().rev() {
            if count > 0 {
                let index = self.negative.offset + i as u64;
                points.push((-(index as i128) - 1, -bucket_midpoint(index), count as u64));
            }
        }
        if self.zeros > 0 {
            points.push((0, 0.0, self.zeros));
        }
        for (i, &count) in self.positive.counts.iter().enumerate() {
            if count > 0 {
                let index = self.positive.offset + i as u64;
                points.push((index as i128 + 1, bucket_midpoint(index), count as u64));
            }
        }
        points
    }

    /// The distribution the sketch holds: (bucket midpoint, count) in
    /// ascending value order, empty buckets left out.
    pub fn weighted_points(&self) -> Vec<(f64, u64)> {
        self.points().into_iter().map(|(_, value, count)| (value, count)).collect()
    }

    /// Approximate heap bytes held: at most 2 × [`MAX_BUCKETS`] × 4 (32 KiB).
    pub fn heap_bytes(&self) -> usize {
        (self.negative.counts.capacity() + self.positive.counts.capacity()) * 4
    }
}

/// Both sketches' CDFs on the merged grid of their non-empty buckets
/// (bucket midpoints, ascending): `(grid, cdf_a, cdf_b)`. Values that share
/// a bucket (within 0.78% of each other) are indistinguishable, which is the
/// only approximation: KS statistics and Wasserstein distances computed on
/// this grid are those of the two distributions rounded to bucket midpoints.
pub fn common_cdfs(a: &QuantileSketch, b: &QuantileSketch) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (pa, pb) = (a.points(), b.points());
    let (na, nb) = (a.count().max(1) as f64, b.count().max(1) as f64);
    let (mut i, mut j) = (0, 0);
    let (mut ca, mut cb) = (0u64, 0u64);
    let mut grid = Vec::with_capacity(pa.len() + pb.len());
    let (mut fa, mut fb) = (Vec::with_capacity(grid.capacity()), Vec::with_capacity(grid.capacity()));
    while i < pa.len() || j < pb.len() {
        let key_a = pa.get(i).map_or(i128::MAX, |p| p.0);
        let key_b = pb.get(j).map_or(i128::MAX, |p| p.0);
        let key = key_a.min(key_b);
        let mut value = 0.0;
        if key_a == key {
            ca += pa[i].2;
            value = pa[i].1;
            i += 1;
        }
        if key_b == key {
            cb += pb[j].2;
            value = pb[j].1;
            j += 1;
        }
        grid.push(value);
        fa.push(ca as f64 / na);
        fb.push(cb as f64 / nb);
    }
    (grid, fa, fb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_relative_error_bound() {
        let mut rng = crate::rng::Rng::new(11);
        let mut values: Vec<f64> = (0..100_000).map(|_| (2.0 + 1.5 * rng.normal()).exp() - 3.0).collect();
        let mut sketch = QuantileSketch::default();
        for &v in &values {
            sketch.add(v);
        }
        values.sort_unstable_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0] {
            let exact = values[(q * (values.len() - 1) as f64).round() as usize];
            let estimate = sketch.quantile(q).unwrap();
            assert!((estimate - exact).abs() <= exact.abs() * 0.004 + 1e-12, "q{q}: {estimate} vs {exact}");
        }
    }

    #[test]
    fn common_cdfs_end_at_one_and_are_monotone() {
        let mut a = QuantileSketch::default();
        let mut b = QuantileSketch::default();
        for i in 0..1000 {
            a.add(i as f64 - 200.0);
            b.add(i as f64 * 0.5);
        }
        let (grid, fa, fb) = common_cdfs(&a, &b);
        assert!(grid.windows(2).all(|w| w[0] < w[1]));
        assert!(fa.windows(2).all(|w| w[0] <= w[1]) && fb.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!((*fa.last().unwrap(), *fb.last().unwrap()), (1.0, 1.0));
    }

    #[test]
    fn merging_in_any_order_gives_the_same_sketch() {
        let values: Vec<f64> = (0..3000).map(|i| ((i * 7919) % 1000) as f64 - 300.0).collect();
        let mut whole = QuantileSketch::default();
        values.iter().for_each(|&v| whole.add(v));
        let mut parts: Vec<QuantileSketch> = values
            .chunks(700)
            .map(|c| {
                let mut s = QuantileSketch::default();
                c.iter().for_each(|&v| s.add(v));
                s
            })
            .collect();
        let mut forward = QuantileSketch::default();
        parts.iter().for_each(|p| forward.merge(p));
        parts.reverse();
        let mut backward = QuantileSketch::default();
        parts.iter().for_each(|p| backward.merge(p));
        assert_eq!(forward, whole);
        assert_eq!(backward, whole);
    }

    /// Values from ±1e-300 to ±1e300 (and subnormals, zeros) in one sketch.
    fn spanning_the_double_range(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::rng::Rng::new(seed);
        let mut values = vec![1e-300, -1e-300, 1e300, -1e300, 5e-324, -5e-324, 0.0, -0.0, f64::MAX, -f64::MIN_POSITIVE];
        values.extend((0..n).map(|_| {
            let magnitude = 10f64.powf(rng.uniform() * 600.0 - 300.0);
            if rng.uniform() < 0.5 { -magnitude } else { magnitude }
        }));
        values
    }

    fn sketch_of(values: &[f64]) -> QuantileSketch {
        let mut sketch = QuantileSketch::default();
        values.iter().for_each(|&v| sketch.add(v));
        sketch
    }

    /// Regression (issue 15): the buckets spanned the values' range, so a
    /// sketch of ±1e-300 and ±1e300 held 2 × 255,000 counts (2 MB).
    #[test]
    fn memory_is_bounded_for_values_spanning_the_double_range() {
        let mut sketch = QuantileSketch::default();
        for i in 0..4000 {
            sketch.add([1e-300, -1e-300, 1e300, -1e300][i % 4]);
        }
        for buckets in [&sketch.positive, &sketch.negative] {
            assert!(buckets.counts.len() as u64 <= MAX_BUCKETS, "{} buckets", buckets.counts.len());
        }
        // 32 KiB: 4,096 four-byte counts per sign (it was 2 MB).
        assert!(sketch.heap_bytes() <= 32 << 10, "{} bytes", sketch.heap_bytes());
        assert_eq!(sketch.count(), 4000);
        let wide = sketch_of(&spanning_the_double_range(100_000, 3));
        assert!(wide.heap_bytes() <= 32 << 10, "{} bytes", wide.heap_bytes());
        // The largest magnitudes keep their 0.4%.
        assert!((sketch.quantile(1.0).unwrap() / 1e300 - 1.0).abs() <= 0.004);
        assert!((sketch.quantile(0.0).unwrap() / -1e300 - 1.0).abs() <= 0.004);
    }

    /// At the budget: quantiles within 0.4% relative, or (values folded into
    /// the lowest bucket of their sign) within 2^-31 of the largest
    /// magnitude of that sign.
    #[test]
    fn quantiles_at_the_budget_are_within_the_stated_bound() {
        let mut values = spanning_the_double_range(50_000, 5);
        let sketch = sketch_of(&values);
        values.sort_unstable_by(f64::total_cmp);
        let largest_positive = values.last().unwrap().abs();
        let largest_negative = values[0].abs();
        let mut folded = 0;
        for i in 0..=1000 {
            let q = i as f64 / 1000.0;
            let exact = values[(q * (values.len() - 1) as f64).round() as usize];
            let estimate = sketch.quantile(q).unwrap();
            let largest = if exact < 0.0 { largest_negative } else { largest_positive };
            let relative_ok = (estimate - exact).abs() <= exact.abs() * 0.004;
            if !relative_ok {
                folded += 1;
                assert!(
                    (estimate - exact).abs() < largest * 2f64.powi(-31) && estimate.signum() == exact.signum(),
                    "q{q}: {estimate} vs {exact}"
                );
            }
        }
        // Values are log-uniform over 600 decades: most quantiles are folded.
        assert!(folded > 500, "{folded} quantiles folded");
        // Upper quantiles of a sketch over the budget keep 0.4% exactly as before.
        let mut rng = crate::rng::Rng::new(7);
        let mut latencies: Vec<f64> = (0..20_000).map(|_| (3.0 + 2.0 * rng.normal()).exp()).collect();
        latencies.extend([1e-200; 100]);
        let sketch = sketch_of(&latencies);
        latencies.sort_unstable_by(f64::total_cmp);
        for q in [0.25, 0.5, 0.9, 0.95, 0.99, 1.0] {
            let exact = latencies[(q * (latencies.len() - 1) as f64).round() as usize];
            let estimate = sketch.quantile(q).unwrap();
            assert!((estimate - exact).abs() <= exact * 0.004, "q{q}: {estimate} vs {exact}");
        }
    }

    /// Folding at the budget keeps the sketch a function of its contents:
    /// any insertion order and any merge grouping give the same sketch.
    #[test]
    fn folding_at_the_budget_is_order_independent() {
        let values = spanning_the_double_range(20_000, 9);
        let whole = sketch_of(&values);
        let mut sorted = values.clone();
        sorted.sort_unstable_by(f64::total_cmp);
        assert_eq!(sketch_of(&sorted), whole, "ascending insertion");
        sorted.reverse();
        assert_eq!(sketch_of(&sorted), whole, "descending insertion");
        let by_magnitude: Vec<f64> = {
            let mut v = values.clone();
            v.sort_unstable_by(|a, b| a.abs().total_cmp(&b.abs()));
            v
        };
        assert_eq!(sketch_of(&by_magnitude), whole, "ascending magnitude");
        for chunk in [1, 7, 100, 3_333] {
            let parts: Vec<QuantileSketch> = values.chunks(chunk).map(sketch_of).collect();
            let mut forward = QuantileSketch::default();
            parts.iter().for_each(|p| forward.merge(p));
            assert_eq!(forward, whole, "forward merge of chunks of {chunk}");
            let mut backward = QuantileSketch::default();
            parts.iter().rev().for_each(|p| backward.merge(p));
            assert_eq!(backward, whole, "backward merge of chunks of {chunk}");
            // A tree of merges: pairs, then pairs of pairs.
            let mut level = parts;
            while level.len() > 1 {
                level = level
                    .chunks(2)
                    .map(|pair| {
                        let mut merged = pair[0].clone();
                        pair.iter().skip(1).for_each(|p| merged.merge(p));
                        merged
                    })
                    .collect();
            }
            assert_eq!(level[0], whole, "tree merge of chunks of {chunk}");
        }
        // Small values first, then a large one that folds them; and the reverse.
        let (small, large): (Vec<f64>, Vec<f64>) = values.iter().partition(|v| v.abs() < 1.0);
        let mut a = sketch_of(&small);
        a.merge(&sketch_of(&large));
        let mut b = sketch_of(&large);
        b.merge(&sketch_of(&small));
        assert_eq!(a, whole);
        assert_eq!(b, whole);
    }

    /// A sketch written before the budget (wider than it) is read back in
    /// the bounded form, equal to adding its values now.
    #[test]
    fn a_stored_sketch_wider_than_the_budget_is_folded_when_read() {
        let index = |v: f64| v.to_bits() >> SHIFT;
        let (low, high) = (index(1e-300), index(1e300));
        let mut counts = vec![0u32; (high - low + 1) as usize];
        counts[0] = 3;
        counts[10] = 1;
        *counts.last_mut().unwrap() = 2;
        let padded = [vec![0, 0], counts, vec![0]].concat();
        let stored = serde_json::json!({
            "negative": {"offset": 0, "counts": [0, 0]},
            "zeros": 1,
            "positive": {"offset": low - 2, "counts": padded},
        });
        let read: QuantileSketch = serde_json::from_value(stored).unwrap();
        read.validate().unwrap();
        let mut expected = sketch_of(&[1e-300, 1e-300, 1e-300, 1e300, 1e300, 0.0]);
        expected.add(f64::from_bits((low + 10) << SHIFT));
        assert_eq!(read, expected);
        assert!(read.heap_bytes() <= MAX_BUCKETS as usize * 4);
        let bytes = rmp_serde::to_vec(&read).unwrap();
        assert_eq!(rmp_serde::from_slice::<QuantileSketch>(&bytes).unwrap(), read);
    }
}
