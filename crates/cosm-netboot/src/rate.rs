//! Token buckets per key, for rate limits (DHCP requests per MAC and per relay, the
//! appliance's enrolments). Pure: the caller passes the time.

use std::collections::HashMap;

/// Token buckets per key: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: u32,
    burst: f64,
    buckets: HashMap<K, (f64, u64)>,
}

impl<K: std::hash::Hash + Eq + Copy> RateLimiter<K> {
    /// `rate` per second with bursts of twice that; 0 means unlimited.
    pub fn new(rate: u32) -> Self {
        Self::with_burst(rate, rate.saturating_mul(2))
    }

    pub fn with_burst(rate: u32, burst: u32) -> Self {
        RateLimiter {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Takes a token for `key` at `now_ms`; false when the key is over its rate.
    pub fn allow(&mut self, key: K, now_ms: u64) -> bool {
        self.take(key, now_ms).is_ok()
    }

    /// Takes a token for `key` at `now_ms`, or says in how many milliseconds one is back.
    pub fn take(&mut self, key: K, now_ms: u64) -> Result<(), u64> {
        if self.rate == 0 {
            return Ok(());
        }
        let cap = self.burst;
        let rate = f64::from(self.rate);
        let (tokens, last) = self.buckets.entry(key).or_insert((cap, now_ms));
        *tokens = (*tokens + (now_ms.saturating_sub(*last)) as f64 / 1000.0 * rate).min(cap);
        *last = now_ms;
        if self.buckets.len() > 100_000 {
            // Forget idle keys so a flood of random MACs cannot grow the map without bound.
            self.buckets
                .retain(|_, (t, l)| *t < cap && now_ms.saturating_sub(*l) < 10_000);
        }
        let (tokens, _) = self.buckets.entry(key).or_insert((cap, now_ms));
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / rate * 1000.0).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chosen_burst_and_the_wait_for_the_next_token() {
        let mut r = RateLimiter::with_burst(2, 3);
        assert_eq!((0..10).filter(|_| r.allow((), 0)).count(), 3);
        assert_eq!(r.take((), 0), Err(500), "one token back in 500 ms at 2/s");
        assert_eq!(r.take((), 500), Ok(()));
    }
}
