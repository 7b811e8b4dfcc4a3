//! What a workload hands back: the machine it ran on, the exact command, its
//! figures as rows, notes, and the checks that failed. Printed as Markdown,
//! written as JSON with `--json FILE`.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// One measured figure.
#[derive(serde::Serialize)]
pub struct Row {
    pub case: String,
    pub metric: String,
    pub value: f64,
    pub unit: &'static str,
}

/// Latency by percentile for one case: (percentile, ms) points.
#[derive(serde::Serialize)]
pub struct Curve {
    pub case: String,
    pub points: Vec<(f64, f64)>,
}

/// One line of a plot over time: (seconds, value) points.
#[derive(serde::Serialize)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A plot over time (throughput over time, a failover timeline): its
/// lines, and marked instants (such as "leader killed").
#[derive(serde::Serialize)]
pub struct Timeline {
    pub title: String,
    /// What the values are, with their unit ("appends/s").
    pub y_label: String,
    pub series: Vec<Series>,
    /// (seconds, label) instants drawn as vertical lines.
    pub marks: Vec<(f64, String)>,
}

#[derive(serde::Serialize)]
pub struct Report {
    pub command: String,
    pub machine: Machine,
    /// What ran: woof-bench's version, the source commit when known, the
    /// kernel, and the version of any peer measured.
    pub versions: std::collections::BTreeMap<String, String>,
    pub rows: Vec<Row>,
    /// Remarks on the run (a leader that moved during a case, topics that
    /// did not go to sleep in time); printed under the table.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Latency distributions, for plots (`--plots`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub curves: Vec<Curve>,
    /// Figures over time, for plots (`--plots`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timelines: Vec<Timeline>,
    /// Checks that failed: the run is reported, then `woof-bench` fails.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

impl Report {
    /// An empty report of the running command on `machine`.
    pub fn new(machine: Machine) -> Self {
        let mut versions = std::collections::BTreeMap::new();
        versions.insert("woof-bench".into(), env!("CARGO_PKG_VERSION").into());
        if let Some(commit) = git_commit() {
            versions.insert("commit".into(), commit);
        }
        if let Ok(kernel) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
            versions.insert("kernel".into(), kernel.trim().into());
        }
        Self {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            machine,
            versions,
            rows: Vec::new(),
            curves: Vec::new(),
            timelines: Vec::new(),
            notes: Vec::new(),
            failures: Vec::new(),
        }
    }

    pub fn row(
        &mut self,
        case: impl Into<String>,
        metric: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) {
        self.rows.push(Row {
            case: case.into(),
            metric: metric.into(),
            value,
            unit,
        });
    }

    /// The ratio of `metric` between two cases already reported
    /// (`numerator` over `denominator`), as a row of `case`; nothing if
    /// either is missing.
    pub fn ratio(&mut self, case: String, metric: &str, numerator: &str, denominator: &str) {
        let value = |c: &str| {
            self.rows
                .iter()
                .find(|r| r.case == c && r.metric == metric)
                .map(|r| r.value)
        };
        if let (Some(n), Some(d)) = (value(numerator), value(denominator))
            && d > 0.0
        {
            self.row(case, format!("{metric} ratio"), n / d, "x");
        }
    }

    /// The latency distribution of `case` (a histogram in nanoseconds), for
    /// plots.
    pub fn curve(&mut self, case: &str, h: &Histogram<u64>) {
        self.curves.push(Curve {
            case: case.to_string(),
            points: crate::plot::PERCENTILES
                .iter()
                .map(|p| (*p, ms(h.value_at_percentile(*p))))
                .collect(),
        });
    }

    /// p50, p99 and p99.9 of a histogram recorded in nanoseconds, as rows
    /// named `latency p50` (or `{what} latency p50`), and its curve.
    pub fn latencies(&mut self, case: &str, what: &str, h: &Histogram<u64>) {
        for (q, name) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
            let metric = format!("{what} latency {name}");
            self.row(case, metric.trim_start(), ms(h.value_at_quantile(q)), "ms");
        }
        self.curve(case, h);
    }

    /// Adds a line to the plot over time titled `title` (made on first use).
    pub fn over_time(&mut self, title: &str, y_label: &str, series: Series) {
        match self.timelines.iter_mut().find(|t| t.title == title) {
            Some(t) => t.series.push(series),
            None => self.timelines.push(Timeline {
                title: title.into(),
                y_label: y_label.into(),
                series: vec![series],
                marks: Vec::new(),
            }),
        }
    }

    /// A latency quantile of a histogram recorded in nanoseconds, in ms.
    pub fn latency(&mut self, case: &str, name: &str, h: &Histogram<u64>, q: f64) {
        self.row(
            case,
            format!("latency {name}"),
            ms(h.value_at_quantile(q)),
            "ms",
        );
    }

    pub fn markdown(&self) -> String {
        let versions: Vec<String> = self
            .versions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let mut s = format!(
            "command: `{}`\nmachine: {} cores, {:.1} GiB memory, disk sync (4 KiB write + fdatasync) p50 {:.3} ms\nversions: {}\n\n",
            self.command,
            self.machine.cores,
            self.machine.memory_gib,
            self.machine.sync_p50_ms,
            versions.join(", ")
        );
        s.push_str("| case | metric | value |\n|---|---|---|\n");
        for r in &self.rows {
            // Counts as integers; measures to three decimals.
            let value = if r.value.fract() == 0.0 && r.value.abs() < 1e15 {
                format!("{:.0}", r.value)
            } else {
                format!("{:.3}", r.value)
            };
            let value = format!("{value} {}", r.unit);
            s.push_str(&format!(
                "| {} | {} | {} |\n",
                r.case,
                r.metric,
                value.trim_end()
            ));
        }
        for n in &self.notes {
            s.push_str(&format!("\nnote: {n}"));
        }
        for f in &self.failures {
            s.push_str(&format!("\nFAILED: {f}"));
        }
        s
    }
}

/// Waits for every client task of a case and adds up what they counted
/// and their latency histograms; the first task that failed fails the case.
pub async fn gather(
    mut tasks: tokio::task::JoinSet<anyhow::Result<(u64, Histogram<u64>)>>,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let mut total = 0;
    let mut hist = Histogram::<u64>::new(3)?;
    while let Some(t) = tasks.join_next().await {
        let (count, h) = t??;
        total += count;
        hist.add(h)?;
    }
    Ok((total, hist))
}

/// Elements completed over a case's run, counted in buckets of
/// [`Pace::BUCKET`] from its start, for a throughput-over-time plot; the
/// case's clients share one.
pub struct Pace {
    start: Instant,
    /// Buckets wholly inside the case's run.
    whole: usize,
    buckets: Vec<AtomicU64>,
}

impl Pace {
    pub const BUCKET: Duration = Duration::from_millis(250);

    /// A pace for a case of `secs` seconds starting now (completions after
    /// a few seconds more count in the last bucket).
    pub fn new(secs: u64) -> std::sync::Arc<Self> {
        let bucket = Self::BUCKET.as_millis();
        let n = (Duration::from_secs(secs + 2).as_millis() / bucket) as usize;
        std::sync::Arc::new(Self {
            start: Instant::now(),
            whole: (Duration::from_secs(secs).as_millis() / bucket) as usize,
            buckets: (0..n.max(1)).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Counts `n` elements completed now.
    pub fn record(&self, n: u64) {
        let i = (self.start.elapsed().as_millis() / Self::BUCKET.as_millis()) as usize;
        self.buckets[i.min(self.buckets.len() - 1)].fetch_add(n, Ordering::Relaxed);
    }

    /// Elements per second in each bucket of the run (not the stragglers
    /// after its end), at the bucket's middle.
    pub fn series(&self, name: impl Into<String>) -> Series {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let used = self.whole.min(counts.len());
        let width = Self::BUCKET.as_secs_f64();
        Series {
            name: name.into(),
            points: counts[..used]
                .iter()
                .enumerate()
                .map(|(i, c)| ((i as f64 + 0.5) * width, *c as f64 / width))
                .collect(),
        }
    }
}

/// How long [`settle_disk`] waits at most.
const SETTLE_MAX: Duration = Duration::from_secs(120);

/// Waits until the kernel has written back what earlier cases left in the
/// page cache (`sync`, at most [`SETTLE_MAX`]): the standalone node's batches
/// leave gigabytes behind, and the next part's fsyncs would otherwise queue
/// behind their writeback (that halved the 3-replica figures of one run).
pub fn settle_disk() {
    let started = Instant::now();
    let Ok(mut child) = std::process::Command::new("sync").spawn() else {
        eprintln!("could not run sync; going on without waiting for writeback");
        return;
    };
    while started.elapsed() < SETTLE_MAX {
        if let Ok(Some(_)) = child.try_wait() {
            eprintln!(
                "disk settled (sync) in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("sync still running after {SETTLE_MAX:?}; going on");
}

/// The commit of the source tree the bench runs in, if it is a git checkout.
fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !commit.is_empty()).then_some(commit)
}

/// Nanoseconds to milliseconds.
pub fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

#[derive(serde::Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub sync_p50_ms: f64,
}

/// The machine, and what one synced write costs on its disk (in `dir`).
pub fn probe_machine(dir: &Path) -> anyhow::Result<Machine> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let path = dir.join("sync-probe");
    let mut file = std::fs::File::create(&path)?;
    let mut h = Histogram::<u64>::new(3)?;
    for _ in 0..200 {
        let t = Instant::now();
        file.write_all(&[0u8; 4096])?;
        file.sync_data()?;
        h.record(t.elapsed().as_nanos() as u64)?;
    }
    drop(file);
    let _ = std::fs::remove_file(path);
    Ok(Machine {
        cores,
        memory_gib,
        sync_p50_ms: ms(h.value_at_quantile(0.5)),
    })
}

/// The median of `v` (the mean of the middle two for an even count; 0 for
/// none).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_counts_per_bucket_within_the_run_only() {
        let pace = Pace::new(1);
        pace.record(10);
        pace.record(5);
        let series = pace.series("a");
        // 1 s holds four whole buckets of 250 ms; the stragglers' room
        // after it is not drawn.
        assert_eq!(series.points.len(), 4);
        assert_eq!(series.points[0], (0.125, 60.0));
        assert!(series.points[1..].iter().all(|p| p.1 == 0.0));
    }

    #[test]
    fn latencies_are_rows_and_a_curve() {
        let machine = Machine {
            cores: 2,
            memory_gib: 1.0,
            sync_p50_ms: 0.1,
        };
        let mut report = Report::new(machine);
        let mut h = Histogram::<u64>::new(3).unwrap();
        for ms in 1..=1000u64 {
            h.record(ms * 1_000_000).unwrap();
        }
        report.latencies("c", "batch", &h);
        let metrics: Vec<&str> = report.rows.iter().map(|r| r.metric.as_str()).collect();
        assert_eq!(
            metrics,
            [
                "batch latency p50",
                "batch latency p99",
                "batch latency p99.9"
            ]
        );
        assert!((report.rows[0].value - 500.0).abs() < 1.0);
        assert_eq!(report.curves.len(), 1);
    }
}
