//! A mergeable quantile sketch with a relative-error guarantee: a histogram
//! over the bit patterns of IEEE 754 doubles. Positive doubles order like
//! their bit patterns, so the top 12 bits (sign and exponent) and the
//! next [`MANTISSA_BITS`] mantissa bits index a bucket whose upper bound is
//! at most 2^-7 (0.78%) above its lower bound. A quantile is reported as the
//! midpoint of its bucket, so it is within 0.4% of a value at that rank.
//!
//! Updating costs a shift and an increment per value (no sorting), merging
//! adds counts, and the result does not depend on merge order: the sketch
//! is exactly mergeable, which partial windows and scale-out rely on.

/// Mantissa bits kept per bucket: 2^7 buckets per power of two.
pub const MANTISSA_BITS: u32 = 7;
const SHIFT: u32 = 52 - MANTISSA_BITS;

/// Counts per bucket for one sign, stored densely between the lowest and
/// highest bucket seen.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Buckets {
    offset: u64,
    counts: Vec<u32>,
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

    #[cold]
    fn add_outside(&mut self, index: u64, count: u32) {
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(count);
            return;
        }
        if index < self.offset {
            let grow = (self.offset - index) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = index;
        } else if index >= self.offset + self.counts.len() as u64 {
            self.counts.resize((index - self.offset + 1) as usize, 0);
        }
        let slot = &mut self.counts[(index - self.offset) as usize];
        *slot = slot.saturating_add(count);
    }

    fn merge(&mut self, other: &Buckets) {
        for (i, &count) in other.counts.iter().enumerate() {
            if count > 0 {
                self.add(other.offset + i as u64, count);
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
        let last_finite = f64::MAX.to_bits() >> SHIFT;
        for (side, buckets) in [("negative", &self.negative), ("positive", &self.positive)] {
            let end = buckets.offset.checked_add(buckets.counts.len() as u64);
            if end.is_none_or(|end| end > last_finite + 1) {
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
    /// within 0.4% relative error.
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

    /// Approximate heap bytes held.
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
        let mut rng = crate::simulate::Rng::new(11);
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
}
