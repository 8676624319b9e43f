//! When to send a Router Advertisement: periodically (RFC 4861 §6.2.4) and in answer to
//! solicitations (§6.2.6), with rate limits on the answers. Pure: the caller passes the
//! time (milliseconds on a monotonic clock) and the random numbers.
//!
//! Answers: a solicitation from a link-local address gets its own unicast advertisement
//! (§6.2.6 allows it; RFC 7772 §5.1 recommends it) after the random delay of
//! 0..=`MAX_RA_DELAY_TIME` that §6.2.6 requires in all cases, so a machine's wait does
//! not depend on when the last multicast one went out. A solicitation from the unspecified
//! address (or any other source, which may not be on this link) is answered by moving the
//! next multicast advertisement earlier, never closer than `MIN_DELAY_BETWEEN_RAS` to the
//! previous one. Repeated solicitations from a source with an answer already pending share
//! it; beyond that, each source and the segment as a whole have token buckets, because any
//! host on the segment can send solicitations as fast as it likes.

use super::packet::Solicitation;
use crate::rate::RateLimiter;
use cosm_wire::MacAddr;
use std::net::Ipv6Addr;

/// RFC 4861 §10: the most an answer to a solicitation may be delayed.
pub const MAX_RA_DELAY_TIME_MS: u64 = 500;
/// RFC 4861 §10: multicast advertisements are never closer together than this.
pub const MIN_DELAY_BETWEEN_RAS_MS: u64 = 3_000;
/// Unicast answers to one source: per second, and the burst.
pub const PER_SOURCE_RATE: u32 = 1;
pub const PER_SOURCE_BURST: u32 = 3;
/// Unicast answers on the whole segment: per second, and the burst (a rack powering on).
pub const SEGMENT_RATE: u32 = 20;
pub const SEGMENT_BURST: u32 = 100;
/// At most this many unicast answers wait for their delay at once.
pub const MAX_PENDING: usize = 128;

/// The interval between unsolicited advertisements: a random time in
/// `min_interval_ms..=max_interval_ms` (RFC 4861 §6.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub min_interval_ms: u64,
    pub max_interval_ms: u64,
}

impl Timing {
    /// The shortest RFC 4861 §6.2.1 allows (MaxRtrAdvInterval 4 s, MinRtrAdvInterval 3 s):
    /// a provisioning segment has few hosts and many boots, and an advertisement is 24
    /// bytes, so the traffic is nothing, while a firmware that missed the answer to its
    /// solicitation waits at most 4 s.
    pub const PROVISIONING: Timing = Timing {
        min_interval_ms: 3_000,
        max_interval_ms: 4_000,
    };

    /// RFC 4861 §6.2.1: MaxRtrAdvInterval 4..=1800 s; MinRtrAdvInterval at least 3 s and
    /// at most 0.75 × MaxRtrAdvInterval.
    pub fn check(&self) -> Result<(), String> {
        if !(4_000..=1_800_000).contains(&self.max_interval_ms) {
            return Err(format!(
                "the longest interval must be 4..=1800 s, not {} ms",
                self.max_interval_ms
            ));
        }
        if self.min_interval_ms < 3_000 || self.min_interval_ms * 4 > self.max_interval_ms * 3 {
            return Err(format!(
                "the shortest interval must be at least 3 s and at most 3/4 of the longest ({} ms), not {} ms",
                self.max_interval_ms, self.min_interval_ms
            ));
        }
        Ok(())
    }

    /// "every 3–4 s", for the log.
    pub fn describe(&self) -> String {
        let secs = |ms: u64| {
            if ms.is_multiple_of(1000) {
                format!("{}", ms / 1000)
            } else {
                format!("{:.1}", ms as f64 / 1000.0)
            }
        };
        format!(
            "every {}–{} s",
            secs(self.min_interval_ms),
            secs(self.max_interval_ms)
        )
    }

    fn pick(&self, random: u64) -> u64 {
        self.min_interval_ms + random % (self.max_interval_ms - self.min_interval_ms + 1)
    }
}

/// Where an advertisement goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// ff02::1, all nodes on the link.
    AllNodes,
    /// One host's link-local address.
    Unicast(Ipv6Addr),
}

/// An advertisement to send now, and how many solicitations it answers (0: periodic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub to: Destination,
    pub solicitations: u32,
    /// A unicast answer's host, by the link-layer address its solicitation carried.
    pub mac: Option<MacAddr>,
}

/// What became of a solicitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A unicast advertisement to its source at this time.
    Unicast { at_ms: u64 },
    /// The next multicast advertisement, at this time, answers it.
    Multicast { at_ms: u64 },
    /// An answer to the same source (or a multicast one) was already waiting.
    Shared,
    /// Over a rate limit: not answered (the next periodic advertisement will reach it).
    RateLimited,
}

/// The sending schedule of one interface.
#[derive(Debug)]
pub struct Scheduler {
    timing: Timing,
    next_multicast_ms: u64,
    /// Solicitations the next multicast advertisement answers.
    multicast_answers: u32,
    last_multicast_ms: Option<u64>,
    /// Unicast answers waiting for their delay, unordered.
    unicast: Vec<Pending>,
    per_source: RateLimiter<Ipv6Addr>,
    segment: RateLimiter<()>,
}

/// A unicast answer waiting for its delay.
#[derive(Debug)]
struct Pending {
    due_ms: u64,
    to: Ipv6Addr,
    solicitations: u32,
    mac: Option<MacAddr>,
}

fn is_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

impl Scheduler {
    /// The first advertisement is due at once.
    pub fn new(timing: Timing, now_ms: u64) -> Scheduler {
        Scheduler {
            timing,
            next_multicast_ms: now_ms,
            multicast_answers: 0,
            last_multicast_ms: None,
            unicast: Vec::new(),
            per_source: RateLimiter::with_burst(PER_SOURCE_RATE, PER_SOURCE_BURST),
            segment: RateLimiter::with_burst(SEGMENT_RATE, SEGMENT_BURST),
        }
    }

    /// Schedules the answer to a valid solicitation; `random` picks its delay.
    pub fn solicited(&mut self, s: &Solicitation, now_ms: u64, random: u64) -> Answer {
        let delay = random % (MAX_RA_DELAY_TIME_MS + 1);
        match s.source.filter(is_link_local) {
            Some(src) => {
                if let Some(pending) = self.unicast.iter_mut().find(|u| u.to == src) {
                    pending.solicitations += 1;
                    pending.mac = pending.mac.or(s.source_mac);
                    return Answer::Shared;
                }
                if self.unicast.len() >= MAX_PENDING
                    || !self.per_source.allow(src, now_ms)
                    || !self.segment.allow((), now_ms)
                {
                    return Answer::RateLimited;
                }
                let at_ms = now_ms + delay;
                self.unicast.push(Pending {
                    due_ms: at_ms,
                    to: src,
                    solicitations: 1,
                    mac: s.source_mac,
                });
                Answer::Unicast { at_ms }
            }
            None => {
                let shared = self.multicast_answers > 0;
                self.multicast_answers += 1;
                if shared {
                    return Answer::Shared;
                }
                let mut at_ms = now_ms + delay;
                if let Some(last) = self.last_multicast_ms {
                    if now_ms < last + MIN_DELAY_BETWEEN_RAS_MS {
                        at_ms = last + MIN_DELAY_BETWEEN_RAS_MS + delay;
                    }
                }
                self.next_multicast_ms = self.next_multicast_ms.min(at_ms);
                Answer::Multicast {
                    at_ms: self.next_multicast_ms,
                }
            }
        }
    }

    /// When the next advertisement is due.
    pub fn next_due_ms(&self) -> u64 {
        self.unicast
            .iter()
            .map(|u| u.due_ms)
            .fold(self.next_multicast_ms, u64::min)
    }

    /// The advertisements due at `now_ms`, taken off the schedule; a multicast one
    /// schedules the next at a random interval (`random`) from now.
    pub fn take_due(&mut self, now_ms: u64, random: u64) -> Vec<Due> {
        let mut out = Vec::new();
        self.unicast.retain(|p| {
            if p.due_ms <= now_ms {
                out.push(Due {
                    to: Destination::Unicast(p.to),
                    solicitations: p.solicitations,
                    mac: p.mac,
                });
                false
            } else {
                true
            }
        });
        if self.next_multicast_ms <= now_ms {
            out.push(Due {
                to: Destination::AllNodes,
                solicitations: std::mem::take(&mut self.multicast_answers),
                mac: None,
            });
            self.last_multicast_ms = Some(now_ms);
            self.next_multicast_ms = now_ms + self.timing.pick(random);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn from(addr: &str) -> Solicitation {
        Solicitation {
            source: Some(addr.parse().unwrap()),
            source_mac: None,
        }
    }

    const UNSPECIFIED: Solicitation = Solicitation {
        source: None,
        source_mac: None,
    };

    #[test]
    fn the_provisioning_timing_is_the_shortest_rfc_4861_allows() {
        assert_eq!(Timing::PROVISIONING.check(), Ok(()));
        assert_eq!(Timing::PROVISIONING.describe(), "every 3–4 s");
        for (min, max) in [
            (2_999, 4_000),
            (3_000, 3_999),
            (3_001, 4_000),
            (3_000, 1_800_001),
        ] {
            let t = Timing {
                min_interval_ms: min,
                max_interval_ms: max,
            };
            assert!(t.check().is_err(), "{min}..{max} accepted");
        }
    }

    #[test]
    fn periodic_advertisements_start_at_once_then_every_three_to_four_seconds() {
        let mut s = Scheduler::new(Timing::PROVISIONING, 1_000);
        assert_eq!(s.next_due_ms(), 1_000);
        assert!(s.take_due(999, 0).is_empty());
        let due = s.take_due(1_000, 0);
        assert_eq!(
            due,
            vec![Due {
                to: Destination::AllNodes,
                solicitations: 0,
                mac: None,
            }]
        );
        assert_eq!(s.next_due_ms(), 4_000, "random 0 → the shortest interval");
        assert_eq!(s.take_due(4_000, 1_000).len(), 1);
        assert_eq!(s.next_due_ms(), 8_000, "random 1000 → the longest");
        assert_eq!(s.take_due(8_000, 1_001).len(), 1);
        assert_eq!(
            s.next_due_ms(),
            11_000,
            "the random number wraps into the range"
        );
    }

    #[test]
    fn a_link_local_solicitation_gets_a_unicast_answer_within_half_a_second() {
        let mut s = Scheduler::new(Timing::PROVISIONING, 0);
        s.take_due(0, 0);
        let a = s.solicited(&from("fe80::1"), 100, 250);
        assert_eq!(a, Answer::Unicast { at_ms: 350 });
        assert_eq!(s.next_due_ms(), 350);
        // Its retransmission before the answer left shares it, and the answer is known by
        // the link-layer address the solicitations carried.
        let mac = MacAddr::new([0x52, 0x54, 0, 0xc0, 0x53, 1]);
        let with_mac = Solicitation {
            source_mac: Some(mac),
            ..from("fe80::1")
        };
        assert_eq!(s.solicited(&with_mac, 200, 0), Answer::Shared);
        assert!(s.take_due(349, 0).is_empty());
        assert_eq!(
            s.take_due(350, 0),
            vec![Due {
                to: Destination::Unicast("fe80::1".parse().unwrap()),
                solicitations: 2,
                mac: Some(mac),
            }]
        );
        // The delay never exceeds MAX_RA_DELAY_TIME.
        match s.solicited(&from("fe80::2"), 1_000, u64::MAX) {
            Answer::Unicast { at_ms } => assert!(at_ms <= 1_000 + MAX_RA_DELAY_TIME_MS),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_solicitation_without_a_link_local_source_moves_the_multicast_one_earlier() {
        let mut s = Scheduler::new(Timing::PROVISIONING, 0);
        s.take_due(0, 500); // next periodic at 3500
                            // Within MIN_DELAY_BETWEEN_RAS of the last multicast: at 3000 + delay.
        assert_eq!(
            s.solicited(&UNSPECIFIED, 1_000, 100),
            Answer::Multicast { at_ms: 3_100 }
        );
        assert_eq!(s.solicited(&UNSPECIFIED, 1_200, 0), Answer::Shared);
        // A global source is not answered by unicast either: it may not be on this link.
        assert_eq!(s.solicited(&from("2001:db8::5"), 1_300, 0), Answer::Shared);
        assert_eq!(
            s.take_due(3_100, 0),
            vec![Due {
                to: Destination::AllNodes,
                solicitations: 3,
                mac: None,
            }]
        );
        // Long after the last multicast: just the delay.
        assert_eq!(s.next_due_ms(), 6_100);
        assert_eq!(
            s.solicited(&UNSPECIFIED, 6_050, 20),
            Answer::Multicast { at_ms: 6_100 },
            "the periodic one is sooner"
        );
        s.take_due(6_100, 3_000);
        assert_eq!(
            s.solicited(&UNSPECIFIED, 9_200, 40),
            Answer::Multicast { at_ms: 9_240 }
        );
    }

    #[test]
    fn one_flooding_host_gets_a_few_answers_and_others_still_get_theirs() {
        let mut s = Scheduler::new(Timing::PROVISIONING, 0);
        s.take_due(0, 0);
        let mut answered = 0;
        for t in 0..10_000u64 {
            // A solicitation every millisecond for 10 s; answers leave as they are due.
            if let Answer::Unicast { .. } = s.solicited(&from("fe80::bad"), t, 0) {
                answered += 1;
            }
            s.take_due(t, 0);
        }
        assert!(
            (3..=3 + 10).contains(&answered),
            "{answered} answers to one host in 10 s"
        );
        assert!(matches!(
            s.solicited(&from("fe80::600d"), 10_000, 0),
            Answer::Unicast { .. }
        ));
    }

    #[test]
    fn many_sources_are_capped_by_the_segment_limit() {
        let mut s = Scheduler::new(Timing::PROVISIONING, 0);
        s.take_due(0, 0);
        let mut answered = 0;
        for i in 0..1_000u16 {
            let src = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 1, i);
            let sol = Solicitation {
                source: Some(src),
                source_mac: None,
            };
            if let Answer::Unicast { .. } = s.solicited(&sol, 0, 0) {
                answered += 1;
            }
            s.take_due(0, 0);
        }
        assert_eq!(answered, SEGMENT_BURST as usize);
    }

    proptest! {
        /// Whatever arrives when: every answer is due within MAX_RA_DELAY_TIME of its
        /// solicitation, multicast advertisements are never closer than
        /// MIN_DELAY_BETWEEN_RAS once periodic, and pending answers stay bounded.
        #[test]
        fn the_schedule_keeps_the_rfc_bounds(
            events in proptest::collection::vec((0u64..2_000, 0u16..8, any::<bool>(), any::<u64>()), 1..200),
        ) {
            let mut s = Scheduler::new(Timing::PROVISIONING, 0);
            let mut now = 0;
            let mut last_multicast: Option<u64> = None;
            for (gap, host, unspecified, random) in events {
                now += gap;
                // Send what fell due meanwhile, in order.
                while s.next_due_ms() <= now {
                    let t = s.next_due_ms();
                    for d in s.take_due(t, random) {
                        if d.to == Destination::AllNodes {
                            if let Some(l) = last_multicast {
                                prop_assert!(t >= l + MIN_DELAY_BETWEEN_RAS_MS, "{l} → {t}");
                                prop_assert!(t <= l + Timing::PROVISIONING.max_interval_ms);
                            }
                            last_multicast = Some(t);
                        }
                    }
                }
                let sol = if unspecified {
                    UNSPECIFIED
                } else {
                    from(&format!("fe80::{host}"))
                };
                match s.solicited(&sol, now, random) {
                    Answer::Unicast { at_ms } => {
                        prop_assert!(at_ms >= now && at_ms <= now + MAX_RA_DELAY_TIME_MS)
                    }
                    Answer::Multicast { at_ms } => prop_assert!(
                        at_ms <= now + MIN_DELAY_BETWEEN_RAS_MS + MAX_RA_DELAY_TIME_MS
                    ),
                    Answer::Shared | Answer::RateLimited => {}
                }
                prop_assert!(s.unicast.len() <= MAX_PENDING);
            }
        }
    }
}
