//! Calibration from the reference: the spread of each drift metric across
//! chunks drawn from the baseline, per chunk (window) size. Stored in the
//! baseline profile (docs/REFERENCE.md) and used for the metrics whose null law has no
//! closed form (Wasserstein); for the others it documents how the analytic
//! thresholds of [`super::thresholds`] compare with the reference's own
//! spread.
//!
//! Chunks are resampled from the reference distribution (the sketch for
//! numeric features, the category shares for categorical ones) rather than
//! cut from the training file: that gives as many chunks as wanted of every
//! size, including sizes larger than a training set divided into dozens, and
//! works from the profile alone. The resampling is seeded, so a profile is
//! reproducible.

use std::collections::BTreeMap;

use crate::baseline::ChunkSpread;
use crate::sketch::QuantileSketch;

/// Chunks resampled per chunk size.
pub const CHUNKS_PER_SIZE: usize = 128;
/// Chunk sizes (powers of two) the spreads are recorded at.
pub const CHUNK_SIZES: [u64; 9] = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096];
const SEED: u64 = 0x5EED_CA11;

/// Metric → spread per chunk size.
pub type Calibration = BTreeMap<String, Vec<ChunkSpread>>;

fn spread(size: u64, values: &[f64]) -> ChunkSpread {
    let moments = |xs: &mut dyn Iterator<Item = f64>| {
        let xs: Vec<f64> = xs.collect();
        let n = xs.len().max(1) as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let variance = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        (mean, variance.sqrt())
    };
    let (mean, std) = moments(&mut values.iter().copied());
    let (log_mean, log_std) = moments(&mut values.iter().filter(|v| **v > 0.0).map(|v| v.ln()));
    ChunkSpread { size, mean, std, log_mean, log_std }
}

/// Draws `size` indices from cumulative counts into `counts`.
fn draw(rng: &mut crate::rng::Rng, cumulative: &[u64], size: u64, counts: &mut [u64]) {
    counts.iter_mut().for_each(|c| *c = 0);
    let total = *cumulative.last().unwrap_or(&0);
    if total == 0 {
        return;
    }
    for _ in 0..size {
        let x = rng.next_u64() % total;
        counts[cumulative.partition_point(|&c| c <= x)] += 1;
    }
}

fn cumulative(counts: impl Iterator<Item = u64>) -> Vec<u64> {
    counts
        .scan(0u64, |running, c| {
            *running += c;
            Some(*running)
        })
        .collect()
}

/// `psi`, `ks` and `wasserstein` (÷ std) of chunks resampled from a numeric
/// reference, against that reference. Empty when the reference is constant.
pub fn calibrate_numeric(sketch: &QuantileSketch, std: f64, edges: &[f64], proportions: &[f64]) -> Calibration {
    let points = sketch.weighted_points();
    if points.len() < 2 || std <= 0.0 || proportions.len() != edges.len() + 1 {
        return Calibration::new();
    }
    let cumulative = cumulative(points.iter().map(|p| p.1));
    let total = *cumulative.last().unwrap() as f64;
    let reference_cdf: Vec<f64> = cumulative.iter().map(|&c| c as f64 / total).collect();
    let gaps: Vec<f64> = points.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let bin_of: Vec<usize> = points.iter().map(|p| edges.partition_point(|&e| e < p.0)).collect();
    let mut rng = crate::rng::Rng::new(SEED);
    let mut counts = vec![0u64; points.len()];
    let mut bins = vec![0u64; proportions.len()];
    let (mut psi, mut ks, mut wasserstein) = (Vec::new(), Vec::new(), Vec::new());
    let mut calibration = Calibration::new();
    for size in CHUNK_SIZES {
        psi.clear();
        ks.clear();
        wasserstein.clear();
        for _ in 0..CHUNKS_PER_SIZE {
            draw(&mut rng, &cumulative, size, &mut counts);
            bins.iter_mut().for_each(|b| *b = 0);
            let (mut seen, mut d, mut w) = (0u64, 0.0f64, 0.0);
            for (i, &count) in counts.iter().enumerate() {
                bins[bin_of[i]] += count;
                seen += count;
                let gap = (reference_cdf[i] - seen as f64 / size as f64).abs();
                d = d.max(gap);
                if let Some(width) = gaps.get(i) {
                    w += gap * width;
                }
            }
            psi.push(crate::stats::psi(proportions, &bins, crate::stats::PSI_EPSILON));
            ks.push(d);
            wasserstein.push(w / std);
        }
        for (name, values) in [("psi", &psi), ("ks", &ks), ("wasserstein", &wasserstein)] {
            calibration.entry(name.to_string()).or_default().push(spread(size, values));
        }
    }
    calibration
}

/// `psi` and `chi2` of chunks resampled from a categorical reference
/// (categories plus `other`), against that reference.
pub fn calibrate_categorical(proportions: &[f64]) -> Calibration {
    const RESOLUTION: f64 = 1e9;
    let cumulative = cumulative(proportions.iter().map(|p| (p * RESOLUTION).round() as u64));
    if proportions.iter().filter(|p| **p > 0.0).count() < 2 {
        return Calibration::new();
    }
    let mut rng = crate::rng::Rng::new(SEED);
    let mut counts = vec![0u64; proportions.len()];
    let (mut psi, mut chi2) = (Vec::new(), Vec::new());
    let mut calibration = Calibration::new();
    for size in CHUNK_SIZES {
        psi.clear();
        chi2.clear();
        for _ in 0..CHUNKS_PER_SIZE {
            draw(&mut rng, &cumulative, size, &mut counts);
            psi.push(crate::stats::psi(proportions, &counts, crate::stats::PSI_EPSILON));
            chi2.push(crate::stats::chi_square(proportions, &counts).0);
        }
        for (name, values) in [("psi", &psi), ("chi2", &chi2)] {
            calibration.entry(name.to_string()).or_default().push(spread(size, values));
        }
    }
    calibration
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_spreads_shrink_with_chunk_size_like_the_analytic_laws() {
        let mut rng = crate::rng::Rng::new(5);
        let mut sketch = QuantileSketch::default();
        for _ in 0..20_000 {
            sketch.add(rng.normal() + 10.0);
        }
        let edges: Vec<f64> = (1..10).map(|i| sketch.quantile(i as f64 / 10.0).unwrap()).collect();
        let mut proportions = [0.0; 10];
        for (value, count) in sketch.weighted_points() {
            proportions[edges.partition_point(|&e| e < value)] += count as f64 / 20_000.0;
        }
        let calibration = calibrate_numeric(&sketch, 1.0, &edges, &proportions);
        let psi = &calibration["psi"];
        assert_eq!(psi.len(), CHUNK_SIZES.len());
        // Mean PSI of a healthy chunk of n over k bins is about (k − 1)/n.
        let at_1024 = psi.iter().find(|s| s.size == 1024).unwrap();
        assert!((at_1024.mean * 1024.0 / 9.0 - 1.0).abs() < 0.25, "{at_1024:?}");
        // KS: mean D·√n ≈ 0.87 (the Kolmogorov law's mean).
        let ks = calibration["ks"].iter().find(|s| s.size == 1024).unwrap();
        assert!((ks.mean * 32.0 - 0.87).abs() < 0.1, "{ks:?}");
        let w = &calibration["wasserstein"];
        assert!(w[0].mean > 3.0 * w[6].mean, "{w:?}");
        let categorical = calibrate_categorical(&[0.5, 0.3, 0.2, 0.0]);
        let chi2 = categorical["chi2"].iter().find(|s| s.size == 4096).unwrap();
        // χ²(2) has mean 2.
        assert!((chi2.mean - 2.0).abs() < 0.5, "{chi2:?}");
    }
}
