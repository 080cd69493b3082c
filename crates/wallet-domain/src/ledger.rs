//! The ledger as the Durable Object keeps it: every entry, permanently, in
//! its stored row format; the `GET …/ledger` query (pages, time range, CSV);
//! and the usage rollup of a stretch of entries that the D1 shard receives
//! instead of the raw debits.

use crate::csv::csv_line;
use crate::money::Credits;
use crate::paging::{list_params, Invalid};
use crate::time::{parse_utc, rfc3339};
use crate::wallet::{EntryKind, LedgerEntry, Metadata, PricedUsage, PurchaseSource};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An entry in its stored row format: credit amounts in integer units,
/// times in milliseconds. The Durable Object stores this JSON in `ops.entry`
/// and D1 shards receive credit-side entries in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRow {
    pub seq: u64,
    pub id: String,
    pub kind: String,
    pub amount: i64,
    pub balance_after: i64,
    pub created_at_ms: i64,
    pub usage_day: String,
    pub feature: Option<String>,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    pub hold_id: Option<String>,
    pub pack_id: Option<String>,
    pub amount_cents: Option<i64>,
    pub currency: Option<String>,
    pub payment_intent_id: Option<String>,
    pub purchase_id: Option<String>,
    #[serde(default)]
    pub source: Option<PurchaseSource>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// A priced entry's usage (SPEC §12), flat so a compact store keeps each
    /// as a column; absent on entries priced by `amount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unbilled: Option<i64>,
}

impl EntryRow {
    pub fn of(entry: &LedgerEntry) -> EntryRow {
        EntryRow {
            seq: entry.seq,
            id: entry.id.clone(),
            kind: entry.kind.as_str().to_string(),
            amount: entry.amount.units(),
            balance_after: entry.balance_after.units(),
            created_at_ms: entry.created_at.timestamp_millis(),
            usage_day: entry.usage_day.to_string(),
            feature: entry.feature.clone(),
            user_id: entry.user_id.clone(),
            project_id: entry.project_id.clone(),
            hold_id: entry.hold_id.clone(),
            pack_id: entry.pack_id.clone(),
            amount_cents: entry.amount_cents,
            currency: entry.currency.clone(),
            payment_intent_id: entry.payment_intent_id.clone(),
            purchase_id: entry.purchase_id.clone(),
            source: entry.source,
            metadata: entry.metadata.clone(),
            model: entry.usage.as_ref().map(|u| u.model.clone()),
            input_tokens: entry.usage.as_ref().map(|u| u.input_tokens),
            cached_input_tokens: entry.usage.as_ref().map(|u| u.cached_input_tokens),
            output_tokens: entry.usage.as_ref().map(|u| u.output_tokens),
            rate_id: entry.usage.as_ref().map(|u| u.rate_id.clone()),
            unbilled: entry.unbilled.map(Credits::units),
        }
    }

    pub fn into_entry(self) -> Result<LedgerEntry, String> {
        let bad = |what: &str| format!("stored ledger entry {} has a bad {what}", self.id);
        let usage = self.priced_usage().map_err(|()| bad("usage"))?;
        Ok(LedgerEntry {
            seq: self.seq,
            kind: EntryKind::parse(&self.kind).ok_or_else(|| bad("kind"))?,
            amount: Credits::from_units(self.amount),
            balance_after: Credits::from_units(self.balance_after),
            created_at: crate::time::from_millis(self.created_at_ms)
                .ok_or_else(|| bad("created_at"))?,
            usage_day: self
                .usage_day
                .parse::<NaiveDate>()
                .map_err(|_| bad("usage_day"))?,
            feature: self.feature,
            user_id: self.user_id,
            project_id: self.project_id,
            hold_id: self.hold_id,
            pack_id: self.pack_id,
            amount_cents: self.amount_cents,
            currency: self.currency,
            payment_intent_id: self.payment_intent_id,
            purchase_id: self.purchase_id,
            source: self.source,
            metadata: self.metadata,
            usage,
            unbilled: self.unbilled.map(Credits::from_units),
            id: self.id,
        })
    }

    /// The usage columns back as one value: all present or all absent.
    fn priced_usage(&self) -> Result<Option<PricedUsage>, ()> {
        match (
            &self.model,
            self.input_tokens,
            self.cached_input_tokens,
            self.output_tokens,
            &self.rate_id,
        ) {
            (None, None, None, None, None) => Ok(None),
            (Some(model), Some(input), Some(cached), Some(output), Some(rate_id)) => {
                Ok(Some(PricedUsage {
                    model: model.clone(),
                    input_tokens: input,
                    cached_input_tokens: cached,
                    output_tokens: output,
                    rate_id: rate_id.clone(),
                }))
            }
            _ => Err(()),
        }
    }
}

/// The stored text of an entry.
pub fn row_json(entry: &LedgerEntry) -> String {
    serde_json::to_string(&EntryRow::of(entry)).expect("entries serialize")
}

/// Reads a stored entry.
pub fn parse_row(text: &str) -> Result<LedgerEntry, String> {
    serde_json::from_str::<EntryRow>(text)
        .map_err(|e| format!("stored ledger entry is unreadable: {e}"))?
        .into_entry()
}

/// An entry as the Durable Object's `ops` row keeps it (SPEC §11: compact
/// entries): one column per frequent field, so nothing repeats a field name
/// per row, and one JSON text (`extra`) for what few entries carry
/// (purchases, captures, disputes). What the row already says is not stored
/// again: the seq is the row's key, the time its `created_at_ms`, the id
/// `le_<seq>` and the usage day the entry's UTC day unless they differ.
/// [`EntryColumns::into_row`] gives back the [`EntryRow`] exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryColumns {
    pub seq: u64,
    pub created_at_ms: i64,
    /// `None` on a row that only keeps an idempotency record.
    pub kind: Option<String>,
    pub amount: Option<i64>,
    pub balance_after: Option<i64>,
    pub feature: Option<String>,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    /// The metadata map as JSON text.
    pub metadata: Option<String>,
    pub model: Option<String>,
    pub input_tokens: Option<u64>,
    pub cached_input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub rate_id: Option<String>,
    /// [`EntryExtra`] as JSON text, `None` when every field of it is absent.
    pub extra: Option<String>,
}

/// The rarely present fields of an entry, stored together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryExtra {
    /// Only when it is not `le_<seq>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Only when it is not the UTC day of `created_at_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_day: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_intent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purchase_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PurchaseSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unbilled: Option<i64>,
}

/// The UTC day of an instant in milliseconds, as `usage_day` writes it.
fn utc_day(ms: i64) -> Option<String> {
    crate::time::from_millis(ms).map(|t| t.date_naive().to_string())
}

impl EntryColumns {
    pub fn of(row: &EntryRow) -> EntryColumns {
        let extra = EntryExtra {
            id: (row.id != crate::ids::entry_id(row.seq)).then(|| row.id.clone()),
            usage_day: (utc_day(row.created_at_ms).as_deref() != Some(row.usage_day.as_str()))
                .then(|| row.usage_day.clone()),
            hold_id: row.hold_id.clone(),
            pack_id: row.pack_id.clone(),
            amount_cents: row.amount_cents,
            currency: row.currency.clone(),
            payment_intent_id: row.payment_intent_id.clone(),
            purchase_id: row.purchase_id.clone(),
            source: row.source,
            unbilled: row.unbilled,
        };
        EntryColumns {
            seq: row.seq,
            created_at_ms: row.created_at_ms,
            kind: Some(row.kind.clone()),
            amount: Some(row.amount),
            balance_after: Some(row.balance_after),
            feature: row.feature.clone(),
            user_id: row.user_id.clone(),
            project_id: row.project_id.clone(),
            metadata: row
                .metadata
                .as_ref()
                .map(|m| serde_json::to_string(m).expect("metadata serializes")),
            model: row.model.clone(),
            input_tokens: row.input_tokens,
            cached_input_tokens: row.cached_input_tokens,
            output_tokens: row.output_tokens,
            rate_id: row.rate_id.clone(),
            extra: (extra != EntryExtra::default())
                .then(|| serde_json::to_string(&extra).expect("extras serialize")),
        }
    }

    /// The entry back; `Ok(None)` for a row without one.
    pub fn into_row(self) -> Result<Option<EntryRow>, String> {
        let (Some(kind), Some(amount), Some(balance_after)) =
            (self.kind, self.amount, self.balance_after)
        else {
            return Ok(None);
        };
        let bad = |what: &str| format!("stored ledger entry {} has a bad {what}", self.seq);
        let extra: EntryExtra = match &self.extra {
            Some(text) => serde_json::from_str(text).map_err(|_| bad("extra"))?,
            None => EntryExtra::default(),
        };
        let metadata = match &self.metadata {
            Some(text) => {
                Some(serde_json::from_str::<Metadata>(text).map_err(|_| bad("metadata"))?)
            }
            None => None,
        };
        let usage_day = match extra.usage_day {
            Some(day) => day,
            None => utc_day(self.created_at_ms).ok_or_else(|| bad("created_at"))?,
        };
        Ok(Some(EntryRow {
            seq: self.seq,
            id: extra.id.unwrap_or_else(|| crate::ids::entry_id(self.seq)),
            kind,
            amount,
            balance_after,
            created_at_ms: self.created_at_ms,
            usage_day,
            feature: self.feature,
            user_id: self.user_id,
            project_id: self.project_id,
            hold_id: extra.hold_id,
            pack_id: extra.pack_id,
            amount_cents: extra.amount_cents,
            currency: extra.currency,
            payment_intent_id: extra.payment_intent_id,
            purchase_id: extra.purchase_id,
            source: extra.source,
            metadata,
            model: self.model,
            input_tokens: self.input_tokens,
            cached_input_tokens: self.cached_input_tokens,
            output_tokens: self.output_tokens,
            rate_id: self.rate_id,
            unbilled: extra.unbilled,
        }))
    }
}

/// Entries per CSV chunk: one Durable Object read each, small enough that
/// a debit waiting behind it is not held up noticeably.
pub const CSV_CHUNK_ENTRIES: u32 = 500;

/// `GET …/ledger`: `limit`/`starting_after` as every list, `from` (inclusive)
/// and `to` (exclusive) as RFC 3339 instants, `format=json|csv`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerQuery {
    pub limit: u32,
    /// Only entries with a lower sequence number (the cursor).
    pub before_seq: Option<u64>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

/// The parsed query parameters and whether CSV was asked for.
pub fn ledger_query(
    limit: Option<&str>,
    starting_after: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    format: Option<&str>,
) -> Result<(LedgerQuery, bool), Invalid> {
    let csv = match format {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(Invalid::new("format", "must be json or csv")),
    };
    if csv && limit.is_some() {
        return Err(Invalid::new(
            "limit",
            "does not apply to format=csv, which exports the whole range",
        ));
    }
    let (limit, before_seq) = list_params(limit, starting_after)?;
    let instant = |field: &str, text: Option<&str>| -> Result<Option<DateTime<Utc>>, Invalid> {
        text.map(|t| {
            parse_utc(t).ok_or_else(|| Invalid::new(field, "must be an RFC 3339 UTC time"))
        })
        .transpose()
    };
    let from = instant("from", from)?;
    let to = instant("to", to)?;
    if let (Some(from), Some(to)) = (from, to) {
        if from > to {
            return Err(Invalid::new("to", "must not be earlier than from"));
        }
    }
    Ok((
        LedgerQuery {
            limit: if csv { CSV_CHUNK_ENTRIES } else { limit },
            before_seq,
            from_ms: from.map(|t| t.timestamp_millis()),
            to_ms: to.map(|t| t.timestamp_millis()),
        },
        csv,
    ))
}

/// Column names of the ledger CSV (RFC 4180, CRLF line ends, UTF-8).
pub const LEDGER_CSV_HEADER: &str = "id,created_at,kind,amount,balance_after,feature,user_id,project_id,hold_id,pack_id,amount_cents,currency,payment_intent_id\r\n";

/// One CSV line of an entry, columns as [`LEDGER_CSV_HEADER`].
pub fn ledger_csv_row(entry: &LedgerEntry) -> String {
    let cents = entry.amount_cents.map(|c| c.to_string());
    let fields = [
        entry.id.as_str(),
        &rfc3339(entry.created_at),
        entry.kind.as_str(),
        &entry.amount.to_string(),
        &entry.balance_after.to_string(),
        entry.feature.as_deref().unwrap_or(""),
        entry.user_id.as_deref().unwrap_or(""),
        entry.project_id.as_deref().unwrap_or(""),
        entry.hold_id.as_deref().unwrap_or(""),
        entry.pack_id.as_deref().unwrap_or(""),
        cents.as_deref().unwrap_or(""),
        entry.currency.as_deref().unwrap_or(""),
        entry.payment_intent_id.as_deref().unwrap_or(""),
    ];
    csv_line(&fields)
}

/// The download name of a ledger export.
pub fn ledger_csv_filename(org_id: &str, today: NaiveDate) -> String {
    format!("ledger-{org_id}-{today}.csv")
}

/// Usage of one (day, feature, member) over a stretch of entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRollup {
    pub day: String,
    pub feature: String,
    /// `""` when the entry named no member.
    pub user_id: String,
    pub credits_units: i64,
    pub entries: i64,
}

/// Usage priced from a model's tokens on one day, over a stretch of entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRollup {
    pub day: String,
    pub model: String,
    pub credits_units: i64,
    pub entries: i64,
    /// Every input token, cached ones included.
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// What captures by usage cost beyond their holds (not taken).
    pub unbilled_units: i64,
}

/// What one flush sends a D1 shard for the entries after `after_seq` up to
/// and including `through_seq`: the credit-side entries as rows and the
/// usage entries summed per (day, feature, member).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaBatch {
    pub credit_rows: Vec<EntryRow>,
    pub rollups: Vec<UsageRollup>,
    /// Priced usage summed per (day, model); entries priced by amount have
    /// no model and are not in it.
    pub model_rollups: Vec<ModelRollup>,
    pub entries: u64,
}

/// Splits a stretch of entries into what the shard keeps. Usage kinds
/// (debits, captures) become rollups; every other kind (it adds or returns
/// credits) is kept as a row.
pub fn replica_batch(entries: &[EntryRow]) -> Result<ReplicaBatch, String> {
    let mut batch = ReplicaBatch::default();
    let mut sums: BTreeMap<(String, String, String), (i64, i64)> = BTreeMap::new();
    let mut by_model: BTreeMap<(String, String), ModelRollup> = BTreeMap::new();
    for row in entries {
        let kind = EntryKind::parse(&row.kind)
            .ok_or_else(|| format!("entry {} has an unknown kind {}", row.id, row.kind))?;
        batch.entries += 1;
        if kind.is_usage() {
            let key = (
                row.usage_day.clone(),
                row.feature.clone().unwrap_or_default(),
                row.user_id.clone().unwrap_or_default(),
            );
            let sum = sums.entry(key).or_insert((0, 0));
            sum.0 = sum
                .0
                .checked_add(row.amount)
                .ok_or_else(|| format!("usage sum overflows at entry {}", row.id))?;
            sum.1 += 1;
            add_model_usage(&mut by_model, row)?;
        } else {
            batch.credit_rows.push(row.clone());
        }
    }
    batch.model_rollups = by_model.into_values().collect();
    batch.rollups = sums
        .into_iter()
        .map(
            |((day, feature, user_id), (credits_units, entries))| UsageRollup {
                day,
                feature,
                user_id,
                credits_units,
                entries,
            },
        )
        .collect();
    Ok(batch)
}

/// Adds a usage entry priced from a model to its (day, model) sum.
fn add_model_usage(
    by_model: &mut BTreeMap<(String, String), ModelRollup>,
    row: &EntryRow,
) -> Result<(), String> {
    let Some(model) = &row.model else {
        return Ok(());
    };
    let sum = by_model
        .entry((row.usage_day.clone(), model.clone()))
        .or_insert_with(|| ModelRollup {
            day: row.usage_day.clone(),
            model: model.clone(),
            credits_units: 0,
            entries: 0,
            input_tokens: 0,
            output_tokens: 0,
            unbilled_units: 0,
        });
    let overflow = || format!("model usage sum overflows at entry {}", row.id);
    let add = |total: i64, more: u64| {
        i64::try_from(more)
            .ok()
            .and_then(|m| total.checked_add(m))
            .ok_or_else(overflow)
    };
    sum.credits_units = sum
        .credits_units
        .checked_add(row.amount)
        .ok_or_else(overflow)?;
    sum.entries += 1;
    sum.input_tokens = add(sum.input_tokens, row.input_tokens.unwrap_or(0))?;
    sum.output_tokens = add(sum.output_tokens, row.output_tokens.unwrap_or(0))?;
    sum.unbilled_units = sum
        .unbilled_units
        .checked_add(row.unbilled.unwrap_or(0))
        .ok_or_else(overflow)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wallet::Wallet;
    use crate::{DebitRequest, WalletConfig};

    fn debit(feature: &str, user: Option<&str>, amount: &str) -> DebitRequest {
        DebitRequest {
            feature: feature.into(),
            amount: Credits::parse(amount).unwrap(),
            user_id: user.map(str::to_string),
            project_id: None,
            metadata: None,
        }
    }

    #[test]
    fn stored_rows_round_trip() {
        let config = WalletConfig::defaults();
        let now = "2030-01-01T10:00:00Z".parse().unwrap();
        let (mut wallet, grant) = Wallet::open("o", "u", None, &config, now);
        let grant = grant.unwrap();
        let spent = wallet
            .debit(&debit("chat", Some("ann"), "1.2345"), &config)
            .unwrap();
        for entry in [grant, spent] {
            assert_eq!(parse_row(&row_json(&entry)).unwrap(), entry);
        }
        assert!(parse_row("{}").is_err());
        assert!(parse_row(&row_json_with_kind("refund")).is_err());
    }

    fn row_json_with_kind(kind: &str) -> String {
        let config = WalletConfig::defaults();
        let (_, grant) = Wallet::open(
            "o",
            "u",
            None,
            &config,
            "2030-01-01T10:00:00Z".parse().unwrap(),
        );
        let mut row = EntryRow::of(&grant.unwrap());
        row.kind = kind.into();
        serde_json::to_string(&row).unwrap()
    }

    /// A debit row of the bench's mix: member, project, four metadata keys.
    fn debit_row(seq: u64) -> EntryRow {
        EntryRow {
            seq,
            id: crate::ids::entry_id(seq),
            kind: "debit".into(),
            amount: 1,
            balance_after: 99_999,
            created_at_ms: 1_893_492_000_000,
            usage_day: "2030-01-01".into(),
            feature: Some("chat".into()),
            user_id: Some("user_3".into()),
            project_id: Some("proj_2".into()),
            hold_id: None,
            pack_id: None,
            amount_cents: None,
            currency: None,
            payment_intent_id: None,
            purchase_id: None,
            source: None,
            metadata: Some(
                [("model", "gpt-4o-mini"), ("trace_id", "0f1e2d3c4b5a6978")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
            ),
            model: None,
            input_tokens: None,
            cached_input_tokens: None,
            output_tokens: None,
            rate_id: None,
            unbilled: None,
        }
    }

    fn columns_round_trip(row: &EntryRow) -> EntryColumns {
        let columns = EntryColumns::of(row);
        assert_eq!(columns.clone().into_row().unwrap().as_ref(), Some(row));
        // The stored JSON text of the entry (what pages and segments carry)
        // comes back byte for byte.
        let back = columns.clone().into_row().unwrap().unwrap();
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(row).unwrap()
        );
        columns
    }

    #[test]
    fn entry_columns_keep_every_field_and_store_what_is_derived_only_when_it_differs() {
        let plain = columns_round_trip(&debit_row(7));
        assert_eq!(plain.extra, None, "id and usage day are derived");
        assert_eq!(
            plain.metadata.as_deref(),
            Some(r#"{"model":"gpt-4o-mini","trace_id":"0f1e2d3c4b5a6978"}"#)
        );

        // A capture counted on its hold's day (the day before), priced by usage, with unbilled credits.
        let mut capture = debit_row(8);
        capture.kind = "capture".into();
        capture.usage_day = "2029-12-31".into();
        capture.hold_id = Some("hold_000000000005".into());
        capture.metadata = None;
        capture.model = Some("claude-sonnet-4".into());
        capture.input_tokens = Some(u64::MAX >> 12);
        capture.cached_input_tokens = Some(0);
        capture.output_tokens = Some(250);
        capture.rate_id = Some("rate_claude-sonnet-4_20260101T000000Z".into());
        capture.unbilled = Some(12_345);
        let stored = columns_round_trip(&capture);
        assert_eq!(
            stored.extra.as_deref(),
            Some(r#"{"usage_day":"2029-12-31","hold_id":"hold_000000000005","unbilled":12345}"#)
        );

        // A purchase credited by auto top-up, with an id of another form.
        let mut purchase = debit_row(9);
        purchase.kind = "purchase".into();
        purchase.id = "le_legacy_9".into();
        purchase.amount = 10_000_000;
        (purchase.feature, purchase.user_id, purchase.project_id) = (None, None, None);
        purchase.metadata = None;
        purchase.pack_id = Some("starter".into());
        purchase.amount_cents = Some(1_000);
        purchase.currency = Some("usd".into());
        purchase.payment_intent_id = Some("pi_123".into());
        purchase.purchase_id = Some("pur_0123456789abcdef01234567".into());
        purchase.source = Some(PurchaseSource::AutoTopUp);
        let stored = columns_round_trip(&purchase);
        assert!(stored
            .extra
            .as_deref()
            .unwrap()
            .starts_with(r#"{"id":"le_legacy_9","pack_id""#));
        assert!(stored
            .extra
            .as_deref()
            .unwrap()
            .contains(r#""source":"auto_top_up""#));

        // A row keeping only an idempotency record has no entry.
        assert_eq!(
            EntryColumns {
                seq: 3,
                ..EntryColumns::default()
            }
            .into_row(),
            Ok(None)
        );
        // Unreadable stored texts are errors, never a different entry.
        let mut broken = plain.clone();
        broken.extra = Some("{".into());
        assert!(broken.into_row().is_err());
        let mut broken = plain;
        broken.metadata = Some("[1]".into());
        assert!(broken.into_row().is_err());
    }

    proptest::proptest! {
        #[test]
        fn entry_columns_round_trip_any_entry(
            seq in 1u64..1_000_000_000_000,
            at_ms in 0i64..4_102_444_800_000,
            day_offset in -2i64..=0,
            amount in 1i64..(1 << 53),
            balance in -(1i64 << 53)..(1 << 53),
            feature in proptest::option::of("[a-z_]{1,40}"),
            user in proptest::option::of("\\PC{0,20}"),
            metadata in proptest::option::of(proptest::collection::btree_map("\\PC{1,10}", "\\PC{0,30}", 0..5)),
            tokens in proptest::option::of((0u64..u64::MAX, 0u64..1 << 40, 0u64..1 << 40)),
            hold in proptest::option::of(1u64..1_000_000),
        ) {
            let mut row = debit_row(seq);
            row.created_at_ms = at_ms;
            row.usage_day = crate::time::from_millis(at_ms + day_offset * 86_400_000)
                .unwrap()
                .date_naive()
                .to_string();
            row.amount = amount;
            row.balance_after = balance;
            row.feature = feature;
            row.user_id = user;
            row.metadata = metadata;
            if let Some((input, cached, output)) = tokens {
                row.model = Some("gpt-4o".into());
                row.input_tokens = Some(input);
                row.cached_input_tokens = Some(cached);
                row.output_tokens = Some(output);
                row.rate_id = Some("rate_gpt-4o_20260101T000000Z".into());
            }
            row.hold_id = hold.map(crate::ids::hold_id);
            columns_round_trip(&row);
        }
    }

    #[test]
    fn a_batch_keeps_credit_rows_and_sums_usage() {
        let config = WalletConfig::defaults();
        let now = "2030-01-01T10:00:00Z".parse().unwrap();
        let (mut wallet, grant) = Wallet::open("o", "u", None, &config, now);
        let mut rows = vec![EntryRow::of(&grant.unwrap())];
        for (feature, user, amount) in [
            ("chat", Some("ann"), "1.5"),
            ("chat", Some("ann"), "0.0001"),
            ("chat", None, "2"),
            ("auto_triage", Some("ann"), "3"),
        ] {
            rows.push(EntryRow::of(
                &wallet
                    .debit(&debit(feature, user, amount), &config)
                    .unwrap(),
            ));
        }
        let batch = replica_batch(&rows).unwrap();
        assert_eq!(batch.entries, 5);
        assert_eq!(batch.credit_rows.len(), 1);
        assert_eq!(batch.credit_rows[0].kind, "trial_grant");
        let sums: Vec<(&str, &str, i64, i64)> = batch
            .rollups
            .iter()
            .map(|r| {
                (
                    r.feature.as_str(),
                    r.user_id.as_str(),
                    r.credits_units,
                    r.entries,
                )
            })
            .collect();
        assert_eq!(
            sums,
            [
                ("auto_triage", "ann", 30_000, 1),
                ("chat", "", 20_000, 1),
                ("chat", "ann", 15_001, 2)
            ]
        );
        let mut unknown = rows[1].clone();
        unknown.kind = "refund".into();
        assert!(replica_batch(&[unknown]).is_err());
    }

    #[test]
    fn a_batch_sums_priced_usage_per_day_and_model() {
        let config = WalletConfig::defaults();
        let now = "2030-01-01T10:00:00Z".parse().unwrap();
        let (mut wallet, _) = Wallet::open("o", "u", None, &config, now);
        let mut rows = vec![EntryRow::of(
            &wallet.debit(&debit("chat", None, "5"), &config).unwrap(),
        )];
        for (model, input, output, unbilled) in [
            ("gpt-4o", 100, 10, None),
            ("gpt-4o", 50, 5, Some(7)),
            ("gpt-4o-mini", 1, 2, None),
        ] {
            let mut entry = wallet.debit(&debit("chat", None, "1"), &config).unwrap();
            entry.usage = Some(PricedUsage {
                model: model.into(),
                input_tokens: input,
                cached_input_tokens: 0,
                output_tokens: output,
                rate_id: format!("rate_{model}_20240101T000000Z"),
            });
            entry.unbilled = unbilled.map(Credits::from_units);
            rows.push(EntryRow::of(&entry));
        }
        let batch = replica_batch(&rows).unwrap();
        let sums: Vec<(&str, i64, i64, i64, i64, i64)> = batch
            .model_rollups
            .iter()
            .map(|r| {
                assert_eq!(r.day, "2030-01-01");
                (
                    r.model.as_str(),
                    r.credits_units,
                    r.entries,
                    r.input_tokens,
                    r.output_tokens,
                    r.unbilled_units,
                )
            })
            .collect();
        // The debit priced by amount is in the feature rollups, not by model.
        assert_eq!(
            sums,
            [
                ("gpt-4o", 20_000, 2, 150, 15, 7),
                ("gpt-4o-mini", 10_000, 1, 1, 2, 0)
            ]
        );
        assert_eq!(batch.rollups[0].credits_units, 80_000);
    }

    #[test]
    fn ledger_queries_are_checked() {
        let (q, csv) = ledger_query(
            Some("10"),
            Some("le_000000000042"),
            Some("2030-01-01T00:00:00Z"),
            Some("2030-01-02T00:00:00Z"),
            None,
        )
        .unwrap();
        assert!(!csv);
        assert_eq!((q.limit, q.before_seq), (10, Some(42)));
        assert_eq!(q.to_ms.unwrap() - q.from_ms.unwrap(), 86_400_000);
        let (q, csv) = ledger_query(None, None, None, None, Some("csv")).unwrap();
        assert!(csv);
        assert_eq!(q.limit, CSV_CHUNK_ENTRIES);
        let field = |r: Result<(LedgerQuery, bool), Invalid>| r.unwrap_err().field;
        assert_eq!(
            field(ledger_query(None, None, Some("yesterday"), None, None)),
            "from"
        );
        assert_eq!(
            field(ledger_query(
                None,
                None,
                Some("2030-01-02T00:00:00Z"),
                Some("2030-01-01T00:00:00Z"),
                None
            )),
            "to"
        );
        assert_eq!(
            field(ledger_query(None, None, None, None, Some("xml"))),
            "format"
        );
        assert_eq!(
            field(ledger_query(Some("5"), None, None, None, Some("csv"))),
            "limit"
        );
    }

    #[test]
    fn csv_rows_follow_the_header() {
        let config = WalletConfig::defaults();
        let now = "2030-01-01T10:00:00Z".parse().unwrap();
        let (mut wallet, _) = Wallet::open("o", "u", None, &config, now);
        let entry = wallet
            .debit(&debit("chat", Some("=cmd"), "1.25"), &config)
            .unwrap();
        let row = ledger_csv_row(&entry);
        assert_eq!(
            row,
            "le_000000000002,2030-01-01T10:00:00.000Z,debit,1.25,198.75,chat,\"'=cmd\",,,,,,\r\n"
        );
        assert_eq!(
            row.matches(',').count(),
            LEDGER_CSV_HEADER.matches(',').count()
        );
    }
}
