//! `weir detect` on labeled synthetic series: the real binary scores a CSV, and the
//! scores catch the injected spikes, drops, silences and level shifts while staying
//! quiet on noise and a daily rhythm.

use std::fmt::Write as _;
use std::process::Command;

/// splitmix64: a tiny deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.next().max(1e-12), self.next());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// An injected anomaly: its windows, and how many of them count as detected.
struct Injected {
    start: usize,
    len: usize,
}

/// 5-minute samples over 4 days of traffic around 200 with a ±40% daily rhythm; with
/// `inject`, a spike, a drop, a silence and a level shift.
fn series(seed: u64, inject: bool) -> (String, Vec<Injected>, usize) {
    let mut rng = Rng(seed);
    let n = 4 * 288;
    let mut csv = String::from("timestamp,value\n");
    let mut events = Vec::new();
    let at = |i: usize| 200 + (i % 5) * 180 + (seed as usize % 7) * 10;
    if inject {
        events.push(Injected { start: at(0), len: 1 }); // spike ×4
        events.push(Injected { start: at(1), len: 2 }); // drop to 20%
        events.push(Injected { start: at(2), len: 6 }); // silence
        events.push(Injected { start: at(3), len: 60 }); // level shift ×2
    }
    for i in 0..n {
        let rhythm = 1.0 + 0.4 * (2.0 * std::f64::consts::PI * i as f64 / 288.0).sin();
        let mut level = 200.0 * rhythm;
        for (k, e) in events.iter().enumerate() {
            if (e.start..e.start + e.len).contains(&i) {
                level *= [4.0, 0.2, 0.0, 2.0][k];
            }
        }
        let value = (level + level.sqrt() * rng.normal()).max(0.0).round();
        let ts = 1_795_305_600 + i as i64 * 300;
        writeln!(csv, "{ts},{value}").unwrap();
    }
    (csv, events, n)
}

fn run_detect(csv: &str, method: &str) -> Vec<(i64, f64)> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.csv"), dir.path().join("out.csv"));
    std::fs::write(&input, csv).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["detect", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .args(["--method", method])
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&output).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("timestamp,value,anomaly_score"));
    let rows: Vec<(i64, f64)> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), csv.lines().count() - 1, "one score per input row");
    rows
}

#[test]
fn weir_detect_scores_labeled_series_with_every_method() {
    for method in ["zscore", "mad", "ewma"] {
        let (mut detected, mut injected, mut true_flags, mut flags, mut clean_flags, mut clean_windows) = (0, 0, 0, 0, 0, 0);
        for seed in 0..3 {
            let (csv, events, _) = series(seed, true);
            let scores = run_detect(&csv, method);
            let window = |ts: i64| ((ts - 1_795_305_600) / 300) as usize;
            let flagged: Vec<usize> = scores.iter().filter(|(_, s)| *s >= 0.5).map(|(ts, _)| window(*ts)).collect();
            for e in &events {
                injected += 1;
                let span = e.start..e.start + e.len.min(3) + 1;
                if flagged.iter().any(|w| span.contains(w)) {
                    detected += 1;
                }
            }
            for w in &flagged {
                flags += 1;
                if events.iter().any(|e| (e.start..e.start + e.len + 30).contains(w)) {
                    true_flags += 1;
                }
            }
            let (csv, _, n) = series(seed + 100, false);
            clean_flags += run_detect(&csv, method).iter().filter(|(_, s)| *s >= 0.5).count();
            clean_windows += n;
        }
        let recall = detected as f64 / injected as f64;
        let precision = if flags == 0 { 1.0 } else { true_flags as f64 / flags as f64 };
        println!("{method}: recall {recall:.2} ({detected}/{injected}), precision {precision:.2}, clean false flags {clean_flags} in {clean_windows} windows");
        assert!(recall >= 0.9, "{method}: recall {recall}");
        assert!(precision >= 0.8, "{method}: precision {precision}");
        assert!(clean_flags * 1000 <= 2 * clean_windows, "{method}: {clean_flags} flags on clean series");
    }
}
