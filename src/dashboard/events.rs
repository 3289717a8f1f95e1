//! Events and deliveries: search by session, event, endpoint, status and time, a page at a
//! time (keyset paging: newest first, never counting rows to skip); one delivery with its
//! payload and every attempt; the dead-letter queue with replay and purge of one, a selection,
//! or everything matching, after a confirmation that says how many.

use std::sync::Arc;

use axum::{
    Extension,
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};

use super::{
    Dashboard, Refusal, Viewer,
    forms::Form,
    layout::{self, Section, csrf_field},
};
use crate::{
    domain::{DeliveryId, EndpointId, EventId},
    relay::Relay,
    store::{DeliveryFilter, DeliveryStatus, DeliverySummary, Selection},
};

/// Rows per page.
const PAGE: usize = 50;
/// At most this many selected dead letters per action (the store's bound for a list of ids).
const MAX_SELECTED: usize = 1000;

/// A search as the form sent it: kept as text to fill the form again, parsed into a filter.
#[derive(Debug, Default)]
struct Search {
    session: String,
    event: String,
    endpoint: String,
    status: String,
    from: String,
    to: String,
}

impl Search {
    fn read(form: &Form) -> Self {
        let text = |name| form.get(name).unwrap_or_default().to_owned();
        Self {
            session: text("session"),
            event: text("event"),
            endpoint: text("endpoint"),
            status: text("status"),
            from: text("from"),
            to: text("to"),
        }
    }

    /// The filter, or what is wrong with the form.
    fn filter(&self) -> Result<DeliveryFilter, String> {
        let event_id = (!self.event.is_empty())
            .then(|| EventId::parse(&self.event).map_err(|e| e.to_string()))
            .transpose()?;
        let endpoint_id = (!self.endpoint.is_empty())
            .then(|| EndpointId::parse(&self.endpoint).map_err(|e| e.to_string()))
            .transpose()?;
        let status = match self.status.as_str() {
            "" => None,
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "dead" => Some(DeliveryStatus::Dead),
            other => return Err(format!("`{other}` is not a status")),
        };
        Ok(DeliveryFilter {
            session_id: (!self.session.is_empty()).then(|| self.session.clone()),
            event_id,
            endpoint_id,
            status,
            since_ms: parse_time("from", &self.from)?,
            until_ms: parse_time("before", &self.to)?,
            finished_until_ms: None,
        })
    }

    /// The query string that repeats this search.
    fn query(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                [
                    ("session", &self.session),
                    ("event", &self.event),
                    ("endpoint", &self.endpoint),
                    ("status", &self.status),
                    ("from", &self.from),
                    ("to", &self.to),
                ]
                .into_iter()
                .filter(|(_, v)| !v.is_empty()),
            )
            .finish()
    }

    /// The search's fields as hidden inputs, for a confirmation form.
    fn hidden(&self) -> Markup {
        html! {
            @for (name, value) in [("session", &self.session), ("event", &self.event), ("endpoint", &self.endpoint), ("from", &self.from), ("to", &self.to)] {
                @if !value.is_empty() { input type="hidden" name=(name) value=(value); }
            }
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (what, value) in [
            ("session", &self.session),
            ("event", &self.event),
            ("endpoint", &self.endpoint),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if !value.is_empty() {
                parts.push(format!("{what} {value}"));
            }
        }
        if parts.is_empty() {
            "every dead letter".to_owned()
        } else {
            format!("dead letters with {}", parts.join(", "))
        }
    }
}

/// A `datetime-local` value (`2026-12-07T03:18`, read as UTC) in unix ms.
fn parse_time(field: &str, value: &str) -> Result<Option<i64>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    let with_seconds =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(value, &format)
        .or_else(|_| time::PrimitiveDateTime::parse(value, &with_seconds))
        .map(|t| Some((t.assume_utc().unix_timestamp_nanos() / 1_000_000) as i64))
        .map_err(|_| format!("{field}: `{value}` is not a date and time such as 2026-12-07T03:18"))
}

fn status_badge(status: DeliveryStatus) -> Markup {
    let text = status.as_str();
    html! { span class=(format!("status {text}")) { (text) } }
}

fn filters(search: &Search, action: &str, with_status: bool) -> Markup {
    html! {
        form.filters method="get" action=(action) role="search" {
            label { "Session id" input type="search" name="session" value=(search.session); }
            label { "Event id" input type="search" name="event" value=(search.event) placeholder="evt_…"; }
            label { "Endpoint" input type="search" name="endpoint" value=(search.endpoint) placeholder="ep_…"; }
            @if with_status {
                label { "Status" select name="status" {
                    @for (value, text) in [("", "any"), ("pending", "pending"), ("delivered", "delivered"), ("dead", "dead")] {
                        option value=(value) selected[search.status == value] { (text) }
                    }
                } }
            }
            label { "From (UTC)" input type="datetime-local" name="from" value=(search.from); }
            label { "Before (UTC)" input type="datetime-local" name="to" value=(search.to); }
            button.primary type="submit" { "Search" }
        }
    }
}

fn rows(deliveries: &[DeliverySummary], selectable: bool) -> Markup {
    html! {
        div.table-wrap { table {
            thead { tr {
                @if selectable { th { span.muted { "Select" } } }
                th { "Delivery" } th { "Event" } th { "Session" } th { "Type" } th { "Endpoint" } th { "Status" } th.num { "Attempts" } th { "Last answer" } th { "Accepted" }
            } }
            tbody {
                @for d in deliveries {
                    tr {
                        @if selectable { td { input type="checkbox" name="ids" value=(d.id) aria-label=(format!("select {}", d.id)); } }
                        td { a href=(format!("/dashboard/deliveries/{}", d.id)) data-event=(d.event_id) { code { (d.id) } } }
                        td { code { (d.event_id) } }
                        td { (d.session_id.as_deref().unwrap_or("")) }
                        td { (d.event_type) }
                        td { code { (d.endpoint_id) } }
                        td { (status_badge(d.status)) }
                        td.num { (d.total_attempts) }
                        td { @if let Some(status) = d.last_status { (status) " " } span.muted { (d.last_error.as_deref().unwrap_or("")) } }
                        td { (layout::time(d.created_at_ms)) }
                    }
                }
            }
        } }
    }
}

fn pager(base: &str, search: &Search, next: Option<&DeliveryId>, paged: bool) -> Markup {
    let query = search.query();
    let join = if query.is_empty() { "?" } else { "&" };
    html! {
        nav.pager aria-label="Pages" {
            @if paged { a href=(format!("{base}?{query}")) { "Newest" } }
            @if let Some(next) = next { a href=(format!("{base}?{query}{join}before={next}")) rel="next" { "Older" } }
        }
    }
}

fn before(form: &Form) -> Result<Option<DeliveryId>, Refusal> {
    form.get("before")
        .map(DeliveryId::parse)
        .transpose()
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.to_string()))
}

pub async fn search(
    State(relay): State<Relay>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(query): RawQuery,
) -> Result<Markup, Refusal> {
    let form = Form::parse(query.unwrap_or_default().as_bytes());
    let search = Search::read(&form);
    let before = before(&form)?;
    let chrome = viewer.chrome("Events and deliveries", Section::Events, None);
    let page = match search.filter() {
        Ok(filter) => Ok(relay
            .search_deliveries(filter, before.clone(), PAGE)
            .await?),
        Err(problem) => Err(problem),
    };
    Ok(layout::page(
        &chrome,
        html! {
            (filters(&search, "/dashboard/events", true))
            @match &page {
                Err(problem) => p.error role="alert" { (problem) },
                Ok(page) if page.deliveries.is_empty() => p.muted { "Nothing matches." },
                Ok(page) => {
                    (rows(&page.deliveries, false))
                    (pager("/dashboard/events", &search, page.next_before.as_ref(), before.is_some()))
                },
            }
        },
    ))
}

pub async fn delivery(
    State(relay): State<Relay>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Markup, Refusal> {
    let form = Form::parse(query.unwrap_or_default().as_bytes());
    let id =
        DeliveryId::parse(&id).map_err(|e| Refusal::new(StatusCode::NOT_FOUND, e.to_string()))?;
    let detail = relay
        .delivery(id.clone())
        .await?
        .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("No delivery {id}.")))?;
    let notice = (form.get("done") == Some("replayed"))
        .then_some("Back in the queue with a fresh retry budget.");
    let title = format!("Delivery {id}");
    let chrome = viewer.chrome(&title, Section::Events, notice);
    let d = &detail.summary;
    let payload = serde_json::to_string_pretty(&detail.payload).unwrap_or_default();
    Ok(layout::page(
        &chrome,
        html! {
            p { (status_badge(d.status)) " " (d.event_type) " event " code { (d.event_id) } " to " code { (d.endpoint_id) }
                @if let Some(session) = &d.session_id { " · session " a href=(format!("/dashboard/events?session={}", form_urlencoded::byte_serialize(session.as_bytes()).collect::<String>())) { (session) } } }
            p { "Accepted " (layout::time(d.created_at_ms))
                @if let Some(at) = d.next_attempt_at_ms { " · next attempt " (layout::time(at)) }
                @if let Some(at) = d.finished_at_ms { " · finished " (layout::time(at)) }
                " · " (d.total_attempts) " attempts (" (d.attempts) " of the current budget, " (d.throttled) " throttled)" }
            @if d.status == DeliveryStatus::Dead {
                form method="post" action="/dashboard/dlq/replay" {
                    (csrf_field(&viewer.csrf))
                    input type="hidden" name="ids" value=(d.id);
                    input type="hidden" name="return" value="delivery";
                    button.primary type="submit" { "Replay this delivery" }
                }
            }
            h2 { "Payload" }
            p.muted { "As stored and sent (the query is a summary unless HOOKRELAY_QUERY_MODE=full)." }
            pre #payload { (payload) }
            h2 { "Attempts" }
            @if detail.attempts_log.is_empty() {
                p.muted { "None yet." }
            } @else {
                div.table-wrap { table #attempts {
                    thead { tr { th.num { "#" } th { "Started" } th.num { "Duration" } th { "Status" } th { "Error" } th { "Outcome" } th { "Response" } } }
                    tbody { @for a in &detail.attempts_log {
                        tr {
                            td.num { (a.attempt_no) }
                            td { (layout::time(a.started_at_ms)) }
                            td.num { (a.duration_ms) " ms" }
                            td { (a.status_code.map_or_else(|| "–".to_owned(), |s| s.to_string())) }
                            td { (a.error_kind.as_deref().unwrap_or("")) " " span.muted { (a.error_detail.as_deref().unwrap_or("")) } }
                            td { (a.outcome) }
                            td { @if let Some(snippet) = &a.response_snippet { code { (snippet) } } }
                        }
                    } }
                } }
            }
        },
    ))
}

fn dlq_notice(form: &Form) -> Option<String> {
    let count = form.get("n").and_then(|n| n.parse::<u64>().ok())?;
    match form.get("done")? {
        "replayed" => Some(format!("{count} dead letter(s) back in the queue.")),
        "purged" => Some(format!("{count} dead letter(s) deleted.")),
        _ => None,
    }
}

pub async fn dead_letters(
    State(relay): State<Relay>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(query): RawQuery,
) -> Result<Markup, Refusal> {
    let form = Form::parse(query.unwrap_or_default().as_bytes());
    let search = Search::read(&form);
    let before = before(&form)?;
    let notice = dlq_notice(&form);
    let chrome = viewer.chrome("Dead letters", Section::DeadLetters, notice.as_deref());
    let page = match search.filter() {
        Ok(filter) => {
            let filter = DeliveryFilter {
                status: Some(DeliveryStatus::Dead),
                ..filter
            };
            let total = relay.count_deliveries(filter.clone()).await?;
            Ok((
                total,
                relay
                    .search_deliveries(filter, before.clone(), PAGE)
                    .await?,
            ))
        }
        Err(problem) => Err(problem),
    };
    Ok(layout::page(
        &chrome,
        html! {
            (filters(&search, "/dashboard/dlq", false))
            @match &page {
                Err(problem) => p.error role="alert" { (problem) },
                Ok((_, page)) if page.deliveries.is_empty() => p.muted { "No dead letters match." },
                Ok((total, page)) => {
                    p { (total) " dead letter(s) match." }
                    form #dlq-selection method="post" action="/dashboard/dlq/replay" {
                        (csrf_field(&viewer.csrf))
                        div.actions {
                            button.primary type="submit" formaction="/dashboard/dlq/replay" { "Replay selected" }
                            button.danger type="submit" formaction="/dashboard/dlq/purge" { "Purge selected" }
                        }
                        (rows(&page.deliveries, true))
                    }
                    (pager("/dashboard/dlq", &search, page.next_before.as_ref(), before.is_some()))
                    div.actions {
                        form method="post" action="/dashboard/dlq/replay" {
                            (csrf_field(&viewer.csrf)) (search.hidden())
                            input type="hidden" name="scope" value="matching";
                            button type="submit" { "Replay all " (total) " matching" }
                        }
                        form method="post" action="/dashboard/dlq/purge" {
                            (csrf_field(&viewer.csrf)) (search.hidden())
                            input type="hidden" name="scope" value="matching";
                            button.danger type="submit" { "Purge all " (total) " matching" }
                        }
                    }
                },
            }
        },
    ))
}

/// Replays or purges dead letters: the selected ones, or (after a confirmation page that
/// states how many) all that match a search. Purging always asks first.
pub async fn act_on_dead_letters(
    State(relay): State<Relay>,
    Extension(dashboard): Extension<Arc<Dashboard>>,
    Extension(viewer): Extension<Viewer>,
    Path(action): Path<String>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let form = Form::parse(&body);
    viewer.check(&dashboard, &form)?;
    let replay = match action.as_str() {
        "replay" => true,
        "purge" => false,
        _ => return Err(Refusal::new(StatusCode::NOT_FOUND, "No such action.")),
    };
    let search = Search::read(&form);
    // What a confirmation counted: dead letters that had died by then. Acting on the live
    // filter would also take those that died while the operator read the count.
    let snapshot_ms = match form.get("snapshot") {
        Some(ms) => ms
            .parse::<i64>()
            .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "The confirmation is malformed."))?,
        None => relay.clock().now_ms(),
    };
    let (selection, described, count) = if form.get("scope") == Some("matching") {
        let filter = DeliveryFilter {
            finished_until_ms: Some(snapshot_ms),
            ..search
                .filter()
                .map_err(|problem| Refusal::new(StatusCode::BAD_REQUEST, problem))?
        };
        let count = relay
            .count_deliveries(DeliveryFilter {
                status: Some(DeliveryStatus::Dead),
                ..filter.clone()
            })
            .await?;
        (Selection::Matching(filter), search.describe(), count)
    } else {
        let mut ids = form
            .all("ids")
            .map(DeliveryId::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "Select at least one dead letter first.",
            ));
        }
        if ids.len() > MAX_SELECTED {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("Select at most {MAX_SELECTED} at a time, or act on all matching."),
            ));
        }
        let count = ids.len() as u64;
        (
            Selection::Ids(ids),
            "the selected dead letters".to_owned(),
            count,
        )
    };
    let single_replay = replay && matches!(&selection, Selection::Ids(ids) if ids.len() == 1);
    let needs_confirmation =
        !single_replay && (!replay || matches!(selection, Selection::Matching(_)));
    if needs_confirmation && form.get("confirm") != Some("yes") {
        let verb = if replay { "Replay" } else { "Purge" };
        let title = format!("{verb} {count} dead letter(s)?");
        let chrome = viewer.chrome(&title, Section::DeadLetters, None);
        return Ok(layout::page(
            &chrome,
            html! {
                p #confirm-count data-count=(count) {
                    @if replay { "This puts " strong { (count) } " " (described) " back in the queue with a fresh retry budget." }
                    @else { "This deletes " strong { (count) } " " (described) " for good; they cannot be replayed afterwards." }
                }
                form method="post" action=(format!("/dashboard/dlq/{action}")) {
                    (csrf_field(&viewer.csrf)) (search.hidden())
                    @if let Selection::Ids(ids) = &selection { @for id in ids { input type="hidden" name="ids" value=(id); } }
                    @if matches!(selection, Selection::Matching(_)) { input type="hidden" name="scope" value="matching"; }
                    input type="hidden" name="snapshot" value=(snapshot_ms);
                    input type="hidden" name="confirm" value="yes";
                    div.actions {
                        button class=(if replay { "primary" } else { "danger" }) type="submit" { (verb) " " (count) }
                        a href="/dashboard/dlq" { "Cancel" }
                    }
                }
            },
        )
        .into_response());
    }
    let back_to_delivery = match (&selection, form.get("return")) {
        (Selection::Ids(ids), Some("delivery")) if ids.len() == 1 => Some(ids[0].clone()),
        _ => None,
    };
    let done = if replay {
        relay.replay(selection).await?
    } else {
        relay.purge(selection).await?
    };
    let target = match back_to_delivery {
        Some(id) => format!("/dashboard/deliveries/{id}?done=replayed"),
        None => format!(
            "/dashboard/dlq?done={}&n={done}",
            if replay { "replayed" } else { "purged" }
        ),
    };
    Ok(Redirect::to(&target).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_form_becomes_a_filter_or_says_what_is_wrong() {
        let form = Form::parse(b"session=s1&status=dead&from=2026-12-07T03:00&to=&event=");
        let filter = Search::read(&form).filter().expect("valid");
        assert_eq!(filter.session_id.as_deref(), Some("s1"));
        assert_eq!(filter.status, Some(DeliveryStatus::Dead));
        assert_eq!(filter.since_ms, Some(1_796_612_400_000));
        assert_eq!(filter.until_ms, None);
        assert_eq!(filter.event_id, None);
        let wrong = Search::read(&Form::parse(b"event=nope")).filter();
        assert!(wrong.is_err_and(|e| e.contains("nope")));
        let bad_time = Search::read(&Form::parse(b"from=yesterday")).filter();
        assert!(bad_time.is_err_and(|e| e.starts_with("from:")));
    }

    #[test]
    fn a_search_repeats_itself_in_links() {
        let search = Search::read(&Form::parse(b"session=a+b&status=pending"));
        assert_eq!(search.query(), "session=a+b&status=pending");
        assert_eq!(search.describe(), "dead letters with session a b");
        assert_eq!(Search::default().describe(), "every dead letter");
    }
}
