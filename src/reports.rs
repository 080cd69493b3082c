//! The dashboard's read routes: transactions (JSON pages or a streamed CSV
//! export) and usage. They read the D1 replica; the rules live in
//! `wallet_core::reports`.

use crate::{call_wallet, json_response, replica, Answer, Failure};
use futures_util::future::join;
use futures_util::stream::{self, TryStreamExt};
use serde_json::{json, Value};
use std::rc::Rc;
use wallet_core::api::{list_params, ApiError, Command};
use wallet_core::reports::{self, Transaction, CSV_HEADER, CSV_PAGE_ROWS};
use wallet_core::time::from_millis;
use wallet_core::Credits;
use worker::{D1Database, Env, Headers, Response};

/// The query parameters of a transactions request.
pub struct TransactionsQuery {
    pub format: Option<String>,
    pub limit: Option<String>,
    pub starting_after: Option<String>,
}

/// `GET /v1/orgs/{org}/transactions`: JSON pages, or `format=csv` for the
/// whole history as a streamed download.
pub async fn transactions(env: &Env, org: &str, now_ms: i64, query: TransactionsQuery) -> Answer {
    let csv = match query.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::invalid("format", "must be json or csv").into()),
    };
    if csv && (query.limit.is_some() || query.starting_after.is_some()) {
        return Err(ApiError::invalid(
            if query.limit.is_some() {
                "limit"
            } else {
                "starting_after"
            },
            "does not apply to format=csv, which exports the whole history",
        )
        .into());
    }
    let (limit, before) = if csv {
        (CSV_PAGE_ROWS, None)
    } else {
        list_params(query.limit.as_deref(), query.starting_after.as_deref())?
    };
    let db = env.d1("DB")?;
    // The first page is read before answering, so an unknown organization or
    // an unavailable D1 still gets a proper error status.
    let (page, has_more) = replica::transactions_page(&db, org, limit, before).await?;
    if page.is_empty() && before.is_none() {
        // Nothing replicated yet: tell an unknown organization apart from a new one.
        let view = call_wallet(env, org, now_ms, Command::View).await?;
        if view.status_code() == 404 {
            return Ok(view);
        }
    }
    if !csv {
        let data: Vec<Value> = page.iter().map(Transaction::to_json).collect();
        return Ok(json_response(
            200,
            &json!({ "data": data, "has_more": has_more }),
        )?);
    }
    let today = from_millis(now_ms).ok_or(ApiError::Internal)?.date_naive();
    csv_response(db, org.to_string(), page, has_more, today)
}

/// What the CSV stream does next.
enum CsvStep {
    /// Write these rows; `more` says whether older ones follow.
    Rows {
        rows: Vec<Transaction>,
        more: bool,
        header: bool,
    },
    /// Read the page of entries older than `before_seq`.
    Fetch {
        before_seq: u64,
    },
    Done,
}

/// Streams the export: one D1 page of `CSV_PAGE_ROWS` rows at a time,
/// newest first, each page keyed on the last sequence number written, so
/// memory stays bounded whatever the history's length. Entries added while
/// the export runs have higher sequence numbers and are not included.
fn csv_response(
    db: D1Database,
    org: String,
    first: Vec<Transaction>,
    more: bool,
    today: chrono::NaiveDate,
) -> Answer {
    let filename = reports::csv_filename(&org, today);
    let start = CsvStep::Rows {
        rows: first,
        more,
        header: true,
    };
    let db = Rc::new(db);
    let org: Rc<str> = org.into();
    let chunks = stream::try_unfold(start, move |step| {
        let (db, org) = (Rc::clone(&db), Rc::clone(&org));
        async move {
            let (rows, more, header) = match step {
                CsvStep::Done => return Ok(None),
                CsvStep::Rows { rows, more, header } => (rows, more, header),
                CsvStep::Fetch { before_seq } => {
                    let (rows, more) =
                        replica::transactions_page(&db, &org, CSV_PAGE_ROWS, Some(before_seq))
                            .await?;
                    (rows, more, false)
                }
            };
            let mut chunk = String::with_capacity(rows.len() * 96 + CSV_HEADER.len());
            if header {
                chunk.push_str(CSV_HEADER);
            }
            for row in &rows {
                chunk.push_str(&row.csv_row());
            }
            let next = match rows.last().and_then(|r| wallet_core::wallet::seq_of(&r.id)) {
                Some(before_seq) if more => CsvStep::Fetch { before_seq },
                _ => CsvStep::Done,
            };
            Ok::<_, worker::Error>(Some((chunk.into_bytes(), next)))
        }
    })
    .map_err(|err| {
        // Headers are gone by now; the client sees the transfer fail.
        worker::console_error!("CSV export failed mid-stream: {err}");
        err
    });
    let headers = Headers::new();
    headers.set("content-type", "text/csv; charset=utf-8")?;
    headers.set(
        "content-disposition",
        &format!("attachment; filename=\"{filename}\""),
    )?;
    headers.set("cache-control", "no-store")?;
    Ok(Response::from_stream(chunks)?.with_headers(headers))
}

/// `GET /v1/orgs/{org}/usage?from=&to=`: the rollups in D1 and the exact
/// balance from the Durable Object, read concurrently.
pub async fn usage(
    env: &Env,
    org: &str,
    now_ms: i64,
    from: Option<String>,
    to: Option<String>,
) -> Answer {
    let today = from_millis(now_ms).ok_or(ApiError::Internal)?.date_naive();
    let range = reports::usage_range(from.as_deref(), to.as_deref(), today)?;
    let window = reports::trailing_window(today);
    let db = env.d1("DB")?;
    let (view, rollups) = join(
        call_wallet(env, org, now_ms, Command::View),
        replica::usage_rollups(&db, org, range, window),
    )
    .await;
    let mut view = view?;
    if view.status_code() != 200 {
        return Ok(view);
    }
    let rollups = rollups?;
    let wallet: Value = view.json().await?;
    let balance = wallet["balance"]
        .as_str()
        .and_then(|b| Credits::parse(b).ok())
        .ok_or(Failure::Api(ApiError::Internal))?;
    let report = reports::usage_report(range, today, &rollups, balance)?;
    Ok(json_response(200, &report)?)
}
