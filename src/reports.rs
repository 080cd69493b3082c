//! The read routes: the ledger (pages or a streamed CSV, from the
//! organization's Durable Object), and transactions (pages or a streamed
//! CSV) and usage, from the organization's D1 shard. The rules live in
//! `wallet_core::reports` and `wallet_core::ledger`.

use crate::http::{call_wallet, json_response, Answer, Failure};
use crate::ledger_shards;
use futures_util::future::join;
use futures_util::stream::{self, TryStreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use wallet_core::api::{entry_json, list_params, ApiError, Command, Query};
use wallet_core::audit::{AuditQuery, AuditRecord, AUDIT_CSV_HEADER};
use wallet_core::ledger::{self, EntryRow, LedgerQuery, LEDGER_CSV_HEADER};
use wallet_core::reports::{self, Transaction, CSV_HEADER, CSV_PAGE_ROWS};
use wallet_core::time::from_millis;
use wallet_core::Credits;
use worker::{D1Database, Env, Headers, Response};

/// Organizations' shards seen by this isolate. An assignment never changes
/// once made, so a cached one is never stale; the map is bounded.
const SHARD_CACHE_MAX: usize = 10_000;

thread_local! {
    static SHARDS: RefCell<HashMap<String, String>> = RefCell::new(HashMap::new());
}

/// The D1 shard of `org`, asking its Durable Object the first time (which
/// also answers 404 for an organization without a wallet).
async fn org_shard(env: &Env, org: &str, now_ms: i64) -> Result<D1Database, Failure> {
    let cached = SHARDS.with(|m| m.borrow().get(org).cloned());
    let name = match cached {
        Some(name) => name,
        None => {
            #[derive(Deserialize)]
            struct Located {
                ledger_shard: String,
            }
            let mut answer = call_wallet(env, org, now_ms, Command::LedgerShard).await?;
            if answer.status_code() != 200 {
                return Err(Failure::Answered(answer));
            }
            let located: Located = answer.json().await?;
            SHARDS.with(|m| {
                let mut map = m.borrow_mut();
                if map.len() >= SHARD_CACHE_MAX {
                    map.clear();
                }
                map.insert(org.to_string(), located.ledger_shard.clone());
            });
            located.ledger_shard
        }
    };
    Ok(ledger_shards::shard(env, &name)?)
}

/// A ledger page as the Durable Object answers it: stored entry rows.
#[derive(Deserialize)]
struct LedgerPage {
    entries: Vec<EntryRow>,
    has_more: bool,
}

async fn ledger_page(
    env: &Env,
    org: &str,
    now_ms: i64,
    query: LedgerQuery,
) -> Result<(Vec<wallet_core::LedgerEntry>, bool), Failure> {
    let mut answer = call_wallet(env, org, now_ms, Query::Ledger(query)).await?;
    if answer.status_code() != 200 {
        return Err(Failure::Answered(answer));
    }
    let page: LedgerPage = answer.json().await?;
    let entries = page
        .entries
        .into_iter()
        .map(EntryRow::into_entry)
        .collect::<Result<Vec<_>, String>>()
        .map_err(worker::Error::RustError)?;
    Ok((entries, page.has_more))
}

/// An audit page as the Durable Object answers it.
#[derive(Deserialize)]
struct AuditPage {
    records: Vec<(u64, AuditRecord)>,
    has_more: bool,
}

async fn audit_page(
    env: &Env,
    org: &str,
    now_ms: i64,
    query: AuditQuery,
) -> Result<(Vec<(u64, AuditRecord)>, bool), Failure> {
    let mut answer = call_wallet(env, org, now_ms, Query::Audit(query)).await?;
    if answer.status_code() != 200 {
        return Err(Failure::Answered(answer));
    }
    let page: AuditPage = answer.json().await?;
    Ok((page.records, page.has_more))
}

/// `GET /v1/orgs/{org}/audit`: settings changes newest first, cursor pages,
/// or `format=csv` for the whole trail, streamed a page at a time.
pub async fn audit(env: &Env, org: &str, now_ms: i64, query: AuditQuery, csv: bool) -> Answer {
    let (first, has_more) = audit_page(env, org, now_ms, query.clone()).await?;
    if !csv {
        let data: Vec<Value> = first.iter().map(|(seq, r)| r.to_json(*seq)).collect();
        return Ok(json_response(
            200,
            &json!({ "data": data, "has_more": has_more }),
        )?);
    }
    let today = from_millis(now_ms).ok_or(ApiError::Internal)?.date_naive();
    let filename = wallet_core::audit::audit_csv_filename(org, today);
    let env = Rc::new(env.clone());
    let org: Rc<str> = org.into();
    let start = (Some((first, has_more)), None::<u64>, true);
    let chunks = stream::try_unfold(start, move |(page, before_seq, header)| {
        let (env, org, query) = (Rc::clone(&env), Rc::clone(&org), query.clone());
        async move {
            let (records, more) = match page {
                Some(page) => page,
                None if before_seq.is_none() => return Ok(None),
                None => {
                    let next = AuditQuery {
                        before_seq,
                        ..query
                    };
                    audit_page(&env, &org, now_ms, next).await.map_err(|_| {
                        worker::Error::RustError("the wallet refused an audit page".into())
                    })?
                }
            };
            let mut chunk = String::with_capacity(records.len() * 160 + AUDIT_CSV_HEADER.len());
            if header {
                chunk.push_str(AUDIT_CSV_HEADER);
            }
            for (seq, record) in &records {
                chunk.push_str(&record.csv_row(*seq));
            }
            let next_before = records.last().filter(|_| more).map(|(seq, _)| *seq);
            Ok::<_, worker::Error>(Some((chunk.into_bytes(), (None, next_before, false))))
        }
    })
    .map_err(|err| {
        worker::console_error!("audit CSV export failed mid-stream: {err}");
        err
    });
    csv_download(chunks, &filename)
}

/// `GET /v1/orgs/{org}/ledger`: exact (read from the Durable Object), cursor
/// pages, `from`/`to`, or `format=csv` for the whole range, streamed one
/// Durable Object read of `ledger::CSV_CHUNK_ENTRIES` at a time.
pub async fn ledger(env: &Env, org: &str, now_ms: i64, query: LedgerQuery, csv: bool) -> Answer {
    let (first, has_more) = ledger_page(env, org, now_ms, query.clone()).await?;
    if !csv {
        let data: Vec<Value> = first.iter().map(entry_json).collect();
        return Ok(json_response(
            200,
            &json!({ "data": data, "has_more": has_more }),
        )?);
    }
    let today = from_millis(now_ms).ok_or(ApiError::Internal)?.date_naive();
    let filename = ledger::ledger_csv_filename(org, today);
    let env = Rc::new(env.clone());
    let org: Rc<str> = org.into();
    let start = (Some((first, has_more)), query.before_seq, true);
    let chunks = stream::try_unfold(start, move |(page, before_seq, header)| {
        let (env, org, query) = (Rc::clone(&env), Rc::clone(&org), query.clone());
        async move {
            let (entries, more) = match page {
                Some(page) => page,
                None if before_seq == Some(0) => return Ok(None),
                None => {
                    let next = LedgerQuery {
                        before_seq,
                        ..query
                    };
                    match ledger_page(&env, &org, now_ms, next).await {
                        Ok(page) => page,
                        Err(_) => {
                            return Err(worker::Error::RustError(
                                "the wallet refused a ledger page".into(),
                            ))
                        }
                    }
                }
            };
            let mut chunk = String::with_capacity(entries.len() * 128 + LEDGER_CSV_HEADER.len());
            if header {
                chunk.push_str(LEDGER_CSV_HEADER);
            }
            for entry in &entries {
                chunk.push_str(&ledger::ledger_csv_row(entry));
            }
            // Entries added while the export runs are newer and not included.
            let next_before = match entries.last() {
                Some(last) if more => Some(last.seq),
                _ => Some(0),
            };
            Ok::<_, worker::Error>(Some((chunk.into_bytes(), (None, next_before, false))))
        }
    })
    .map_err(|err| {
        // Headers are gone by now; the client sees the transfer fail.
        worker::console_error!("ledger CSV export failed mid-stream: {err}");
        err
    });
    csv_download(chunks, &filename)
}

/// A streamed CSV file download (never cached).
fn csv_download(
    chunks: impl futures_util::Stream<Item = worker::Result<Vec<u8>>> + 'static,
    filename: &str,
) -> Answer {
    let headers = Headers::new();
    headers.set("content-type", "text/csv; charset=utf-8")?;
    headers.set(
        "content-disposition",
        &format!("attachment; filename=\"{filename}\""),
    )?;
    headers.set("cache-control", "no-store")?;
    Ok(Response::from_stream(chunks)?.with_headers(headers))
}

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
    let db = org_shard(env, org, now_ms).await?;
    // The first page is read before answering, so an unavailable D1 still
    // gets a proper error status.
    let (page, has_more) = ledger_shards::transactions_page(&db, org, limit, before).await?;
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
                    let (rows, more) = ledger_shards::transactions_page(
                        &db,
                        &org,
                        CSV_PAGE_ROWS,
                        Some(before_seq),
                    )
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
    csv_download(chunks, &filename)
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
    let db = org_shard(env, org, now_ms).await?;
    let (view, rollups) = join(
        call_wallet(env, org, now_ms, Command::View),
        ledger_shards::usage_rollups(&db, org, range, window),
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
    let report =
        reports::usage_report(range, today, &rollups, balance).ok_or(ApiError::Internal)?;
    Ok(json_response(200, &report)?)
}
