//! `chart.png`: the start-up and boot-time distributions, one panel per
//! suite (`startup`, `linux`), one line per measured quantity and program,
//! every sample a dot and the median a bar, on a log time axis (the floor,
//! ours and QEMU differ by more than ten times).
//!
//! Text is drawn with ab_glyph from a TrueType font on the system (Debian's
//! `fonts-dejavu-core`, installed with apt-get when missing and possible).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::quantile;
use super::report::{Section, Who};

/// The suites charted, and the fonts tried, in order.
const CHARTED: [&str; 2] = ["startup", "linux"];
const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// One line of a panel: its label, its samples (ms), its program.
struct Line {
    label: String,
    values: Vec<f64>,
    who: Who,
}

fn color(who: Who) -> RGBColor {
    match who {
        Who::Floor => RGBColor(120, 120, 120),
        Who::Ours => RGBColor(0, 114, 178),
        Who::Qemu => RGBColor(213, 94, 0),
    }
}

/// The lines of the charted sections: every row in ms, per program.
fn panels(sections: &[Section]) -> Vec<(String, Vec<Line>)> {
    sections
        .iter()
        .filter(|s| CHARTED.contains(&s.id))
        .map(|s| {
            let lines = s
                .rows
                .iter()
                .filter(|r| r.unit == "ms")
                .flat_map(|r| {
                    r.samples
                        .iter()
                        .filter(|(_, v)| !v.is_empty())
                        .map(|(who, v)| Line {
                            label: format!("{}: {}", who.name(), r.metric),
                            values: v.clone(),
                            who: *who,
                        })
                })
                .collect::<Vec<_>>();
            (s.title.clone(), lines)
        })
        .filter(|(_, lines)| !lines.is_empty())
        .collect()
}

/// Makes "sans-serif" a TrueType font for plotters.
fn load_font() -> Result<()> {
    let find = || FONTS.iter().find(|f| Path::new(f).exists());
    if find().is_none() {
        crate::cmd::apt_install("fonts-dejavu-core");
    }
    let Some(path) = find() else {
        bail!(
            "no TrueType font for the chart's text (tried {}): apt-get install fonts-dejavu-core",
            FONTS.join(", ")
        );
    };
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{path} is not a usable TrueType font"))
}

/// Draws the chart into `path`; false (and no file) when there is nothing
/// to chart.
pub fn draw(path: &Path, sections: &[Section]) -> Result<bool> {
    let panels = panels(sections);
    if panels.is_empty() {
        return Ok(false);
    }
    load_font()?;
    let line_px = 34u32;
    let heights: Vec<u32> = panels
        .iter()
        .map(|(_, lines)| 90 + line_px * lines.len() as u32)
        .collect();
    let root = BitMapBackend::new(path, (1200, heights.iter().sum())).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("drawing the chart: {e:?}");
    root.fill(&WHITE).map_err(e)?;
    let mut rest = root.clone();
    for ((title, lines), h) in panels.iter().zip(&heights) {
        let (area, below) = rest.split_vertically(*h);
        rest = below;
        let all = lines.iter().flat_map(|l| l.values.iter().copied());
        let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        // Whole decades, so that the log axis gets its labels.
        let lo = 10f64.powf(lo.max(1e-3).log10().floor());
        let hi = 10f64.powf(hi.max(lo * 10.0).log10().ceil());
        let n = lines.len();
        let labels: Vec<String> = lines.iter().map(|l| l.label.clone()).collect();
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(330)
            .build_cartesian_2d((lo..hi).log_scale(), -0.5f64..(n as f64 - 0.5))
            .map_err(e)?;
        chart
            .configure_mesh()
            .y_labels(n)
            .y_label_formatter(&|y: &f64| {
                let i = y.round();
                // Line k is drawn at y = n - 1 - k (the first on top).
                if (y - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                    labels.get(n - 1 - i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_label_formatter(&|x: &f64| {
                if *x >= 1.0 {
                    format!("{x:.0}")
                } else {
                    format!("{x}")
                }
            })
            .x_desc("ms (log scale); dots: runs, bar: median")
            .label_style(("sans-serif", 13))
            .disable_y_mesh()
            .draw()
            .map_err(e)?;
        for (i, l) in lines.iter().enumerate() {
            // Row i from the top.
            let y = (n - 1 - i) as f64;
            let c = color(l.who);
            let k = l.values.len().max(2) as f64;
            chart
                .draw_series(l.values.iter().enumerate().map(|(j, v)| {
                    // Spread the dots a little so that equal runs show.
                    let dy = (j as f64 / (k - 1.0) - 0.5) * 0.4;
                    Circle::new((*v, y + dy), 3, c.mix(0.6).filled())
                }))
                .map_err(e)?;
            let m = quantile(&l.values, 0.5);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(m, y - 0.35), (m, y + 0.35)],
                    c.stroke_width(3),
                )))
                .map_err(e)?;
        }
    }
    root.present().map_err(e)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::Row;

    #[test]
    fn only_the_startup_and_linux_times_are_charted() {
        let mut startup = Section::new("startup", "Start-up");
        let mut first = Row::new("first byte", "ms");
        first.push(Who::Ours, 4.0);
        first.push(Who::Floor, 3.0);
        let mut rss = Row::new("peak RSS", "MiB");
        rss.push(Who::Ours, 3.0);
        startup.rows = vec![first, rss];
        let mut mem = Section::new("memory", "Memory");
        let mut r = Row::new("x", "ms");
        r.push(Who::Ours, 1.0);
        mem.rows = vec![r];
        let p = panels(&[startup, mem]);
        assert_eq!(p.len(), 1);
        let labels: Vec<&str> = p[0].1.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(labels, ["vmm (ours): first byte", "floor: first byte"]);
    }
}
