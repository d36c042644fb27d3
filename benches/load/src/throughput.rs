//! Throughput and latency under `wrk`, each target in turn, round after round, so that
//! whatever else the machine does falls on all of them alike.

use std::path::Path;
use std::process::Stdio;

use crate::server::{command, CLIENT_CORE};

/// One URL to load, with the headers each request carries. The headers may hold a
/// credential, so `Debug` leaves them out.
pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) url: String,
    pub(crate) headers: Vec<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// How hard and how long.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub(crate) connections: u32,
    pub(crate) seconds: u32,
    pub(crate) rounds: u32,
    pub(crate) pin: bool,
}

/// What one `wrk` run reported.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Sample {
    pub(crate) requests: u64,
    pub(crate) seconds: f64,
    /// Responses that were neither 2xx nor 3xx.
    pub(crate) non_2xx: u64,
    /// Connect, read, write errors and timeouts.
    pub(crate) socket_errors: u64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

impl Sample {
    pub(crate) fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// Prints the run's numbers as one line that [`parse`] reads back; `wrk`'s own text
/// rounds latencies to two decimals of a varying unit.
const SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "PORTCULLIS-LOAD %d %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(99)))
end
"#;

/// Reads the line [`SCRIPT`] printed.
pub(crate) fn parse(output: &str) -> Result<Sample, String> {
    let line = output
        .lines()
        .find_map(|line| line.strip_prefix("PORTCULLIS-LOAD "))
        .ok_or_else(|| format!("wrk printed no summary:\n{output}"))?;
    let numbers: Vec<f64> = line
        .split_whitespace()
        .map(|n| {
            n.parse::<f64>()
                .map_err(|e| format!("{n:?} in {line:?}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let [requests, duration_us, status, connect, read, write, timeout, p50, p99] = numbers[..]
    else {
        return Err(format!("expected nine numbers in {line:?}"));
    };
    if duration_us <= 0.0 {
        return Err(format!("a run of no time: {line:?}"));
    }
    Ok(Sample {
        requests: requests as u64,
        seconds: duration_us / 1e6,
        non_2xx: status as u64,
        socket_errors: (connect + read + write + timeout) as u64,
        p50_us: p50,
        p99_us: p99,
    })
}

/// One `wrk` run against `target`.
async fn run_wrk(
    target: &Target,
    shape: Shape,
    seconds: u32,
    script: &Path,
) -> Result<Sample, String> {
    let connections = shape.connections.to_string();
    let duration = format!("{seconds}s");
    let script = script.to_string_lossy();
    let mut args: Vec<&str> = vec![
        "-t1",
        "-c",
        &connections,
        "-d",
        &duration,
        "--latency",
        "-s",
        &script,
    ];
    for header in &target.headers {
        args.extend(["-H", header]);
    }
    args.push(&target.url);
    let output = command(shape.pin, CLIENT_CORE, Path::new("wrk"), &args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running wrk (apt-get install wrk): {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "wrk against {}: {}\n{stdout}{}",
            target.name,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let sample = parse(&stdout)?;
    // A refused request costs less than an answered one: a run with refusals measures
    // something else, so it is an error, not a number.
    if sample.non_2xx > 0 || sample.socket_errors > 0 {
        return Err(format!(
            "{}: {} responses were not 2xx and {} requests failed; the comparison needs every request answered",
            target.name, sample.non_2xx, sample.socket_errors
        ));
    }
    Ok(sample)
}

/// Warms each target up, then runs every target once per round, starting each round
/// one target further along. Returns the samples per target, in `targets`' order.
pub(crate) async fn measure(
    targets: &[Target],
    shape: Shape,
    dir: &Path,
) -> Result<Vec<Vec<Sample>>, String> {
    let script = dir.join("summary.lua");
    std::fs::write(&script, SCRIPT).map_err(|e| format!("writing {}: {e}", script.display()))?;
    for target in targets {
        eprintln!("load: warming up {}", target.name);
        run_wrk(target, shape, 3, &script).await?;
    }
    let mut samples = vec![Vec::new(); targets.len()];
    for round in 0..shape.rounds as usize {
        for step in 0..targets.len() {
            let index = (round + step) % targets.len();
            let sample = run_wrk(&targets[index], shape, shape.seconds, &script).await?;
            eprintln!(
                "load: round {} {:<28} {:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs",
                round + 1,
                targets[index].name,
                sample.per_second(),
                sample.p50_us,
                sample.p99_us
            );
            samples[index].push(sample);
        }
    }
    Ok(samples)
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The table of medians and ratios to the first target, in Markdown, and whether each
/// target other than the first two met the goal (≥ 90 % of the baseline's throughput,
/// p99 ≤ 1.2× the baseline's).
pub(crate) fn report(targets: &[Target], samples: &[Vec<Sample>]) -> (String, bool) {
    let baseline = &samples[0];
    let base_rps = median(baseline.iter().map(Sample::per_second).collect());
    let base_p50 = median(baseline.iter().map(|s| s.p50_us).collect());
    let base_p99 = median(baseline.iter().map(|s| s.p99_us).collect());
    let mut out = String::from(
        "| target | requests/s | of baseline | p50 | of baseline | p99 | of baseline | throughput ratio, per round |\n\
         |---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let mut met = true;
    for (i, (target, runs)) in targets.iter().zip(samples).enumerate() {
        let rps = median(runs.iter().map(Sample::per_second).collect());
        let p50 = median(runs.iter().map(|s| s.p50_us).collect());
        let p99 = median(runs.iter().map(|s| s.p99_us).collect());
        // Each round's ratio against the baseline of the same round.
        let per_round: Vec<String> = runs
            .iter()
            .zip(baseline)
            .map(|(run, base)| format!("{:.2}", run.per_second() / base.per_second()))
            .collect();
        out.push_str(&format!(
            "| {} | {:.0} | {:.1} % | {:.0} µs | {:.2}× | {:.0} µs | {:.2}× | {} |\n",
            target.name,
            rps,
            100.0 * rps / base_rps,
            p50,
            p50 / base_p50,
            p99,
            p99 / base_p99,
            per_round.join(" ")
        ));
        if i >= 2 {
            met &= rps >= 0.9 * base_rps && p99 <= 1.2 * base_p99;
        }
    }
    (out, met)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_is_read_back() {
        let output = "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 8 connections\nPORTCULLIS-LOAD 20000 2000000 0 0 1 0 2 150 900\n";
        let sample = parse(output).unwrap();
        assert_eq!(sample.requests, 20_000);
        assert_eq!(sample.per_second(), 10_000.0);
        assert_eq!(sample.socket_errors, 3);
        assert_eq!((sample.p50_us, sample.p99_us), (150.0, 900.0));
    }

    #[test]
    fn a_missing_or_short_summary_is_an_error() {
        assert!(parse("Running 1s test\n")
            .unwrap_err()
            .contains("no summary"));
        assert!(parse("PORTCULLIS-LOAD 1 2 3\n")
            .unwrap_err()
            .contains("nine"));
        assert!(parse("PORTCULLIS-LOAD 1 0 0 0 0 0 0 1 1\n").is_err());
        assert!(parse("PORTCULLIS-LOAD x 1 0 0 0 0 0 1 1\n").is_err());
    }

    #[test]
    fn the_report_compares_medians_to_the_baseline() {
        let sample = |rps: f64, p99: f64| Sample {
            requests: rps as u64,
            seconds: 1.0,
            non_2xx: 0,
            socket_errors: 0,
            p50_us: 100.0,
            p99_us: p99,
        };
        let target = |name| Target {
            name,
            url: String::new(),
            headers: vec!["x-api-key: secret".into()],
        };
        let targets = [target("hello"), target("bare"), target("stack")];
        let samples = vec![
            vec![
                sample(1000.0, 100.0),
                sample(1200.0, 100.0),
                sample(1100.0, 100.0),
            ],
            vec![sample(500.0, 300.0); 3],
            vec![
                sample(990.0, 110.0),
                sample(1000.0, 119.0),
                sample(1090.0, 100.0),
            ],
        ];
        let (table, met) = report(&targets, &samples);
        assert!(met, "{table}");
        assert!(table.contains("| stack | 1000 | 90.9 % |"), "{table}");
        assert!(!format!("{:?}", targets[2]).contains("secret"));
        let slower = vec![
            samples[0].clone(),
            samples[1].clone(),
            vec![sample(980.0, 100.0); 3],
        ];
        assert!(!report(&targets, &slower).1);
        let later = vec![
            samples[0].clone(),
            samples[1].clone(),
            vec![sample(1100.0, 130.0); 3],
        ];
        assert!(!report(&targets, &later).1);
    }
}
