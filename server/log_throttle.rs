//! A warning any peer can trigger at will (HTTP sent to the legacy port) is
//! logged at most once an interval, with a count of the ones suppressed, so
//! a flood cannot fill the log or cost a write per connection.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LogThrottle {
    interval: Duration,
    state: Mutex<State>,
}

struct State {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    pub const fn new(interval: Duration) -> Self {
        LogThrottle {
            interval,
            state: Mutex::new(State {
                last_logged: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)`: log now, saying `n` were suppressed since the last line;
    /// `None`: stay quiet (counted).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.last_logged {
            Some(last) if now.duration_since(last) < self.interval => {
                state.suppressed += 1;
                None
            }
            _ => {
                state.last_logged = Some(now);
                Some(std::mem::take(&mut state.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_the_rest() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.admit_at(start), Some(0));
        for second in 1..10 {
            assert_eq!(throttle.admit_at(start + Duration::from_secs(second)), None);
        }
        assert_eq!(throttle.admit_at(start + Duration::from_secs(10)), Some(9));
        assert_eq!(throttle.admit_at(start + Duration::from_secs(11)), None);
        assert_eq!(throttle.admit_at(start + Duration::from_secs(30)), Some(1));
    }
}
