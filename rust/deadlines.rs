//! The worker's deadline queue.
//!
//! Almost every deadline is "now + one of a few fixed durations" (close grace, settle, write
//! timeout), so a FIFO per duration stays sorted by itself: push and pop are O(1) and never
//! compare paths. Anything else (a renamed file keeps its deadline) goes to a small heap.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

/// Ordered by time only: ties need no tie-break, and comparing payloads would cost.
struct Timed<T>(Instant, T);

impl<T> PartialEq for Timed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<T> Eq for Timed<T> {}
impl<T> PartialOrd for Timed<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Timed<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

/// A point in time in 8 bytes: nanoseconds since a [`Clock`]'s epoch. The file map keeps two
/// per file ever seen, and an `Option<Instant>` takes 16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick(u64);

impl Tick {
    pub const NONE: Tick = Tick(u64::MAX);
}

/// Converts between [`Instant`] and [`Tick`].
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new(epoch: Instant) -> Self {
        Clock { epoch }
    }

    /// `at` as a tick (times before the epoch are the epoch; never [`Tick::NONE`]).
    pub fn tick(&self, at: Instant) -> Tick {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        Tick(u64::try_from(nanos).unwrap_or(u64::MAX - 1).min(u64::MAX - 1))
    }

    pub fn instant(&self, t: Tick) -> Option<Instant> {
        (t != Tick::NONE).then(|| self.epoch + Duration::from_nanos(t.0))
    }
}

pub struct Deadlines<T> {
    fifos: Vec<(Duration, VecDeque<(Instant, T)>)>,
    heap: BinaryHeap<Reverse<Timed<T>>>,
}

impl<T> Deadlines<T> {
    /// `durations`: the fixed delays that get a FIFO each.
    pub fn new(durations: &[Duration]) -> Self {
        let mut fifos: Vec<(Duration, VecDeque<(Instant, T)>)> = Vec::new();
        for d in durations {
            if !fifos.iter().any(|(have, _)| have == d) {
                fifos.push((*d, VecDeque::new()));
            }
        }
        Deadlines {
            fifos,
            heap: BinaryHeap::new(),
        }
    }

    /// Queue `item` for `now + after`.
    pub fn push_after(&mut self, now: Instant, after: Duration, item: T) {
        let at = now + after;
        if let Some((_, fifo)) = self.fifos.iter_mut().find(|(d, _)| *d == after) {
            // `now` only moves forward, so this stays sorted; the check keeps it true anyway.
            if fifo.back().is_none_or(|(last, _)| *last <= at) {
                fifo.push_back((at, item));
                return;
            }
        }
        self.heap.push(Reverse(Timed(at, item)));
    }

    /// Queue `item` for an arbitrary time.
    pub fn push_at(&mut self, at: Instant, item: T) {
        self.heap.push(Reverse(Timed(at, item)));
    }

    /// The earliest queued time.
    pub fn next_at(&self) -> Option<Instant> {
        let fifo_min = self
            .fifos
            .iter()
            .filter_map(|(_, f)| f.front().map(|(at, _)| *at))
            .min();
        let heap_min = self.heap.peek().map(|Reverse(Timed(at, _))| *at);
        match (fifo_min, heap_min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Take the earliest item due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, T)> {
        let mut best: Option<(Instant, Option<usize>)> = None;
        for (i, (_, fifo)) in self.fifos.iter().enumerate() {
            if let Some((at, _)) = fifo.front() {
                if *at <= now && best.is_none_or(|(b, _)| *at < b) {
                    best = Some((*at, Some(i)));
                }
            }
        }
        if let Some(Reverse(Timed(at, _))) = self.heap.peek() {
            if *at <= now && best.is_none_or(|(b, _)| *at < b) {
                best = Some((*at, None));
            }
        }
        match best? {
            (_, Some(i)) => self.fifos[i].1.pop_front(),
            (_, None) => self.heap.pop().map(|Reverse(Timed(at, item))| (at, item)),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len() + self.fifos.iter().map(|(_, f)| f.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_time_order_across_fifos_and_heap() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = Deadlines::new(&[ms(100), ms(200)]);
        q.push_after(t0, ms(200), "settle-a");
        q.push_after(t0, ms(100), "grace-a");
        q.push_at(t0 + ms(150), "renamed");
        q.push_after(t0 + ms(10), ms(100), "grace-b");
        q.push_after(t0, ms(50), "other-duration");
        assert_eq!(q.len(), 5);
        assert_eq!(q.next_at(), Some(t0 + ms(50)));
        assert!(q.pop_due(t0 + ms(49)).is_none());
        let order: Vec<&str> = std::iter::from_fn(|| q.pop_due(t0 + ms(1000)).map(|(_, s)| s)).collect();
        assert_eq!(
            order,
            ["other-duration", "grace-a", "grace-b", "renamed", "settle-a"]
        );
        assert_eq!(q.next_at(), None);
    }

    #[test]
    fn ticks_round_trip_instants_to_the_nanosecond() {
        let t0 = Instant::now();
        let clock = Clock::new(t0);
        let at = t0 + Duration::new(86_400 * 400, 123_456_789);
        assert_eq!(clock.instant(clock.tick(at)), Some(at));
        assert_eq!(
            clock.tick(t0 - Duration::from_secs(1).min(t0 - t0)),
            clock.tick(t0)
        );
        assert!(clock.tick(at) > clock.tick(t0));
        assert_eq!(clock.instant(Tick::NONE), None);
    }

    #[test]
    fn a_clock_step_back_falls_back_to_the_heap() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = Deadlines::new(&[ms(100)]);
        q.push_after(t0 + ms(50), ms(100), "late");
        q.push_after(t0, ms(100), "early");
        let order: Vec<&str> = std::iter::from_fn(|| q.pop_due(t0 + ms(1000)).map(|(_, s)| s)).collect();
        assert_eq!(order, ["early", "late"]);
    }
}
