//! The benchmark report: what each benchmark measured, as min / median /
//! max per program and the ratios of ours to the floor and to QEMU, with
//! our goals checked against the medians. Printed as a Markdown
//! table and written to `target/bench/` as `report.md`, `results.csv`
//! (one line per program and metric) and `samples.csv` (every sample).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::quantile;

/// Who a series of samples belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// The floor program (`bench-floor`).
    Floor,
    /// Our VMM.
    Ours,
    /// QEMU.
    Qemu,
}

impl Who {
    pub fn name(self) -> &'static str {
        match self {
            Who::Floor => "floor",
            Who::Ours => "vmm (ours)",
            Who::Qemu => "QEMU",
        }
    }
}

/// One of our targets, checked on the medians.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// Ours at most this many times the floor.
    FloorRatio(f64),
    /// Ours at most this many times QEMU.
    QemuRatio(f64),
    /// Ours at least this many times QEMU (a rate: more is better).
    AtLeastQemu(f64),
    /// Ours at most the floor plus this much (in the row's unit).
    FloorPlus(f64),
    /// Ours under this value (in the row's unit).
    Below(f64),
}

impl Goal {
    fn describe(self, unit: &str) -> String {
        match self {
            Goal::FloorRatio(r) => format!("≤ {r}x floor"),
            Goal::QemuRatio(r) => format!("≤ {r}x QEMU"),
            Goal::AtLeastQemu(r) => format!("≥ {r}x QEMU"),
            Goal::FloorPlus(v) => format!("≤ floor + {v} {unit}"),
            Goal::Below(v) => format!("< {} {unit}", num(v)),
        }
    }

    /// Whether `ours` meets the goal; None when the reference is missing.
    fn met(self, ours: f64, floor: Option<f64>, qemu: Option<f64>) -> Option<bool> {
        Some(match self {
            Goal::FloorRatio(r) => ours <= r * floor?,
            Goal::QemuRatio(r) => ours <= r * qemu?,
            Goal::AtLeastQemu(r) => ours >= r * qemu?,
            Goal::FloorPlus(v) => ours <= floor? + v,
            Goal::Below(v) => ours < v,
        })
    }
}

/// One measured quantity: samples per program.
#[derive(Debug, Clone)]
pub struct Row {
    pub metric: String,
    pub unit: &'static str,
    pub samples: Vec<(Who, Vec<f64>)>,
    pub goal: Option<Goal>,
}

impl Row {
    pub fn new(metric: impl Into<String>, unit: &'static str) -> Self {
        Self {
            metric: metric.into(),
            unit,
            samples: Vec::new(),
            goal: None,
        }
    }

    pub fn goal(mut self, g: Goal) -> Self {
        self.goal = Some(g);
        self
    }

    /// Adds `value` to `who`'s samples.
    pub fn push(&mut self, who: Who, value: f64) {
        match self.samples.iter_mut().find(|(w, _)| *w == who) {
            Some((_, v)) => v.push(value),
            None => self.samples.push((who, vec![value])),
        }
    }

    pub fn values(&self, who: Who) -> Option<&[f64]> {
        self.samples
            .iter()
            .find(|(w, v)| *w == who && !v.is_empty())
            .map(|(_, v)| v.as_slice())
    }

    pub fn median(&self, who: Who) -> Option<f64> {
        self.values(who).map(|v| quantile(v, 0.5))
    }
}

/// One benchmark's results.
#[derive(Debug, Clone)]
pub struct Section {
    /// Short name (the CSV's first column): `startup`, `memory`, ...
    pub id: &'static str,
    /// The heading.
    pub title: String,
    /// What was run and how, one sentence each.
    pub notes: Vec<String>,
    pub rows: Vec<Row>,
}

impl Section {
    pub fn new(id: &'static str, title: impl Into<String>) -> Self {
        Self {
            id,
            title: title.into(),
            notes: Vec::new(),
            rows: Vec::new(),
        }
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }
}

/// A number with about three significant digits.
fn num(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "-".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// "median (min–max)" of `v`.
fn cell(v: Option<&[f64]>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.len() == 1 => num(v[0]),
        Some(v) => format!(
            "{} ({}–{})",
            num(quantile(v, 0.5)),
            num(quantile(v, 0.0)),
            num(quantile(v, 1.0))
        ),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

/// The Markdown of one section: heading, notes, table.
pub fn section_markdown(s: &Section) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### {}\n", s.title);
    for n in &s.notes {
        let _ = writeln!(out, "- {n}");
    }
    if !s.notes.is_empty() {
        out.push('\n');
    }
    let has = |who| s.rows.iter().any(|r| r.values(who).is_some());
    let (floor, qemu) = (has(Who::Floor), has(Who::Qemu));
    let has_goal = s.rows.iter().any(|r| r.goal.is_some());
    let mut head = vec!["", "unit"];
    if floor {
        head.push("floor");
    }
    head.push("vmm (ours)");
    if qemu {
        head.push("QEMU");
    }
    if floor {
        head.push("ours / floor");
    }
    if qemu {
        head.push("ours / QEMU");
    }
    if has_goal {
        head.push("goal");
    }
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
    for r in &s.rows {
        let (f, o, q) = (
            r.median(Who::Floor),
            r.median(Who::Ours),
            r.median(Who::Qemu),
        );
        let mut cols = vec![r.metric.clone(), r.unit.to_owned()];
        if floor {
            cols.push(cell(r.values(Who::Floor)));
        }
        cols.push(format!("**{}**", cell(r.values(Who::Ours))));
        if qemu {
            cols.push(cell(r.values(Who::Qemu)));
        }
        if floor {
            cols.push(ratio(o, f));
        }
        if qemu {
            cols.push(ratio(o, q));
        }
        if has_goal {
            cols.push(match (r.goal, o) {
                (Some(g), Some(o)) => {
                    let verdict = match g.met(o, f, q) {
                        Some(true) => "met",
                        Some(false) => "**missed**",
                        None => "no reference",
                    };
                    format!("{} {verdict}", g.describe(r.unit))
                }
                _ => String::new(),
            });
        }
        let _ = writeln!(out, "| {} |", cols.join(" | "));
    }
    out
}

/// The whole report in Markdown.
pub fn markdown(sections: &[Section], preamble: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Benchmark report\n\n{preamble}\n");
    let _ = writeln!(
        out,
        "Cells are median (min–max) over the runs; ratios and goals use the medians.\n"
    );
    for s in sections {
        out.push_str(&section_markdown(s));
        out.push('\n');
    }
    out
}

/// Quotes a CSV field when it needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Every program's samples of every row: the CSV key columns (section,
/// metric, unit, program) and the values.
fn csv_series(sections: &[Section]) -> impl Iterator<Item = (String, &[f64])> {
    sections.iter().flat_map(|s| {
        s.rows.iter().flat_map(move |r| {
            r.samples.iter().map(move |(who, v)| {
                let key = format!(
                    "{},{},{},{}",
                    s.id,
                    csv_field(&r.metric),
                    r.unit,
                    csv_field(who.name())
                );
                (key, v.as_slice())
            })
        })
    })
}

/// `results.csv`: section, metric, unit, program, n, min, median, max.
pub fn results_csv(sections: &[Section]) -> String {
    let mut out = String::from("section,metric,unit,program,n,min,median,max\n");
    for (key, v) in csv_series(sections).filter(|(_, v)| !v.is_empty()) {
        let _ = writeln!(
            out,
            "{key},{},{},{},{}",
            v.len(),
            quantile(v, 0.0),
            quantile(v, 0.5),
            quantile(v, 1.0)
        );
    }
    out
}

/// `samples.csv`: section, metric, unit, program, run, value.
pub fn samples_csv(sections: &[Section]) -> String {
    let mut out = String::from("section,metric,unit,program,run,value\n");
    for (key, v) in csv_series(sections) {
        for (i, x) in v.iter().enumerate() {
            let _ = writeln!(out, "{key},{},{x}", i + 1);
        }
    }
    out
}

/// Writes `report.md`, `results.csv` and `samples.csv` into `dir`.
pub fn write_files(dir: &Path, sections: &[Section], preamble: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in [
        ("report.md", markdown(sections, preamble)),
        ("results.csv", results_csv(sections)),
        ("samples.csv", samples_csv(sections)),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section() -> Section {
        let mut s = Section::new("startup", "Start-up");
        s.note("a note");
        let mut r = Row::new("first output", "ms").goal(Goal::FloorRatio(1.15));
        for v in [10.0, 12.0, 11.0] {
            r.push(Who::Floor, v);
        }
        for v in [12.0, 13.0, 14.0] {
            r.push(Who::Ours, v);
        }
        for v in [50.0, 60.0, 70.0] {
            r.push(Who::Qemu, v);
        }
        s.rows.push(r);
        let mut r = Row::new("peak RSS", "MiB").goal(Goal::FloorPlus(1.0));
        r.push(Who::Floor, 2.0);
        r.push(Who::Ours, 3.5);
        s.rows.push(r);
        s
    }

    #[test]
    fn the_table_has_medians_ranges_ratios_and_goal_verdicts() {
        let md = section_markdown(&section());
        assert!(md.contains("### Start-up"), "{md}");
        assert!(md.contains("- a note"), "{md}");
        assert!(
            md.contains(
                "| first output | ms | 11.0 (10.0–12.0) | **13.0 (12.0–14.0)** | 60.0 (50.0–70.0) | 1.18x | 0.22x | ≤ 1.15x floor **missed** |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| peak RSS | MiB | 2.00 | **3.50** | - | 1.75x | - | ≤ floor + 1 MiB **missed** |"
            ),
            "{md}"
        );
    }

    #[test]
    fn goals() {
        assert_eq!(Goal::FloorRatio(1.1).met(1.0, Some(1.0), None), Some(true));
        assert_eq!(Goal::QemuRatio(0.9).met(1.0, None, Some(1.0)), Some(false));
        assert_eq!(Goal::QemuRatio(0.9).met(1.0, None, None), None);
        assert_eq!(Goal::AtLeastQemu(1.0).met(1.0, None, Some(1.0)), Some(true));
        assert_eq!(
            Goal::AtLeastQemu(1.0).met(0.9, None, Some(1.0)),
            Some(false)
        );
        assert_eq!(Goal::AtLeastQemu(1.0).describe("IOPS"), "≥ 1x QEMU");
        assert_eq!(Goal::FloorPlus(1.0).met(2.9, Some(2.0), None), Some(true));
        assert_eq!(Goal::Below(3.0).met(3.0, None, None), Some(false));
    }

    #[test]
    fn csv_has_one_line_per_program_and_metric_and_every_sample() {
        let s = [section()];
        let r = results_csv(&s);
        assert_eq!(r.lines().count(), 1 + 3 + 2, "{r}");
        assert!(
            r.contains("startup,first output,ms,vmm (ours),3,12,13,14\n"),
            "{r}"
        );
        let all = samples_csv(&s);
        assert_eq!(all.lines().count(), 1 + 9 + 2, "{all}");
        assert!(all.contains("startup,peak RSS,MiB,floor,1,2\n"), "{all}");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
    }
}
