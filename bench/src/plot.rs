//! `plot`: latency distributions (the CSVs `--percentiles` writes) as one SVG, x axis on a
//! 1/(1-percentile) log scale so the tail (99%, 99.9%, ...) gets as much room as the median.

use plotters::prelude::*;
use std::path::PathBuf;

/// `plot` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct PlotArgs {
    /// Output SVG file.
    #[arg(long)]
    out: PathBuf,
    /// Chart title.
    #[arg(long, default_value = "latency by percentile")]
    title: String,
    /// Series as `LABEL=FILE.csv` (from `--percentiles`); missing or empty files are skipped.
    #[arg(required = true)]
    series: Vec<String>,
}

/// Reads `percentile,latency_us` rows as (1/(1-p), latency ms); the 100th percentile (the
/// maximum) has no finite x and is left out.
pub fn read_series(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let (p, v) = l.split_once(',')?;
            let (p, v) = (p.trim().parse::<f64>().ok()?, v.trim().parse::<f64>().ok()?);
            (p < 100.0).then(|| (1.0 / (1.0 - p / 100.0), (v / 1000.0).max(1e-3)))
        })
        .collect()
}

/// Axis label for x = 1/(1-p): the percentile.
fn percentile_label(x: &f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    if p < 99.0 {
        format!("{p:.0}%")
    } else {
        // 99%, 99.9%, 99.99%: as many nines as the tick needs.
        let nines = (-(1.0 - p / 100.0).log10()).round() as usize;
        format!("{:.*}%", nines.saturating_sub(2), p)
    }
}

/// Draws the chart.
pub fn run(args: PlotArgs) -> Result<(), String> {
    let mut series = Vec::new();
    for s in &args.series {
        let (label, file) = s
            .split_once('=')
            .ok_or_else(|| format!("series must be LABEL=FILE: {s}"))?;
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let pts = read_series(&text);
                if !pts.is_empty() {
                    series.push((label.to_string(), pts));
                }
            }
            Err(e) => eprintln!("plot: skipping {file}: {e}"),
        }
    }
    if series.is_empty() {
        return Err("no data to plot".into());
    }
    let all = series.iter().flat_map(|s| s.1.iter());
    let xmax = all.clone().map(|p| p.0).fold(10.0, f64::max) * 1.5;
    let ymin = all.clone().map(|p| p.1).fold(f64::MAX, f64::min) / 1.5;
    let ymax = all.map(|p| p.1).fold(0.0, f64::max) * 1.5;
    draw(&args, &series, xmax, ymin, ymax).map_err(|e| format!("{}: {e}", args.out.display()))
}

fn draw(
    args: &PlotArgs,
    series: &[(String, Vec<(f64, f64)>)],
    xmax: f64,
    ymin: f64,
    ymax: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    crate::font::register();
    let root = SVGBackend::new(&args.out, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&args.title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0..xmax).log_scale(), (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency, ms")
        .x_label_formatter(&percentile_label)
        .draw()?;
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_labels() {
        let pts = read_series("percentile,latency_us\n0,500\n50,1000\n99,2000\n100,9000\n");
        assert_eq!(pts.len(), 3);
        assert!((pts[1].0 - 2.0).abs() < 1e-9 && (pts[1].1 - 1.0).abs() < 1e-9);
        assert!((pts[2].0 - 100.0).abs() < 1e-6);
        assert_eq!(percentile_label(&2.0), "50%");
        assert_eq!(percentile_label(&100.0), "99%");
        assert_eq!(percentile_label(&1000.0), "99.9%");
    }

    #[test]
    fn writes_an_svg() {
        let dir = std::env::temp_dir().join(format!("shardcast-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("a.csv");
        std::fs::write(
            &csv,
            "percentile,latency_us\n0,100\n50,200\n99,900\n99.9,1500\n",
        )
        .unwrap();
        let out = dir.join("a.svg");
        run(PlotArgs {
            out: out.clone(),
            title: "t".into(),
            series: vec![
                format!("shardcast={}", csv.display()),
                "gone=/nonexistent.csv".into(),
            ],
        })
        .unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("shardcast") && svg.contains("99.9%"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
