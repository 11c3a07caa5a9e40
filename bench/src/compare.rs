//! `compare`: per-shard latency side by side, from `--histogram-log` files or a live admin
//! listener, with shards whose p99 strays from the median shard's flagged, and an optional
//! percentile-distribution plot (SVG and/or PNG; text in the embedded font, see `font.rs`).
//!
//! Files are grouped by label, so a shard's rotated files (`shard-0.handshake.1.hlog`,
//! `shard-0.handshake.hlog`) add up to one row.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use plotters::coord::combinators::{BindKeyPoints, IntoLogRange};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::hlog;

/// Arguments of `shardcast-bench compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// .hlog files (e.g. DIR/shard-*.handshake*.hlog), or one admin URL such as http://127.0.0.1:9090 (every shard listed by /stats is fetched)
    #[arg(required = true)]
    pub inputs: Vec<String>,
    /// Label for each file input, in order (default: `shard-N` from the file name)
    #[arg(long)]
    pub label: Vec<String>,
    /// Histogram kind fetched from an admin URL: handshake, ring_transit, broadcast or eviction_stall
    #[arg(long, default_value = "handshake")]
    pub kind: String,
    /// Flag shards whose p99 deviates from the median shard's p99 by more than this many percent
    #[arg(long, default_value_t = 50.0)]
    pub threshold: f64,
    /// Write a percentile-distribution plot (one line per shard) to this SVG file
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Write the same plot as a PNG image (960×540)
    #[arg(long)]
    pub png: Option<PathBuf>,
}

/// One shard's (or label's) merged histogram.
pub struct Series {
    /// Row label.
    pub label: String,
    /// Latency in µs.
    pub hist: Histogram<u64>,
}

/// Percentiles shown per row, with their column titles.
const COLUMNS: [(f64, &str); 5] = [
    (0.5, "p50"),
    (0.9, "p90"),
    (0.99, "p99"),
    (0.999, "p99.9"),
    (0.9999, "p99.99"),
];

/// Run the command: print the table to stdout, write the plot if asked.
pub fn run(args: CompareArgs) -> Result<(), String> {
    let series = load(&args).map_err(|e| e.to_string())?;
    let (table, _) = render_table(&series, args.threshold);
    print!("{table}");
    if let Some(path) = &args.svg {
        plot_svg(&series, path).map_err(|e| e.to_string())?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.png {
        plot_png(&series, path).map_err(|e| e.to_string())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn load(args: &CompareArgs) -> io::Result<Vec<Series>> {
    if let [url] = args.inputs.as_slice() {
        if let Some(authority) = url.strip_prefix("http://") {
            return load_live(authority.trim_end_matches('/'), &args.kind);
        }
    }
    let mut groups: BTreeMap<(u64, String), Histogram<u64>> = BTreeMap::new();
    for (i, input) in args.inputs.iter().enumerate() {
        let path = Path::new(input);
        let label = match args.label.get(i) {
            Some(l) => l.clone(),
            None => label_from_path(path),
        };
        let text = std::fs::read(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let h = hlog::sum_intervals(&text)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        // Rows sort by shard number when the label ends in one, else by name.
        let key = (shard_number(&label).unwrap_or(u64::MAX), label);
        match groups.get_mut(&key) {
            Some(total) => total
                .add(&h)
                .map_err(|e| io::Error::other(format!("{e:?}")))?,
            None => {
                groups.insert(key, h);
            }
        }
    }
    Ok(groups
        .into_iter()
        .map(|((_, label), hist)| Series { label, hist })
        .collect())
}

fn load_live(authority: &str, kind: &str) -> io::Result<Vec<Series>> {
    let stats: serde_json::Value = serde_json::from_slice(&hlog::http_get(authority, "/stats")?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("/stats: {e}")))?;
    let shards = stats["shards"]
        .as_array()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "/stats has no shards"))?
        .len();
    (0..shards)
        .map(|i| {
            let body = hlog::http_get(authority, &format!("/histograms?shard={i}&kind={kind}"))?;
            Ok(Series {
                label: format!("shard-{i}"),
                hist: hlog::sum_intervals(&body)?,
            })
        })
        .collect()
}

/// `shard-N` from a `--histogram-log` file name, else the file name without `.hlog`.
pub fn label_from_path(path: &Path) -> String {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let stem = name.strip_suffix(".hlog").unwrap_or(&name);
    match stem.split('.').next() {
        Some(first) if first.starts_with("shard-") && shard_number(first).is_some() => {
            first.to_owned()
        }
        _ => stem.to_owned(),
    }
}

fn shard_number(label: &str) -> Option<u64> {
    let digits: String = label
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

/// The median of the p99s of the shards that have samples.
fn median_p99(series: &[Series]) -> Option<f64> {
    let mut p99: Vec<u64> = series
        .iter()
        .filter(|s| !s.hist.is_empty())
        .map(|s| s.hist.value_at_quantile(0.99))
        .collect();
    p99.sort_unstable();
    let n = p99.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(p99[n / 2] as f64),
        _ => Some((p99[n / 2 - 1] + p99[n / 2]) as f64 / 2.0),
    }
}

/// The table (values in µs) and the labels flagged as outliers.
pub fn render_table(series: &[Series], threshold_pct: f64) -> (String, Vec<String>) {
    let median = median_p99(series);
    let width = series
        .iter()
        .map(|s| s.label.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} series, latency in µs; p99 median {}; flagged when p99 deviates by more than {}%",
        series.len(),
        median.map_or("n/a".to_owned(), |m| format!("{m:.0} µs")),
        threshold_pct
    );
    let _ = write!(out, "{:<width$} {:>10}", "shard", "count");
    for (_, title) in COLUMNS {
        let _ = write!(out, " {title:>9}");
    }
    let _ = writeln!(out, " {:>9} {:>14}", "max", "p99 vs median");
    let mut flagged = Vec::new();
    for s in series {
        let h = &s.hist;
        let _ = write!(out, "{:<width$} {:>10}", s.label, h.len());
        for (q, _) in COLUMNS {
            let v = if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            };
            let _ = write!(out, " {v:>9}");
        }
        let _ = write!(out, " {:>9}", if h.is_empty() { 0 } else { h.max() });
        match median {
            Some(m) if !h.is_empty() && m > 0.0 => {
                let dev = (h.value_at_quantile(0.99) as f64 - m) / m * 100.0;
                let _ = write!(out, " {:>13.1}%", dev);
                if dev.abs() > threshold_pct {
                    let _ = write!(out, "  << OUTLIER");
                    flagged.push(s.label.clone());
                }
            }
            _ => {
                let _ = write!(out, " {:>14}", "-");
            }
        }
        out.push('\n');
    }
    (out, flagged)
}

/// Largest x of the plot: 1/(1 - 0.99999).
const X_MAX: f64 = 100_000.0;

fn percent_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    let s = format!("{p:.3}");
    format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
}

/// Plot size in pixels (SVG user units and PNG pixels alike).
const PLOT_SIZE: (u32, u32) = (960, 540);

/// [`draw`] into an SVG file.
pub fn plot_svg(series: &[Series], path: &Path) -> io::Result<()> {
    crate::font::register();
    let root = SVGBackend::new(path, PLOT_SIZE).into_drawing_area();
    draw(&root, series)?;
    root.present().map_err(plot_error)
}

/// [`draw`] into an RGB bitmap in memory, then encode it as PNG.
pub fn plot_png(series: &[Series], path: &Path) -> io::Result<()> {
    crate::font::register();
    let (w, h) = PLOT_SIZE;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, PLOT_SIZE).into_drawing_area();
        draw(&root, series)?;
        root.present().map_err(plot_error)?;
    }
    let file = BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .and_then(|mut w| w.write_image_data(&rgb))
        .map_err(io::Error::other)
}

fn plot_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("plot: {e}"))
}

/// The percentile distribution of every series on the 1/(1-q) log scale (HdrHistogram's
/// classic plot), y in µs on a log scale.
fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, series: &[Series]) -> io::Result<()> {
    let curves: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.hist
                .iter_quantiles(5)
                .map(|v| (v.quantile_iterated_to(), v.value_iterated_to()))
                .filter(|(q, _)| *q < 1.0 && 1.0 / (1.0 - q) <= X_MAX)
                .map(|(q, v)| (1.0 / (1.0 - q), v.max(1) as f64))
                .collect()
        })
        .collect();
    let y_max = series
        .iter()
        .map(|s| s.hist.max())
        .max()
        .unwrap_or(1)
        .max(10) as f64
        * 1.5;
    let y_min = series
        .iter()
        .filter(|s| !s.hist.is_empty())
        .map(|s| s.hist.min())
        .min()
        .unwrap_or(1)
        .max(1) as f64
        / 1.5;
    let y_min = y_min.max(1.0).min(y_max / 10.0);
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(root)
        .caption("Latency by percentile, per shard", ("sans-serif", 22))
        .margin(16)
        .margin_right(48)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (1.0..X_MAX)
                .log_scale()
                .with_key_points(vec![2.0, 10.0, 100.0, 1000.0, 10_000.0, X_MAX]),
            (y_min..y_max).log_scale(),
        )
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| percent_label(*x))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(plot_error)?;
    for (i, (s, points)) in series.iter().zip(curves).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(plot_error)?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
    use hdrhistogram::serialization::V2DeflateSerializer;
    use std::time::Duration;

    /// An interval log as `shardcast --histogram-log` writes it: samples `values` split over
    /// two intervals.
    fn write_log(path: &Path, values: impl Iterator<Item = u64>) -> Histogram<u64> {
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let mut halves = [all.clone(), all.clone()];
        for (i, v) in values.enumerate() {
            halves[i % 2].record(v).unwrap();
            all.record(v).unwrap();
        }
        let mut out = Vec::new();
        let mut ser = V2DeflateSerializer::new();
        let mut w = IntervalLogWriterBuilder::new()
            .add_comment("fixture")
            .with_base_time(std::time::SystemTime::now())
            .begin_log_with(&mut out, &mut ser)
            .unwrap();
        for (i, h) in halves.iter().enumerate() {
            let start = Duration::from_secs(10 * i as u64);
            w.write_histogram(h, start, Duration::from_secs(10), Tag::new("x"))
                .unwrap();
        }
        std::fs::write(path, out).unwrap();
        all
    }

    fn row<'a>(table: &'a str, label: &str) -> Vec<&'a str> {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{label} ")))
            .unwrap_or_else(|| panic!("no row {label} in\n{table}"))
            .split_whitespace()
            .collect()
    }

    fn fixture_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("shardcast-compare-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn table_flags_the_outlier_and_svg_names_every_shard() {
        let dir = fixture_dir("files");
        let mut inputs = Vec::new();
        let mut outlier = None;
        for shard in 0..4 {
            let path = dir.join(format!("shard-{shard}.handshake.hlog"));
            // Shards 0, 1, 3: 1..=1000 µs; shard 2 (planted outlier): every value ×3.
            let scale = if shard == 2 { 3 } else { 1 };
            let h = write_log(&path, (1..=1000).map(|v| v * scale));
            if shard == 2 {
                outlier = Some(h);
            }
            inputs.push(path.to_str().unwrap().to_owned());
        }
        let svg = dir.join("plot.svg");
        let png_path = dir.join("plot.png");
        let args = CompareArgs {
            inputs,
            label: vec![],
            kind: "handshake".into(),
            threshold: 50.0,
            svg: Some(svg.clone()),
            png: Some(png_path.clone()),
        };
        let series = load(&args).unwrap();
        let (table, flagged) = render_table(&series, args.threshold);
        for shard in [0, 1, 3] {
            // count p50 p90 p99 p99.9 p99.99 max, then the deviation from the median p99 (990).
            assert_eq!(
                row(&table, &format!("shard-{shard}"))[1..9],
                ["1000", "500", "900", "990", "999", "1000", "1000", "0.0%"],
                "{table}"
            );
        }
        let o = outlier.unwrap();
        let r = row(&table, "shard-2");
        assert_eq!(r[1], "1000");
        assert_eq!(r[4], o.value_at_quantile(0.99).to_string());
        assert_eq!(r[7], o.max().to_string());
        assert!(r.ends_with(&["<<", "OUTLIER"]), "{table}");
        assert_eq!(flagged, vec!["shard-2".to_owned()]);
        assert!(table.contains("p99 median 990 µs"), "{table}");
        run(args).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg"));
        for shard in 0..4 {
            assert!(
                text.contains(&format!(">\nshard-{shard}\n<"))
                    || text.contains(&format!(">shard-{shard}<")),
                "legend lacks shard-{shard}"
            );
        }
        assert!(
            text.contains("99.99%") && text.contains("50%"),
            "x axis labels"
        );
        let (size, colors) = png_summary(&png_path);
        assert_eq!(size, PLOT_SIZE);
        // White, black text and grid greys, antialiasing, and one colour per shard's line.
        assert!(colors > 20, "only {colors} colours: nothing drawn?");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A PNG's size and its number of distinct colours.
    fn png_summary(path: &Path) -> ((u32, u32), usize) {
        let decoder = png::Decoder::new(io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let colors: std::collections::HashSet<&[u8]> =
            buf[..info.buffer_size()].chunks(3).collect();
        ((info.width, info.height), colors.len())
    }

    /// Text needs glyphs: the embedded font covers what the plots write.
    #[test]
    fn embedded_font_renders_text_into_the_bitmap() {
        crate::font::register();
        let (w, h) = (200u32, 40u32);
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            root.fill(&WHITE).unwrap();
            root.draw_text(
                "p99.9% 42 µs",
                &("sans-serif", 20).into_font().color(&BLACK),
                (4, 8),
            )
            .unwrap();
            root.present().unwrap();
        }
        let dark = rgb.chunks(3).filter(|p| p.iter().all(|&c| c < 100)).count();
        assert!(dark > 50, "{dark} dark pixels: text not rasterized");
    }

    #[test]
    fn labels_and_rotated_files_merge() {
        assert_eq!(
            label_from_path(Path::new("/x/shard-12.ring_transit.3.hlog")),
            "shard-12"
        );
        assert_eq!(
            label_from_path(Path::new("shard-3.eviction_stall.hlog")),
            "shard-3"
        );
        assert_eq!(label_from_path(Path::new("other.hlog")), "other");
        let dir = fixture_dir("rotated");
        let a = dir.join("shard-0.handshake.1.hlog");
        let b = dir.join("shard-0.handshake.hlog");
        write_log(&a, 1..=10);
        write_log(&b, 11..=30);
        let c = dir.join("run-b.hlog");
        write_log(&c, 1..=5);
        let args = CompareArgs {
            inputs: [&a, &b, &c]
                .map(|p| p.to_str().unwrap().to_owned())
                .to_vec(),
            label: vec![],
            kind: "handshake".into(),
            threshold: 50.0,
            svg: None,
            png: None,
        };
        let series = load(&args).unwrap();
        let labels: Vec<_> = series
            .iter()
            .map(|s| (s.label.as_str(), s.hist.len()))
            .collect();
        assert_eq!(labels, [("shard-0", 30), ("run-b", 5)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The live path against a stand-in admin listener serving /stats and /histograms.
    #[test]
    fn live_admin_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = fixture_dir("live");
        let logs: Vec<Vec<u8>> = (0..2u64)
            .map(|shard| {
                let p = dir.join(format!("{shard}.hlog"));
                write_log(&p, (1..=100).map(|v| v * (shard + 1)));
                std::fs::read(p).unwrap()
            })
            .collect();
        let server = std::thread::spawn(move || {
            use std::io::{BufRead, BufReader, Write};
            for _ in 0..3 {
                let (mut s, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(&s);
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                // Read the whole head, so closing does not reset the connection.
                let mut rest = String::new();
                while rest != "\r\n" {
                    rest.clear();
                    reader.read_line(&mut rest).unwrap();
                }
                let body: Vec<u8> = if line.starts_with("GET /stats ") {
                    br#"{"shards":[{"shard":0},{"shard":1}]}"#.to_vec()
                } else if line.starts_with("GET /histograms?shard=0&kind=broadcast ") {
                    logs[0].clone()
                } else if line.starts_with("GET /histograms?shard=1&kind=broadcast ") {
                    logs[1].clone()
                } else {
                    panic!("unexpected request {line:?}")
                };
                write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .unwrap();
                s.write_all(&body).unwrap();
            }
        });
        let series = load(&CompareArgs {
            inputs: vec![format!("http://{addr}/")],
            label: vec![],
            kind: "broadcast".into(),
            threshold: 50.0,
            svg: None,
            png: None,
        })
        .unwrap();
        server.join().unwrap();
        let got: Vec<_> = series
            .iter()
            .map(|s| (s.label.as_str(), s.hist.max()))
            .collect();
        assert_eq!(got, [("shard-0", 100), ("shard-1", 200)]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
