//! Reads the medians criterion wrote under `target/criterion` and draws each layer's
//! overhead over its group's floor (ns per request, allow path) as a bar chart:
//! `benches/overhead.png`.
//!
//! ```sh
//! cargo bench                                          # or the groups you changed
//! cargo run --manifest-path benches/chart/Cargo.toml   # [--font FILE.ttf] [--out FILE.png]
//! ```
//!
//! Text needs a TrueType font; DejaVu Sans is the default (`fonts-dejavu-core` on
//! Debian). A scenario criterion has no result for is left out and named on stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// (label, criterion group, scenario): each is charted as its median minus the median
/// of the group's `floor`.
const SCENARIOS: &[(&str, &str, &str)] = &[
    ("ip-allowlist, 100k networks", "ip_allowlist", "allow/100000"),
    ("role-router, 100 rules", "role_router", "allow/100"),
    ("api-key, 10k keys", "api_key", "allow/10000"),
    ("jwt HS256, cached", "jwt", "allow_cached_HS256"),
    ("jwt HS256, uncached", "jwt", "allow_uncached_HS256"),
    ("mtls-identity, cached", "mtls_identity", "allow_cached"),
    ("rate-limit, 10k keys", "rate_limit", "allow_10k_keys"),
    ("audit, JSON sink", "audit", "memory_json_sink"),
    ("stack: api-key", "stack", "api_key_allow"),
    ("stack: jwt cached", "stack", "jwt_cached_allow"),
    ("jwt-authorizer (peer)", "jwt_peers", "jwt_authorizer"),
    ("tower_governor (peer)", "rate_limit_peers", "tower_governor_allow_1_keys"),
];

fn median(criterion: &Path, group: &str, scenario: &str) -> Option<f64> {
    let file = criterion
        .join(group)
        .join(scenario)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(file).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["median"]["point_estimate"].as_f64()
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench-chart: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut font = PathBuf::from("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf");
    let mut out = root.join("benches/overhead.png");
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--font" => font = PathBuf::from(value),
            "--out" => out = PathBuf::from(value),
            _ => return Err(format!("unknown flag {flag}; use --font FILE or --out FILE").into()),
        }
    }
    let bytes = std::fs::read(&font)
        .map_err(|e| format!("cannot read the font {} ({e}); give one with --font", font.display()))?;
    // plotters keeps registered fonts for the whole run.
    register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
        .map_err(|_| "the font is not a TrueType font plotters can read")?;

    let criterion = root.join("target/criterion");
    let mut bars: Vec<(&str, f64)> = Vec::new();
    for (label, group, scenario) in SCENARIOS {
        match (median(&criterion, group, scenario), median(&criterion, group, "floor")) {
            (Some(time), Some(floor)) => bars.push((label, (time - floor).max(0.0))),
            _ => eprintln!("bench-chart: no result for {group}/{scenario}; left out"),
        }
    }
    if bars.is_empty() {
        return Err(format!("no criterion results under {}; run `cargo bench` first", criterion.display()).into());
    }
    let top = bars.iter().map(|(_, ns)| *ns).fold(0.0, f64::max) * 1.15;

    let height = 80 + 34 * bars.len() as u32;
    let area = BitMapBackend::new(&out, (960, height)).into_drawing_area();
    area.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&area)
        .caption("Overhead over the floor, allow path (ns per request, median)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(250)
        .build_cartesian_2d(0.0..top, (0..bars.len()).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len())
        .y_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(i) => bars.get(*i).map(|(l, _)| l.to_string()).unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("ns over the floor")
        .label_style(("sans-serif", 14))
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (label, ns))| {
        let color = if label.contains("(peer)") { RGBColor(150, 150, 150) } else { RGBColor(40, 90, 160) };
        Rectangle::new(
            [(0.0, SegmentValue::Exact(i)), (*ns, SegmentValue::Exact(i + 1))],
            color.filled(),
        )
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, ns))| {
        Text::new(format!(" {ns:.0}"), (*ns, SegmentValue::CenterOf(i)), ("sans-serif", 13))
    }))?;
    area.present()?;
    eprintln!("bench-chart: wrote {}", out.display());
    Ok(())
}
