//! A seeded pseudo-random generator (SplitMix64) for everything that must
//! be random yet reproducible: simulated traffic, the seeded bootstrap of
//! `gate`, the resampling that calibrates drift thresholds, retry jitter.
//! A leaf of the module graph: it uses nothing else of the crate.

/// SplitMix64: tiny, fast, and good enough for test traffic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
    pub fn weighted<'a>(&mut self, items: &[&'a str], weights: &[f64]) -> &'a str {
        let mut x = self.uniform() * weights.iter().sum::<f64>();
        for (item, w) in items.iter().zip(weights) {
            if x < *w {
                return item;
            }
            x -= w;
        }
        items[items.len() - 1]
    }
}
