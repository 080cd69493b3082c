//! The dashboard's reports as pure functions over rows the shell reads from
//! D1: the transactions list (every entry that added credits) with its CSV
//! form, and the usage summary built from the `usage_daily` rollups.
//!
//! Usage rules (documented in ARCHITECTURE.md, "Reports and the dashboard"; checked by the tests below):
//! - dates are UTC days, `from` and `to` inclusive; `to` defaults to today,
//!   `from` to `to` minus 29 days (30 days); at most 366 days;
//! - `daily` lists every date of the range, zero-filled;
//! - `avg_daily_7d` = credits consumed on the 7 UTC days `today - 6 ..= today`
//!   (today so far included) divided by 7, rounded up to the next 0.0001
//!   credit, so the projection below never overstates the runway;
//! - `projected_days_until_depletion` = floor(balance / avg_daily_7d), null
//!   when nothing was consumed in that window.

pub use crate::csv::csv_line;
use crate::money::Credits;
use crate::paging::Invalid;
use crate::time::rfc3339;
use crate::wallet::{EntryKind, PurchaseSource};
use chrono::{DateTime, Days, NaiveDate, Utc};
use serde_json::{json, Value};

/// Longest usage range in days, both ends included (a leap year).
pub const MAX_USAGE_RANGE_DAYS: u64 = 366;
/// Days covered when `from` is not given, ending at `to`.
pub const DEFAULT_USAGE_RANGE_DAYS: u64 = 30;
/// Days `avg_daily_7d` averages over: today and the 6 days before it.
pub const TRAILING_WINDOW_DAYS: u64 = 7;
/// Members listed in `by_member`, largest consumers first; the rest are
/// counted in `total` and flagged by `by_member_truncated`.
pub const MAX_USAGE_MEMBERS: usize = 1000;
/// Ledger rows read from D1 per query while streaming the CSV export.
pub const CSV_PAGE_ROWS: u32 = 500;

/// The entry kinds the transactions list shows: every kind that is not AI
/// usage (grants, purchases, and what refunds and disputes took or gave back).
pub fn transaction_kinds() -> impl Iterator<Item = EntryKind> {
    EntryKind::ALL.into_iter().filter(|k| !k.is_usage())
}

/// The transaction kinds as an SQL list, `'trial_grant', 'purchase', …`. The
/// partial index `ledger_entries_credits` is declared with the same list, so
/// SQLite uses it for the transactions query (checked by a test below).
pub fn transaction_kinds_sql() -> String {
    transaction_kinds()
        .map(|k| format!("'{}'", k.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One entry that moved money-bought credits (not AI usage), as the
/// transactions list shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub kind: EntryKind,
    /// The credit pack bought; none for grants.
    pub pack_id: Option<String>,
    pub credits: Credits,
    /// What was paid, in integer cents of `currency`; none for grants.
    pub amount_cents: Option<i64>,
    pub currency: Option<String>,
    /// The wallet's balance right after this entry (running balance).
    pub balance_after: Credits,
    /// Who bought a purchase, as recorded (none before auto top-up existed).
    pub source: Option<PurchaseSource>,
}

impl Transaction {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "created_at": rfc3339(self.created_at),
            "kind": self.kind.as_str(),
            "pack_id": self.pack_id,
            "credits": self.credits,
            "amount_cents": self.amount_cents,
            "currency": self.currency,
            "balance_after": self.balance_after,
            "source": self.shown_source(),
        })
    }

    /// `owner` or `auto_top_up` for a purchase (purchases recorded before
    /// auto top-up are the owner's); none for grants.
    pub fn shown_source(&self) -> Option<&'static str> {
        (self.kind == EntryKind::Purchase).then(|| self.source.unwrap_or_default().as_str())
    }

    /// The CSV line for this transaction, CRLF-terminated, columns as `CSV_HEADER`.
    pub fn csv_row(&self) -> String {
        let cents = self.amount_cents.map(|c| c.to_string());
        let fields = [
            self.id.as_str(),
            &rfc3339(self.created_at),
            self.kind.as_str(),
            self.pack_id.as_deref().unwrap_or(""),
            &self.credits.to_string(),
            cents.as_deref().unwrap_or(""),
            self.currency.as_deref().unwrap_or(""),
            &self.balance_after.to_string(),
            self.shown_source().unwrap_or(""),
        ];
        csv_line(&fields)
    }
}

/// Column names of the CSV export (RFC 4180, CRLF line ends, UTF-8).
pub const CSV_HEADER: &str =
    "id,created_at,kind,pack_id,credits,amount_cents,currency,balance_after,source\r\n";

/// The download name of an organization's CSV export made on `today`.
pub fn csv_filename(org_id: &str, today: NaiveDate) -> String {
    // Organization ids are [A-Za-z0-9_-], safe inside a quoted header value.
    format!("transactions-{org_id}-{today}.csv")
}

/// An inclusive range of UTC dates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateRange {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl DateRange {
    /// Number of dates in the range, both ends included.
    pub fn days(self) -> u64 {
        (self.to - self.from).num_days().max(-1) as u64 + 1
    }

    pub fn dates(self) -> impl Iterator<Item = NaiveDate> {
        self.from.iter_days().take(self.days() as usize)
    }
}

/// Parses a `YYYY-MM-DD` date, naming `field` when it is not one.
pub fn parse_date(field: &str, text: &str) -> Result<NaiveDate, Invalid> {
    let shaped = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    // The shape is checked, so the parts are digits; chrono's format-string
    // parser is left out of the wasm.
    let number = |range: std::ops::Range<usize>| text[range].parse::<u32>().ok();
    shaped
        .then(|| {
            let year = i32::try_from(number(0..4)?).ok()?;
            NaiveDate::from_ymd_opt(year, number(5..7)?, number(8..10)?)
        })
        .flatten()
        .ok_or_else(|| Invalid::new(field, "must be a calendar date YYYY-MM-DD (UTC)"))
}

/// The usage range from the `from` and `to` query parameters.
pub fn usage_range(
    from: Option<&str>,
    to: Option<&str>,
    today: NaiveDate,
) -> Result<DateRange, Invalid> {
    let to = match to {
        Some(text) => parse_date("to", text)?,
        None => today,
    };
    let from = match from {
        Some(text) => parse_date("from", text)?,
        None => to
            .checked_sub_days(Days::new(DEFAULT_USAGE_RANGE_DAYS - 1))
            .ok_or_else(|| Invalid::new("to", "is too early"))?,
    };
    if from > to {
        return Err(Invalid::new("from", "must not be after to"));
    }
    let range = DateRange { from, to };
    if range.days() > MAX_USAGE_RANGE_DAYS {
        return Err(Invalid::new(
            "from",
            format!("must be at most {MAX_USAGE_RANGE_DAYS} days before to, both included"),
        ));
    }
    Ok(range)
}

/// The days `avg_daily_7d` covers: today and the 6 days before.
pub fn trailing_window(today: NaiveDate) -> DateRange {
    let from = today
        .checked_sub_days(Days::new(TRAILING_WINDOW_DAYS - 1))
        .unwrap_or(NaiveDate::MIN);
    DateRange { from, to: today }
}

/// Consumption under one key (a feature, or a member; `""` = no member).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageLine {
    pub key: String,
    pub credits: Credits,
    /// Debits and captures counted.
    pub count: i64,
}

/// Usage priced from one model's tokens over a report's range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelLine {
    pub model: String,
    pub credits: Credits,
    /// Debits and captures priced from this model's usage.
    pub count: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// What captures cost beyond their holds, recorded but not taken.
    pub unbilled: Credits,
}

/// The rollup sums the shell reads for one usage report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageRollups {
    /// Credits per UTC date of the range; dates without usage may be absent.
    pub daily: Vec<(NaiveDate, Credits, i64)>,
    pub by_feature: Vec<UsageLine>,
    /// Largest consumers first; may hold one line more than `MAX_USAGE_MEMBERS`
    /// to show that the list was cut.
    pub by_member: Vec<UsageLine>,
    /// Credits consumed in `trailing_window(today)`.
    pub trailing: Credits,
    /// Usage priced from a model's tokens, per model (at most
    /// `MAX_USAGE_MODELS`).
    pub by_model: Vec<ModelLine>,
}

/// Most models one usage report lists.
pub const MAX_USAGE_MODELS: usize = 1000;

/// Every date of `range` with its credits, zero where there was no usage.
/// Sums that fall outside the range are ignored.
pub fn zero_filled_daily(range: DateRange, daily: &[(NaiveDate, Credits, i64)]) -> Vec<Credits> {
    let mut series = vec![Credits::ZERO; range.days() as usize];
    for (date, credits, _) in daily {
        if (range.from..=range.to).contains(date) {
            let slot = &mut series[(*date - range.from).num_days() as usize];
            *slot = slot.checked_add(*credits).unwrap_or(*slot);
        }
    }
    series
}

/// The average of `total` over `days`, rounded up to the next 0.0001 credit.
pub fn average_daily(total: Credits, days: u64) -> Credits {
    let units = total.units().max(0);
    let days = days.max(1) as i64;
    Credits::from_units(units / days + i64::from(units % days != 0))
}

/// Whole days `balance` lasts at `avg_daily` a day, rounded down; none when
/// nothing is being consumed.
pub fn days_until_depletion(balance: Credits, avg_daily: Credits) -> Option<i64> {
    avg_daily
        .is_positive()
        .then(|| balance.units().max(0) / avg_daily.units())
}

/// Sorted by credits (largest first), then key.
fn ranked(lines: &[UsageLine]) -> Vec<&UsageLine> {
    let mut sorted: Vec<&UsageLine> = lines.iter().collect();
    sorted.sort_by(|a, b| b.credits.cmp(&a.credits).then_with(|| a.key.cmp(&b.key)));
    sorted
}

/// The `by_model` lines, most credits first, and the unbilled total.
fn by_model(lines: &[ModelLine]) -> Option<(Vec<Value>, Credits)> {
    let mut models: Vec<&ModelLine> = lines.iter().take(MAX_USAGE_MODELS).collect();
    models.sort_by(|a, b| {
        b.credits
            .cmp(&a.credits)
            .then_with(|| a.model.cmp(&b.model))
    });
    let unbilled = models
        .iter()
        .try_fold(Credits::ZERO, |sum, m| sum.checked_add(m.unbilled))?;
    let json = models
        .into_iter()
        .map(|m| {
            json!({
                "model": m.model, "credits": m.credits, "count": m.count,
                "input_tokens": m.input_tokens, "output_tokens": m.output_tokens,
                "unbilled": m.unbilled,
            })
        })
        .collect();
    Some((json, unbilled))
}

/// The `GET /v1/orgs/{org}/usage` answer; `None` only if the total overflows.
pub fn usage_report(
    range: DateRange,
    today: NaiveDate,
    rollups: &UsageRollups,
    balance: Credits,
) -> Option<Value> {
    let series = zero_filled_daily(range, &rollups.daily);
    let total = series
        .iter()
        .try_fold(Credits::ZERO, |sum, c| sum.checked_add(*c))?;
    let count: i64 = rollups
        .daily
        .iter()
        .filter(|(date, _, _)| (range.from..=range.to).contains(date))
        .map(|(_, _, n)| n)
        .sum();
    let daily: Vec<Value> = range
        .dates()
        .zip(&series)
        .map(|(date, credits)| json!({ "date": date.to_string(), "credits": credits }))
        .collect();
    let by_feature: Vec<Value> = ranked(&rollups.by_feature)
        .into_iter()
        .map(|l| json!({ "feature": l.key, "credits": l.credits, "count": l.count }))
        .collect();
    let members = ranked(&rollups.by_member);
    let by_member_truncated = members.len() > MAX_USAGE_MEMBERS;
    let by_member: Vec<Value> = members
        .into_iter()
        .take(MAX_USAGE_MEMBERS)
        .map(|l| {
            let user_id = (!l.key.is_empty()).then_some(l.key.as_str());
            json!({ "user_id": user_id, "credits": l.credits, "count": l.count })
        })
        .collect();
    let (by_model, unbilled) = by_model(&rollups.by_model)?;
    let window = trailing_window(today);
    let avg_daily_7d = average_daily(rollups.trailing, TRAILING_WINDOW_DAYS);
    Some(json!({
        "from": range.from.to_string(),
        "to": range.to.to_string(),
        "days": range.days(),
        "today": today.to_string(),
        "total": total,
        "count": count,
        "by_feature": by_feature,
        "by_member": by_member,
        "by_member_truncated": by_member_truncated,
        "by_model": by_model,
        "unbilled": unbilled,
        "daily": daily,
        "balance": balance,
        "trailing_7d": {
            "from": window.from.to_string(),
            "to": window.to.to_string(),
            "credits": rollups.trailing,
        },
        "avg_daily_7d": avg_daily_7d,
        "projected_days_until_depletion": days_until_depletion(balance, avg_daily_7d),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn c(text: &str) -> Credits {
        Credits::parse(text).unwrap()
    }

    fn field_of(err: Invalid) -> String {
        err.field
    }

    fn line(key: &str, credits: &str, count: i64) -> UsageLine {
        UsageLine {
            key: key.into(),
            credits: c(credits),
            count,
        }
    }

    #[test]
    fn transaction_kinds_are_the_partial_index_list() {
        assert_eq!(
            transaction_kinds_sql(),
            "'trial_grant', 'purchase', 'dispute_reversal', 'refund_reversal', 'dispute_reinstatement'"
        );
        // The transactions query must use the replica's partial index; SQLite
        // only does when the query names the index's exact kind list. The
        // newest migration that declares the index decides it (0004 rebuilt
        // the table for two new kinds and declared it again).
        let migration = include_str!("../../../migrations/0004_refunds_and_reinstatements.sql");
        let index = migration
            .lines()
            .find(|l| l.contains("INDEX ledger_entries_credits"))
            .expect("the partial index exists");
        assert!(
            index.contains(&format!("WHERE kind IN ({})", transaction_kinds_sql())),
            "{index}"
        );
    }

    #[test]
    fn transactions_as_json_and_csv() {
        let purchase = Transaction {
            id: "le_000000000007".into(),
            created_at: "2030-01-02T03:04:05.006Z".parse().unwrap(),
            kind: EntryKind::Purchase,
            pack_id: Some("team".into()),
            credits: c("5250"),
            amount_cents: Some(5000),
            currency: Some("usd".into()),
            balance_after: c("5437.5"),
            source: None,
        };
        assert_eq!(
            purchase.to_json(),
            json!({
                "id": "le_000000000007", "created_at": "2030-01-02T03:04:05.006Z",
                "kind": "purchase", "pack_id": "team", "credits": "5250",
                "amount_cents": 5000, "currency": "usd", "balance_after": "5437.5",
                "source": "owner",
            })
        );
        assert_eq!(
            purchase.csv_row(),
            "le_000000000007,2030-01-02T03:04:05.006Z,purchase,team,5250,5000,usd,5437.5,owner\r\n"
        );
        let automatic = Transaction {
            source: Some(PurchaseSource::AutoTopUp),
            ..purchase.clone()
        };
        assert_eq!(automatic.to_json()["source"], "auto_top_up");
        assert!(automatic.csv_row().ends_with(",auto_top_up\r\n"));
        let grant = Transaction {
            kind: EntryKind::TrialGrant,
            pack_id: None,
            amount_cents: None,
            currency: None,
            credits: c("200"),
            balance_after: c("200"),
            ..purchase
        };
        assert_eq!(grant.to_json()["pack_id"], Value::Null);
        assert_eq!(grant.to_json()["amount_cents"], Value::Null);
        assert_eq!(grant.to_json()["source"], Value::Null);
        assert_eq!(
            grant.csv_row(),
            "le_000000000007,2030-01-02T03:04:05.006Z,trial_grant,,200,,,200,\r\n"
        );
        assert_eq!(
            CSV_HEADER.trim_end().split(',').count(),
            grant.csv_row().trim_end().split(',').count()
        );
    }

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        let cases = [
            ("plain", "plain"),
            ("a,b", "\"a,b\""),
            ("say \"hi\"", "\"say \"\"hi\"\"\""),
            ("two\nlines", "\"two\nlines\""),
            ("=SUM(A1)", "\"'=SUM(A1)\""),
            ("-1", "\"'-1\""),
            ("@x", "\"'@x\""),
            ("", ""),
        ];
        for (text, expected) in cases {
            assert_eq!(csv_line(&[text]), format!("{expected}\r\n"), "{text:?}");
        }
        assert_eq!(
            csv_filename("acme", d("2030-01-02")),
            "transactions-acme-2030-01-02.csv"
        );
    }

    #[test]
    fn usage_range_defaults_to_the_last_30_days() {
        let today = d("2030-03-10");
        let range = usage_range(None, None, today).unwrap();
        assert_eq!(range.from, d("2030-02-09"));
        assert_eq!(range.to, today);
        assert_eq!(range.days(), 30);
        let only_to = usage_range(None, Some("2030-01-31"), today).unwrap();
        assert_eq!((only_to.from, only_to.days()), (d("2030-01-02"), 30));
        let only_from = usage_range(Some("2030-03-01"), None, today).unwrap();
        assert_eq!((only_from.to, only_from.days()), (today, 10));
        let one_day = usage_range(Some("2030-03-10"), Some("2030-03-10"), today).unwrap();
        assert_eq!(one_day.days(), 1);
    }

    #[test]
    fn usage_range_is_bounded_and_validated() {
        let today = d("2030-03-10");
        let longest = usage_range(Some("2028-01-01"), Some("2028-12-31"), today).unwrap();
        assert_eq!(longest.days(), 366);
        let cases: &[(Option<&str>, Option<&str>, &str)] = &[
            (Some("2028-01-01"), Some("2029-01-01"), "from"), // 367 days
            (Some("2030-03-11"), Some("2030-03-10"), "from"), // from > to
            (Some("2030-02-30"), None, "from"),
            (Some("2030-2-1"), None, "from"),
            (Some("20300201"), None, "from"),
            (Some("2030-02-01T00:00:00Z"), None, "from"),
            (Some(""), None, "from"),
            (None, Some("tomorrow"), "to"),
            (None, Some("+2030-01-01"), "to"),
            (None, Some("2030-13-01"), "to"),
            (Some("nope"), Some("nope"), "to"),
        ];
        for (from, to, field) in cases {
            let err = usage_range(*from, *to, today).unwrap_err();
            assert_eq!(field_of(err), *field, "{from:?} {to:?}");
        }
    }

    #[test]
    fn daily_series_is_zero_filled_and_bounded() {
        let range = DateRange {
            from: d("2030-02-27"),
            to: d("2030-03-02"),
        };
        let rows = vec![
            (d("2030-02-26"), c("99"), 1), // before the range: ignored
            (d("2030-02-28"), c("1.5"), 2),
            (d("2030-03-02"), c("0.0001"), 1),
            (d("2030-03-03"), c("99"), 1), // after the range: ignored
        ];
        assert_eq!(
            zero_filled_daily(range, &rows),
            vec![c("0"), c("1.5"), c("0"), c("0.0001")]
        );
        let dates: Vec<String> = range.dates().map(|x| x.to_string()).collect();
        assert_eq!(
            dates,
            ["2030-02-27", "2030-02-28", "2030-03-01", "2030-03-02"]
        );
    }

    #[test]
    fn average_rounds_up_and_projection_rounds_down() {
        assert_eq!(average_daily(c("7"), 7), c("1"));
        assert_eq!(average_daily(c("10"), 7), c("1.4286")); // 1.428571… up
        assert_eq!(average_daily(c("0.0001"), 7), c("0.0001"));
        assert_eq!(average_daily(c("0"), 7), c("0"));
        assert_eq!(days_until_depletion(c("100"), c("1.4286")), Some(69)); // 69.99…
        assert_eq!(days_until_depletion(c("100"), c("1")), Some(100));
        assert_eq!(days_until_depletion(c("0"), c("1")), Some(0));
        assert_eq!(days_until_depletion(c("0.5"), c("1")), Some(0));
        assert_eq!(days_until_depletion(c("100"), c("0")), None);
    }

    #[test]
    fn trailing_window_is_today_and_six_days_before() {
        let window = trailing_window(d("2030-03-01"));
        assert_eq!(window.from, d("2030-02-23"));
        assert_eq!(window.days(), 7);
    }

    #[test]
    fn usage_report_combines_the_rollups() {
        let today = d("2030-03-10");
        let range = usage_range(Some("2030-03-08"), None, today).unwrap();
        let rollups = UsageRollups {
            daily: vec![
                (d("2030-03-08"), c("10"), 3),
                (d("2030-03-10"), c("2.5"), 1),
            ],
            by_feature: vec![line("auto_triage", "2.5", 1), line("chat", "10", 3)],
            by_member: vec![line("", "2.5", 1), line("alice", "10", 3)],
            trailing: c("12.5"),
            by_model: vec![
                ModelLine {
                    model: "gpt-4o-mini".into(),
                    credits: c("0.5"),
                    count: 1,
                    input_tokens: 900,
                    output_tokens: 90,
                    unbilled: Credits::ZERO,
                },
                ModelLine {
                    model: "gpt-4o".into(),
                    credits: c("7"),
                    count: 2,
                    input_tokens: 10_000,
                    output_tokens: 3_000,
                    unbilled: c("1.25"),
                },
            ],
        };
        let report = usage_report(range, today, &rollups, c("100")).unwrap();
        assert_eq!(
            report,
            json!({
                "from": "2030-03-08", "to": "2030-03-10", "days": 3, "today": "2030-03-10",
                "total": "12.5", "count": 4,
                "by_feature": [
                    {"feature": "chat", "credits": "10", "count": 3},
                    {"feature": "auto_triage", "credits": "2.5", "count": 1},
                ],
                "by_member": [
                    {"user_id": "alice", "credits": "10", "count": 3},
                    {"user_id": null, "credits": "2.5", "count": 1},
                ],
                "by_member_truncated": false,
                "by_model": [
                    {"model": "gpt-4o", "credits": "7", "count": 2, "input_tokens": 10_000,
                     "output_tokens": 3_000, "unbilled": "1.25"},
                    {"model": "gpt-4o-mini", "credits": "0.5", "count": 1, "input_tokens": 900,
                     "output_tokens": 90, "unbilled": "0"},
                ],
                "unbilled": "1.25",
                "daily": [
                    {"date": "2030-03-08", "credits": "10"},
                    {"date": "2030-03-09", "credits": "0"},
                    {"date": "2030-03-10", "credits": "2.5"},
                ],
                "balance": "100",
                "trailing_7d": {"from": "2030-03-04", "to": "2030-03-10", "credits": "12.5"},
                "avg_daily_7d": "1.7858",
                "projected_days_until_depletion": 55,
            })
        );
    }

    #[test]
    fn no_recent_usage_means_no_projection() {
        let today = d("2030-03-10");
        let range = usage_range(None, None, today).unwrap();
        let report = usage_report(range, today, &UsageRollups::default(), c("5")).unwrap();
        assert_eq!(report["avg_daily_7d"], "0");
        assert_eq!(report["projected_days_until_depletion"], Value::Null);
        assert_eq!(report["total"], "0");
        assert_eq!(report["daily"].as_array().unwrap().len(), 30);
    }

    #[test]
    fn member_list_is_cut_at_its_limit() {
        let today = d("2030-03-10");
        let range = usage_range(None, None, today).unwrap();
        let rollups = UsageRollups {
            by_member: (0..=MAX_USAGE_MEMBERS)
                .map(|i| line(&format!("user_{i:04}"), "1", 1))
                .collect(),
            ..UsageRollups::default()
        };
        let report = usage_report(range, today, &rollups, c("5")).unwrap();
        assert_eq!(
            report["by_member"].as_array().unwrap().len(),
            MAX_USAGE_MEMBERS
        );
        assert_eq!(report["by_member_truncated"], true);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn projection_never_overstates_the_runway(
                balance in 0i64..=10_000_000_000,
                trailing in 1i64..=10_000_000_000,
            ) {
                let avg = average_daily(Credits::from_units(trailing), TRAILING_WINDOW_DAYS);
                let days = days_until_depletion(Credits::from_units(balance), avg).unwrap();
                // Spending the exact average, the balance lasts at least `days` days…
                prop_assert!(days as i128 * trailing as i128 <= balance as i128 * 7);
                // …and the rounded average is within one unit of the exact one.
                prop_assert!(avg.units() as i128 * 7 >= trailing as i128);
                prop_assert!((avg.units() as i128 - 1) * 7 < trailing as i128);
            }

            #[test]
            fn zero_filling_keeps_every_day_once(offsets in proptest::collection::btree_set(0u64..60, 0..60)) {
                let range = DateRange { from: "2030-01-01".parse().unwrap(), to: "2030-03-01".parse().unwrap() };
                let rows: Vec<_> = offsets
                    .iter()
                    .map(|o| (range.from.checked_add_days(Days::new(*o)).unwrap(), Credits::whole(1), 1))
                    .collect();
                let series = zero_filled_daily(range, &rows);
                prop_assert_eq!(series.len() as u64, range.days());
                let ones = series.iter().filter(|c| **c == Credits::whole(1)).count();
                prop_assert_eq!(ones, offsets.len());
            }
        }
    }
}
