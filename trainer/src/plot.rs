//! SVG charts for training runs: loss/accuracy curves and a confusion matrix.
//!
//! Hand-written SVG 1.1 with std only, so the trainer can write report images
//! without pulling in a plotting library. The output is plain text that
//! browsers and `rsvg-convert` both render. Every string that comes from data
//! (class labels) goes through [`escape`].

use std::fmt::Write as _;

/// One logged point of a training run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricPoint {
    pub step: usize,
    pub loss: f64,
    /// Fraction in `0.0..=1.0`; `None` when no evaluation ran at this step.
    pub test_accuracy: Option<f64>,
}

// ---------------------------------------------------------------------------
// Training curves
// ---------------------------------------------------------------------------

const CURVE_W: f64 = 800.0;
const CURVE_H: f64 = 500.0;
const PLOT_LEFT: f64 = 80.0;
const PLOT_RIGHT: f64 = 775.0;
const LOSS_PANEL: (f64, f64) = (50.0, 240.0);
const ACC_PANEL: (f64, f64) = (270.0, 440.0);
const LOSS_COLOUR: &str = "#d62728";
const ACC_COLOUR: &str = "#1f77b4";

/// Two stacked panels sharing the step axis: training loss on top, test
/// accuracy (in percent) below. Non-finite values are skipped; points need not
/// be sorted. With no points at all the image just says "no data yet".
pub fn training_curves(points: &[MetricPoint]) -> String {
    let mut svg = Svg::new(CURVE_W, CURVE_H);
    svg.text(
        CURVE_W / 2.0,
        30.0,
        Text::new(18.0).middle().bold(),
        "training progress",
    );
    if points.is_empty() {
        svg.text(
            CURVE_W / 2.0,
            CURVE_H / 2.0,
            Text::new(16.0).middle().fill("#666"),
            "no data yet",
        );
        return svg.finish();
    }

    // Sorting keeps the polylines monotonic in x even if the log was appended out of order.
    let mut sorted = points.to_vec();
    sorted.sort_by_key(|p| p.step);
    let (x, x_ticks) = step_scale(&sorted);

    let loss: Vec<(f64, f64)> = sorted
        .iter()
        .filter(|p| p.loss.is_finite())
        .map(|p| (p.step as f64, p.loss))
        .collect();
    let accuracy: Vec<(f64, f64)> = sorted
        .iter()
        .filter_map(|p| Some((p.step as f64, p.test_accuracy? * 100.0)))
        .filter(|(_, a)| a.is_finite())
        .collect();

    let loss_panel = Panel {
        top: LOSS_PANEL.0,
        bottom: LOSS_PANEL.1,
        label: "training loss",
        class: "loss",
        unit: "",
        colour: LOSS_COLOUR,
        markers: loss.len() == 1, // a one-point line would be invisible
        y_ticks: value_ticks(&loss, None),
    };
    let acc_panel = Panel {
        top: ACC_PANEL.0,
        bottom: ACC_PANEL.1,
        label: "test accuracy (%)",
        class: "accuracy",
        unit: "%",
        colour: ACC_COLOUR,
        markers: true,
        y_ticks: value_ticks(&accuracy, Some((0.0, 100.0))),
    };
    loss_panel.draw(&mut svg, &x, &x_ticks, &loss, "no finite loss values");
    acc_panel.draw(&mut svg, &x, &x_ticks, &accuracy, "no test accuracy yet");
    draw_step_labels(&mut svg, &x, &x_ticks);
    svg.finish()
}

/// The shared horizontal scale and its integer tick positions.
fn step_scale(sorted: &[MetricPoint]) -> (Scale, Vec<f64>) {
    let first = sorted.first().map_or(0, |p| p.step) as f64;
    let last = sorted.last().map_or(0, |p| p.step) as f64;
    // A single step still needs a non-empty range; steps are integers, so widen by one.
    let last = if last > first { last } else { first + 1.0 };
    let mut ticks: Vec<f64> = nice_ticks(first, last, 8)
        .into_iter()
        .filter(|t| t.fract() == 0.0)
        .collect();
    if ticks.len() < 2 {
        ticks = vec![first, last];
    }
    let scale = Scale::new(ticks[0], ticks[ticks.len() - 1], PLOT_LEFT, PLOT_RIGHT);
    (scale, ticks)
}

/// Y ticks around the data; `clamp` keeps them inside a fixed range (0–100 %).
fn value_ticks(series: &[(f64, f64)], clamp: Option<(f64, f64)>) -> Vec<f64> {
    let (lo, hi) = series
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, y)| {
            (lo.min(y), hi.max(y))
        });
    let mut ticks = nice_ticks(lo, hi, 5);
    if let Some((min, max)) = clamp {
        ticks.retain(|t| (min..=max).contains(t));
        if ticks.len() < 2 {
            ticks = nice_ticks(min, max, 5);
        }
    }
    if ticks.len() < 2 {
        ticks = vec![0.0, 1.0]; // empty series: any frame will do
    }
    ticks
}

/// One of the stacked panels: frame, grid, y ticks, label and one series.
struct Panel {
    top: f64,
    bottom: f64,
    label: &'static str,
    class: &'static str,
    /// Suffix for the "latest" readout.
    unit: &'static str,
    colour: &'static str,
    markers: bool,
    y_ticks: Vec<f64>,
}

impl Panel {
    fn draw(&self, svg: &mut Svg, x: &Scale, x_ticks: &[f64], series: &[(f64, f64)], empty: &str) {
        let ticks = &self.y_ticks;
        let y = Scale::new(ticks[0], ticks[ticks.len() - 1], self.bottom, self.top);
        self.draw_grid(svg, x, x_ticks, &y);

        let mid = (self.top + self.bottom) / 2.0;
        svg.text(
            22.0,
            mid,
            Text::new(13.0).middle().rotate(-90.0),
            self.label,
        );
        if series.is_empty() {
            svg.text(
                (PLOT_LEFT + PLOT_RIGHT) / 2.0,
                mid,
                Text::new(14.0).middle().fill("#888"),
                empty,
            );
            return;
        }
        let coords: Vec<(f64, f64)> = series.iter().map(|&(s, v)| (x.map(s), y.map(v))).collect();
        svg.polyline(&coords, self.colour, self.class);
        if self.markers {
            for (&(px, py), &(step, value)) in coords.iter().zip(series) {
                svg.circle(
                    px,
                    py,
                    3.0,
                    self.colour,
                    &format!("step {step}: {}", self.readout(value)),
                );
            }
        }
        // The latest value is what one usually looks for first.
        if let Some(&(_, value)) = series.last() {
            let latest = format!("latest {}", self.readout(value));
            // Above the frame, so it never sits on the line itself.
            svg.text(
                PLOT_RIGHT,
                self.top - 6.0,
                Text::new(11.0).end().fill("#555"),
                &latest,
            );
        }
    }

    /// A value with two more digits than the tick labels (one decimal for %).
    fn readout(&self, value: f64) -> String {
        let precision = match self.unit {
            "%" => 0.1,
            _ => tick_step(&self.y_ticks) / 100.0,
        };
        format!("{}{}", format_value(value, precision), self.unit)
    }

    fn draw_grid(&self, svg: &mut Svg, x: &Scale, x_ticks: &[f64], y: &Scale) {
        let step = tick_step(&self.y_ticks);
        for &t in &self.y_ticks {
            let py = y.map(t);
            svg.line((PLOT_LEFT, py), (PLOT_RIGHT, py), "#e5e5e5");
            svg.text(
                PLOT_LEFT - 6.0,
                py + 4.0,
                Text::new(11.0).end(),
                &format_value(t, step),
            );
        }
        for &t in x_ticks {
            let px = x.map(t);
            svg.line((px, self.top), (px, self.bottom), "#e5e5e5");
        }
        svg.frame(
            PLOT_LEFT,
            self.top,
            PLOT_RIGHT - PLOT_LEFT,
            self.bottom - self.top,
        );
    }
}

/// Step tick labels under the bottom panel, plus the axis title.
fn draw_step_labels(svg: &mut Svg, x: &Scale, ticks: &[f64]) {
    for &t in ticks {
        svg.text(
            x.map(t),
            ACC_PANEL.1 + 16.0,
            Text::new(11.0).middle(),
            &format!("{}", t as u64),
        );
    }
    let centre = (PLOT_LEFT + PLOT_RIGHT) / 2.0;
    svg.text(centre, ACC_PANEL.1 + 42.0, Text::new(13.0).middle(), "step");
}

// ---------------------------------------------------------------------------
// Confusion matrix
// ---------------------------------------------------------------------------

/// Longest label shown in full; longer ones are cut with an ellipsis.
const MAX_LABEL_CHARS: usize = 24;

/// Heat map of `counts[true][predicted]`, coloured by the row-normalised
/// fraction. Rows and columns beyond `labels` are labelled by index; missing
/// counts read as zero. Cell numbers are dropped once cells get too small to
/// hold them (around 35+ classes); hovering a cell still shows its count.
pub fn confusion_matrix(labels: &[String], counts: &[Vec<usize>]) -> String {
    let n = labels
        .len()
        .max(counts.len())
        .max(counts.iter().map(Vec::len).max().unwrap_or(0));
    if n == 0 {
        let mut svg = Svg::new(400.0, 120.0);
        svg.text(
            200.0,
            65.0,
            Text::new(16.0).middle().fill("#666"),
            "no classes",
        );
        return svg.finish();
    }
    let names: Vec<String> = (0..n)
        .map(|i| labels.get(i).map_or_else(|| i.to_string(), |l| shorten(l)))
        .collect();
    let count = |t: usize, p: usize| counts.get(t).and_then(|r| r.get(p)).copied().unwrap_or(0);
    let row_totals: Vec<usize> = (0..n).map(|t| (0..n).map(|p| count(t, p)).sum()).collect();
    let max_count = (0..n)
        .flat_map(|t| (0..n).map(move |p| (t, p)))
        .map(|(t, p)| count(t, p))
        .max()
        .unwrap_or(0);

    let layout = MatrixLayout::new(n, &names, max_count);
    let mut svg = Svg::new(layout.width, layout.height);
    let total: usize = row_totals.iter().sum();
    let correct: usize = (0..n).map(|i| count(i, i)).sum();
    let title = match total {
        0 => "confusion matrix (empty)".to_string(),
        _ => format!(
            "confusion matrix: accuracy {} of {total}",
            percent(correct, total)
        ),
    };
    svg.text(
        layout.width / 2.0,
        28.0,
        Text::new(16.0).middle().bold(),
        &title,
    );

    svg.rect(
        layout.left,
        layout.top,
        layout.grid(),
        layout.grid(),
        "#ffffff",
        None,
    );
    for (t, &row_total) in row_totals.iter().enumerate() {
        for p in 0..n {
            draw_cell(&mut svg, &layout, (t, p), count(t, p), row_total, &names);
        }
    }
    layout.draw_grid_lines(&mut svg);
    svg.frame(layout.left, layout.top, layout.grid(), layout.grid());
    layout.draw_labels(&mut svg, &names);
    layout.draw_row_accuracy(&mut svg, &row_totals, |i| count(i, i));
    svg.finish()
}

/// Sizes that depend on the number of classes and the label lengths.
struct MatrixLayout {
    cell: f64,
    n: usize,
    label_font: f64,
    /// Font for the numbers in the cells; `None` when they would not fit.
    count_font: Option<f64>,
    left: f64,
    top: f64,
    /// Vertical room the rotated column labels take below the grid.
    col_label_drop: f64,
    /// Rotation of the column labels, in degrees.
    col_angle: f64,
    width: f64,
    height: f64,
}

impl MatrixLayout {
    fn new(n: usize, names: &[String], max_count: usize) -> Self {
        // ~640 px of grid, but cells between 8 and 48 px: 100 classes → 800 px.
        let cell = (640.0 / n as f64).clamp(8.0, 48.0).floor();
        let label_font = (cell * 0.75).clamp(6.0, 12.0);
        let longest = names.iter().map(|s| s.chars().count()).max().unwrap_or(1) as f64;
        let label_px = longest * label_font * 0.6; // rough width of sans-serif text
        let digits = max_count.max(1).to_string().len() as f64;
        // The number must fit across the cell and not dominate it vertically.
        let font = (cell * 0.45).min(cell * 0.85 / (0.6 * digits)).min(13.0);
        let count_font = (font >= 7.0).then_some(font);

        // -45° reads best, but neighbours overlap once cells are narrower
        // than ~1.4 × the font, so dense grids get vertical labels.
        let col_angle = if cell < 16.0 { -90.0 } else { -45.0 };
        let col_label_drop = label_px * -f64::to_radians(col_angle).sin() + 10.0;
        let left = 36.0 + (label_px + 8.0).max(col_label_drop);
        let top = 50.0;
        let grid = cell * n as f64;
        let acc_width = label_font * 0.6 * 7.0 + 20.0;
        let width = (left + grid + acc_width + 16.0).max(420.0);
        let height = top + grid + col_label_drop + 40.0;
        Self {
            cell,
            n,
            label_font,
            count_font,
            left,
            top,
            col_label_drop,
            col_angle,
            width,
            height,
        }
    }

    fn grid(&self) -> f64 {
        self.cell * self.n as f64
    }

    /// Cell centre for row `r`, column `c`.
    fn centre(&self, r: usize, c: usize) -> (f64, f64) {
        let x = self.left + (c as f64 + 0.5) * self.cell;
        let y = self.top + (r as f64 + 0.5) * self.cell;
        (x, y)
    }

    fn draw_grid_lines(&self, svg: &mut Svg) {
        if self.cell < 12.0 {
            return; // lines would cover most of a tiny cell
        }
        let end = self.top + self.grid();
        for i in 1..self.n {
            let off = i as f64 * self.cell;
            svg.line(
                (self.left + off, self.top),
                (self.left + off, end),
                "#dddddd",
            );
            svg.line(
                (self.left, self.top + off),
                (self.left + self.grid(), self.top + off),
                "#dddddd",
            );
        }
    }

    fn draw_labels(&self, svg: &mut Svg, names: &[String]) {
        let font = self.label_font;
        let grid_bottom = self.top + self.grid();
        for (i, name) in names.iter().enumerate() {
            let (x, y) = self.centre(i, i);
            svg.text(
                self.left - 6.0,
                y + font * 0.35,
                Text::new(font).end(),
                name,
            );
            // Rotated about its end so the label hangs below its column.
            let (cx, cy) = (x + font * 0.35, grid_bottom + 6.0);
            svg.text(cx, cy, Text::new(font).end().rotate(self.col_angle), name);
        }
        let mid_x = self.left + self.grid() / 2.0;
        let mid_y = self.top + self.grid() / 2.0;
        svg.text(
            mid_x,
            grid_bottom + self.col_label_drop + 24.0,
            Text::new(13.0).middle().bold(),
            "predicted class",
        );
        svg.text(
            18.0,
            mid_y,
            Text::new(13.0).middle().bold().rotate(-90.0),
            "true class",
        );
    }

    fn draw_row_accuracy(
        &self,
        svg: &mut Svg,
        row_totals: &[usize],
        diagonal: impl Fn(usize) -> usize,
    ) {
        let x = self.left + self.grid() + 8.0;
        let font = self.label_font;
        svg.text(x, self.top - 6.0, Text::new(font).bold(), "acc.");
        for (i, &total) in row_totals.iter().enumerate() {
            let (_, y) = self.centre(i, 0);
            let text = if total == 0 {
                "n/a".to_string()
            } else {
                percent(diagonal(i), total)
            };
            svg.text(x, y + font * 0.35, Text::new(font), &text);
        }
    }
}

fn draw_cell(
    svg: &mut Svg,
    layout: &MatrixLayout,
    (t, p): (usize, usize),
    count: usize,
    row_total: usize,
    names: &[String],
) {
    let fraction = if row_total == 0 {
        0.0
    } else {
        count as f64 / row_total as f64
    };
    let rgb = white_to_blue(fraction);
    let (cx, cy) = layout.centre(t, p);
    let half = layout.cell / 2.0;
    if count > 0 {
        // Zero cells stay the white background: keeps 100-class files small.
        let tip = format!(
            "true {}, predicted {}: {count} ({})",
            names[t],
            names[p],
            percent(count, row_total)
        );
        svg.rect(
            cx - half,
            cy - half,
            layout.cell,
            layout.cell,
            &hex(rgb),
            Some(&tip),
        );
    }
    if let Some(font) = layout.count_font {
        let colour = if luminance(rgb) < 0.5 {
            "#ffffff"
        } else {
            "#222222"
        };
        svg.text(
            cx,
            cy + font * 0.35,
            Text::new(font).middle().fill(colour),
            &count.to_string(),
        );
    }
}

/// Linear ramp from white to a dark blue.
fn white_to_blue(fraction: f64) -> (u8, u8, u8) {
    let f = fraction.clamp(0.0, 1.0);
    let mix = |from: f64, to: f64| (from + (to - from) * f).round() as u8;
    (mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 140.0))
}

/// Relative luminance in 0..1, to pick black or white text on a cell.
fn luminance((r, g, b): (u8, u8, u8)) -> f64 {
    (0.2126 * r as f64 + 0.7152 * g as f64 + 0.0722 * b as f64) / 255.0
}

fn hex((r, g, b): (u8, u8, u8)) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn percent(part: usize, whole: usize) -> String {
    format!("{:.1}%", 100.0 * part as f64 / whole.max(1) as f64)
}

/// Cuts long labels so they cannot push the grid off the image.
fn shorten(label: &str) -> String {
    if label.chars().count() <= MAX_LABEL_CHARS {
        return label.to_string();
    }
    let mut cut: String = label.chars().take(MAX_LABEL_CHARS - 1).collect();
    cut.push('…');
    cut
}

// ---------------------------------------------------------------------------
// Ticks and scales
// ---------------------------------------------------------------------------

/// Round tick values covering `[min, max]` with about `target` intervals, each
/// step being 1, 2 or 5 times a power of ten. The first and last ticks enclose
/// the data, so callers use them as the axis range. Equal bounds are widened;
/// non-finite bounds give no ticks.
fn nice_ticks(min: f64, max: f64, target: usize) -> Vec<f64> {
    if !min.is_finite() || !max.is_finite() {
        return Vec::new();
    }
    let (mut lo, mut hi) = if min <= max { (min, max) } else { (max, min) };
    if hi - lo <= f64::EPSILON * lo.abs().max(1.0) {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo, hi) = (lo - pad, hi + pad);
    }
    let raw = (hi - lo) / target.max(1) as f64;
    if !raw.is_finite() {
        return Vec::new(); // a span past f64::MAX, e.g. -1e308..1e308
    }
    let exponent = raw.log10().floor() as i32;
    let mantissa = match raw / 10f64.powi(exponent) {
        m if m <= 1.0 => 1,
        m if m <= 2.0 => 2,
        m if m <= 5.0 => 5,
        _ => 10,
    };
    // Integers times an exact power of ten, so 3 × 0.1 prints as 0.3.
    let at = |k: i64| {
        let units = (k * mantissa) as f64;
        if exponent < 0 {
            units / 10f64.powi(-exponent)
        } else {
            units * 10f64.powi(exponent)
        }
    };
    let step = at(1);
    let first = (lo / step).floor() as i64;
    let last = (hi / step).ceil() as i64;
    (first..=last).map(at).collect()
}

/// Distance between neighbouring ticks (for choosing label precision).
fn tick_step(ticks: &[f64]) -> f64 {
    match ticks {
        [a, b, ..] => b - a,
        _ => 1.0,
    }
}

/// Formats `value` with just enough decimals to tell ticks `step` apart.
fn format_value(value: f64, step: f64) -> String {
    let decimals = if step > 0.0 && step < 1.0 {
        (-step.log10().floor()) as usize
    } else {
        0
    };
    format!("{value:.*}", decimals.min(8))
}

/// Linear map from a data range onto a pixel range (which may run backwards).
struct Scale {
    lo: f64,
    hi: f64,
    px_lo: f64,
    px_hi: f64,
}

impl Scale {
    fn new(lo: f64, hi: f64, px_lo: f64, px_hi: f64) -> Self {
        Self {
            lo,
            hi,
            px_lo,
            px_hi,
        }
    }

    fn map(&self, v: f64) -> f64 {
        let span = if self.hi > self.lo {
            self.hi - self.lo
        } else {
            1.0
        };
        self.px_lo + (v - self.lo) / span * (self.px_hi - self.px_lo)
    }
}

// ---------------------------------------------------------------------------
// SVG writing
// ---------------------------------------------------------------------------

/// Escapes text and attribute values for XML.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab/newline are not allowed in XML 1.0.
            c if c.is_control() && c != '\t' && c != '\n' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Style of one `<text>` element.
#[derive(Clone, Copy)]
struct Text {
    size: f64,
    anchor: &'static str,
    rotate: f64,
    fill: &'static str,
    bold: bool,
}

impl Text {
    fn new(size: f64) -> Self {
        Self {
            size,
            anchor: "start",
            rotate: 0.0,
            fill: "#222222",
            bold: false,
        }
    }
    fn middle(self) -> Self {
        Self {
            anchor: "middle",
            ..self
        }
    }
    fn end(self) -> Self {
        Self {
            anchor: "end",
            ..self
        }
    }
    fn rotate(self, degrees: f64) -> Self {
        Self {
            rotate: degrees,
            ..self
        }
    }
    fn fill(self, fill: &'static str) -> Self {
        Self { fill, ..self }
    }
    fn bold(self) -> Self {
        Self { bold: true, ..self }
    }
}

/// Accumulates SVG elements; coordinates are written with one decimal.
struct Svg {
    out: String,
}

impl Svg {
    fn new(width: f64, height: f64) -> Self {
        let mut out = String::new();
        let _ = write!(
            out,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" \
             width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" \
             font-family=\"Helvetica, Arial, sans-serif\">\n\
             <rect x=\"0\" y=\"0\" width=\"{width:.0}\" height=\"{height:.0}\" fill=\"#ffffff\"/>\n"
        );
        Self { out }
    }

    fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str) {
        let _ = writeln!(
            self.out,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{stroke}\" stroke-width=\"1\"/>"
        );
    }

    /// An unfilled grey border.
    fn frame(&mut self, x: f64, y: f64, w: f64, h: f64) {
        let _ = writeln!(
            self.out,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"none\" stroke=\"#999999\"/>"
        );
    }

    /// A filled rectangle, with an optional hover tooltip.
    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str, tip: Option<&str>) {
        let _ = write!(
            self.out,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{fill}\""
        );
        match tip {
            Some(tip) => {
                let _ = writeln!(self.out, "><title>{}</title></rect>", escape(tip));
            }
            None => self.out.push_str("/>\n"),
        }
    }

    fn circle(&mut self, x: f64, y: f64, r: f64, fill: &str, tip: &str) {
        let _ = writeln!(
            self.out,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{r}\" fill=\"{fill}\"><title>{}</title></circle>",
            escape(tip)
        );
    }

    fn polyline(&mut self, coords: &[(f64, f64)], stroke: &str, class: &str) {
        let points: Vec<String> = coords
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            self.out,
            "<polyline class=\"{class}\" points=\"{}\" fill=\"none\" stroke=\"{stroke}\" \
             stroke-width=\"2\" stroke-linejoin=\"round\"/>",
            points.join(" ")
        );
    }

    fn text(&mut self, x: f64, y: f64, style: Text, content: &str) {
        let _ = write!(
            self.out,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"{:.1}\" text-anchor=\"{}\" fill=\"{}\"",
            style.size, style.anchor, style.fill
        );
        if style.bold {
            self.out.push_str(" font-weight=\"bold\"");
        }
        if style.rotate != 0.0 {
            let _ = write!(
                self.out,
                " transform=\"rotate({} {x:.1} {y:.1})\"",
                style.rotate
            );
        }
        let _ = writeln!(self.out, ">{}</text>", escape(content));
    }

    fn finish(mut self) -> String {
        self.out.push_str("</svg>\n");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn nice_ticks_follow_1_2_5() {
        assert!(close(
            &nice_ticks(0.0, 1.0, 5),
            &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        ));
        assert!(close(
            &nice_ticks(0.0, 2000.0, 4),
            &[0.0, 500.0, 1000.0, 1500.0, 2000.0]
        ));
        assert!(close(
            &nice_ticks(0.13, 0.87, 5),
            &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        ));
        assert!(close(
            &nice_ticks(-3.7, 12.1, 5),
            &[-5.0, 0.0, 5.0, 10.0, 15.0]
        ));
        assert!(close(
            &nice_ticks(1.0, 1000.0, 8),
            &[0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]
        ));
        // Reversed bounds behave like sorted ones.
        assert_eq!(nice_ticks(10.0, 0.0, 5), nice_ticks(0.0, 10.0, 5));
    }

    #[test]
    fn nice_ticks_are_exact_decimals() {
        // Built from integers, so labels never show 0.30000000000000004.
        let ticks = nice_ticks(0.0, 1.0, 10);
        assert_eq!(ticks[3], 0.3);
        assert_eq!(format_value(ticks[3], 0.1), "0.3");
    }

    #[test]
    fn nice_ticks_edge_cases() {
        let equal = nice_ticks(2.5, 2.5, 5);
        assert!(equal.len() >= 2 && equal[0] < 2.5 && *equal.last().unwrap() > 2.5);
        let zero = nice_ticks(0.0, 0.0, 5);
        assert!(zero[0] < 0.0 && *zero.last().unwrap() > 0.0);
        assert!(nice_ticks(f64::NAN, 1.0, 5).is_empty());
        assert!(nice_ticks(0.0, f64::INFINITY, 5).is_empty());
        assert!(nice_ticks(-f64::MAX, f64::MAX, 5).is_empty());
        assert!(nice_ticks(0.0, 1.0, 0).len() >= 2);
    }

    /// Minimal XML well-formedness check: one root element, balanced and
    /// properly nested tags, quoted attributes, and no raw `<` or stray `&`.
    fn assert_well_formed(xml: &str) {
        let body = xml
            .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
            .expect("xml declaration");
        let mut stack: Vec<&str> = Vec::new();
        let mut roots = 0;
        let mut rest = body;
        while let Some(open) = rest.find('<') {
            check_text(&rest[..open], &stack);
            let close = rest[open..].find('>').expect("unclosed tag") + open;
            let tag = &rest[open + 1..close];
            assert!(!tag.contains('<'), "`<` inside tag: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name.trim()), "mismatched close tag");
            } else {
                let self_closing = tag.ends_with('/');
                let tag = tag.trim_end_matches('/');
                let name = tag.split_whitespace().next().expect("tag name");
                check_attributes(&tag[name.len()..]);
                if stack.is_empty() {
                    roots += 1;
                }
                if !self_closing {
                    stack.push(name);
                }
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "unclosed elements: {stack:?}");
        assert!(rest.trim().is_empty(), "text after the root element");
        assert_eq!(roots, 1, "exactly one root element");
    }

    fn check_text(text: &str, stack: &[&str]) {
        assert!(!text.contains('>'), "raw `>` in text: {text}");
        if stack.is_empty() {
            assert!(text.trim().is_empty(), "text outside the root: {text}");
        }
        check_entities(text);
    }

    fn check_attributes(mut attrs: &str) {
        loop {
            attrs = attrs.trim_start();
            if attrs.is_empty() {
                return;
            }
            let eq = attrs.find('=').expect("attribute without value");
            assert!(
                !attrs[..eq].contains(char::is_whitespace),
                "bad attribute name in {attrs}"
            );
            let value = attrs[eq + 1..]
                .strip_prefix('"')
                .expect("unquoted attribute");
            let end = value.find('"').expect("unterminated attribute");
            check_entities(&value[..end]);
            attrs = &value[end + 1..];
        }
    }

    fn check_entities(text: &str) {
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..];
            let known = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"];
            assert!(
                known.iter().any(|e| entity.starts_with(e)),
                "stray `&` in {text}"
            );
        }
    }

    fn point(step: usize, loss: f64, acc: Option<f64>) -> MetricPoint {
        MetricPoint {
            step,
            loss,
            test_accuracy: acc,
        }
    }

    /// The x coordinates of the polyline with the given class.
    fn polyline_xs(svg: &str, class: &str) -> Vec<f64> {
        let start = svg
            .find(&format!("<polyline class=\"{class}\" points=\""))
            .expect("polyline");
        let points = svg[start..].split('"').nth(3).unwrap();
        points
            .split(' ')
            .map(|p| p.split(',').next().unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn checker_rejects_broken_xml() {
        for bad in [
            "<a><b></a></b>",
            "<a>x & y</a>",
            "<a x=1/>",
            "<a></a><b/>",
            "<a>",
        ] {
            let xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>{bad}");
            assert!(
                std::panic::catch_unwind(|| assert_well_formed(&xml)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn curves_are_well_formed_with_one_line_per_series() {
        let points: Vec<MetricPoint> = (0..=40)
            .map(|i| {
                point(
                    i * 50,
                    2.3 / (1.0 + i as f64 * 0.2),
                    (i % 10 == 0).then_some(0.1 + i as f64 * 0.02),
                )
            })
            .collect();
        let svg = training_curves(&points);
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("class=\"loss\"").count(), 1);
        assert_eq!(svg.matches("class=\"accuracy\"").count(), 1);
        assert_eq!(
            svg.matches("<circle").count(),
            5,
            "one marker per accuracy point"
        );
        for label in [
            "training loss",
            "test accuracy (%)",
            ">step<",
            ">1000<",
            ">2000<",
        ] {
            assert!(svg.contains(label), "missing {label}");
        }
    }

    #[test]
    fn curve_coordinates_increase_with_step() {
        // Deliberately out of order: the chart must sort by step.
        let steps = [300, 0, 100, 500, 200, 400];
        let points: Vec<MetricPoint> = steps
            .iter()
            .map(|&s| point(s, 1.0 / (s as f64 + 1.0), Some(0.5)))
            .collect();
        let svg = training_curves(&points);
        for class in ["loss", "accuracy"] {
            let xs = polyline_xs(&svg, class);
            assert_eq!(xs.len(), steps.len());
            assert!(xs.windows(2).all(|w| w[0] < w[1]), "{class}: {xs:?}");
        }
    }

    #[test]
    fn curves_handle_degenerate_input() {
        let empty = training_curves(&[]);
        assert_well_formed(&empty);
        assert!(empty.contains("no data yet"));
        assert!(!empty.contains("<polyline"));

        let single = training_curves(&[point(7, 0.5, None)]);
        assert_well_formed(&single);
        assert!(
            single.contains("<circle"),
            "a lone loss point gets a marker"
        );
        assert!(single.contains("no test accuracy yet"));

        let flat = training_curves(&[point(0, 1.0, Some(1.0)), point(10, 1.0, Some(1.0))]);
        assert_well_formed(&flat);
        assert!(!flat.contains("NaN") && !flat.contains("inf"));

        let mixed = [
            point(0, f64::NAN, None),
            point(1, 2.0, Some(f64::NAN)),
            point(2, f64::INFINITY, Some(0.5)),
            point(3, 1.0, None),
        ];
        let svg = training_curves(&mixed);
        assert_well_formed(&svg);
        assert_eq!(
            polyline_xs(&svg, "loss").len(),
            2,
            "non-finite losses skipped"
        );
        assert_eq!(polyline_xs(&svg, "accuracy").len(), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn confusion_matrix_prints_counts_and_escapes_labels() {
        let labels = vec![
            "cat".to_string(),
            "a<b&c".to_string(),
            "dog \"x\"".to_string(),
        ];
        let counts = vec![vec![17, 2, 1], vec![3, 40, 0], vec![0, 5, 95]];
        let svg = confusion_matrix(&labels, &counts);
        assert_well_formed(&svg);
        for count in [">17<", ">40<", ">95<", ">0<"] {
            assert!(svg.contains(count), "missing cell {count}");
        }
        assert!(svg.contains("a&lt;b&amp;c"));
        assert!(!svg.contains("a<b&c"));
        assert!(svg.contains("dog &quot;x&quot;"));
        assert!(svg.contains("true class") && svg.contains("predicted class"));
        assert!(svg.contains(">85.0%<"), "row accuracy 17/20");
    }

    #[test]
    fn confusion_matrix_scales_to_many_classes() {
        let n = 100;
        let labels: Vec<String> = (0..n).map(|i| format!("class_{i}")).collect();
        let counts: Vec<Vec<usize>> = (0..n)
            .map(|t| {
                (0..n)
                    .map(|p| if t == p { 50 } else { (t * p) % 3 })
                    .collect()
            })
            .collect();
        let svg = confusion_matrix(&labels, &counts);
        assert_well_formed(&svg);
        assert!(
            !svg.contains(">50<"),
            "cell numbers dropped when cells are tiny"
        );
        assert!(svg.contains(">class_99<"));
        let small = confusion_matrix(&labels[..5], &counts[..5]);
        let width = |s: &str| {
            s.split("width=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .parse::<f64>()
                .unwrap()
        };
        assert!(width(&svg) > width(&small));
    }

    #[test]
    fn confusion_matrix_tolerates_ragged_input() {
        assert!(confusion_matrix(&[], &[]).contains("no classes"));
        let svg = confusion_matrix(&["only".to_string()], &[vec![1, 2], vec![]]);
        assert_well_formed(&svg);
        assert!(svg.contains(">1<") && svg.contains("n/a"));
    }
}
