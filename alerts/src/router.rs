//! The alert router: turns observations of conditions (an anomaly flag in a window, a
//! tenant's quota state) into alerts with a firing → resolved lifecycle.
//!
//! ```text
//!   Signal { labels, active, at } ─▶ per fingerprint: consecutive active / inactive counts
//!        ─▶ fires after `fire_after` active observations in a row
//!        ─▶ resolves after `resolve_after` inactive ones in a row
//!        ─▶ state changes only: an alert that keeps firing is not repeated (de-duplication)
//! ```
//!
//! An alert's identity is its fingerprint, a hash of its labels, so the same condition
//! on the same series is always the same alert. Observations are ordered by `at` per
//! fingerprint; one that is not newer than the last (the same window seen again) is
//! ignored.

use std::collections::{BTreeMap, HashMap, VecDeque};

use sha2::{Digest, Sha256};

use crate::{Alert, Status};

/// Hysteresis and history settings.
#[derive(Clone, Copy, Debug)]
pub struct RouterConfig {
    /// Active observations in a row before an alert fires.
    pub fire_after: u32,
    /// Inactive observations in a row before a firing alert resolves.
    pub resolve_after: u32,
    /// State changes kept for `recent` and for resuming subscribers.
    pub history: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig { fire_after: 1, resolve_after: 2, history: 1000 }
    }
}

/// One observation of a condition.
#[derive(Clone, Debug)]
pub struct Signal {
    /// Labels: `alertname`, `tenant`, `severity`, `series`, and any others. They identify the alert.
    pub labels: BTreeMap<String, String>,
    /// `summary` and `description`.
    pub annotations: BTreeMap<String, String>,
    /// Whether the condition holds.
    pub active: bool,
    /// When it was observed (the window, or the time), Unix ms.
    pub at: i64,
    /// Fire and resolve on the first observation, without hysteresis (for conditions
    /// that are already stable, such as a quota state).
    pub immediate: bool,
}

struct Tracked {
    last_at: i64,
    active_run: u32,
    inactive_run: u32,
    firing: Option<Alert>,
}

/// The router's state.
pub struct Router {
    config: RouterConfig,
    tracked: HashMap<String, Tracked>,
    history: VecDeque<Alert>,
    seq: u64,
}

impl Router {
    /// A router that has seen nothing.
    pub fn new(config: RouterConfig) -> Router {
        Router { config, tracked: HashMap::new(), history: VecDeque::new(), seq: 0 }
    }

    /// Takes an observation; returns the alert if its state changed.
    pub fn observe(&mut self, signal: Signal) -> Option<Alert> {
        let fingerprint = fingerprint(&signal.labels);
        let t = self.tracked.entry(fingerprint.clone()).or_insert(Tracked { last_at: i64::MIN, active_run: 0, inactive_run: 0, firing: None });
        if signal.at <= t.last_at {
            return None;
        }
        t.last_at = signal.at;
        let (fire_after, resolve_after) = if signal.immediate { (1, 1) } else { (self.config.fire_after.max(1), self.config.resolve_after.max(1)) };
        if signal.active {
            t.active_run += 1;
            t.inactive_run = 0;
        } else {
            t.inactive_run += 1;
            t.active_run = 0;
        }
        let change = match &mut t.firing {
            None if signal.active && t.active_run >= fire_after => {
                self.seq += 1;
                let alert = Alert {
                    fingerprint,
                    labels: signal.labels,
                    annotations: signal.annotations,
                    starts_at: signal.at,
                    ends_at: None,
                    status: Status::Firing,
                    seq: self.seq,
                };
                t.firing = Some(alert.clone());
                Some(alert)
            }
            Some(firing) if signal.active => {
                // still firing: keep the newest summary for listings, announce nothing
                firing.annotations = signal.annotations;
                None
            }
            Some(_) if t.inactive_run >= resolve_after => {
                let mut alert = t.firing.take().expect("matched Some");
                self.seq += 1;
                alert.status = Status::Resolved;
                alert.ends_at = Some(signal.at);
                alert.seq = self.seq;
                Some(alert)
            }
            _ => None,
        };
        if let Some(alert) = &change {
            self.history.push_back(alert.clone());
            while self.history.len() > self.config.history {
                self.history.pop_front();
            }
        }
        change
    }

    /// Alerts firing now, oldest first.
    pub fn active(&self) -> Vec<Alert> {
        let mut out: Vec<Alert> = self.tracked.values().filter_map(|t| t.firing.clone()).collect();
        out.sort_by_key(|a| (a.starts_at, a.seq));
        out
    }

    /// The most recent state changes, oldest first.
    pub fn recent(&self) -> Vec<Alert> {
        self.history.iter().cloned().collect()
    }

    /// State changes after `seq`, or `None` if some of them are no longer kept.
    pub fn since(&self, seq: u64) -> Option<Vec<Alert>> {
        let kept_from = self.history.front().map_or(self.seq + 1, |a| a.seq);
        if seq + 1 < kept_from && seq < self.seq {
            return None;
        }
        Some(self.history.iter().filter(|a| a.seq > seq).cloned().collect())
    }

    /// The sequence number of the latest state change.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// A stable hex digest of labels.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in labels {
        h.update(k.as_bytes());
        h.update([0xff]);
        h.update(v.as_bytes());
        h.update([0xfe]);
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(series: &str, active: bool, at: i64) -> Signal {
        let labels = [("alertname", "WeirAnomaly"), ("series", series)].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Signal { labels, annotations: BTreeMap::new(), active, at, immediate: false }
    }

    #[test]
    fn fires_and_resolves_with_hysteresis_and_no_duplicates() {
        let mut r = Router::new(RouterConfig { fire_after: 2, resolve_after: 2, history: 10 });
        assert!(r.observe(signal("a", true, 1)).is_none(), "one window is not enough");
        let fired = r.observe(signal("a", true, 2)).expect("fires on the second");
        assert_eq!((fired.status, fired.starts_at, fired.seq), (Status::Firing, 2, 1));
        assert!(r.observe(signal("a", true, 3)).is_none(), "no repeat while firing");
        assert!(r.observe(signal("a", true, 3)).is_none(), "the same window again is ignored");
        assert!(r.observe(signal("a", false, 4)).is_none(), "one quiet window is not enough");
        assert!(r.observe(signal("a", true, 5)).is_none(), "a flap keeps it firing");
        assert!(r.observe(signal("a", false, 6)).is_none());
        let resolved = r.observe(signal("a", false, 7)).expect("resolves");
        assert_eq!((resolved.status, resolved.ends_at, resolved.fingerprint.clone()), (Status::Resolved, Some(7), fired.fingerprint.clone()));
        assert!(r.active().is_empty());
        assert_eq!(r.recent().len(), 2);
        assert_eq!(r.since(1).unwrap().len(), 1);
        // another series is another alert
        let mut other = signal("b", true, 1);
        other.immediate = true;
        assert_ne!(r.observe(other).unwrap().fingerprint, fired.fingerprint);
    }

    #[test]
    fn resuming_too_far_back_is_refused() {
        let mut r = Router::new(RouterConfig { fire_after: 1, resolve_after: 1, history: 2 });
        for i in 0..4 {
            r.observe(signal("a", i % 2 == 0, i));
        }
        assert_eq!(r.seq(), 4);
        assert!(r.since(1).is_none());
        assert_eq!(r.since(2).unwrap().len(), 2);
        assert_eq!(r.since(4).unwrap().len(), 0);
    }
}
