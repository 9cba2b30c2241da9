//! One source partition's stretches as the merger holds them.
//!
//! A source publishes what it read of a partition as consecutive stretches
//! (`[start, end)` in the partition's offsets, with the partition's clock
//! at `end`), commits the end of each once the broker has it, and says so
//! ([`Timeline::commit`]). A stretch is *provisional* until a commit covers
//! it, then *final*: the timeline hands it over, in offset order, and
//! forgets it. Whoever reads the partition next (its new owner after a
//! rebalance, the same instance after a crash) starts at the committed
//! offset, so only provisional stretches are ever published again: a
//! stretch offered at `start` replaces every provisional one from `start`
//! on. Each offset is therefore handed over exactly once, however often
//! the partition changed hands or its readers crashed
//! (`a_partition_read_by_crashing_readers_is_handed_over_once`).
//!
//! A stretch that starts below the committed offset is stale (a reader
//! that lost the partition and does not know it yet) and is refused. A gap
//! (a stretch starting past the end of the ones held) or an overlap (one
//! starting inside a provisional stretch) breaks the sources' contract; the
//! timeline reports it and keeps the newer stretch, so the merger can log
//! and count it.
//!
//! Each stretch handed over carries the partition's clock before it: the
//! largest clock of the stretches before it. A new owner starts a partition
//! without its clock, and the merger corrects its lateness with this one
//! (docs/ARCHITECTURE.md).

/// A published stretch of a partition.
#[derive(Debug, Clone, PartialEq)]
pub struct Stretch<T> {
    /// The first offset it covers.
    pub start: i64,
    /// The offset after the last one it covers.
    pub end: i64,
    /// The partition's clock (the largest event time read) at `end`, as
    /// its reader knew it (`None`: no event yet).
    pub clock_ms: Option<i64>,
    /// What it carries (partial window states, for the merger).
    pub payload: T,
}

/// A final stretch, handed over in offset order.
#[derive(Debug, Clone, PartialEq)]
pub struct Released<T> {
    pub stretch: Stretch<T>,
    /// The partition's clock before the stretch: the largest clock of the
    /// stretches handed over before it.
    pub clock_before_ms: Option<i64>,
}

/// What became of an offered stretch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Held as provisional, after the ones held (or as the first).
    Held,
    /// Held, replacing this many provisional stretches published before
    /// from the same offset on.
    Replaced(usize),
    /// Held, but the sources broke their contract: it starts past the
    /// end of the stretches held (`missing` offsets never published) or
    /// inside a provisional stretch (replaced with the others after it).
    Gap {
        missing: i64,
    },
    Overlap {
        replaced: usize,
    },
    /// Refused: it starts below the committed offset.
    Stale,
}

/// The stretches of one partition the merger holds (see the module doc).
#[derive(Debug, Clone)]
pub struct Timeline<T> {
    /// The offset the partition's readers committed (every stretch ending
    /// there or before is final); `None` before the first commit.
    committed: Option<i64>,
    /// The largest clock of the stretches handed over.
    clock_ms: Option<i64>,
    /// Provisional stretches, consecutive, in offset order.
    provisional: Vec<Stretch<T>>,
}

impl<T> Default for Timeline<T> {
    fn default() -> Self {
        Timeline { committed: None, clock_ms: None, provisional: Vec::new() }
    }
}

impl<T> Timeline<T> {
    /// The committed offset, if a commit was seen.
    pub fn committed(&self) -> Option<i64> {
        self.committed
    }

    /// The largest clock of the stretches handed over.
    pub fn clock_ms(&self) -> Option<i64> {
        self.clock_ms
    }

    /// Provisional stretches held.
    pub fn provisional(&self) -> &[Stretch<T>] {
        &self.provisional
    }

    /// Offers a published stretch (see the module doc for the rules).
    pub fn offer(&mut self, stretch: Stretch<T>) -> Offered {
        if self.committed.is_some_and(|committed| stretch.start < committed) || stretch.end < stretch.start {
            return Offered::Stale;
        }
        let from = self.provisional.partition_point(|held| held.start < stretch.start);
        let inside = from > 0 && self.provisional[from - 1].end > stretch.start;
        let keep = if inside { from - 1 } else { from };
        let replaced = self.provisional.len() - keep;
        // Where the stretch should start: after the provisional ones it
        // follows, else at the commit (anywhere, before the first commit).
        let expected = if keep > 0 { Some(self.provisional[keep - 1].end) } else { self.committed };
        let start = stretch.start;
        self.provisional.truncate(keep);
        self.provisional.push(stretch);
        match expected {
            _ if inside => Offered::Overlap { replaced },
            Some(expected) if start > expected => Offered::Gap { missing: start - expected },
            _ if replaced > 0 => Offered::Replaced(replaced),
            _ => Offered::Held,
        }
    }

    /// A merger that read its partials partition again from a mark
    /// (docs/ARCHITECTURE.md, "A merger's recovery") has reached where the
    /// mark was taken: the commit and the clock the old merger knew, which
    /// records read again may not have said (their commit record came
    /// before the re-read), hold from here on. Neither goes back.
    pub fn raise(&mut self, committed: Option<i64>, clock_ms: Option<i64>) {
        self.committed = self.committed.max(committed);
        self.clock_ms = self.clock_ms.max(clock_ms);
    }

    /// The partition's readers committed `next`: the provisional stretches
    /// ending there or before are final and handed over, in offset order.
    /// A commit never goes back; the same commit again hands over the
    /// empty stretches published at it since.
    pub fn commit(&mut self, next: i64) -> Vec<Released<T>> {
        // The same commit again releases what was published at it since
        // (an empty stretch: a partition with nothing new, idle or not).
        if self.committed.is_some_and(|committed| next < committed) {
            return Vec::new();
        }
        self.committed = Some(next);
        let done = self.provisional.partition_point(|held| held.end <= next);
        // A stretch across the commit (sources commit stretch ends, so a
        // broken contract) stays provisional until a commit covers it.
        let mut released = Vec::with_capacity(done);
        for stretch in self.provisional.drain(..done) {
            let clock_before_ms = self.clock_ms;
            self.clock_ms = self.clock_ms.max(stretch.clock_ms);
            released.push(Released { stretch, clock_before_ms });
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn stretch(start: i64, end: i64) -> Stretch<Vec<i64>> {
        Stretch { start, end, clock_ms: Some(end * 10), payload: (start..end).collect() }
    }

    #[test]
    fn stretches_are_handed_over_once_committed_in_offset_order() {
        let mut timeline = Timeline::default();
        assert_eq!(timeline.offer(stretch(0, 5)), Offered::Held);
        assert_eq!(timeline.offer(stretch(5, 9)), Offered::Held);
        let released = timeline.commit(5);
        assert_eq!(released.len(), 1);
        assert_eq!((released[0].stretch.start, released[0].clock_before_ms), (0, None));
        let released = timeline.commit(9);
        assert_eq!((released[0].stretch.start, released[0].clock_before_ms), (5, Some(50)));
        assert_eq!(timeline.clock_ms(), Some(90));
        assert!(timeline.commit(7).is_empty(), "a commit never goes back");
    }

    #[test]
    fn a_stretch_published_again_replaces_the_provisional_ones_from_its_start() {
        let mut timeline = Timeline::default();
        timeline.offer(stretch(0, 5));
        timeline.commit(5);
        timeline.offer(stretch(5, 8));
        timeline.offer(stretch(8, 12));
        // The reader crashed after committing 5: its next reader starts there.
        assert_eq!(timeline.offer(stretch(5, 10)), Offered::Replaced(2));
        let released = timeline.commit(10);
        let offsets: Vec<i64> = released.iter().flat_map(|r| r.stretch.payload.clone()).collect();
        assert_eq!(offsets, (5..10).collect::<Vec<_>>());
    }

    #[test]
    fn stale_gapped_and_overlapping_stretches_are_told_apart() {
        let mut timeline = Timeline::default();
        timeline.offer(stretch(0, 5));
        timeline.commit(5);
        assert_eq!(timeline.offer(stretch(3, 7)), Offered::Stale);
        assert_eq!(timeline.offer(stretch(6, 7)), Offered::Gap { missing: 1 });
        timeline.offer(stretch(7, 12));
        assert_eq!(timeline.offer(stretch(9, 14)), Offered::Overlap { replaced: 1 });
        assert_eq!(timeline.provisional().iter().map(|s| s.start).collect::<Vec<_>>(), [6, 9]);
    }

    /// Readers read a partition of `n` offsets in stretches of random
    /// lengths, commit some stretch ends (the merger may see a commit or
    /// not before the reader dies) and crash at random moments; each new
    /// reader starts at the offset last committed. Every offset is handed
    /// over exactly once, in order.
    #[test]
    fn a_partition_read_by_crashing_readers_is_handed_over_once() {
        for seed in 0..200u64 {
            let mut rng = Rng::new(seed);
            let n = 40 + (rng.next_u64() % 200) as i64;
            let mut timeline: Timeline<Vec<i64>> = Timeline::default();
            let mut handed: Vec<i64> = Vec::new();
            // What the group committed (where a new reader starts).
            let mut group_committed = 0;
            let mut readers = 0;
            while group_committed < n {
                readers += 1;
                assert!(readers < 10_000, "seed {seed}: no progress");
                // A new reader says where it starts, then reads on.
                handed.extend(timeline.commit(group_committed).into_iter().flat_map(|r| r.stretch.payload));
                let mut position = group_committed;
                loop {
                    let end = (position + 1 + (rng.next_u64() % 12) as i64).min(n);
                    let offered = timeline.offer(stretch(position, end));
                    assert!(
                        matches!(offered, Offered::Held | Offered::Replaced(_)),
                        "seed {seed}: {offered:?} at {position}"
                    );
                    position = end;
                    // The broker has it; the reader commits it (or dies first).
                    if rng.next_u64().is_multiple_of(3) {
                        group_committed = position;
                        if rng.next_u64().is_multiple_of(2) {
                            handed.extend(timeline.commit(position).into_iter().flat_map(|r| r.stretch.payload));
                        }
                    }
                    if position == n || rng.next_u64().is_multiple_of(5) {
                        break;
                    }
                }
            }
            handed.extend(timeline.commit(n).into_iter().flat_map(|r| r.stretch.payload));
            assert_eq!(handed, (0..n).collect::<Vec<_>>(), "seed {seed}");
        }
    }
}
