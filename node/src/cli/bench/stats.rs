//! What a timed run measured, and the lines it prints: the workload's output format
//! (`total_ops=…`, `latency_ms …`, last line `RESULT …`) so that the baseline's
//! `summarize.sh` reads a swarmkv run file exactly like an etcd one, or the same as JSON.

use std::time::Duration;

use serde::Serialize;

/// The `p`-th percentile of `sorted` (ascending) by nearest rank: `sorted[ceil(p/100 * n) - 1]`,
/// the rule of the workload. `None` for no samples.
pub fn nearest_rank(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The latency distribution of all requests of all clients, in milliseconds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    pub max: f64,
}

impl Latency {
    /// From per-request latencies in nanoseconds (sorted here). All zero for no samples.
    pub fn of(mut nanos: Vec<u64>) -> Latency {
        nanos.sort_unstable();
        let ms = |p: f64| nearest_rank(&nanos, p).map_or(0.0, |ns| ns as f64 / 1e6);
        let mean = if nanos.is_empty() {
            0.0
        } else {
            nanos.iter().map(|&n| n as f64).sum::<f64>() / nanos.len() as f64 / 1e6
        };
        Latency {
            mean,
            p50: ms(50.0),
            p90: ms(90.0),
            p99: ms(99.0),
            p99_9: ms(99.9),
            max: ms(100.0),
        }
    }
}

/// One timed run's result: everything the text and JSON outputs show.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `put`, `get-linearizable` or `get-serializable`.
    pub op: String,
    /// `swarmkv-peer` (libp2p), `swarmkv-http` (the gateway) or `etcd`.
    pub system: String,
    /// How the swarmkv libp2p clients chose the node of each request: `leader` (each
    /// partition's leader, by the client's routing table) or `one-node` (every request to the
    /// client's own node); absent for the other systems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<String>,
    pub clients: usize,
    /// Connections the clients used (as many as clients unless `--share-connections`).
    pub connections: usize,
    pub endpoints: usize,
    pub value_size: usize,
    pub keys: u64,
    pub requested_ops: u64,
    /// Operations that succeeded in the timed phase.
    pub total_ops: u64,
    pub errors: u64,
    /// Reads of absent keys (0 once the key space is preloaded).
    pub misses: u64,
    /// The timed phase: from the barrier to the last response of the last client.
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub latency_ms: Latency,
    /// Whether the time bound stopped the run before every requested operation was issued.
    pub stopped_early: bool,
    pub max_seconds: f64,
    /// The first failed request's error, if any failed.
    pub first_error: Option<String>,
}

impl Report {
    /// Assembles the report of a timed phase of `elapsed` that gathered `latencies_ns`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        op: &str,
        system: &str,
        shape: Shape,
        latencies_ns: Vec<u64>,
        errors: u64,
        misses: u64,
        elapsed: Duration,
        first_error: Option<String>,
    ) -> Report {
        let total_ops = latencies_ns.len() as u64;
        let seconds = elapsed.as_secs_f64();
        let ops_per_sec = if seconds > 0.0 {
            total_ops as f64 / seconds
        } else {
            0.0
        };
        Report {
            op: op.to_string(),
            system: system.to_string(),
            routing: shape.routing.map(str::to_string),
            clients: shape.clients,
            connections: shape.connections,
            endpoints: shape.endpoints,
            value_size: shape.value_size,
            keys: shape.keys,
            requested_ops: shape.requested_ops,
            total_ops,
            errors,
            misses,
            seconds,
            ops_per_sec,
            latency_ms: Latency::of(latencies_ns),
            stopped_early: total_ops + errors < shape.requested_ops,
            max_seconds: shape.max_seconds,
            first_error,
        }
    }

    /// The text output, one line per element; the last is the `RESULT` line.
    pub fn lines(&self) -> Vec<String> {
        let l = &self.latency_ms;
        let mut out = vec![
            format!(
                "op={} system={} clients={} connections={} endpoints={} value_size={} keys={} \
                 requested_ops={}{}",
                self.op,
                self.system,
                self.clients,
                self.connections,
                self.endpoints,
                self.value_size,
                self.keys,
                self.requested_ops,
                self.routing
                    .as_deref()
                    .map(|r| format!(" routing={r}"))
                    .unwrap_or_default()
            ),
            format!(
                "total_ops={} errors={} seconds={:.3} ops/s={:.1}",
                self.total_ops, self.errors, self.seconds, self.ops_per_sec
            ),
            format!(
                "latency_ms mean={:.3} p50={:.3} p90={:.3} p99={:.3} p99.9={:.3} max={:.3}",
                l.mean, l.p50, l.p90, l.p99, l.p99_9, l.max
            ),
        ];
        if self.op.starts_with("get") {
            out.push(format!(
                "misses={} (reads of absent keys; 0 once the key space is preloaded)",
                self.misses
            ));
        }
        if self.stopped_early {
            out.push(format!(
                "NOTE: stopped early: {} of {} ops done ({} errors) within --max-seconds {}",
                self.total_ops, self.requested_ops, self.errors, self.max_seconds
            ));
        }
        if let Some(e) = &self.first_error {
            out.push(format!("first_error: {e}"));
        }
        out.push(self.result_line());
        out
    }

    /// `RESULT op=<op> clients=<C> ops/s=<X> p50_ms=<Y> p99_ms=<Z>`.
    pub fn result_line(&self) -> String {
        format!(
            "RESULT op={} clients={} ops/s={:.1} p50_ms={:.3} p99_ms={:.3}",
            self.op, self.clients, self.ops_per_sec, self.latency_ms.p50, self.latency_ms.p99
        )
    }
}

/// The parameters of a run that its report repeats.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub clients: usize,
    pub connections: usize,
    pub endpoints: usize,
    pub value_size: usize,
    pub keys: u64,
    pub requested_ops: u64,
    pub max_seconds: f64,
    /// See [`Report::routing`].
    pub routing: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_nearest_rank_rule() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 50.0), Some(50));
        assert_eq!(nearest_rank(&v, 99.0), Some(99));
        assert_eq!(nearest_rank(&v, 99.9), Some(100));
        assert_eq!(nearest_rank(&v, 100.0), Some(100));
        assert_eq!(nearest_rank(&v, 0.0), Some(1));
        // ceil(0.5 * 5) - 1 = 2: the third of five, no interpolation.
        assert_eq!(nearest_rank(&[10, 20, 30, 40, 50], 50.0), Some(30));
        // ceil(0.9 * 4) - 1 = 3.
        assert_eq!(nearest_rank(&[1, 2, 3, 4], 90.0), Some(4));
        assert_eq!(nearest_rank(&[7], 99.9), Some(7));
        assert_eq!(nearest_rank(&[], 50.0), None);
    }

    #[test]
    fn latency_is_in_milliseconds_from_unsorted_nanoseconds() {
        let l = Latency::of(vec![3_000_000, 1_000_000, 2_000_000, 4_000_000]);
        assert_eq!(l.p50, 2.0);
        assert_eq!(l.p90, 4.0);
        assert_eq!(l.max, 4.0);
        assert_eq!(l.mean, 2.5);
    }

    fn shape(requested_ops: u64) -> Shape {
        Shape {
            clients: 4,
            connections: 4,
            endpoints: 3,
            value_size: 256,
            keys: 1000,
            requested_ops,
            max_seconds: 30.0,
            routing: Some("leader"),
        }
    }

    #[test]
    fn the_text_output_has_the_lines_summarize_sh_reads_and_ends_with_result() {
        let r = Report::new(
            "put",
            "swarmkv-peer",
            shape(4),
            vec![1_000_000, 2_000_000, 3_000_000, 4_000_000],
            0,
            0,
            Duration::from_millis(500),
            None,
        );
        let lines = r.lines();
        assert_eq!(
            lines[1], "total_ops=4 errors=0 seconds=0.500 ops/s=8.0",
            "{lines:?}"
        );
        assert_eq!(
            lines[2],
            "latency_ms mean=2.500 p50=2.000 p90=4.000 p99=4.000 p99.9=4.000 max=4.000"
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some("RESULT op=put clients=4 ops/s=8.0 p50_ms=2.000 p99_ms=4.000")
        );
        assert!(!lines.iter().any(|l| l.starts_with("NOTE")));
    }

    #[test]
    fn a_run_cut_by_the_time_bound_says_so() {
        let r = Report::new(
            "get-linearizable",
            "etcd",
            shape(10),
            vec![1_000_000; 6],
            1,
            0,
            Duration::from_secs(30),
            Some("timeout".into()),
        );
        let lines = r.lines();
        assert!(lines
            .iter()
            .any(|l| l.starts_with("NOTE: stopped early: 6 of 10 ops")));
        assert!(lines.iter().any(|l| l.starts_with("misses=0")));
        assert!(lines.iter().any(|l| l == "first_error: timeout"));
        let json = serde_json::to_value(&r).expect("a report serialises");
        assert_eq!(json["latency_ms"]["p99.9"], 1.0);
        assert_eq!(json["stopped_early"], true);
    }
}
