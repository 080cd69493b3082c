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
    let (env, org) = (env.clone(), org.to_string());
    let source = AuditPages {
        env,
        org,
        now_ms,
        query,
    };
    csv_stream(source, (first, has_more), &filename)
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
    let (env, org) = (env.clone(), org.to_string());
    let source = LedgerPages {
        env,
        org,
        now_ms,
        query,
    };
    csv_stream(source, (first, has_more), &filename)
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
    let filename = reports::csv_filename(org, today);
    let source = TransactionPages {
        db,
        org: org.to_string(),
    };
    csv_stream(source, (page, has_more), &filename)
}

/// A history exported as CSV, one page at a time, newest first; each page
/// is keyed on the last sequence number written, so memory stays bounded
/// whatever the history's length, and rows added while the export runs
/// (newer) are not included.
trait CsvPages: 'static {
    type Row;
    const HEADER: &'static str;
    /// What the download is called.
    const WHAT: &'static str;
    fn csv_row(row: &Self::Row) -> String;
    fn seq(row: &Self::Row) -> Option<u64>;
    /// The page of rows older than `before_seq`.
    async fn page(&self, before_seq: u64) -> worker::Result<(Vec<Self::Row>, bool)>;
}

/// What the CSV stream does next.
enum CsvStep<R> {
    /// Write these rows (with the header first); `more`: older ones follow.
    Rows {
        rows: Vec<R>,
        more: bool,
        header: bool,
    },
    /// Read the page older than `before_seq`.
    Fetch {
        before_seq: u64,
    },
    Done,
}

/// Streams `source` as a CSV download, starting with the `first` page
/// already read (so a failing source still gets a proper error status).
fn csv_stream<P: CsvPages>(source: P, first: (Vec<P::Row>, bool), filename: &str) -> Answer {
    let source = Rc::new(source);
    let start = CsvStep::Rows {
        rows: first.0,
        more: first.1,
        header: true,
    };
    let chunks = stream::try_unfold(start, move |step| {
        let source = Rc::clone(&source);
        async move {
            let (rows, more, header) = match step {
                CsvStep::Done => return Ok(None),
                CsvStep::Rows { rows, more, header } => (rows, more, header),
                CsvStep::Fetch { before_seq } => {
                    let (rows, more) = source.page(before_seq).await?;
                    (rows, more, false)
                }
            };
            let mut chunk = String::with_capacity(rows.len() * 128 + P::HEADER.len());
            if header {
                chunk.push_str(P::HEADER);
            }
            for row in &rows {
                chunk.push_str(&P::csv_row(row));
            }
            let next = match rows.last().and_then(P::seq) {
                Some(before_seq) if more => CsvStep::Fetch { before_seq },
                _ => CsvStep::Done,
            };
            Ok::<_, worker::Error>(Some((chunk.into_bytes(), next)))
        }
    })
    .map_err(|err| {
        // Headers are gone by now; the client sees the transfer fail.
        worker::console_error!("{} CSV export failed mid-stream: {err}", P::WHAT);
        err
    });
    csv_download(chunks, filename)
}

/// The ledger, from the organization's Durable Object.
struct LedgerPages {
    env: Env,
    org: String,
    now_ms: i64,
    query: LedgerQuery,
}

impl CsvPages for LedgerPages {
    type Row = wallet_core::LedgerEntry;
    const HEADER: &'static str = LEDGER_CSV_HEADER;
    const WHAT: &'static str = "ledger";

    fn csv_row(row: &Self::Row) -> String {
        ledger::ledger_csv_row(row)
    }

    fn seq(row: &Self::Row) -> Option<u64> {
        Some(row.seq)
    }

    async fn page(&self, before_seq: u64) -> worker::Result<(Vec<Self::Row>, bool)> {
        let query = LedgerQuery {
            before_seq: Some(before_seq),
            ..self.query.clone()
        };
        ledger_page(&self.env, &self.org, self.now_ms, query)
            .await
            .map_err(|_| worker::Error::RustError("the wallet refused a ledger page".into()))
    }
}

/// The audit trail, from the organization's Durable Object.
struct AuditPages {
    env: Env,
    org: String,
    now_ms: i64,
    query: AuditQuery,
}

impl CsvPages for AuditPages {
    type Row = (u64, AuditRecord);
    const HEADER: &'static str = AUDIT_CSV_HEADER;
    const WHAT: &'static str = "audit";

    fn csv_row((seq, record): &Self::Row) -> String {
        record.csv_row(*seq)
    }

    fn seq((seq, _): &Self::Row) -> Option<u64> {
        Some(*seq)
    }

    async fn page(&self, before_seq: u64) -> worker::Result<(Vec<Self::Row>, bool)> {
        let query = AuditQuery {
            before_seq: Some(before_seq),
            ..self.query.clone()
        };
        audit_page(&self.env, &self.org, self.now_ms, query)
            .await
            .map_err(|_| worker::Error::RustError("the wallet refused an audit page".into()))
    }
}

/// Transactions, from the organization's D1 shard.
struct TransactionPages {
    db: D1Database,
    org: String,
}

impl CsvPages for TransactionPages {
    type Row = Transaction;
    const HEADER: &'static str = CSV_HEADER;
    const WHAT: &'static str = "transactions";

    fn csv_row(row: &Self::Row) -> String {
        row.csv_row()
    }

    fn seq(row: &Self::Row) -> Option<u64> {
        wallet_core::wallet::seq_of(&row.id)
    }

    async fn page(&self, before_seq: u64) -> worker::Result<(Vec<Self::Row>, bool)> {
        ledger_shards::transactions_page(&self.db, &self.org, CSV_PAGE_ROWS, Some(before_seq)).await
    }
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
