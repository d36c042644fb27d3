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
    /// The server's process, whose CPU time is read around each run.
    pub(crate) pid: Option<u32>,
    /// The process the server forwards each request to, if it is a proxy: its CPU
    /// time is counted with the server's.
    pub(crate) upstream_pid: Option<u32>,
    /// The least CPU-bound ratio to the baseline (baseline CPU per request over this
    /// target's) the target must keep, if it is judged.
    pub(crate) goal: Option<f64>,
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
    /// The server's CPU time (user and system, all threads) during the run, with its
    /// upstream's when it has one.
    pub(crate) cpu_seconds: Option<f64>,
    /// The upstream's share of `cpu_seconds`, when the server is a proxy.
    pub(crate) upstream_cpu_seconds: Option<f64>,
    /// The one-minute load average when the run ended.
    pub(crate) load_average: Option<f64>,
}

impl Sample {
    pub(crate) fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    /// The server's CPU time per request, in µs: what the server (and its upstream)
    /// spent, whatever the load generator on the other core could or could not send.
    pub(crate) fn cpu_us_per_request(&self) -> Option<f64> {
        let cpu = self.cpu_seconds?;
        (self.requests > 0).then(|| cpu * 1e6 / self.requests as f64)
    }

    /// The upstream's share of [`cpu_us_per_request`](Self::cpu_us_per_request).
    pub(crate) fn upstream_cpu_us_per_request(&self) -> Option<f64> {
        let cpu = self.upstream_cpu_seconds?;
        (self.requests > 0).then(|| cpu * 1e6 / self.requests as f64)
    }
}

/// A process's CPU time so far (utime + stime of `/proc/PID/stat`, which count every
/// thread), in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / ticks_per_second())
}

/// utime + stime from a `/proc/PID/stat` line. The command name is in parentheses and
/// may hold spaces, so fields are counted after its closing one.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `getconf CLK_TCK` (100 on Linux unless configured otherwise).
fn ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The one-minute load average.
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
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
        cpu_seconds: None,
        upstream_cpu_seconds: None,
        load_average: None,
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
    let cpu_before = target.pid.and_then(cpu_seconds);
    let upstream_before = target.upstream_pid.and_then(cpu_seconds);
    let output = command(shape.pin, CLIENT_CORE, Path::new("wrk"), &args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running wrk (apt-get install wrk): {e}"))?;
    let cpu_after = target.pid.and_then(cpu_seconds);
    let upstream_after = target.upstream_pid.and_then(cpu_seconds);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "wrk against {}: {}\n{stdout}{}",
            target.name,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut sample = parse(&stdout)?;
    sample.upstream_cpu_seconds = upstream_before
        .zip(upstream_after)
        .map(|(before, after)| after - before);
    sample.cpu_seconds = cpu_before
        .zip(cpu_after)
        .map(|(before, after)| after - before + sample.upstream_cpu_seconds.unwrap_or(0.0));
    sample.load_average = load_average();
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
                "load: round {} {:<36} {:>9.0} req/s  CPU {:>5.1} µs/req  p50 {:>6.0} µs  p99 {:>6.0} µs  load {:.2}",
                round + 1,
                targets[index].name,
                sample.per_second(),
                sample.cpu_us_per_request().unwrap_or(f64::NAN),
                sample.p50_us,
                sample.p99_us,
                sample.load_average.unwrap_or(f64::NAN),
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

/// The table of medians and ratios to the first target, in Markdown, and whether every
/// judged target kept its goal: a CPU-bound ratio (the baseline's CPU per request over
/// the target's, medians of the rounds) at least its `goal`.
pub(crate) fn report(targets: &[Target], samples: &[Vec<Sample>]) -> (String, bool) {
    let median_of =
        |runs: &[Sample], value: fn(&Sample) -> f64| median(runs.iter().map(value).collect());
    let cpu = |s: &Sample| s.cpu_us_per_request().unwrap_or(f64::NAN);
    let baseline = &samples[0];
    let base_cpu = median_of(baseline, cpu);
    let base_rps = median_of(baseline, Sample::per_second);
    let mut out = String::from(
        "| target | server CPU µs / request | CPU-bound ratio to baseline | goal | requests/s | of baseline | p50 | p99 | CPU ratio, per round |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let mut met = true;
    for (target, runs) in targets.iter().zip(samples) {
        let target_cpu = median_of(runs, cpu);
        let ratio = base_cpu / target_cpu;
        let rps = median_of(runs, Sample::per_second);
        // Each round's ratio against the baseline of the same round.
        let per_round: Vec<String> = runs
            .iter()
            .zip(baseline)
            .map(|(run, base)| format!("{:.2}", cpu(base) / cpu(run)))
            .collect();
        let goal = match target.goal {
            Some(goal) => {
                let kept = ratio >= goal;
                met &= kept;
                format!("≥ {goal:.2} {}", if kept { "met" } else { "NOT met" })
            }
            None => "–".into(),
        };
        out.push_str(&format!(
            "| {} | {:.1} | {:.2} | {} | {:.0} | {:.1} % | {:.0} µs | {:.0} µs | {} |\n",
            target.name,
            target_cpu,
            ratio,
            goal,
            rps,
            100.0 * rps / base_rps,
            median_of(runs, |s| s.p50_us),
            median_of(runs, |s| s.p99_us),
            per_round.join(" ")
        ));
    }
    (out, met)
}

/// What forwarding costs: `local` serves the request itself behind the stack,
/// `proxied` has the same stack forward it to a bare upstream, `direct` is that upstream
/// alone. CPU per request, medians of the rounds, in a sentence for the report.
pub(crate) fn proxy_hop(
    stack: &str,
    direct: &[Sample],
    local: &[Sample],
    proxied: &[Sample],
) -> String {
    let median_of = |runs: &[Sample], value: fn(&Sample) -> Option<f64>| {
        median(runs.iter().map(|s| value(s).unwrap_or(f64::NAN)).collect())
    };
    let direct = median_of(direct, Sample::cpu_us_per_request);
    let local = median_of(local, Sample::cpu_us_per_request);
    let total = median_of(proxied, Sample::cpu_us_per_request);
    let upstream = median_of(proxied, Sample::upstream_cpu_us_per_request);
    let gateway = total - upstream;
    format!(
        "proxy hop, {stack}: bare axum called directly {direct:.1} µs of CPU per request; answering itself {local:.1} µs; \
         forwarding to bare axum {total:.1} µs ({gateway:.1} in the gateway, {upstream:.1} in the upstream): \
         the hop adds {:.1} µs per request, {:.1} of them in the gateway",
        total - local,
        gateway - local,
    )
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
    fn cpu_time_is_read_after_the_command_name() {
        let stat =
            "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 1 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("4242 (cut short) S 1 2"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis"), None);
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    /// A run of 1,000 requests that cost `cpu_us` µs of CPU each, `upstream_us` of them
    /// in the upstream.
    fn run_of(cpu_us: f64, upstream_us: Option<f64>) -> Sample {
        Sample {
            requests: 1000,
            seconds: 1.0,
            non_2xx: 0,
            socket_errors: 0,
            p50_us: 100.0,
            p99_us: 200.0,
            cpu_seconds: Some(cpu_us * 1000.0 / 1e6),
            upstream_cpu_seconds: upstream_us.map(|us| us * 1000.0 / 1e6),
            load_average: Some(1.0),
        }
    }

    #[test]
    fn the_report_compares_cpu_per_request_to_the_baseline() {
        let sample = |cpu_us: f64| run_of(cpu_us, None);
        let target = |name, goal| Target {
            name,
            url: String::new(),
            headers: vec!["x-api-key: secret".into()],
            pid: None,
            upstream_pid: None,
            goal,
        };
        let targets = [
            target("hello", None),
            target("peer", None),
            target("stack", Some(0.75)),
        ];
        let samples = vec![
            vec![sample(10.0), sample(11.0), sample(10.0)],
            vec![sample(40.0); 3],
            vec![sample(13.0), sample(13.3), sample(12.0)],
        ];
        let (table, met) = report(&targets, &samples);
        assert!(met, "{table}");
        assert!(
            table.contains("| stack | 13.0 | 0.77 | ≥ 0.75 met |"),
            "{table}"
        );
        assert!(table.contains("| peer | 40.0 | 0.25 | – |"), "{table}");
        assert!(!format!("{:?}", targets[2]).contains("secret"));
        let slower = vec![
            samples[0].clone(),
            samples[1].clone(),
            vec![sample(13.5); 3],
        ];
        let (table, met) = report(&targets, &slower);
        assert!(!met);
        assert!(table.contains("NOT met"), "{table}");
    }

    #[test]
    fn the_proxy_hop_is_what_forwarding_adds() {
        let sample = run_of;
        let line = proxy_hop(
            "the full stack",
            &[sample(10.0, None); 3],
            &[sample(14.0, None); 3],
            &[sample(34.0, Some(11.0)); 3],
        );
        assert!(line.contains("directly 10.0 µs"), "{line}");
        assert!(line.starts_with("proxy hop, the full stack: "), "{line}");
        assert!(line.contains("answering itself 14.0 µs"), "{line}");
        assert!(
            line.contains("to bare axum 34.0 µs (23.0 in the gateway, 11.0 in the upstream)"),
            "{line}"
        );
        assert!(
            line.contains("adds 20.0 µs per request, 9.0 of them in the gateway"),
            "{line}"
        );
    }
}
