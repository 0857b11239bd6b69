//! A warning that a flood must not turn into a flood of log lines: the first
//! few events of each interval are logged, the rest counted into the next line.

use std::time::{Duration, Instant};

pub struct RateLimited {
    burst: u32,
    window_start: Option<Instant>,
    logged: u32,
    unlogged: u64,
}

impl RateLimited {
    pub const INTERVAL: Duration = Duration::from_secs(10);

    /// Up to `burst` lines per interval.
    pub fn new(burst: u32) -> Self {
        RateLimited {
            burst: burst.max(1),
            window_start: None,
            logged: 0,
            unlogged: 0,
        }
    }

    /// One more event: `Some(n)` when it is to be logged, n counting it and
    /// those left unlogged since the last line.
    pub fn hit(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= Self::INTERVAL)
        {
            self.window_start = Some(now);
            self.logged = 0;
        }
        self.unlogged += 1;
        if self.logged >= self.burst {
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_a_burst_then_counts() {
        let mut limiter = RateLimited::new(2);
        assert_eq!(limiter.hit(), Some(1));
        assert_eq!(limiter.hit(), Some(1));
        for _ in 0..5 {
            assert_eq!(limiter.hit(), None);
        }
        limiter.window_start = Some(Instant::now() - RateLimited::INTERVAL);
        assert_eq!(limiter.hit(), Some(6));
    }
}
