//! Anomaly detection over one time series of per-window values (say, events per minute for
//! one tenant), one window at a time.
//!
//! The caller keeps one [`SeriesDetector`] per series and feeds it the value of every closed
//! window, in window order; a window with no events is fed as `0.0`, so a series that goes
//! silent shows up as a run of zeros. Each value is scored against a baseline built only from
//! the windows before it, then folded into that baseline:
//!
//! ```text
//!                 baseline (ZScore | Mad | Ewma): center, spread ◀──────────────────────────┐
//!                   │                                                                       │
//!  value ──┬──▶ deviation = (value - center) / max(spread, floors) ─┐                       │
//!          ├──▶ silence: this run of zeros, how likely?  ───────────┼─▶ evidence ──▶ Score  │
//!          └──▶ sustained: the last 3 windows, the same way off? ───┘      │   flag = evidence ≥ threshold
//!                                                                          ▼                │
//!     fold: the raw value when not flagged; nothing for the first 3 flagged windows in a    │
//!     row, then clipped to center ± threshold·scale; after `shift_run`, reseed from the run ┘
//! ```
//!
//! # Baselines
//!
//! * [`Method::ZScore`]: mean and sample standard deviation of the trailing `baseline` windows,
//!   from running sums over a ring buffer (O(1) per window; the sums are re-anchored at the mean
//!   and recomputed exactly every `baseline` windows, so they do not drift and do not lose
//!   precision on large values).
//! * [`Method::Mad`]: median and MAD × 1.4826 of the trailing `baseline` windows, kept as a ring
//!   buffer plus a sorted `Vec` (binary-search insert and remove: O(log B) comparisons and an
//!   O(B) `memmove`). The MAD is found without recomputing the deviations: those below and above
//!   the median are two sorted sequences, and their k-th smallest is a binary search, O(log B).
//! * [`Method::Ewma`]: exponentially weighted mean and variance with `alpha = 2 / (baseline + 1)`
//!   (O(1)). Until `1 / n` falls below `alpha` the weight is `1 / n`, so the first windows give a
//!   plain running mean and variance instead of leaning on the first value.
//!
//! # Robustness
//!
//! * **Warm-up**: no flags (score 0) until the baseline holds `min(baseline, 8)` windows.
//! * **Scale floor**: `scale = max(spread, 1e-9, 5% of |center|, √(center + 1) for count data)`.
//!   A series is count data while every value seen is a non-negative integer. Poisson counts
//!   have standard deviation `√center`; the `+ 1` covers the skew of small counts, which puts
//!   the one-sided Poisson tail beyond `center + threshold·scale` below 1e-4 for means from 0.1
//!   to 100 at the default thresholds (a test checks this against the exact tail). So a perfectly flat series
//!   does not flag on tiny changes, but a flat series that jumps or drops to zero does.
//! * **Silence**: zeros are how the caller reports empty windows, so a run of `k` zeros is
//!   tested on its own. If each zero has probability `p0` under the baseline (the larger of the
//!   Poisson `e^-center`, for count data, and the Laplace estimate `(zeros + 1) / (n + 2)` over
//!   the baseline windows), the run is as surprising as a Gaussian deviation of
//!   `√(2 k ln(1/p0))` (the Gaussian tail is about `e^(-z²/2)`). With no zeros in a 30-window
//!   baseline that is `√(6.9 k)`: the third zero in a row flags at threshold 4.25 and the fifth
//!   at 5.5, whatever the level. This is what catches a low-volume series going silent, where
//!   one zero proves nothing (a Poisson(5) count is 0 once in 150 windows).
//! * **Sustained shifts**: a shift too small to flag one window (a halving of a Poisson(50)
//!   series is 3.5σ) is flagged when three windows in a row all deviate the same way by at least
//!   `0.7 × threshold`, measured against the baseline as it was before the first of the three,
//!   so that the shift cannot hide by pulling the baseline along. The evidence is then the
//!   smallest of the three deviations divided by 0.7. Trailing baselines lag a daily rhythm by
//!   about half their length, which is why the fraction is not lower: at 0.6, the bottom of a
//!   steep rhythm starts to flag.
//! * **Poisoning**: the first 3 flagged windows in a row are left out of the baseline, so
//!   spikes and short drops have no influence on it at all. Clipping them to
//!   `center ± threshold·scale` instead, as a winsorized baseline would, adds `threshold²`
//!   variances to the sum of squares per outlier: when anomalies are frequent (one every ten
//!   windows) the mean and EWMA spreads grow until they miss nearly everything (recall 0.1 in
//!   the tests' busy Gaussian family, against 0.99 when left out). From the 4th flagged window
//!   on, the run may be a change rather than an outlier, and its values are folded in clipped,
//!   so that the baseline keeps moving with a trend instead of freezing behind it.
//! * **Level shifts**: a genuine shift keeps flagging in the same direction. After
//!   [`DetectorSpec::shift_run`] flagged windows in a row (half the baseline), the detector
//!   accepts the new level: the baseline is rebuilt from the raw values of that run, and the
//!   following windows are scored against the new level. A shift therefore flags for at most
//!   `baseline / 2` windows in a row, and an outage shorter than that is never absorbed: when
//!   the series comes back, it comes back to the baseline it left.
//!
//! # Scores
//!
//! `deviation` is `(value - center) / scale` for this window alone, signed. The window's evidence
//! `e` is the largest of `|deviation|`, the silence evidence and the sustained evidence; `flag` is
//! `e ≥ threshold` after the warm-up, and `score = r⁴ / (1 + r⁴)` with `r = e / threshold`: 0 for
//! a value at the baseline, 0.5 exactly at the threshold, 0.94 at twice the threshold. The score
//! is monotone in `|deviation|` except where the silence or sustained evidence is the larger.
//!
//! Values that are not finite (NaN, ±∞) are bad input: they are scored 0, never flagged and
//! never folded into the baseline, but they count in [`SeriesDetector::windows_seen`].

use std::collections::VecDeque;

/// Windows needed before the detector may flag (or the whole baseline, if shorter).
const WARMUP_WINDOWS: usize = 8;

/// The smallest baseline accepted: a spread needs two values.
const MIN_BASELINE: usize = 2;

/// Scale floor relative to the baseline's center: flat series must move by
/// `threshold × 5%` of their level to flag.
const RELATIVE_SCALE_FLOOR: f64 = 0.05;

/// Absolute scale floor, so that a constant series never divides by zero.
const ABSOLUTE_SCALE_FLOOR: f64 = 1e-9;

/// Three windows in a row this fraction of the threshold off, the same way, are flagged.
const SUSTAINED_FRACTION: f64 = 0.7;

/// Windows in the sustained-shift test (the benchmark's "first 3 windows of a shift").
const SUSTAINED_WINDOWS: usize = 3;

/// Flagged windows in a row that are treated as outliers and left out of the baseline. Longer
/// runs may be a change rather than an outlier: they are folded in, clipped.
const OUTLIER_RUN: usize = SUSTAINED_WINDOWS;

/// MAD × 1.4826 estimates the standard deviation of Gaussian data.
const MAD_TO_SIGMA: f64 = 1.4826;

/// How a detector builds the baseline a window is scored against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// Mean and standard deviation of the trailing `baseline` windows.
    ZScore,
    /// Median and median absolute deviation (× 1.4826) of the trailing `baseline` windows:
    /// outliers inside the baseline barely move it.
    Mad,
    /// Exponentially weighted mean and variance with `alpha = 2 / (baseline + 1)`.
    Ewma,
}

impl Method {
    /// Every method, in a stable order.
    pub const ALL: [Method; 3] = [Method::ZScore, Method::Mad, Method::Ewma];

    /// Parses a method's name: `zscore`, `mad` or `ewma` (ASCII case ignored).
    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(s.trim()))
    }

    /// The method's name, as [`Method::parse`] accepts it.
    pub fn name(self) -> &'static str {
        match self {
            Method::ZScore => "zscore",
            Method::Mad => "mad",
            Method::Ewma => "ewma",
        }
    }

    /// The threshold that [`DetectorSpec::new`] uses: for each method, the lowest of 4, 4.25,
    /// 4.5, 5 and 5.5 that keeps every clean family of the tests' benchmark (Poisson and
    /// Gaussian noise, daily rhythms) below 0.5 flags per 1000 windows with a 30-window
    /// baseline. The MAD needs more because it is a noisier estimate of the spread (37%
    /// efficiency on Gaussian data), most visibly at the flat bottom of a steep daily rhythm.
    pub fn default_threshold(self) -> f64 {
        match self {
            Method::ZScore => 4.25,
            Method::Mad => 5.5,
            Method::Ewma => 4.25,
        }
    }
}

/// What to detect on one series: the method, how many windows the baseline spans, and at
/// what deviation a window is flagged.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorSpec {
    /// How the baseline is built.
    pub method: Method,
    /// Windows in the baseline (for EWMA, its span: `alpha = 2 / (baseline + 1)`); at least 2.
    pub baseline: usize,
    /// `|deviation|`, in the method's scale units, at which a window is flagged. Must be
    /// positive; NaN or a value `≤ 0` means the method's default threshold.
    pub threshold: f64,
}

impl DetectorSpec {
    /// The default baseline: 30 windows.
    pub const DEFAULT_BASELINE: usize = 30;

    /// A 30-window baseline with the method's default threshold.
    pub fn new(method: Method) -> DetectorSpec {
        DetectorSpec { method, baseline: Self::DEFAULT_BASELINE, threshold: method.default_threshold() }
    }

    /// The baseline length actually used (at least 2).
    pub fn baseline_windows(&self) -> usize {
        self.baseline.max(MIN_BASELINE)
    }

    /// The threshold actually used: the given one, or the method's default if it is NaN or
    /// not positive.
    pub fn effective_threshold(&self) -> f64 {
        if self.threshold > 0.0 { self.threshold } else { self.method.default_threshold() }
    }

    /// Windows the baseline must hold before a window can be flagged: `min(baseline, 8)`.
    pub fn warmup(&self) -> usize {
        self.baseline_windows().min(WARMUP_WINDOWS)
    }

    /// Flagged windows in a row, deviating the same way, after which the detector takes the
    /// new level as normal: half the baseline, at least 3.
    pub fn shift_run(&self) -> usize {
        (self.baseline_windows() / 2).max(3)
    }
}

impl Default for DetectorSpec {
    /// [`Method::ZScore`] over 30 windows: the best precision and recall of the three on the
    /// tests' benchmark. Its baseline is protected from outliers by leaving flagged windows
    /// out; [`Method::Mad`] is the one to pick when anomalies are so frequent that many of them
    /// stay below the threshold and end up in the baseline.
    fn default() -> DetectorSpec {
        DetectorSpec::new(Method::ZScore)
    }
}

/// How one window compares with its baseline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    /// The window's value, as given.
    pub value: f64,
    /// The expected value: the baseline's center (mean, median or weighted mean).
    pub baseline: f64,
    /// `(value - baseline) / scale`, signed, in the method's scale units: this window alone.
    pub deviation: f64,
    /// In `[0, 1]`: `r⁴ / (1 + r⁴)` with `r = evidence / threshold`, so 0.5 at the threshold;
    /// 0 during the warm-up. The evidence is `|deviation|`, or the silence or sustained-shift
    /// evidence when larger (see the [module docs](self)).
    pub score: f64,
    /// Whether the window is anomalous: its evidence reached the threshold after the warm-up.
    pub flag: bool,
}

/// An incremental anomaly detector for one series. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct SeriesDetector {
    baseline: Baseline,
    threshold: f64,
    warmup: usize,
    shift_run: usize,
    windows_seen: usize,
    /// Every finite value so far was a non-negative integer: the Poisson floor applies.
    counts: bool,
    /// Zeros in a row, up to and including the last window.
    zero_run: usize,
    /// The chance of a zero as the baseline saw it just before the current run of zeros, so
    /// that the run does not make itself look normal as it is folded in.
    run_zero_rate: f64,
    /// The windows before this one, oldest first, for the sustained-shift test; `None` for
    /// windows scored in the warm-up or before the baseline was last reseeded.
    recent: [Option<Scored>; SUSTAINED_WINDOWS - 1],
    /// Raw values of the current run of flagged windows, all deviating the same way.
    run: Vec<f64>,
    run_sign: f64,
}

impl SeriesDetector {
    /// A detector with an empty baseline.
    pub fn new(spec: &DetectorSpec) -> SeriesDetector {
        let windows = spec.baseline_windows();
        let baseline = match spec.method {
            Method::ZScore => Baseline::Mean(MeanWindow::new(windows)),
            Method::Mad => Baseline::Median(MedianWindow::new(windows)),
            Method::Ewma => Baseline::Ewma(Ewma::new(windows)),
        };
        SeriesDetector {
            baseline,
            threshold: spec.effective_threshold(),
            warmup: spec.warmup(),
            shift_run: spec.shift_run(),
            windows_seen: 0,
            counts: true,
            zero_run: 0,
            run_zero_rate: 1.0,
            recent: [None; SUSTAINED_WINDOWS - 1],
            run: Vec::with_capacity(spec.shift_run()),
            run_sign: 0.0,
        }
    }

    /// Scores the next window's value against the baseline built from the windows before it
    /// (no look-ahead), then folds the value into the baseline.
    pub fn observe(&mut self, value: f64) -> Score {
        self.windows_seen += 1;
        let center = self.baseline.center();
        if !value.is_finite() {
            return Score { value, baseline: center.unwrap_or(0.0), deviation: 0.0, score: 0.0, flag: false };
        }
        let value = if value == 0.0 { 0.0 } else { value }; // -0.0 and 0.0 are one value
        if value != 0.0 {
            self.zero_run = 0;
        } else {
            if self.zero_run == 0 {
                self.run_zero_rate = center.map_or(1.0, |c| self.zero_rate(c));
            }
            self.zero_run += 1;
        }
        let Some(center) = center else {
            self.fold(value, false, 0.0, 0.0);
            return Score { value, baseline: value, deviation: 0.0, score: 0.0, flag: false };
        };

        let scale = self.baseline.spread(center).max(self.scale_floor(center));
        let deviation = (value - center) / scale;
        let warm = self.baseline.len() >= self.warmup;
        let silence = if value == 0.0 && center > 0.0 { self.silence_evidence() } else { 0.0 };
        let sustained = self.sustained_evidence(value);
        self.recent.rotate_left(1);
        self.recent[SUSTAINED_WINDOWS - 2] = warm.then_some(Scored { value, center, scale });
        let evidence = deviation.abs().max(silence).max(sustained);
        let flag = warm && evidence >= self.threshold;
        let score = if warm { score_of(evidence / self.threshold) } else { 0.0 };
        if value < 0.0 || value.fract() != 0.0 {
            self.counts = false;
        }
        self.fold(value, flag, center, scale);
        Score { value, baseline: center, deviation, score, flag }
    }

    /// Windows observed so far, including non-finite values (which are not folded in).
    pub fn windows_seen(&self) -> usize {
        self.windows_seen
    }

    /// Folds a finite value into the baseline: raw when not flagged; left out for the first
    /// [`OUTLIER_RUN`] flagged windows in a row, clipped for the next ones, and after
    /// `shift_run` flags in the same direction, the run becomes the new baseline.
    fn fold(&mut self, value: f64, flag: bool, center: f64, scale: f64) {
        if !flag {
            self.run.clear();
            self.baseline.push(value);
            return;
        }
        let sign = if value < center { -1.0 } else { 1.0 };
        if sign != self.run_sign {
            self.run.clear();
            self.run_sign = sign;
        }
        self.run.push(value);
        if self.run.len() >= self.shift_run {
            self.baseline.reseed(&self.run);
            self.run.clear();
            // Measured against the old level, the next windows would look like a shift again.
            self.recent = [None; SUSTAINED_WINDOWS - 1];
        } else if self.run.len() > OUTLIER_RUN {
            let bound = self.threshold * scale;
            self.baseline.push(value.clamp(center - bound, center + bound));
        }
        // A run of at most OUTLIER_RUN flagged windows is left out of the baseline entirely.
    }

    fn scale_floor(&self, center: f64) -> f64 {
        let floor = ABSOLUTE_SCALE_FLOOR.max(RELATIVE_SCALE_FLOOR * center.abs());
        if self.counts { floor.max((center.max(0.0) + 1.0).sqrt()) } else { floor }
    }

    /// The chance of a zero under the baseline: the larger of the empirical rate and, for
    /// counts, the Poisson `e^-center`.
    fn zero_rate(&self, center: f64) -> f64 {
        let poisson = if self.counts { (-center.max(0.0)).exp() } else { 0.0 };
        self.baseline.zero_rate().max(poisson).min(1.0)
    }

    /// How surprising the current run of zeros is, as a Gaussian deviation: `√(2 k ln(1/p0))`.
    fn silence_evidence(&self) -> f64 {
        (2.0 * self.zero_run as f64 * -self.run_zero_rate.ln()).sqrt()
    }

    /// Evidence of a sustained shift: the last three windows (this one included) measured
    /// against the baseline that scored the first of them, before any of them was folded in.
    /// If all three deviate the same way by at least `d`, the evidence is
    /// `d / SUSTAINED_FRACTION`: it reaches the threshold at `d = SUSTAINED_FRACTION × threshold`.
    fn sustained_evidence(&self, value: f64) -> f64 {
        let Some(first) = self.recent[0] else { return 0.0 };
        let (mut above, mut below) = (f64::INFINITY, f64::INFINITY);
        for x in self.recent.iter().map(|w| w.map(|w| w.value)).chain([Some(value)]) {
            let Some(x) = x else { return 0.0 };
            let deviation = (x - first.center) / first.scale;
            above = above.min(deviation.max(0.0));
            below = below.min((-deviation).max(0.0));
        }
        above.max(below) / SUSTAINED_FRACTION
    }
}

/// A window as it was scored: its value and the baseline's center and scale at the time.
#[derive(Clone, Copy, Debug)]
struct Scored {
    value: f64,
    center: f64,
    scale: f64,
}

/// `r⁴ / (1 + r⁴)`: 0.5 at `r = 1`, written so that a huge `r` gives 1, not NaN.
fn score_of(r: f64) -> f64 {
    let r4 = r.powi(4);
    if r4.is_finite() { r4 / (1.0 + r4) } else { 1.0 }
}

/// The baseline of one method. An enum rather than a trait object: three fixed shapes.
#[derive(Clone, Debug)]
enum Baseline {
    Mean(MeanWindow),
    Median(MedianWindow),
    Ewma(Ewma),
}

impl Baseline {
    /// Windows folded in (for EWMA, since the last reseed; not capped).
    fn len(&self) -> usize {
        match self {
            Baseline::Mean(w) => w.values.len(),
            Baseline::Median(w) => w.values.len(),
            Baseline::Ewma(e) => e.n,
        }
    }

    /// The expected value, once there is one.
    fn center(&self) -> Option<f64> {
        if self.len() == 0 {
            return None;
        }
        Some(match self {
            Baseline::Mean(w) => w.mean(),
            Baseline::Median(w) => w.median(),
            Baseline::Ewma(e) => e.mean,
        })
    }

    /// The spread around `center` (which is this baseline's center), before any floor.
    fn spread(&self, center: f64) -> f64 {
        match self {
            Baseline::Mean(w) => w.std_dev(),
            Baseline::Median(w) => MAD_TO_SIGMA * w.mad(center),
            Baseline::Ewma(e) => e.var.sqrt(),
        }
    }

    /// The chance of a zero, estimated from the baseline with Laplace's rule of succession.
    fn zero_rate(&self) -> f64 {
        let (zeros, n) = match self {
            Baseline::Mean(w) => (w.zeros as f64, w.values.len() as f64),
            Baseline::Median(w) => (w.zeros as f64, w.values.len() as f64),
            Baseline::Ewma(e) => {
                let n = e.n.min(e.span) as f64;
                (e.zero_share * n, n)
            }
        };
        (zeros + 1.0) / (n + 2.0)
    }

    fn push(&mut self, x: f64) {
        match self {
            Baseline::Mean(w) => w.push(x),
            Baseline::Median(w) => w.push(x),
            Baseline::Ewma(e) => e.push(x),
        }
    }

    /// Forgets everything and starts again from `values`, oldest first.
    fn reseed(&mut self, values: &[f64]) {
        match self {
            Baseline::Mean(w) => *w = MeanWindow::new(w.capacity),
            Baseline::Median(w) => *w = MedianWindow::new(w.capacity),
            Baseline::Ewma(e) => *e = Ewma::new(e.span),
        }
        for &x in values {
            self.push(x);
        }
    }
}

/// The trailing windows with running sums of `x - anchor` and its square. Sums around an
/// anchor near the mean keep the variance exact for large values. They are recomputed around
/// the current mean every `capacity` pushes (O(1) amortized), so rounding errors cannot pile
/// up, and at once when the anchor has drifted so far from the mean that the variance would
/// lose digits to cancellation (after an outlier, say, or a level shift).
#[derive(Clone, Debug)]
struct MeanWindow {
    values: VecDeque<f64>,
    capacity: usize,
    anchor: f64,
    sum: f64,
    sum_sq: f64,
    pushes_since_anchor: usize,
    zeros: usize,
}

impl MeanWindow {
    fn new(capacity: usize) -> MeanWindow {
        MeanWindow {
            values: VecDeque::with_capacity(capacity),
            capacity,
            anchor: 0.0,
            sum: 0.0,
            sum_sq: 0.0,
            pushes_since_anchor: 0,
            zeros: 0,
        }
    }

    fn push(&mut self, x: f64) {
        if self.values.is_empty() {
            self.anchor = x;
        }
        if self.values.len() == self.capacity
            && let Some(old) = self.values.pop_front()
        {
            let d = old - self.anchor;
            self.sum -= d;
            self.sum_sq -= d * d;
            self.zeros -= usize::from(old == 0.0);
        }
        let d = x - self.anchor;
        self.sum += d;
        self.sum_sq += d * d;
        self.zeros += usize::from(x == 0.0);
        self.values.push_back(x);
        self.pushes_since_anchor += 1;
        let n = self.values.len() as f64;
        let offset = self.sum / n;
        let centered = self.sum_sq - self.sum * offset;
        // `sum_sq` is `centered` plus `n·offset²`: once the offset's share is a million times
        // the spread's, six of the sixteen digits are gone. Offsets at the rounding level of
        // the anchor itself (a constant series) are no drift.
        let drifted = n * offset * offset > 1e6 * centered && offset.abs() > 1e-9 * self.anchor.abs();
        if self.pushes_since_anchor >= self.capacity || drifted {
            self.reanchor();
        }
    }

    fn reanchor(&mut self) {
        self.anchor = self.mean();
        let anchor = self.anchor;
        self.sum = self.values.iter().map(|x| x - anchor).sum();
        self.sum_sq = self.values.iter().map(|x| (x - anchor) * (x - anchor)).sum();
        self.pushes_since_anchor = 0;
    }

    fn mean(&self) -> f64 {
        self.anchor + self.sum / self.values.len() as f64
    }

    /// The sample standard deviation (`n - 1`); 0 for fewer than two values.
    fn std_dev(&self) -> f64 {
        let n = self.values.len() as f64;
        if n < 2.0 {
            return 0.0;
        }
        ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0).sqrt()
    }
}

/// The trailing windows, in arrival order and sorted.
#[derive(Clone, Debug)]
struct MedianWindow {
    values: VecDeque<f64>,
    sorted: Vec<f64>,
    capacity: usize,
    zeros: usize,
}

impl MedianWindow {
    fn new(capacity: usize) -> MedianWindow {
        MedianWindow {
            values: VecDeque::with_capacity(capacity),
            sorted: Vec::with_capacity(capacity),
            capacity,
            zeros: 0,
        }
    }

    fn push(&mut self, x: f64) {
        if self.values.len() == self.capacity
            && let Some(old) = self.values.pop_front()
        {
            // The value is there bit for bit: it was inserted from the same f64.
            if let Ok(i) = self.sorted.binary_search_by(|p| p.total_cmp(&old)) {
                self.sorted.remove(i);
            }
            self.zeros -= usize::from(old == 0.0);
        }
        let i = self.sorted.partition_point(|p| p.total_cmp(&x).is_lt());
        self.sorted.insert(i, x);
        self.zeros += usize::from(x == 0.0);
        self.values.push_back(x);
    }

    fn median(&self) -> f64 {
        median_of_sorted(&self.sorted)
    }

    /// The median of `|x - median|`, with `median` this window's median.
    fn mad(&self, median: f64) -> f64 {
        let n = self.sorted.len();
        if n == 0 {
            return 0.0;
        }
        let upper = kth_abs_deviation(&self.sorted, median, n / 2);
        if n % 2 == 1 { upper } else { f64::midpoint(kth_abs_deviation(&self.sorted, median, n / 2 - 1), upper) }
    }
}

/// The median of a non-empty sorted slice.
fn median_of_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] } else { f64::midpoint(sorted[n / 2 - 1], sorted[n / 2]) }
}

/// The `k`-th smallest (from 0) of `|x - m|` over a sorted slice, in O(log n): the deviations
/// of the values below `m`, read leftwards, and of the others, read rightwards, are two sorted
/// sequences, and this is the classic k-th smallest of two sorted arrays.
fn kth_abs_deviation(sorted: &[f64], m: f64, k: usize) -> f64 {
    let (below, above) = sorted.split_at(sorted.partition_point(|x| *x < m));
    let left = |i: usize| m - below[below.len() - 1 - i];
    let right = |j: usize| above[j] - m;
    let take = k + 1;
    // `i` deviations come from the left and `take - i` from the right; find the smallest `i`
    // for which the next left deviation is no smaller than the last right one taken.
    let (mut lo, mut hi) = (take.saturating_sub(above.len()), take.min(below.len()));
    while lo < hi {
        let i = lo + (hi - lo) / 2;
        if right(take - i - 1) > left(i) { lo = i + 1 } else { hi = i }
    }
    let (i, j) = (lo, take - lo);
    let from_left = if i > 0 { left(i - 1) } else { f64::NEG_INFINITY };
    let from_right = if j > 0 { right(j - 1) } else { f64::NEG_INFINITY };
    from_left.max(from_right)
}

/// Exponentially weighted mean and variance (West's incremental form). The weight of a new
/// value is `max(alpha, 1 / n)`: until `n` reaches the span this is a plain running mean and
/// (population) variance.
#[derive(Clone, Debug)]
struct Ewma {
    span: usize,
    alpha: f64,
    n: usize,
    mean: f64,
    var: f64,
    /// Weighted share of zeros, for the silence test.
    zero_share: f64,
}

impl Ewma {
    fn new(span: usize) -> Ewma {
        Ewma { span, alpha: 2.0 / (span as f64 + 1.0), n: 0, mean: 0.0, var: 0.0, zero_share: 0.0 }
    }

    fn push(&mut self, x: f64) {
        self.n += 1;
        let a = self.alpha.max(1.0 / self.n as f64);
        let d = x - self.mean;
        self.mean += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
        self.zero_share += a * (f64::from(u8::from(x == 0.0)) - self.zero_share);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: a tiny deterministic generator for reproducible series.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in `[0, 1)`.
        fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
        }

        fn range(&mut self, lo: f64, hi: f64) -> f64 {
            lo + (hi - lo) * self.uniform()
        }

        /// Uniform in `lo..=hi`.
        fn int(&mut self, lo: usize, hi: usize) -> usize {
            lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
        }

        /// Standard normal, by Box-Muller.
        fn normal(&mut self) -> f64 {
            let u = 1.0 - self.uniform(); // in (0, 1]
            let v = self.uniform();
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }

        /// Poisson: Knuth's product of uniforms for small means, the rounded normal
        /// approximation above 30.
        fn poisson(&mut self, mean: f64) -> f64 {
            if mean <= 0.0 {
                return 0.0;
            }
            if mean > 30.0 {
                return (mean + mean.sqrt() * self.normal() + 0.5).floor().max(0.0);
            }
            let limit = (-mean).exp();
            let (mut k, mut p) = (0.0, self.uniform());
            while p > limit {
                k += 1.0;
                p *= self.uniform();
            }
            k
        }
    }

    fn detector(method: Method) -> SeriesDetector {
        SeriesDetector::new(&DetectorSpec::new(method))
    }

    #[test]
    fn methods_parse_their_names() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.name()), Some(m));
        }
        assert_eq!(Method::parse("MAD"), Some(Method::Mad));
        assert_eq!(Method::parse("median"), None);
        assert_eq!(DetectorSpec::default().method, Method::ZScore);
        let odd = DetectorSpec { method: Method::Ewma, baseline: 0, threshold: f64::NAN };
        assert_eq!((odd.baseline_windows(), odd.effective_threshold(), odd.warmup()), (2, 4.25, 2));
    }

    #[test]
    fn kth_abs_deviation_matches_sorting_the_deviations() {
        let mut rng = Rng(7);
        for _ in 0..2_000 {
            let n = rng.int(1, 40);
            // Few distinct values, so that ties and values equal to the median are common.
            let mut xs: Vec<f64> = (0..n).map(|_| rng.int(0, 6) as f64 * 0.5).collect();
            xs.sort_by(f64::total_cmp);
            let m = if rng.uniform() < 0.5 { median_of_sorted(&xs) } else { rng.range(-1.0, 4.0) };
            let mut devs: Vec<f64> = xs.iter().map(|x| (x - m).abs()).collect();
            devs.sort_by(f64::total_cmp);
            for (k, want) in devs.iter().enumerate() {
                assert_eq!(kth_abs_deviation(&xs, m, k), *want, "{xs:?} m={m} k={k}");
            }
        }
    }

    /// Oracle: the incremental baselines equal a from-scratch computation over the same window.
    #[test]
    fn sliding_baselines_match_recomputation() {
        let mut rng = Rng(11);
        let capacity = 7;
        let mut mean = MeanWindow::new(capacity);
        let mut median = MedianWindow::new(capacity);
        let mut all = Vec::new();
        for t in 0..5_000 {
            // Large offset, small noise, repeated values and zeros: the hard cases for sums.
            let x = match t % 11 {
                0 => 0.0,
                1 | 2 => 1e9,
                _ => 1e9 + rng.int(0, 5) as f64 * 0.25,
            };
            all.push(x);
            mean.push(x);
            median.push(x);
            let window = &all[all.len().saturating_sub(capacity)..];
            let n = window.len() as f64;
            let m = window.iter().sum::<f64>() / n;
            let var = if n < 2.0 { 0.0 } else { window.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0) };
            assert!((mean.mean() - m).abs() <= 1e-6 * m.abs().max(1.0), "mean at {t}");
            assert!((mean.std_dev() - var.sqrt()).abs() <= 1e-6 * var.sqrt().max(1.0), "std at {t}");
            let mut sorted = window.to_vec();
            sorted.sort_by(f64::total_cmp);
            let med = median_of_sorted(&sorted);
            let mut devs: Vec<f64> = sorted.iter().map(|x| (x - med).abs()).collect();
            devs.sort_by(f64::total_cmp);
            assert_eq!(median.median(), med);
            assert_eq!(median.mad(med), median_of_sorted(&devs));
            assert_eq!(median.zeros, window.iter().filter(|x| **x == 0.0).count());
        }
    }

    /// Until `1 / n` falls below alpha, the EWMA is the plain running mean and population
    /// variance; after that, each value moves the mean by alpha of its distance.
    #[test]
    fn ewma_starts_as_a_running_mean() {
        let mut rng = Rng(13);
        let mut e = Ewma::new(30);
        let xs: Vec<f64> = (0..40).map(|_| 1e6 + rng.normal()).collect();
        for (i, x) in xs.iter().enumerate() {
            e.push(*x);
            let seen = &xs[..=i];
            let n = seen.len() as f64;
            let mean = seen.iter().sum::<f64>() / n;
            let var = seen.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
            if i < 15 {
                // alpha = 2/31: 1/n is the larger weight up to the 15th value.
                assert!((e.mean - mean).abs() < 1e-6 && (e.var - var).abs() < 1e-6, "at {i}");
            }
        }
        let before = e.mean;
        e.push(before + 31.0);
        assert!((e.mean - before - 2.0).abs() < 1e-6);
    }

    #[test]
    fn warm_up_never_flags() {
        for method in Method::ALL {
            let mut d = detector(method);
            for (i, x) in [10.0, 10.0, 1e6, 0.0, 10.0, -5.0, 1e9, 10.0].into_iter().enumerate() {
                let s = d.observe(x);
                assert!(!s.flag && s.score == 0.0, "{method:?} window {i}");
            }
            assert_eq!(d.windows_seen(), 8);
        }
    }

    #[test]
    fn flat_series_ignore_tiny_changes_but_not_jumps_or_silence() {
        for method in Method::ALL {
            for level in [100.0, 100.5, 3.0] {
                let mut d = detector(method);
                for _ in 0..40 {
                    assert!(!d.observe(level).flag);
                }
                let tiny = d.observe(level * 1.01);
                assert!(!tiny.flag && tiny.score < 0.01, "{method:?} {level} {tiny:?}");
                let mut quiet = d.clone();
                assert!(d.observe(level * 3.0).flag, "{method:?} {level} jump");
                // A count series at 3 needs a few zeros before silence is significant.
                let zeros: Vec<bool> = (0..3).map(|_| quiet.observe(0.0).flag).collect();
                assert!(zeros[2], "{method:?} {level} silence {zeros:?}");
                if level >= 100.0 {
                    assert!(zeros[0], "{method:?} {level} first zero");
                }
            }
        }
    }

    #[test]
    fn a_level_shift_flags_for_a_limited_time_then_becomes_normal() {
        for method in Method::ALL {
            let spec = DetectorSpec::new(method);
            let mut d = SeriesDetector::new(&spec);
            let mut rng = Rng(3);
            for _ in 0..100 {
                d.observe(rng.poisson(100.0));
            }
            let flags: Vec<bool> = (0..200).map(|_| d.observe(rng.poisson(300.0)).flag).collect();
            // Flagged at once, and for at most `shift_run` windows (fewer when the clipped values
            // folded in from the 4th flag on widen the spread enough to take the new level).
            assert!(flags[..=OUTLIER_RUN].iter().all(|f| *f), "{method:?}: {flags:?}");
            let flagged = flags.iter().filter(|f| **f).count();
            assert!(flagged <= spec.shift_run() + 1, "{method:?}: {flagged} flags");
            assert!(!flags[spec.shift_run() + 1..].iter().any(|f| *f), "{method:?}: {flags:?}");
            // Returning to the old level is a shift too, and is flagged.
            assert!(d.observe(rng.poisson(100.0)).flag, "{method:?}");
        }
    }

    #[test]
    fn an_outage_is_not_absorbed_and_the_return_is_quiet() {
        for method in Method::ALL {
            let spec = DetectorSpec::new(method);
            let mut d = SeriesDetector::new(&spec);
            let mut rng = Rng(9);
            for _ in 0..100 {
                d.observe(rng.poisson(100.0));
            }
            let outage = spec.shift_run() - 1;
            assert!((0..outage).all(|_| d.observe(0.0).flag), "{method:?}");
            let back = (0..100).filter(|_| d.observe(rng.poisson(100.0)).flag).count();
            assert_eq!(back, 0, "{method:?}");
        }
    }

    #[test]
    fn a_shift_too_small_for_one_window_is_flagged_by_its_third() {
        for method in Method::ALL {
            let spec = DetectorSpec::new(method);
            let mut d = SeriesDetector::new(&spec);
            for i in 0..60 {
                d.observe(if i % 2 == 0 { 90.5 } else { 110.5 });
            }
            // The baseline's scale, read off a probe on a copy.
            let probe = d.clone().observe(50.5);
            let scale = (probe.value - probe.baseline) / probe.deviation;
            // Three windows 0.8 × threshold below: under the single-window test, over the
            // sustained one (0.7 × threshold, against the baseline before the first of them).
            let step = probe.baseline - 0.8 * spec.threshold * scale;
            let scores: Vec<Score> = (0..3).map(|_| d.observe(step)).collect();
            let flags: Vec<bool> = scores.iter().map(|s| s.flag).collect();
            assert_eq!(flags, [false, false, true], "{method:?}: {scores:?}");
            assert!(scores[2].deviation.abs() < spec.threshold, "{method:?}: {scores:?}");
        }
    }

    #[test]
    fn spikes_do_not_poison_the_baseline() {
        for method in Method::ALL {
            let mut d = detector(method);
            let mut rng = Rng(5);
            for _ in 0..60 {
                d.observe(100.0 + 10.0 * rng.normal());
            }
            let before = d.observe(100.0).baseline;
            assert!(d.observe(10_000.0).flag);
            let after = d.observe(100.0).baseline;
            // Left out of the baseline, the spike does not move it; folded in, it would move
            // the mean by 330 and the spread far more.
            assert!((after - before).abs() < 2.0, "{method:?}: {before} -> {after}");
            // A second, smaller spike soon after is still caught.
            assert!(d.observe(200.0).flag, "{method:?}");
        }
    }

    #[test]
    fn bad_input_is_skipped() {
        for method in Method::ALL {
            let mut d = detector(method);
            let mut twin = detector(method);
            for i in 0..50 {
                let x = 50.0 + (i % 5) as f64;
                if i % 10 == 3 {
                    let s = d.observe(f64::NAN);
                    assert!(!s.flag && s.score == 0.0 && s.baseline.is_finite());
                    assert!(!d.observe(f64::INFINITY).flag);
                }
                assert_eq!(d.observe(x), twin.observe(x), "{method:?} at {i}");
            }
            assert_eq!(d.windows_seen(), twin.windows_seen() + 10);
        }
    }

    #[test]
    fn scores_are_monotone_and_half_at_the_threshold() {
        assert_eq!(score_of(0.0), 0.0);
        assert_eq!(score_of(1.0), 0.5);
        assert_eq!(score_of(f64::MAX), 1.0);
        let mut last = 0.0;
        for i in 1..1000 {
            let s = score_of(i as f64 / 100.0);
            assert!(s > last && s < 1.0);
            last = s;
        }
    }

    /// The count floor `√(center + 1)`: at the default thresholds, a Poisson count exceeds
    /// `center + threshold·floor` with probability below 1e-4, however small the mean.
    #[test]
    fn the_count_floor_bounds_the_poisson_tail() {
        fn upper_tail(mean: f64, at_least: u64) -> f64 {
            // 1 - P(X < at_least), summing the pmf in log space.
            let mut below = 0.0;
            let mut log_pmf = -mean;
            for k in 0..at_least {
                if k > 0 {
                    log_pmf += mean.ln() - (k as f64).ln();
                }
                below += log_pmf.exp();
            }
            (1.0 - below).max(0.0)
        }
        for method in Method::ALL {
            let t = method.default_threshold();
            for mean in [0.1f64, 0.3, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0] {
                let cut = mean + t * (mean + 1.0).sqrt();
                let first_flagged = cut.ceil() as u64; // a count at the cut is flagged
                let p = upper_tail(mean, first_flagged);
                assert!(p < 1e-4, "{method:?} mean {mean}: P(X >= {first_flagged}) = {p}");
            }
        }
    }

    // ---- Benchmark: labeled synthetic series, scored per method and family ----
    //
    // Each family has clean series (noise, rhythm) and series with injected events: spikes
    // (×3-×5, or +6σ-+10σ on Gaussian noise; one window), drops (to 20% for 1-3 windows),
    // silences (0 for 3-10 windows) and level shifts (×2 or ×0.5 for 100-200 windows, then
    // back: two shift events). Scoring:
    // * an event is detected if a flag falls in its detection span: its anomalous windows for
    //   a spike, drop or silence, the first 3 windows of a level shift;
    // * a flag is true if it falls in the grace span of some event (its anomalous windows, or
    //   the first `baseline` windows after a shift starts), false otherwise;
    // * precision = true flags / flags over the labeled series (window level), recall =
    //   detected / injected events, F1 their harmonic mean; the clean series give the false
    //   positive rate, in flags per 1000 windows.

    #[derive(Clone, Copy, Debug)]
    enum Noise {
        Poisson,
        /// Additive Gaussian noise with this standard deviation.
        Gaussian(f64),
    }

    #[derive(Clone, Copy, Debug)]
    struct Family {
        name: &'static str,
        mean: f64,
        noise: Noise,
        /// Period in windows and relative amplitude of a daily rhythm.
        rhythm: Option<(f64, f64)>,
        /// Quiet windows between one event's end and the next event, at least and at most.
        gap: (usize, usize),
        /// The kinds of event injected.
        kinds: &'static [Kind],
        /// Clean and labeled series generated, each.
        series: u64,
    }

    /// Events far enough apart for the baseline to be clean at each.
    const APART: (usize, usize) = (60, 90);

    const FAMILIES: [Family; 10] = [
        Family {
            name: "poisson-5",
            mean: 5.0,
            noise: Noise::Poisson,
            rhythm: None,
            gap: APART,
            kinds: &KINDS,
            series: 24,
        },
        Family {
            name: "poisson-50",
            mean: 50.0,
            noise: Noise::Poisson,
            rhythm: None,
            gap: APART,
            kinds: &KINDS,
            series: 24,
        },
        Family {
            name: "poisson-500",
            mean: 500.0,
            noise: Noise::Poisson,
            rhythm: None,
            gap: APART,
            kinds: &KINDS,
            series: 24,
        },
        Family {
            name: "gauss-100±10",
            mean: 100.0,
            noise: Noise::Gaussian(10.0),
            rhythm: None,
            gap: APART,
            kinds: &KINDS,
            series: 24,
        },
        // One-minute windows: a day is 1440 windows.
        Family {
            name: "rhythm-1m-poisson-100",
            mean: 100.0,
            noise: Noise::Poisson,
            rhythm: Some((1440.0, 0.4)),
            gap: APART,
            kinds: &KINDS,
            series: 24,
        },
        // Five-minute windows: a day is 288 windows, so the rhythm is five times as steep.
        Family {
            name: "rhythm-5m-poisson-500",
            mean: 500.0,
            noise: Noise::Poisson,
            rhythm: Some((288.0, 0.5)),
            gap: APART,
            kinds: &KINDS,
            series: 24,
        },
        Family {
            name: "rhythm-5m-gauss-1000±50",
            mean: 1000.0,
            noise: Noise::Gaussian(50.0),
            rhythm: Some((288.0, 0.3)),
            gap: APART,
            kinds: &KINDS,
            series: 24,
        },
        // Spikes and drops every 4-15 windows: the baseline always holds a few of them.
        Family {
            name: "busy-poisson-50",
            mean: 50.0,
            noise: Noise::Poisson,
            rhythm: None,
            gap: (4, 15),
            kinds: &[Kind::Spike, Kind::Drop],
            series: 4,
        },
        Family {
            name: "busy-gauss-100±10",
            mean: 100.0,
            noise: Noise::Gaussian(10.0),
            rhythm: None,
            gap: (4, 15),
            kinds: &[Kind::Spike, Kind::Drop],
            series: 4,
        },
        Family {
            name: "busy-rhythm-5m-poisson-500",
            mean: 500.0,
            noise: Noise::Poisson,
            rhythm: Some((288.0, 0.5)),
            gap: (4, 15),
            kinds: &[Kind::Spike, Kind::Drop],
            series: 4,
        },
    ];

    /// A Poisson(5) series carries too little information per window for some events: even a
    /// zero has probability e^-5 = 0.0067, so no single-window cut can flag a drop to 1 below
    /// 6.7 false flags per 1000 windows, and a halving over 3 windows (15 → 7.5 expected
    /// events) is within the noise too. Its recall is asserted separately, per kind.
    const LOW_COUNT: &str = "poisson-5";

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Kind {
        Spike,
        Drop,
        Silence,
        Shift,
    }

    const KINDS: [Kind; 4] = [Kind::Spike, Kind::Drop, Kind::Silence, Kind::Shift];

    #[derive(Clone, Copy, Debug)]
    struct Event {
        kind: Kind,
        start: usize,
        /// Windows from `start` in which a flag detects the event.
        detect: usize,
        /// Windows from `start` in which a flag is not a false positive.
        grace: usize,
    }

    struct Labeled {
        values: Vec<f64>,
        events: Vec<Event>,
    }

    const SERIES_WINDOWS: usize = 3_000;

    fn generate(family: &Family, seed: u64, anomalies: bool, baseline: usize) -> Labeled {
        let mut rng = Rng(seed);
        let len = SERIES_WINDOWS;
        let phase = rng.range(0.0, std::f64::consts::TAU);
        let mut factor = vec![1.0; len];
        let mut added = vec![0.0; len];
        let mut silent = vec![false; len];
        let mut events = Vec::new();
        let mut t = 2 * baseline + rng.int(0, baseline);
        while anomalies && t + 200 + 3 * baseline < len {
            let kind = family.kinds[rng.int(0, family.kinds.len() - 1)];
            let span = match kind {
                Kind::Spike => {
                    match family.noise {
                        Noise::Poisson => factor[t] = rng.range(3.0, 5.0),
                        Noise::Gaussian(sd) => added[t] = rng.range(6.0, 10.0) * sd,
                    }
                    events.push(Event { kind, start: t, detect: 1, grace: 1 });
                    1
                }
                Kind::Drop | Kind::Silence => {
                    let span = if kind == Kind::Drop { rng.int(1, 3) } else { rng.int(3, 10) };
                    factor[t..t + span].fill(0.2);
                    silent[t..t + span].fill(kind == Kind::Silence);
                    events.push(Event { kind, start: t, detect: span, grace: span });
                    span
                }
                Kind::Shift => {
                    let span = rng.int(100, 200);
                    let f = if rng.uniform() < 0.5 { 2.0 } else { 0.5 };
                    factor[t..t + span].fill(f);
                    events.push(Event { kind, start: t, detect: 3, grace: baseline });
                    events.push(Event { kind, start: t + span, detect: 3, grace: baseline });
                    span
                }
            };
            t += span + rng.int(family.gap.0, family.gap.1);
        }
        let values = (0..len)
            .map(|t| {
                let wave = family.rhythm.map_or(0.0, |(period, amplitude)| {
                    amplitude * (std::f64::consts::TAU * t as f64 / period + phase).sin()
                });
                let level = family.mean * (1.0 + wave) * factor[t];
                match family.noise {
                    _ if silent[t] => 0.0,
                    Noise::Poisson => rng.poisson(level),
                    Noise::Gaussian(sd) => level + sd * rng.normal() + added[t],
                }
            })
            .collect();
        Labeled { values, events }
    }

    #[derive(Clone, Copy, Debug, Default)]
    struct Tally {
        events: [usize; 4],
        detected: [usize; 4],
        flags: usize,
        true_flags: usize,
        clean_windows: usize,
        clean_flags: usize,
    }

    impl Tally {
        fn add(&mut self, other: &Tally) {
            for k in 0..KINDS.len() {
                self.events[k] += other.events[k];
                self.detected[k] += other.detected[k];
            }
            self.flags += other.flags;
            self.true_flags += other.true_flags;
            self.clean_windows += other.clean_windows;
            self.clean_flags += other.clean_flags;
        }

        fn recall(&self) -> f64 {
            self.detected.iter().sum::<usize>() as f64 / self.events.iter().sum::<usize>().max(1) as f64
        }

        fn kind_recall(&self, kind: Kind) -> f64 {
            let k = KINDS.iter().position(|k| *k == kind).unwrap_or(0);
            self.detected[k] as f64 / self.events[k].max(1) as f64
        }

        /// The recall of one kind for the table: "–" if none was injected.
        fn kind_cell(&self, kind: Kind) -> String {
            let k = KINDS.iter().position(|k| *k == kind).unwrap_or(0);
            if self.events[k] == 0 { "–".into() } else { format!("{:.2}", self.kind_recall(kind)) }
        }

        fn precision(&self) -> f64 {
            if self.flags == 0 { 1.0 } else { self.true_flags as f64 / self.flags as f64 }
        }

        fn f1(&self) -> f64 {
            let (p, r) = (self.precision(), self.recall());
            if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) }
        }

        fn false_per_1000(&self) -> f64 {
            1000.0 * self.clean_flags as f64 / self.clean_windows.max(1) as f64
        }
    }

    fn evaluate(spec: &DetectorSpec, family: &Family, seed: u64) -> Tally {
        let mut tally = Tally::default();
        for s in 0..family.series {
            let clean = generate(family, seed ^ (2 * s), false, spec.baseline);
            let mut d = SeriesDetector::new(spec);
            tally.clean_windows += clean.values.len();
            tally.clean_flags += clean.values.iter().filter(|x| d.observe(**x).flag).count();

            let labeled = generate(family, seed ^ (2 * s + 1), true, spec.baseline);
            let mut d = SeriesDetector::new(spec);
            let flags: Vec<bool> = labeled.values.iter().map(|x| d.observe(*x).flag).collect();
            let mut excused = vec![false; flags.len()];
            for e in &labeled.events {
                let k = KINDS.iter().position(|k| *k == e.kind).unwrap_or(0);
                tally.events[k] += 1;
                tally.detected[k] += usize::from(flags[e.start..e.start + e.detect].iter().any(|f| *f));
                excused[e.start..(e.start + e.grace).min(flags.len())].fill(true);
            }
            tally.flags += flags.iter().filter(|f| **f).count();
            tally.true_flags += flags.iter().zip(&excused).filter(|(f, e)| **f && **e).count();
        }
        tally
    }

    struct Results {
        families: Vec<(&'static str, Tally)>,
        all: Tally,
        /// Every family but [`LOW_COUNT`].
        informative: Tally,
    }

    /// Runs the benchmark for one spec and prints its table (`cargo test -- --nocapture`).
    fn benchmark(spec: &DetectorSpec) -> Results {
        let mut results = Results { families: Vec::new(), all: Tally::default(), informative: Tally::default() };
        for (i, family) in FAMILIES.iter().enumerate() {
            let tally = evaluate(spec, family, 0x5EED_0000 + 1000 * i as u64);
            results.all.add(&tally);
            if family.name != LOW_COUNT {
                results.informative.add(&tally);
            }
            results.families.push((family.name, tally));
        }
        let rows = results.families.iter().map(|(n, t)| (*n, t));
        let totals = [("all families", &results.all), ("all but poisson-5", &results.informative)];
        println!("\n{} (threshold {}, baseline {})\n", spec.method.name(), spec.threshold, spec.baseline);
        println!("| family | events | precision | recall | F1 | FP/1000 clean | spike | drop | silence | shift |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (name, t) in rows.chain(totals) {
            println!(
                "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {} | {} | {} | {} |",
                t.events.iter().sum::<usize>(),
                t.precision(),
                t.recall(),
                t.f1(),
                t.false_per_1000(),
                t.kind_cell(Kind::Spike),
                t.kind_cell(Kind::Drop),
                t.kind_cell(Kind::Silence),
                t.kind_cell(Kind::Shift),
            );
        }
        results
    }

    /// What one method keeps at its default threshold, a little below what it measures.
    struct Bounds {
        /// Recall in each family but poisson-5.
        family_recall: f64,
        /// Recall over all families but poisson-5.
        informative_recall: f64,
        /// Recall over all families.
        all_recall: f64,
    }

    fn assert_benchmark(method: Method, bounds: Bounds) {
        let results = benchmark(&DetectorSpec::new(method));
        for (name, t) in &results.families {
            // The defaults were chosen to keep this under 0.5; the requirement is 1.
            assert!(t.false_per_1000() <= 0.5, "{method:?} {name}: {:.2} false flags per 1000", t.false_per_1000());
            assert!(t.precision() >= 0.98, "{method:?} {name}: precision {:.3}", t.precision());
            if *name == LOW_COUNT {
                let (spikes, silences) = (t.kind_recall(Kind::Spike), t.kind_recall(Kind::Silence));
                assert!(spikes >= 0.45, "{method:?} {name}: spikes {spikes:.2}");
                assert!(silences >= 0.75, "{method:?} {name}: silences {silences:.2}");
            } else {
                assert!(t.recall() >= bounds.family_recall, "{method:?} {name}: recall {:.3}", t.recall());
            }
        }
        let (all, informative) = (&results.all, &results.informative);
        assert!(all.precision() >= 0.99, "{method:?}: precision {:.3}", all.precision());
        let recall = informative.recall();
        assert!(recall >= bounds.informative_recall, "{method:?}: recall {recall:.3} without poisson-5");
        assert!(all.recall() >= bounds.all_recall, "{method:?}: recall {:.3}", all.recall());
    }

    #[test]
    fn zscore_meets_the_benchmark_bounds() {
        assert_benchmark(Method::ZScore, Bounds { family_recall: 0.9, informative_recall: 0.95, all_recall: 0.9 });
    }

    #[test]
    fn mad_meets_the_benchmark_bounds() {
        assert_benchmark(Method::Mad, Bounds { family_recall: 0.7, informative_recall: 0.88, all_recall: 0.82 });
    }

    #[test]
    fn ewma_meets_the_benchmark_bounds() {
        assert_benchmark(Method::Ewma, Bounds { family_recall: 0.8, informative_recall: 0.92, all_recall: 0.87 });
    }
}
