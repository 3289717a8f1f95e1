//! Charts drawn on the server as inline SVG: no script, no external asset, readable by screen
//! readers (each chart is an image with a text alternative, and a table beside it says the same).
//! Colours come from CSS variables, so light and dark schemes restyle them.

use std::fmt::Write;

use maud::{Markup, PreEscaped, html};

/// Drawing area in SVG units; the SVG scales to its container.
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 30.0;

/// One line: a name and its values at the chart's x positions (`None`: no data there).
pub struct Series<'a> {
    /// Shown in the legend.
    pub name: &'a str,
    /// CSS class of the line (its colour).
    pub class: &'a str,
    /// One value per x position.
    pub values: Vec<Option<f64>>,
}

/// A line chart over `labels.len()` evenly spaced x positions.
pub struct LineChart<'a> {
    /// What it shows, for the text alternative.
    pub title: &'a str,
    /// The x axis labels: at most six are drawn, evenly picked.
    pub labels: Vec<String>,
    /// The lines.
    pub series: Vec<Series<'a>>,
    /// How a y value reads (`97%`, `12 ms`).
    pub format: fn(f64) -> String,
    /// The y axis starts at 0 and reaches at least this (1.0 for rates).
    pub min_top: f64,
}

/// A count on an axis: whole numbers as such, quarter steps of small tops with a decimal.
pub fn count(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A "nice" axis top at or above `max`: 1, 2, 2.5 or 5 times a power of ten.
pub fn nice_top(max: f64) -> f64 {
    if !max.is_finite() || max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|step| step * magnitude)
        .find(|top| *top >= max)
        .unwrap_or(10.0 * magnitude)
}

impl LineChart<'_> {
    fn top(&self) -> f64 {
        let max = self
            .series
            .iter()
            .flat_map(|s| s.values.iter().flatten())
            .fold(0.0f64, |a, b| a.max(*b));
        nice_top(max.max(self.min_top))
    }

    /// Where value `v` at position `i` is drawn.
    fn at(&self, i: usize, v: f64, top: f64) -> (f64, f64) {
        let n = self.labels.len().max(2) as f64 - 1.0;
        let x = LEFT + (WIDTH - LEFT - RIGHT) * i as f64 / n;
        let y = TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - (v / top).clamp(0.0, 1.0));
        (x, y)
    }

    /// Values with no neighbour to draw a line to: drawn as dots, or they would not show.
    fn isolated(values: &[Option<f64>]) -> impl Iterator<Item = (usize, f64)> + '_ {
        values.iter().enumerate().filter_map(move |(i, value)| {
            let before = i.checked_sub(1).and_then(|j| values[j]);
            let after = values.get(i + 1).copied().flatten();
            value
                .filter(|_| before.is_none() && after.is_none())
                .map(|v| (i, v))
        })
    }

    /// The SVG path of one series: a move at each start and after each gap.
    fn path(&self, values: &[Option<f64>], top: f64) -> String {
        let mut path = String::new();
        let mut drawing = false;
        for (i, value) in values.iter().enumerate() {
            match value {
                Some(v) => {
                    let (x, y) = self.at(i, *v, top);
                    let command = if drawing { 'L' } else { 'M' };
                    let _ = write!(path, "{command}{x:.1},{y:.1} ");
                    drawing = true;
                }
                None => drawing = false,
            }
        }
        path.trim_end().to_owned()
    }

    /// The chart, with a legend.
    pub fn render(&self) -> Markup {
        let top = self.top();
        let has_data = self
            .series
            .iter()
            .any(|s| s.values.iter().any(Option::is_some));
        let plot_h = HEIGHT - TOP - BOTTOM;
        let n = self.labels.len().max(2) - 1;
        let label_every = n.div_ceil(5).max(1);
        html! {
            figure.chart {
                svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(self.title) {
                    title { (self.title) }
                    @for step in 0..=4 {
                        @let y = TOP + plot_h * f64::from(step) / 4.0;
                        line.grid x1=(LEFT) x2=(WIDTH - RIGHT) y1=(y) y2=(y) {}
                        text.axis x=(LEFT - 6.0) y=(y + 4.0) text-anchor="end" {
                            ((self.format)(top * (1.0 - f64::from(step) / 4.0)))
                        }
                    }
                    @for (i, label) in self.labels.iter().enumerate() {
                        @if i % label_every == 0 || i == n {
                            @let anchor = if i == 0 { "start" } else if i == n { "end" } else { "middle" };
                            text.axis x=(LEFT + (WIDTH - LEFT - RIGHT) * i as f64 / n as f64) y=(HEIGHT - 6.0) text-anchor=(anchor) { (label) }
                        }
                    }
                    @if has_data {
                        @for series in &self.series {
                            path class=(format!("line {}", series.class)) d=(self.path(&series.values, top)) {}
                            @for (i, v) in Self::isolated(&series.values) {
                                @let (x, y) = self.at(i, v, top);
                                circle class=(format!("dot {}", series.class)) cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="3" {}
                            }
                        }
                    } @else {
                        text.empty x=(WIDTH / 2.0) y=(HEIGHT / 2.0) text-anchor="middle" { "No data in this period" }
                    }
                }
                @if self.series.len() > 1 || has_data {
                    figcaption {
                        @for series in &self.series {
                            span.legend { span class=(format!("swatch {}", series.class)) {} (series.name) }
                        }
                    }
                }
            }
        }
    }
}

/// Horizontal bars, one per row: for counts by model or by day, beside the exact figures.
pub fn bars(title: &str, rows: &[(String, f64)], format: fn(f64) -> String) -> Markup {
    let max = rows.iter().map(|(_, v)| *v).fold(0.0f64, f64::max);
    html! {
        div.bars role="img" aria-label=(title) {
            @for (label, value) in rows {
                div.bar-row {
                    span.bar-label { (label) }
                    span.bar-track {
                        span.bar style=(PreEscaped(format!("width:{:.1}%", if max > 0.0 { value / max * 100.0 } else { 0.0 }))) {}
                    }
                    span.bar-value { (format(*value)) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(values: Vec<Option<f64>>) -> LineChart<'static> {
        LineChart {
            title: "success rate",
            labels: (0..values.len()).map(|i| format!("{i}")).collect(),
            series: vec![Series {
                name: "success",
                class: "ok",
                values,
            }],
            format: |v| format!("{v}"),
            min_top: 1.0,
        }
    }

    #[test]
    fn axis_tops_are_round_numbers_at_or_above_the_maximum() {
        for (max, top) in [
            (0.0, 1.0),
            (0.7, 1.0),
            (1.0, 1.0),
            (1.2, 2.0),
            (3.0, 5.0),
            (7.0, 10.0),
            (230.0, 250.0),
            (2600.0, 5000.0),
        ] {
            assert_eq!(nice_top(max), top, "{max}");
        }
    }

    #[test]
    fn values_map_into_the_plot_and_gaps_break_the_line() {
        let chart = chart(vec![Some(1.0), Some(0.0), None, Some(0.5)]);
        let path = chart.path(&chart.series[0].values, 1.0);
        // Top of the plot for 1.0, bottom for 0.0, a new segment after the gap, midway for 0.5.
        assert_eq!(path, "M70.0,12.0 L244.0,170.0 M592.0,91.0");
    }

    #[test]
    fn a_value_alone_between_gaps_is_a_dot() {
        let chart = chart(vec![None, Some(1.0), None, Some(0.5), Some(0.5)]);
        let lonely: Vec<_> = LineChart::isolated(&chart.series[0].values).collect();
        assert_eq!(lonely, [(1, 1.0)]);
        assert!(
            chart
                .render()
                .into_string()
                .contains("<circle class=\"dot ok\" cx=\"200.5\" cy=\"12.0\"")
        );
    }

    #[test]
    fn an_empty_period_says_so_instead_of_drawing_a_flat_line() {
        let markup = chart(vec![None, None, None]).render().into_string();
        assert!(markup.contains("No data in this period"));
        assert!(!markup.contains("<path"));
        let drawn = chart(vec![Some(0.5), Some(0.9)]).render().into_string();
        assert!(drawn.contains("<path class=\"line ok\""));
        assert!(drawn.contains("aria-label=\"success rate\""));
    }

    #[test]
    fn bars_are_scaled_to_the_largest_row() {
        let markup = bars(
            "tokens",
            &[("gpt-4o".into(), 200.0), ("gpt-4o-mini".into(), 50.0)],
            |v| format!("{v}"),
        )
        .into_string();
        assert!(markup.contains("width:100.0%"));
        assert!(markup.contains("width:25.0%"));
    }
}
