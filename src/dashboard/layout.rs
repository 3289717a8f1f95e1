//! The page around every dashboard view: navigation, the CSRF token for forms, notices, and
//! the one stylesheet (inline: the dashboard loads nothing from anywhere else).

use maud::{DOCTYPE, Markup, PreEscaped, html};

/// What every page needs to draw its chrome and forms.
pub struct Chrome<'a> {
    /// The page's heading, also in the title.
    pub title: &'a str,
    /// Which navigation entry is current.
    pub section: Section,
    /// The session's CSRF token, for forms.
    pub csrf: &'a str,
    /// Whether the holder logged in with the admin token (a logout button) or is a local
    /// client without one (a notice saying so).
    pub logged_in: bool,
    /// A message from the action that led here.
    pub notice: Option<&'a str>,
}

/// The navigation entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Endpoints,
    Events,
    DeadLetters,
    Sessions,
}

const SECTIONS: [(Section, &str, &str); 5] = [
    (Section::Overview, "/dashboard", "Overview"),
    (Section::Endpoints, "/dashboard/endpoints", "Endpoints"),
    (Section::Events, "/dashboard/events", "Events"),
    (Section::DeadLetters, "/dashboard/dlq", "Dead letters"),
    (Section::Sessions, "/dashboard/sessions", "Sessions"),
];

/// A whole page.
pub fn page(chrome: &Chrome<'_>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (chrome.title) " · hookrelay" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/dashboard" { "hookrelay" }
                    nav aria-label="Sections" {
                        @for (section, href, label) in SECTIONS {
                            @if section == chrome.section {
                                a href=(href) aria-current="page" { (label) }
                            } @else {
                                a href=(href) { (label) }
                            }
                        }
                    }
                    @if chrome.logged_in {
                        form.logout method="post" action="/dashboard/logout" {
                            (csrf_field(chrome.csrf))
                            button type="submit" { "Log out" }
                        }
                    }
                }
                @if !chrome.logged_in {
                    p.banner role="note" {
                        "HOOKRELAY_ADMIN_TOKEN is not set: this dashboard, like the management API, answers only clients on this host. Set a token to log in from elsewhere."
                    }
                }
                main #main {
                    h1 { (chrome.title) }
                    @if let Some(notice) = chrome.notice {
                        p.notice role="status" { (notice) }
                    }
                    (body)
                }
            }
        }
    }
}

/// The hidden field every form posts.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

/// A standalone page without navigation (login, refusals).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · hookrelay" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                main #main .narrow {
                    p.brand { "hookrelay" }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// `2026-12-07 03:18:51 UTC` from unix ms.
pub fn time(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// `97.3%`, or `–` without data.
pub fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "–".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

/// `12 ms`, `1.4 s`, or `–`.
pub fn millis(ms: Option<f64>) -> String {
    match ms {
        None => "–".to_owned(),
        Some(ms) if ms >= 1000.0 => format!("{:.1} s", ms / 1000.0),
        Some(ms) => format!("{ms:.0} ms"),
    }
}

/// `45 s`, `3 min`, `2.5 h`, `4 d`.
pub fn age(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0} s")
    } else if seconds < 90.0 * 60.0 {
        format!("{:.0} min", seconds / 60.0)
    } else if seconds < 48.0 * 3600.0 {
        format!("{:.1} h", seconds / 3600.0)
    } else {
        format!("{:.0} d", seconds / 86_400.0)
    }
}

const STYLE: &str = r#"
:root { --bg:#fafafa; --fg:#1c1e21; --muted:#5f6670; --card:#fff; --line:#d9dde3; --accent:#1f5fbf;
  --ok:#1d7a3a; --warn:#a05a00; --bad:#b42318; --chip:#eef1f5; --focus:#1f5fbf; }
@media (prefers-color-scheme: dark) {
  :root { --bg:#111418; --fg:#e6e8eb; --muted:#a0a7b1; --card:#1a1e24; --line:#2e343d; --accent:#7fb0ff;
    --ok:#5ccf7d; --warn:#f0b35a; --bad:#ff8a80; --chip:#242a32; --focus:#7fb0ff; }
}
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg); font:15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
a { color:var(--accent); }
:focus-visible { outline:3px solid var(--focus); outline-offset:2px; }
.skip { position:absolute; left:-999px; } .skip:focus { left:8px; top:8px; background:var(--card); padding:6px; }
header.top { display:flex; flex-wrap:wrap; gap:12px; align-items:center; padding:10px 16px; border-bottom:1px solid var(--line); background:var(--card); }
.brand { font-weight:700; text-decoration:none; color:var(--fg); }
nav { display:flex; flex-wrap:wrap; gap:4px; flex:1; }
nav a { padding:6px 10px; border-radius:6px; text-decoration:none; }
nav a[aria-current=page] { background:var(--chip); color:var(--fg); font-weight:600; }
form.logout { margin:0; }
main { padding:16px; max-width:1200px; margin:0 auto; }
main.narrow { max-width:420px; margin-top:10vh; }
h1 { font-size:1.5rem; margin:.2rem 0 1rem; } h2 { font-size:1.15rem; margin:1.4rem 0 .6rem; }
.banner { margin:0; padding:8px 16px; background:var(--chip); border-bottom:1px solid var(--line); }
.notice { padding:8px 12px; border-left:4px solid var(--accent); background:var(--card); }
.error { padding:8px 12px; border-left:4px solid var(--bad); background:var(--card); }
.cards { display:grid; grid-template-columns:repeat(auto-fit, minmax(170px, 1fr)); gap:12px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px; }
.card .label { color:var(--muted); font-size:.85rem; } .card .value { font-size:1.4rem; font-weight:650; }
.status { display:inline-block; padding:2px 10px; border-radius:999px; font-weight:650; background:var(--chip); }
.status.healthy, .status.closed, .status.delivered, .status.enabled { color:var(--ok); }
.status.degraded, .status.half_open, .status.pending, .status.throttled { color:var(--warn); }
.status.unhealthy, .status.open, .status.dead, .status.disabled { color:var(--bad); }
.table-wrap { overflow-x:auto; border:1px solid var(--line); border-radius:8px; background:var(--card); }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:7px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-size:.85rem; color:var(--muted); font-weight:600; }
tr:last-child td { border-bottom:0; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
code, pre { font-family:ui-monospace, SFMono-Regular, Menlo, monospace; font-size:.88em; }
pre { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px; overflow-x:auto; white-space:pre-wrap; word-break:break-word; }
form.filters { display:flex; flex-wrap:wrap; gap:8px; align-items:flex-end; margin-bottom:12px; }
label { display:flex; flex-direction:column; font-size:.85rem; color:var(--muted); gap:2px; }
input, select, button { font:inherit; padding:6px 8px; border:1px solid var(--line); border-radius:6px; background:var(--card); color:var(--fg); }
button { cursor:pointer; background:var(--chip); }
button.primary { background:var(--accent); color:var(--card); border-color:var(--accent); }
button.danger { color:var(--bad); }
.actions { display:flex; flex-wrap:wrap; gap:6px; } .actions form { margin:0; }
.pager { display:flex; gap:12px; margin:10px 0; }
.tabs { display:flex; gap:6px; margin:.4rem 0 .8rem; } .tabs a { padding:4px 10px; border-radius:6px; border:1px solid var(--line); text-decoration:none; }
.tabs a[aria-current=true] { background:var(--chip); color:var(--fg); font-weight:600; }
.charts { display:grid; grid-template-columns:repeat(auto-fit, minmax(320px, 1fr)); gap:12px; }
figure.chart { margin:0; background:var(--card); border:1px solid var(--line); border-radius:8px; padding:8px; }
figure.chart svg { width:100%; height:auto; display:block; }
figure.chart h3 { margin:0 0 4px; font-size:.95rem; }
.grid { stroke:var(--line); stroke-width:1; } .axis { fill:var(--muted); font-size:17px; } .empty { fill:var(--muted); font-size:20px; }
.line { fill:none; stroke-width:2; vector-effect:non-scaling-stroke; }
.dot.ok { fill:var(--ok); } .dot.bad { fill:var(--bad); } .dot.p50, .dot.volume { fill:var(--accent); } .dot.p99 { fill:var(--warn); }
.line.ok { stroke:var(--ok); } .line.bad { stroke:var(--bad); } .line.p50 { stroke:var(--accent); } .line.p99 { stroke:var(--warn); } .line.volume { stroke:var(--accent); }
figcaption { display:flex; gap:12px; font-size:.85rem; color:var(--muted); }
.swatch { display:inline-block; width:12px; height:3px; margin-right:4px; vertical-align:middle; }
.swatch.ok { background:var(--ok); } .swatch.bad { background:var(--bad); } .swatch.p50, .swatch.volume { background:var(--accent); } .swatch.p99 { background:var(--warn); }
.bars { display:flex; flex-direction:column; gap:4px; }
.bar-row { display:grid; grid-template-columns:minmax(90px, 30%) 1fr auto; gap:8px; align-items:center; }
.bar-track { background:var(--chip); border-radius:4px; height:12px; } .bar { display:block; height:12px; border-radius:4px; background:var(--accent); }
.bar-value { font-variant-numeric:tabular-nums; }
.muted { color:var(--muted); }
.secret { font-size:1.05rem; padding:10px; border:2px dashed var(--warn); word-break:break-all; }
@media (max-width: 600px) { main { padding:10px; } nav { order:3; flex-basis:100%; } th, td { padding:6px; } .bar-row { grid-template-columns:1fr; } }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(percent(Some(0.973)), "97.3%");
        assert_eq!(percent(None), "–");
        assert_eq!(millis(Some(12.4)), "12 ms");
        assert_eq!(millis(Some(1400.0)), "1.4 s");
        assert_eq!(age(45.0), "45 s");
        assert_eq!(age(180.0), "3 min");
        assert_eq!(age(9000.0), "2.5 h");
        assert_eq!(age(4.0 * 86_400.0), "4 d");
        assert_eq!(time(1_800_000_000_000), "2027-01-15 08:00:00 UTC");
    }

    #[test]
    fn text_is_escaped_and_the_current_section_is_marked() {
        let chrome = Chrome {
            title: "<script>",
            section: Section::Events,
            csrf: "token",
            logged_in: true,
            notice: Some("done & dusted"),
        };
        let markup = page(&chrome, html! { p { "body" } }).into_string();
        assert!(markup.contains("&lt;script&gt;"));
        assert!(!markup.contains("<script>"));
        assert!(markup.contains(r#"<a href="/dashboard/events" aria-current="page">"#));
        assert!(markup.contains("done &amp; dusted"));
        assert!(markup.contains(r#"name="csrf" value="token""#));
    }
}
