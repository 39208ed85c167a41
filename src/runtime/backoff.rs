//! Capped exponential backoff with jitter.

use std::time::Duration;

/// 100 ms doubling to a 30 s cap, with up to 20% jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(30))
    }
}

impl Backoff {
    pub fn new(initial: Duration, cap: Duration) -> Self {
        Backoff { next: initial, cap }
    }

    /// The delay to wait now; each call doubles the next one up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.cap);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let jitter = base.mul_f64(f64::from(nanos % 200) / 1000.0);
        base + jitter
    }

    pub fn reset(&mut self, initial: Duration) {
        self.next = initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(100) && d[0] < Duration::from_millis(121));
        assert!(d[1] >= Duration::from_millis(200));
        assert!(d[5] >= Duration::from_secs(1) && d[5] <= Duration::from_millis(1200));
    }
}
