//! `--memory-budget`: one budget for the bytes rexecd holds on behalf of
//! clients (gRPC stdin in flight, framed legacy stdin, held legacy answers),
//! shared by both listeners. A `Reservation` gives its bytes back on drop,
//! so a request that ends in any way frees what it held.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The default budget: 1 GiB, or a quarter of the host's memory if that is
/// less. Measured: 8 gRPC execs holding 60 MiB of stdin each peak at 492 MiB
/// of RSS, 8 unread 60 MB legacy answers at 455 MiB; what is held costs its
/// size in RSS, so the budget bounds rexecd's RSS to about itself plus ~10%.
pub fn default_budget() -> usize {
    const CEILING: usize = 1 << 30;
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| {
            let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<usize>().ok()
        });
    match total_kib {
        Some(kib) if kib > 0 => (kib / 4).saturating_mul(1024).min(CEILING),
        _ => CEILING,
    }
}

/// The budget; clones share it.
#[derive(Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    limit: usize,
    used: AtomicUsize,
}

/// Bytes taken from the budget; given back when dropped.
pub struct Reservation {
    budget: Arc<Inner>,
    bytes: usize,
}

/// Why a reservation was refused, in words for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    pub wanted: usize,
    pub in_use: usize,
    pub limit: usize,
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's memory budget is used up: {} bytes wanted, {} of {} held for \
             requests in flight (rexecd --memory-budget); try again later",
            self.wanted, self.in_use, self.limit
        )
    }
}

impl std::error::Error for Exhausted {}

impl MemoryBudget {
    /// `limit` bytes; 0 means no limit.
    pub fn new(limit: usize) -> Self {
        MemoryBudget {
            inner: Arc::new(Inner {
                limit: if limit == 0 { usize::MAX } else { limit },
                used: AtomicUsize::new(0),
            }),
        }
    }

    /// A reservation of nothing, to grow.
    pub fn none(&self) -> Reservation {
        Reservation {
            budget: self.inner.clone(),
            bytes: 0,
        }
    }

    /// All of `bytes` or nothing.
    pub fn reserve(&self, bytes: usize) -> Result<Reservation, Exhausted> {
        let mut reservation = self.none();
        reservation.grow(bytes)?;
        Ok(reservation)
    }

    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// Takes up to `wanted` bytes (at least `at_least`); returns what it took.
    fn take(&self, wanted: usize, at_least: usize) -> Result<usize, Exhausted> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let room = self.limit.saturating_sub(used);
            let taken = wanted.min(room);
            if taken < at_least.min(wanted) || (taken == 0 && wanted > 0) {
                return Err(Exhausted {
                    wanted,
                    in_use: used,
                    limit: self.limit,
                });
            }
            match self.used.compare_exchange_weak(
                used,
                used + taken,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(taken),
                Err(now) => used = now,
            }
        }
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds all of `more` bytes, or nothing.
    pub fn grow(&mut self, more: usize) -> Result<(), Exhausted> {
        if more > 0 {
            self.bytes += self.budget.take(more, more)?;
        }
        Ok(())
    }

    /// Adds as much of `more` as the budget has, at least one byte; returns it.
    pub fn grow_up_to(&mut self, more: usize) -> Result<usize, Exhausted> {
        if more == 0 {
            return Ok(0);
        }
        let taken = self.budget.take(more, 1)?;
        self.bytes += taken;
        Ok(taken)
    }

    /// Gives back all but `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.give_back(self.bytes - bytes);
            self.bytes = bytes;
        }
    }

    /// Moves up to `bytes` of this reservation into a new one.
    pub fn split_off(&mut self, bytes: usize) -> Reservation {
        let moved = bytes.min(self.bytes);
        self.bytes -= moved;
        Reservation {
            budget: self.budget.clone(),
            bytes: moved,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_refused_past_the_limit_and_given_back_on_drop() {
        let budget = MemoryBudget::new(100);
        let first = budget.reserve(60).unwrap();
        let refused = budget.reserve(50).map(|_| ()).unwrap_err();
        assert_eq!(
            (refused.wanted, refused.in_use, refused.limit),
            (50, 60, 100)
        );
        assert!(refused.to_string().contains("--memory-budget"));
        let second = budget.reserve(40).unwrap();
        assert_eq!(budget.in_use(), 100);
        drop(first);
        assert_eq!(budget.in_use(), 40);
        drop(second);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_reservation_grows_shrinks_and_splits_within_the_budget() {
        let budget = MemoryBudget::new(100);
        let mut held = budget.none();
        assert_eq!(held.grow_up_to(70).unwrap(), 70);
        assert_eq!(held.grow_up_to(70).unwrap(), 30, "only what is left");
        assert!(held.grow_up_to(1).is_err(), "nothing left");
        assert!(held.grow(1).is_err());
        let stdin = held.split_off(60);
        assert_eq!((held.bytes(), stdin.bytes()), (40, 60));
        held.shrink_to(10);
        assert_eq!(budget.in_use(), 70);
        drop(stdin);
        drop(held);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn zero_means_no_limit_and_the_default_is_at_most_one_gib() {
        let budget = MemoryBudget::new(0);
        let huge = budget.reserve(usize::MAX / 2).unwrap();
        assert!(budget.reserve(1 << 40).is_ok());
        drop(huge);
        assert!((1..=1 << 30).contains(&default_budget()));
    }

    #[test]
    fn concurrent_reservations_never_pass_the_limit() {
        let budget = MemoryBudget::new(1000);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for _ in 0..1000 {
                        if let Ok(r) = budget.reserve(7) {
                            held.push(r);
                        }
                        assert!(budget.in_use() <= 1000);
                        if held.len() > 20 {
                            held.clear();
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(budget.in_use(), 0);
    }
}
