//! The wallet rules: one organization's balance, holds and daily cap.
//!
//! Every function here is a pure decision over plain state with `now` passed
//! in. A rejected operation leaves the wallet untouched: each operation checks
//! everything first and mutates only after the last check.
//!
//! Before every operation the caller runs [`Wallet::advance`], which moves the
//! wallet's clock forward (never backward), expires holds whose time is up and
//! rolls the day over at midnight UTC.

use crate::auto_top_up::{AutoTopUp, AutoTopUpBody};
use crate::config::WalletConfig;
use crate::events::{Alerts, AlertsBody, Figures};
pub use crate::ids::{entry_id, hold_id, seq_of};
use crate::money::Credits;
use crate::rate_card::{price, PriceError, Rate, RateCard, Usage, UsageEstimate};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Adds credits: the signup trial, granted once.
    TrialGrant,
    /// Adds credits: a paid credit pack.
    Purchase,
    /// Removes credits: an AI call's cost.
    Debit,
    /// Removes credits: the used part of a hold.
    Capture,
    /// Removes credits: the still-unspent credits of a purchase whose payment
    /// the buyer disputed with their bank (see `purchase::dispute`). Clamped to
    /// the available balance; not usage, so it never counts against the daily cap.
    DisputeReversal,
    /// Removes credits: the share of a purchase that support refunded in
    /// Stripe (`purchase::refund`). Clamped to the available balance; not usage.
    RefundReversal,
    /// Adds credits: exactly what a dispute took back, returned when the
    /// dispute was won (`purchase::close_dispute`).
    DisputeReinstatement,
}

impl EntryKind {
    /// Every kind, in declaration order.
    pub const ALL: [EntryKind; 7] = [
        EntryKind::TrialGrant,
        EntryKind::Purchase,
        EntryKind::Debit,
        EntryKind::Capture,
        EntryKind::DisputeReversal,
        EntryKind::RefundReversal,
        EntryKind::DisputeReinstatement,
    ];

    /// The kind named by its wire name (`as_str`).
    pub fn parse(name: &str) -> Option<EntryKind> {
        EntryKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::TrialGrant => "trial_grant",
            EntryKind::Purchase => "purchase",
            EntryKind::Debit => "debit",
            EntryKind::Capture => "capture",
            EntryKind::DisputeReversal => "dispute_reversal",
            EntryKind::RefundReversal => "refund_reversal",
            EntryKind::DisputeReinstatement => "dispute_reinstatement",
        }
    }

    /// The signed effect on the balance of an entry of this kind moving `units`.
    pub fn signed(self, units: i64) -> i64 {
        if self.adds_credits() {
            units
        } else {
            -units
        }
    }

    pub fn adds_credits(self) -> bool {
        match self {
            EntryKind::TrialGrant | EntryKind::Purchase | EntryKind::DisputeReinstatement => true,
            EntryKind::Debit
            | EntryKind::Capture
            | EntryKind::DisputeReversal
            | EntryKind::RefundReversal => false,
        }
    }

    /// Spending by an AI feature: counts against the daily cap and in usage.
    pub fn is_usage(self) -> bool {
        match self {
            EntryKind::Debit | EntryKind::Capture => true,
            EntryKind::TrialGrant
            | EntryKind::Purchase
            | EntryKind::DisputeReversal
            | EntryKind::RefundReversal
            | EntryKind::DisputeReinstatement => false,
        }
    }
}

/// One movement of credits. `amount` is always positive; `kind` says which way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub seq: u64,
    pub id: String,
    pub kind: EntryKind,
    pub amount: Credits,
    pub balance_after: Credits,
    pub created_at: DateTime<Utc>,
    /// The UTC day the spending decision was made (a capture counts on its hold's day).
    pub usage_day: NaiveDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
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
    /// Who bought a purchase: `owner` or `auto_top_up`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PurchaseSource>,
    /// Caller-supplied labels on a debit or hold, echoed back, never interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// What a debit or capture priced from usage used, and the rate it was priced at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<PricedUsage>,
    /// What a capture's usage cost beyond its hold, recorded but not taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unbilled: Option<Credits>,
}

pub type Metadata = BTreeMap<String, String>;

/// The usage a priced entry was computed from: the model, its token counts
/// and the id of the rate in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedUsage {
    pub model: String,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub rate_id: String,
}

impl PricedUsage {
    /// `usage` as priced at `rate`.
    pub fn of(usage: &Usage, rate: &Rate) -> PricedUsage {
        PricedUsage {
            model: usage.model.clone(),
            input_tokens: usage.input_tokens,
            cached_input_tokens: usage.cached_input_tokens,
            output_tokens: usage.output_tokens,
            rate_id: rate.id.clone(),
        }
    }

    /// Whether this is `usage` (whatever the rate).
    pub fn is(&self, usage: &Usage) -> bool {
        self.model == usage.model
            && self.input_tokens == usage.input_tokens
            && self.cached_input_tokens == usage.cached_input_tokens
            && self.output_tokens == usage.output_tokens
    }
}

/// A hold placed from a usage estimate: the estimate and the rate it was
/// priced at, which its capture by usage is priced at too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldPricing {
    pub estimate: UsageEstimate,
    pub rate: Rate,
}

/// Prices `usage` at its model's rate in force at `at`.
pub fn price_usage(
    card: &RateCard,
    usage: &Usage,
    at: DateTime<Utc>,
) -> Result<(Credits, Rate), Rejection> {
    let rate = card
        .in_force(&usage.model, at)
        .ok_or(Rejection::UnknownModel)?;
    let amount = price(rate, usage).map_err(usage_rejection)?;
    Ok((amount, rate.clone()))
}

fn usage_rejection(e: PriceError) -> Rejection {
    match e {
        PriceError::CachedExceedsInput => Rejection::InvalidUsage {
            field: "cached_input_tokens",
        },
        PriceError::TooManyTokens => Rejection::InvalidUsage {
            field: "input_tokens",
        },
        PriceError::Overflow => Rejection::BalanceOverflow,
    }
}

impl LedgerEntry {
    /// Signed effect on the balance.
    pub fn signed_amount(&self) -> i64 {
        self.kind.signed(self.amount.units())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    Active,
    Captured,
    Released,
    Expired,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Active => "active",
            HoldStatus::Captured => "captured",
            HoldStatus::Released => "released",
            HoldStatus::Expired => "expired",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: String,
    pub status: HoldStatus,
    pub amount: Credits,
    pub feature: String,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    /// The UTC day the hold was made; its capture counts against that day's cap.
    pub day: NaiveDate,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub captured_amount: Option<Credits>,
    /// The capture's ledger entry id, when a non-zero amount was captured.
    pub capture_entry_id: Option<String>,
    pub closed_at: Option<DateTime<Utc>>,
    /// The estimate and rate of a hold placed from `usage_estimate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<HoldPricing>,
    /// The usage a capture by usage reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_usage: Option<PricedUsage>,
    /// What that usage cost beyond the hold: recorded, not taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unbilled: Option<Credits>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wallet {
    pub(crate) org_id: String,
    pub(crate) owner_id: String,
    pub(crate) stripe_customer_id: Option<String>,
    pub(crate) balance: Credits,
    pub(crate) held: Credits,
    pub(crate) daily_cap: Credits,
    pub(crate) day: NaiveDate,
    pub(crate) spent_today: Credits,
    /// Credits held by active holds made today: they count against today's cap.
    pub(crate) held_today: Credits,
    /// Sequence number the next entry or hold takes.
    pub(crate) next_seq: u64,
    /// Latest time this wallet has seen; decisions never use an earlier one.
    pub(crate) clock: DateTime<Utc>,
    pub(crate) created_at: DateTime<Utc>,
    /// Active holds by id.
    pub(crate) holds: BTreeMap<String, Hold>,
    /// The D1 shard that replicates this organization's ledger; `None` for
    /// organizations created before shards existed (they live on `DB`).
    pub(crate) ledger_shard: Option<String>,
    /// Daily caps of single features (each within the organization's cap).
    pub(crate) feature_caps: BTreeMap<String, Credits>,
    /// Credits spent today per feature (every feature, capped or not, so a
    /// cap set during the day counts what was already spent).
    pub(crate) feature_spent_today: BTreeMap<String, Credits>,
    pub(crate) auto_top_up: AutoTopUp,
    pub(crate) alerts: Alerts,
    /// Sequence number the next event takes (events count on their own).
    pub(crate) next_event_seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebitRequest {
    pub feature: String,
    pub amount: Credits,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    pub metadata: Option<Metadata>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRequest {
    pub feature: String,
    pub amount: Credits,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    pub ttl_seconds: i64,
}

/// Who started a purchase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurchaseSource {
    /// The owner bought it (every purchase made before auto top-up existed).
    #[default]
    Owner,
    /// Auto top-up started it when available fell below its threshold.
    AutoTopUp,
}

impl PurchaseSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PurchaseSource::Owner => "owner",
            PurchaseSource::AutoTopUp => "auto_top_up",
        }
    }
}

/// A paid pack to credit; amounts come from the catalogue and from what the
/// payment processor reports, never from the buyer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurchaseCredit {
    pub source: PurchaseSource,
    pub pack_id: String,
    pub credits: Credits,
    pub amount_cents: i64,
    pub currency: String,
    pub payment_intent_id: String,
    pub purchase_id: Option<String>,
}

/// Why an operation was refused. Each maps to one stable API error code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    InsufficientCredits {
        available: Credits,
        requested: Credits,
    },
    DailyCapReached {
        resumes_at: DateTime<Utc>,
        daily_cap: Credits,
        cap_remaining: Credits,
        requested: Credits,
    },
    AmountOutOfRange {
        max: Credits,
    },
    DailyCapOutOfRange {
        max: Credits,
    },
    HoldTtlOutOfRange {
        max_seconds: i64,
    },
    TooManyActiveHolds {
        limit: usize,
    },
    HoldNotFound,
    HoldNotActive {
        status: HoldStatus,
    },
    CaptureExceedsHold {
        held: Credits,
        requested: Credits,
    },
    /// A capture or release repeated with a different outcome than the first.
    HoldAlreadyClosed {
        status: HoldStatus,
    },
    BalanceOverflow,
    /// The feature's own daily cap would be crossed; other features go on.
    FeatureCapReached {
        feature: String,
        resumes_at: DateTime<Utc>,
        feature_cap: Credits,
        cap_remaining: Credits,
        requested: Credits,
    },
    /// A feature cap outside 0 < cap <= the organization's daily cap.
    FeatureCapOutOfRange {
        feature: String,
        max: Credits,
    },
    /// No rate of the usage's model is in force.
    UnknownModel,
    /// Usage that cannot be priced; `field` names the count at fault.
    InvalidUsage {
        field: &'static str,
    },
    /// A capture by usage of a hold placed by amount, or of another model.
    UsageDoesNotMatchHold,
}

/// What `advance` changed, for the caller to persist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advanced {
    pub expired: Vec<Hold>,
    pub day_changed: bool,
    pub clock_moved: bool,
}

/// Start of the UTC day after `day`: when the daily cap resets.
pub fn next_midnight(day: NaiveDate) -> DateTime<Utc> {
    let next = day.succ_opt().expect("dates stay far from chrono's limits");
    next.and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
}

impl Wallet {
    /// A new organization's wallet and its one trial grant.
    pub fn open(
        org_id: &str,
        owner_id: &str,
        stripe_customer_id: Option<String>,
        config: &WalletConfig,
        now: DateTime<Utc>,
    ) -> (Wallet, Option<LedgerEntry>) {
        let mut wallet = Wallet {
            org_id: org_id.to_string(),
            owner_id: owner_id.to_string(),
            stripe_customer_id,
            balance: Credits::ZERO,
            held: Credits::ZERO,
            daily_cap: config.daily_cap_default,
            day: now.date_naive(),
            spent_today: Credits::ZERO,
            held_today: Credits::ZERO,
            next_seq: 1,
            clock: now,
            created_at: now,
            holds: BTreeMap::new(),
            ledger_shard: None,
            feature_caps: BTreeMap::new(),
            feature_spent_today: BTreeMap::new(),
            auto_top_up: AutoTopUp::new(now),
            alerts: Alerts::default(),
            next_event_seq: 1,
        };
        let grant = config.trial_credits.is_positive().then(|| {
            wallet.balance = config.trial_credits;
            wallet.new_entry(EntryKind::TrialGrant, config.trial_credits, now, wallet.day)
        });
        (wallet, grant)
    }

    pub fn available(&self) -> Credits {
        self.balance.saturating_sub(self.held)
    }

    pub fn cap_remaining(&self) -> Credits {
        self.daily_cap.saturating_sub(
            self.spent_today
                .checked_add(self.held_today)
                .unwrap_or(self.daily_cap),
        )
    }

    pub fn resets_at(&self) -> DateTime<Utc> {
        next_midnight(self.day)
    }

    /// Moves the clock to `now` (or keeps it, if `now` is earlier), expires
    /// due holds and starts a new cap day after midnight UTC.
    pub fn advance(&mut self, now: DateTime<Utc>) -> Advanced {
        let mut advanced = Advanced::default();
        if now > self.clock {
            self.clock = now;
            advanced.clock_moved = true;
        }
        let now = self.clock;
        let due: Vec<String> = self
            .holds
            .values()
            .filter(|h| h.expires_at <= now)
            .map(|h| h.id.clone())
            .collect();
        for id in due {
            let mut hold = self.holds.remove(&id).expect("listed above");
            self.unreserve(&hold);
            hold.status = HoldStatus::Expired;
            hold.closed_at = Some(now);
            advanced.expired.push(hold);
        }
        let today = now.date_naive();
        if today > self.day {
            self.day = today;
            self.spent_today = Credits::ZERO;
            // Holds made on earlier days no longer count against the new day's cap.
            self.held_today = Credits::ZERO;
            self.feature_spent_today.clear();
            self.auto_top_up.roll_month(now);
            advanced.day_changed = true;
        }
        advanced
    }

    /// Effective time of the next decision (the wallet clock after `advance`).
    pub fn now(&self) -> DateTime<Utc> {
        self.clock
    }

    pub fn debit(
        &mut self,
        request: &DebitRequest,
        config: &WalletConfig,
    ) -> Result<LedgerEntry, Rejection> {
        self.check_spend(request.amount, &request.feature, config)?;
        let feature_spent = self
            .feature_spent_today(&request.feature)
            .checked_add(request.amount)
            .ok_or(Rejection::BalanceOverflow)?;
        self.balance = self
            .balance
            .checked_sub(request.amount)
            .ok_or(Rejection::BalanceOverflow)?;
        self.spent_today = self
            .spent_today
            .checked_add(request.amount)
            .ok_or(Rejection::BalanceOverflow)?;
        self.feature_spent_today
            .insert(request.feature.clone(), feature_spent);
        let mut entry = self.new_entry(EntryKind::Debit, request.amount, self.clock, self.day);
        entry.feature = Some(request.feature.clone());
        entry.user_id = request.user_id.clone();
        entry.project_id = request.project_id.clone();
        entry.metadata = request.metadata.clone();
        Ok(entry)
    }

    pub fn place_hold(
        &mut self,
        request: &HoldRequest,
        config: &WalletConfig,
    ) -> Result<Hold, Rejection> {
        if !(1..=config.hold_ttl_max_seconds).contains(&request.ttl_seconds) {
            return Err(Rejection::HoldTtlOutOfRange {
                max_seconds: config.hold_ttl_max_seconds,
            });
        }
        if self.holds.len() >= config.max_active_holds {
            return Err(Rejection::TooManyActiveHolds {
                limit: config.max_active_holds,
            });
        }
        self.check_spend(request.amount, &request.feature, config)?;
        let now = self.clock;
        let hold = Hold {
            id: hold_id(self.take_seq()),
            status: HoldStatus::Active,
            amount: request.amount,
            feature: request.feature.clone(),
            user_id: request.user_id.clone(),
            project_id: request.project_id.clone(),
            day: self.day,
            created_at: now,
            expires_at: now + Duration::seconds(request.ttl_seconds),
            captured_amount: None,
            capture_entry_id: None,
            closed_at: None,
            pricing: None,
            captured_usage: None,
            unbilled: None,
        };
        self.held = self
            .held
            .checked_add(hold.amount)
            .ok_or(Rejection::BalanceOverflow)?;
        self.held_today = self
            .held_today
            .checked_add(hold.amount)
            .ok_or(Rejection::BalanceOverflow)?;
        self.holds.insert(hold.id.clone(), hold.clone());
        Ok(hold)
    }

    /// Captures `amount` of an active hold (debiting it, releasing the rest).
    /// `closed` is the stored record of the hold when it is no longer active,
    /// so a repeated identical capture answers as the first did.
    pub fn capture(
        &mut self,
        hold_id: &str,
        amount: Credits,
        closed: Option<&Hold>,
    ) -> Result<(Hold, Option<LedgerEntry>), Rejection> {
        let Some(active) = self.holds.get(hold_id) else {
            return match closed {
                Some(h)
                    if h.status == HoldStatus::Captured && h.captured_amount == Some(amount) =>
                {
                    Err(Rejection::HoldAlreadyClosed { status: h.status })
                }
                Some(h) => Err(Rejection::HoldNotActive { status: h.status }),
                None => Err(Rejection::HoldNotFound),
            };
        };
        if amount.units() < 0 || amount > active.amount {
            return Err(Rejection::CaptureExceedsHold {
                held: active.amount,
                requested: amount,
            });
        }
        if amount > self.balance {
            // Unreachable while held <= balance holds; refused rather than trusted.
            return Err(Rejection::InsufficientCredits {
                available: self.balance,
                requested: amount,
            });
        }
        let mut hold = self.holds.remove(hold_id).expect("checked above");
        let now = self.clock;
        self.unreserve(&hold);
        let entry = if amount.is_positive() {
            self.balance = self
                .balance
                .checked_sub(amount)
                .ok_or(Rejection::BalanceOverflow)?;
            if hold.day == self.day {
                self.spent_today = self
                    .spent_today
                    .checked_add(amount)
                    .ok_or(Rejection::BalanceOverflow)?;
                let feature_spent = self
                    .feature_spent_today(&hold.feature)
                    .checked_add(amount)
                    .ok_or(Rejection::BalanceOverflow)?;
                self.feature_spent_today
                    .insert(hold.feature.clone(), feature_spent);
            }
            let mut entry = self.new_entry(EntryKind::Capture, amount, now, hold.day);
            entry.feature = Some(hold.feature.clone());
            entry.user_id = hold.user_id.clone();
            entry.project_id = hold.project_id.clone();
            entry.hold_id = Some(hold.id.clone());
            Some(entry)
        } else {
            None
        };
        hold.status = HoldStatus::Captured;
        hold.captured_amount = Some(amount);
        hold.capture_entry_id = entry.as_ref().map(|e| e.id.clone());
        hold.closed_at = Some(now);
        Ok((hold, entry))
    }

    /// A debit priced from usage: `request.amount` is its price at `rate`.
    pub fn debit_usage(
        &mut self,
        request: &DebitRequest,
        usage: PricedUsage,
        config: &WalletConfig,
    ) -> Result<LedgerEntry, Rejection> {
        let mut entry = self.debit(request, config)?;
        entry.usage = Some(usage);
        Ok(entry)
    }

    /// A hold priced from a usage estimate: `request.amount` is its price at
    /// `pricing.rate`, kept with the hold for its capture.
    pub fn place_priced_hold(
        &mut self,
        request: &HoldRequest,
        pricing: HoldPricing,
        config: &WalletConfig,
    ) -> Result<Hold, Rejection> {
        let mut hold = self.place_hold(request, config)?;
        hold.pricing = Some(pricing);
        self.holds.insert(hold.id.clone(), hold.clone());
        Ok(hold)
    }

    /// Captures a priced hold by the usage the call reported, priced at the
    /// hold's rate. What it costs beyond the hold is not taken: the whole
    /// hold is captured and the rest recorded as `unbilled`, so neither the
    /// balance nor a cap is ever crossed.
    pub fn capture_usage(
        &mut self,
        hold_id: &str,
        usage: &Usage,
        closed: Option<&Hold>,
    ) -> Result<(Hold, Option<LedgerEntry>), Rejection> {
        let Some(active) = self.holds.get(hold_id) else {
            return match closed {
                Some(h)
                    if h.status == HoldStatus::Captured
                        && h.captured_usage.as_ref().is_some_and(|u| u.is(usage)) =>
                {
                    Err(Rejection::HoldAlreadyClosed { status: h.status })
                }
                Some(h) => Err(Rejection::HoldNotActive { status: h.status }),
                None => Err(Rejection::HoldNotFound),
            };
        };
        let rate = match &active.pricing {
            Some(p) if p.rate.model == usage.model => p.rate.clone(),
            _ => return Err(Rejection::UsageDoesNotMatchHold),
        };
        let cost = price(&rate, usage).map_err(usage_rejection)?;
        let taken = cost.min(active.amount);
        let unbilled = cost.saturating_sub(taken);
        let (mut hold, mut entry) = self.capture(hold_id, taken, None)?;
        let priced = PricedUsage::of(usage, &rate);
        let unbilled = unbilled.is_positive().then_some(unbilled);
        if let Some(entry) = entry.as_mut() {
            entry.usage = Some(priced.clone());
            entry.unbilled = unbilled;
        }
        hold.captured_usage = Some(priced);
        hold.unbilled = unbilled;
        Ok((hold, entry))
    }

    /// Releases an active hold. Releasing an already released hold answers
    /// as the first release did; any other closed hold is not active.
    pub fn release(&mut self, hold_id: &str, closed: Option<&Hold>) -> Result<Hold, Rejection> {
        let Some(mut hold) = self.holds.remove(hold_id) else {
            return match closed {
                Some(h) if h.status == HoldStatus::Released => {
                    Err(Rejection::HoldAlreadyClosed { status: h.status })
                }
                Some(h) => Err(Rejection::HoldNotActive { status: h.status }),
                None => Err(Rejection::HoldNotFound),
            };
        };
        self.unreserve(&hold);
        hold.status = HoldStatus::Released;
        hold.closed_at = Some(self.clock);
        Ok(hold)
    }

    pub fn set_daily_cap(
        &mut self,
        daily_cap: Credits,
        config: &WalletConfig,
    ) -> Result<(), Rejection> {
        if !daily_cap.is_positive() || daily_cap > config.daily_cap_max {
            return Err(Rejection::DailyCapOutOfRange {
                max: config.daily_cap_max,
            });
        }
        // Lowering the cap below what is already spent or held today is allowed:
        // it pauses further spending today and never undoes past decisions.
        self.daily_cap = daily_cap;
        Ok(())
    }

    pub fn credit_purchase(&mut self, purchase: &PurchaseCredit) -> Result<LedgerEntry, Rejection> {
        self.balance = self
            .balance
            .checked_add(purchase.credits)
            .ok_or(Rejection::BalanceOverflow)?;
        let mut entry = self.new_entry(EntryKind::Purchase, purchase.credits, self.clock, self.day);
        entry.pack_id = Some(purchase.pack_id.clone());
        entry.amount_cents = Some(purchase.amount_cents);
        entry.currency = Some(purchase.currency.clone());
        entry.payment_intent_id = Some(purchase.payment_intent_id.clone());
        entry.purchase_id = purchase.purchase_id.clone();
        entry.source = Some(purchase.source);
        Ok(entry)
    }

    /// Takes back up to `credits` of a disputed or refunded payment's
    /// credits (`kind` says which), never more than is available (balance
    /// minus active holds), so the balance stays non-negative and every hold
    /// stays covered. Returns the reversal entry, or none when nothing was
    /// available to take.
    pub fn reverse_credits(&mut self, kind: EntryKind, credits: Credits) -> Option<LedgerEntry> {
        debug_assert!(matches!(
            kind,
            EntryKind::DisputeReversal | EntryKind::RefundReversal
        ));
        let taken = if credits < self.available() {
            credits
        } else {
            self.available()
        };
        if !taken.is_positive() {
            return None;
        }
        self.balance = self.balance.saturating_sub(taken);
        Some(self.new_entry(kind, taken, self.clock, self.day))
    }

    /// Gives back `credits` a dispute took, once it was won. Never usage.
    pub fn reinstate_credits(&mut self, credits: Credits) -> Result<LedgerEntry, Rejection> {
        assert!(credits.is_positive(), "a reinstatement adds credits");
        self.balance = self
            .balance
            .checked_add(credits)
            .ok_or(Rejection::BalanceOverflow)?;
        Ok(self.new_entry(
            EntryKind::DisputeReinstatement,
            credits,
            self.clock,
            self.day,
        ))
    }

    /// Replaces the caps named in `changes` (`None` removes one). Each must be
    /// positive and at most the organization's daily cap; all or none apply.
    /// A cap below what the feature already used today pauses it until
    /// midnight, as the organization's cap does.
    pub fn set_feature_caps(
        &mut self,
        changes: &BTreeMap<String, Option<Credits>>,
        config: &WalletConfig,
    ) -> Result<(), Rejection> {
        for (feature, cap) in changes {
            if !config.is_feature(feature) {
                return Err(Rejection::FeatureCapOutOfRange {
                    feature: feature.clone(),
                    max: Credits::ZERO,
                });
            }
            if let Some(cap) = cap {
                if !cap.is_positive() || *cap > self.daily_cap {
                    return Err(Rejection::FeatureCapOutOfRange {
                        feature: feature.clone(),
                        max: self.daily_cap,
                    });
                }
            }
        }
        for (feature, cap) in changes {
            match cap {
                Some(cap) => self.feature_caps.insert(feature.clone(), *cap),
                None => self.feature_caps.remove(feature),
            };
        }
        Ok(())
    }

    pub fn feature_caps(&self) -> &BTreeMap<String, Credits> {
        &self.feature_caps
    }

    /// Credits spent today by `feature` (debits and captures of today's holds).
    pub fn feature_spent_today(&self, feature: &str) -> Credits {
        self.feature_spent_today
            .get(feature)
            .copied()
            .unwrap_or(Credits::ZERO)
    }

    /// Credits held today by active holds of `feature`.
    pub fn feature_held_today(&self, feature: &str) -> Credits {
        self.holds
            .values()
            .filter(|h| h.feature == feature && h.day == self.day)
            .fold(Credits::ZERO, |sum, h| sum.saturating_add(h.amount))
    }

    /// What `feature` may still spend today under its own cap (`None` when uncapped).
    pub fn feature_cap_remaining(&self, feature: &str) -> Option<Credits> {
        let cap = *self.feature_caps.get(feature)?;
        let used = self
            .feature_spent_today(feature)
            .saturating_add(self.feature_held_today(feature));
        Some(cap.saturating_sub(used))
    }

    /// Checks a new spend of `amount` by `feature` against limits, available
    /// credits, today's cap and the feature's cap, in that order.
    fn check_spend(
        &self,
        amount: Credits,
        feature: &str,
        config: &WalletConfig,
    ) -> Result<(), Rejection> {
        if !amount.is_positive() || amount > config.max_operation {
            return Err(Rejection::AmountOutOfRange {
                max: config.max_operation,
            });
        }
        if amount > self.available() {
            return Err(Rejection::InsufficientCredits {
                available: self.available(),
                requested: amount,
            });
        }
        if amount > self.cap_remaining() {
            return Err(Rejection::DailyCapReached {
                resumes_at: self.resets_at(),
                daily_cap: self.daily_cap,
                cap_remaining: self.cap_remaining(),
                requested: amount,
            });
        }
        if let Some(remaining) = self.feature_cap_remaining(feature) {
            if amount > remaining {
                return Err(Rejection::FeatureCapReached {
                    feature: feature.to_string(),
                    resumes_at: self.resets_at(),
                    feature_cap: self.feature_caps[feature],
                    cap_remaining: remaining,
                    requested: amount,
                });
            }
        }
        Ok(())
    }

    fn unreserve(&mut self, hold: &Hold) {
        self.held = self.held.saturating_sub(hold.amount);
        if hold.day == self.day {
            self.held_today = self.held_today.saturating_sub(hold.amount);
        }
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn new_entry(
        &mut self,
        kind: EntryKind,
        amount: Credits,
        now: DateTime<Utc>,
        usage_day: NaiveDate,
    ) -> LedgerEntry {
        let seq = self.take_seq();
        LedgerEntry {
            seq,
            id: entry_id(seq),
            kind,
            amount,
            balance_after: self.balance,
            created_at: now,
            usage_day,
            feature: None,
            user_id: None,
            project_id: None,
            hold_id: None,
            pack_id: None,
            amount_cents: None,
            currency: None,
            payment_intent_id: None,
            purchase_id: None,
            source: None,
            metadata: None,
            usage: None,
            unbilled: None,
        }
    }
}

/// A wallet as its storage row holds it: every field plain, for the shell to
/// persist and to hand back to [`Wallet::restore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredWallet {
    pub org_id: String,
    pub owner_id: String,
    pub stripe_customer_id: Option<String>,
    pub ledger_shard: Option<String>,
    pub balance: Credits,
    pub held: Credits,
    pub daily_cap: Credits,
    pub day: NaiveDate,
    pub spent_today: Credits,
    pub held_today: Credits,
    pub next_seq: u64,
    pub clock: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub feature_caps: BTreeMap<String, Credits>,
    pub feature_spent_today: BTreeMap<String, Credits>,
    pub auto_top_up: AutoTopUp,
    pub alerts: Alerts,
    pub next_event_seq: u64,
}

/// Why a stored wallet was refused at load: serving it would decide on
/// figures that disagree with its own holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inconsistent(pub String);

impl std::fmt::Display for Inconsistent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stored wallet is inconsistent: {}", self.0)
    }
}

impl Wallet {
    /// Rebuilds a wallet from storage, checking that `held` and `held_today`
    /// are exactly what its active holds add up to (and that no hold claims a
    /// sequence number not yet handed out).
    pub fn restore(stored: StoredWallet, holds: Vec<Hold>) -> Result<Wallet, Inconsistent> {
        let mut held = Credits::ZERO;
        let mut held_today = Credits::ZERO;
        let mut by_id = BTreeMap::new();
        for hold in holds {
            if hold.status != HoldStatus::Active {
                return Err(Inconsistent(format!("hold {} is not active", hold.id)));
            }
            if seq_of(&hold.id).is_none_or(|seq| seq >= stored.next_seq) {
                return Err(Inconsistent(format!("hold {} is past next_seq", hold.id)));
            }
            let overflow = || Inconsistent("held credits overflow".into());
            held = held.checked_add(hold.amount).ok_or_else(overflow)?;
            if hold.day == stored.day {
                held_today = held_today.checked_add(hold.amount).ok_or_else(overflow)?;
            }
            by_id.insert(hold.id.clone(), hold);
        }
        if held != stored.held || held_today != stored.held_today {
            return Err(Inconsistent(format!(
                "held {} / held_today {} stored, active holds add up to {held} / {held_today}",
                stored.held, stored.held_today
            )));
        }
        let feature_spent = stored
            .feature_spent_today
            .values()
            .try_fold(Credits::ZERO, |sum, c| sum.checked_add(*c))
            .ok_or_else(|| Inconsistent("feature spend overflows".into()))?;
        if feature_spent > stored.spent_today {
            return Err(Inconsistent(format!(
                "features spent {feature_spent} today, more than spent_today {}",
                stored.spent_today
            )));
        }
        if let Some((feature, cap)) = stored.feature_caps.iter().find(|(_, c)| !c.is_positive()) {
            return Err(Inconsistent(format!("feature cap {feature} is {cap}")));
        }
        if stored.balance.units() < 0 || stored.held > stored.balance {
            return Err(Inconsistent(format!(
                "balance {} does not cover held {}",
                stored.balance, stored.held
            )));
        }
        Ok(Wallet {
            org_id: stored.org_id,
            owner_id: stored.owner_id,
            stripe_customer_id: stored.stripe_customer_id,
            balance: stored.balance,
            held: stored.held,
            daily_cap: stored.daily_cap,
            day: stored.day,
            spent_today: stored.spent_today,
            held_today: stored.held_today,
            next_seq: stored.next_seq,
            clock: stored.clock,
            created_at: stored.created_at,
            holds: by_id,
            ledger_shard: stored.ledger_shard,
            feature_caps: stored.feature_caps,
            feature_spent_today: stored.feature_spent_today,
            auto_top_up: stored.auto_top_up,
            alerts: stored.alerts,
            next_event_seq: stored.next_event_seq,
        })
    }

    /// The row to persist.
    pub fn stored(&self) -> StoredWallet {
        StoredWallet {
            org_id: self.org_id.clone(),
            owner_id: self.owner_id.clone(),
            stripe_customer_id: self.stripe_customer_id.clone(),
            ledger_shard: self.ledger_shard.clone(),
            balance: self.balance,
            held: self.held,
            daily_cap: self.daily_cap,
            day: self.day,
            spent_today: self.spent_today,
            held_today: self.held_today,
            next_seq: self.next_seq,
            clock: self.clock,
            created_at: self.created_at,
            feature_caps: self.feature_caps.clone(),
            feature_spent_today: self.feature_spent_today.clone(),
            auto_top_up: self.auto_top_up.clone(),
            alerts: self.alerts.clone(),
            next_event_seq: self.next_event_seq,
        }
    }

    pub fn auto_top_up(&self) -> &AutoTopUp {
        &self.auto_top_up
    }

    pub fn auto_top_up_mut(&mut self) -> &mut AutoTopUp {
        &mut self.auto_top_up
    }

    /// Applies the owner's auto top-up settings, all or nothing.
    pub fn set_auto_top_up(&mut self, body: &AutoTopUpBody) -> Result<(), crate::paging::Invalid> {
        self.auto_top_up.update(body)
    }

    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    pub fn set_alerts(&mut self, body: &AlertsBody) {
        self.alerts.low_balance_threshold = body.threshold();
    }

    /// Runs the alert rules over the wallet as it is now.
    pub fn watch_alerts(
        &mut self,
        cap_refused: bool,
    ) -> Vec<(crate::events::EventType, serde_json::Value)> {
        let figures = Figures {
            balance: self.balance,
            available: self.available(),
            daily_cap: self.daily_cap,
            spent_today: self.spent_today,
            cap_remaining: self.cap_remaining(),
            day: self.day,
            resets_at: self.resets_at(),
            cap_refused,
        };
        self.alerts.watch(&figures)
    }

    /// Hands out the next event's sequence number.
    pub fn take_event_seq(&mut self) -> u64 {
        let seq = self.next_event_seq;
        self.next_event_seq += 1;
        seq
    }

    pub fn next_event_seq(&self) -> u64 {
        self.next_event_seq
    }

    /// Records the D1 shard of a new organization; never moves an assigned one.
    pub fn assign_ledger_shard(&mut self, shard: &str) {
        if self.ledger_shard.is_none() {
            self.ledger_shard = Some(shard.to_string());
        }
    }

    /// Records the Stripe customer unless one is recorded; whether it changed.
    pub fn record_stripe_customer(&mut self, stripe_customer_id: &str) -> bool {
        if self.stripe_customer_id.is_some() {
            return false;
        }
        self.stripe_customer_id = Some(stripe_customer_id.to_string());
        true
    }

    pub fn org_id(&self) -> &str {
        &self.org_id
    }
    pub fn owner_id(&self) -> &str {
        &self.owner_id
    }
    pub fn stripe_customer_id(&self) -> Option<&str> {
        self.stripe_customer_id.as_deref()
    }
    /// The shard named at signup, or `None` for organizations older than shards.
    pub fn ledger_shard(&self) -> Option<&str> {
        self.ledger_shard.as_deref()
    }
    pub fn balance(&self) -> Credits {
        self.balance
    }
    pub fn held(&self) -> Credits {
        self.held
    }
    pub fn daily_cap(&self) -> Credits {
        self.daily_cap
    }
    pub fn day(&self) -> NaiveDate {
        self.day
    }
    pub fn spent_today(&self) -> Credits {
        self.spent_today
    }
    pub fn held_today(&self) -> Credits {
        self.held_today
    }
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    /// Active holds by id.
    pub fn holds(&self) -> &BTreeMap<String, Hold> {
        &self.holds
    }
}

/// What the dashboard and callers see of a wallet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WalletView {
    pub org_id: String,
    pub balance: Credits,
    pub held: Credits,
    pub available: Credits,
    pub daily_cap: Credits,
    pub daily_cap_default: Credits,
    pub daily_cap_max: Credits,
    pub spent_today: Credits,
    pub held_today: Credits,
    pub cap_remaining: Credits,
    pub day: NaiveDate,
    pub resets_at: String,
    pub status: &'static str,
    pub resumes_at: Option<String>,
    pub feature_caps: Vec<FeatureCapView>,
}

/// One capped feature in the wallet view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeatureCapView {
    pub feature: String,
    pub daily_cap: Credits,
    pub spent_today: Credits,
    pub held_today: Credits,
    pub cap_remaining: Credits,
}

impl Wallet {
    pub fn view(&self, config: &WalletConfig) -> WalletView {
        let (status, resumes_at) = if self.available().is_zero() {
            ("paused_no_credits", None)
        } else if self.cap_remaining().is_zero() {
            (
                "paused_daily_cap",
                Some(crate::time::rfc3339(self.resets_at())),
            )
        } else {
            ("active", None)
        };
        WalletView {
            org_id: self.org_id.clone(),
            balance: self.balance,
            held: self.held,
            available: self.available(),
            daily_cap: self.daily_cap,
            daily_cap_default: config.daily_cap_default,
            daily_cap_max: config.daily_cap_max,
            spent_today: self.spent_today,
            held_today: self.held_today,
            cap_remaining: self.cap_remaining(),
            day: self.day,
            resets_at: crate::time::rfc3339(self.resets_at()),
            status,
            resumes_at,
            feature_caps: self
                .feature_caps
                .iter()
                .map(|(feature, cap)| FeatureCapView {
                    feature: feature.clone(),
                    daily_cap: *cap,
                    spent_today: self.feature_spent_today(feature),
                    held_today: self.feature_held_today(feature),
                    cap_remaining: self.feature_cap_remaining(feature).unwrap_or(*cap),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn c(text: &str) -> Credits {
        Credits::parse(text).unwrap()
    }

    fn new_wallet(now: &str) -> (Wallet, WalletConfig) {
        let config = WalletConfig::defaults();
        let (wallet, _) = Wallet::open("org_t", "owner", None, &config, at(now));
        (wallet, config)
    }

    fn debit(amount: &str) -> DebitRequest {
        DebitRequest {
            feature: "chat".into(),
            amount: c(amount),
            user_id: None,
            project_id: None,
            metadata: None,
        }
    }

    fn hold(amount: &str, ttl_seconds: i64) -> HoldRequest {
        HoldRequest {
            feature: "chat".into(),
            amount: c(amount),
            user_id: None,
            project_id: None,
            ttl_seconds,
        }
    }

    #[test]
    fn signup_grants_the_trial_once_as_the_first_entry() {
        let config = WalletConfig::defaults();
        let (wallet, grant) =
            Wallet::open("org_t", "owner", None, &config, at("2030-01-01T10:00:00Z"));
        let grant = grant.unwrap();
        assert_eq!(
            (grant.kind, grant.amount, grant.balance_after),
            (EntryKind::TrialGrant, c("200"), c("200"))
        );
        assert_eq!(grant.id, "le_000000000001");
        assert_eq!(
            (wallet.balance, wallet.daily_cap, wallet.next_seq),
            (c("200"), c("500"), 2)
        );
    }

    /// (daily cap, debits before, amount, new balance or rejection code)
    type DebitCase = (
        &'static str,
        &'static [&'static str],
        &'static str,
        Result<&'static str, &'static str>,
    );

    #[test]
    fn debit_rules() {
        let cases: &[DebitCase] = &[
            ("500", &[], "1.5", Ok("198.5")),
            ("500", &[], "200", Ok("0")),
            ("500", &[], "200.0001", Err("insufficient_credits")),
            ("500", &["150"], "50.0001", Err("insufficient_credits")),
            ("10", &["9"], "1", Ok("190")),
            ("10", &["9"], "1.0001", Err("daily_cap_reached")),
            ("10", &["10"], "0.0001", Err("daily_cap_reached")),
            ("500", &[], "0", Err("amount_out_of_range")),
            ("500", &[], "10000.0001", Err("amount_out_of_range")),
        ];
        for (cap, before, amount, expected) in cases {
            let (mut wallet, config) = new_wallet("2030-01-01T10:00:00Z");
            wallet.set_daily_cap(c(cap), &config).unwrap();
            for d in *before {
                wallet.debit(&debit(d), &config).unwrap();
            }
            let snapshot = wallet.clone();
            let outcome = wallet.debit(&debit(amount), &config);
            match (outcome, expected) {
                (Ok(entry), Ok(balance)) => assert_eq!(entry.balance_after, c(balance), "{amount}"),
                (Err(rejection), Err(code)) => {
                    let actual = match rejection {
                        Rejection::InsufficientCredits { .. } => "insufficient_credits",
                        Rejection::DailyCapReached { .. } => "daily_cap_reached",
                        Rejection::AmountOutOfRange { .. } => "amount_out_of_range",
                        other => panic!("unexpected {other:?}"),
                    };
                    assert_eq!(actual, *code, "{amount}");
                    assert_eq!(wallet, snapshot, "a rejection changes nothing");
                }
                (outcome, expected) => panic!("{amount}: got {outcome:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn insufficient_credits_is_checked_before_the_cap() {
        let (mut wallet, config) = new_wallet("2030-01-01T10:00:00Z");
        wallet.set_daily_cap(c("1"), &config).unwrap();
        let err = wallet.debit(&debit("300"), &config).unwrap_err();
        assert_eq!(
            err,
            Rejection::InsufficientCredits {
                available: c("200"),
                requested: c("300")
            }
        );
    }

    #[test]
    fn cap_resets_at_midnight_utc_and_not_before() {
        let (mut wallet, config) = new_wallet("2030-01-01T23:00:00Z");
        wallet.set_daily_cap(c("5"), &config).unwrap();
        wallet.debit(&debit("5"), &config).unwrap();
        wallet.advance(at("2030-01-01T23:59:59.999Z"));
        let err = wallet.debit(&debit("1"), &config).unwrap_err();
        assert!(
            matches!(err, Rejection::DailyCapReached { resumes_at, .. } if resumes_at == at("2030-01-02T00:00:00Z"))
        );
        let advanced = wallet.advance(at("2030-01-02T00:00:00Z"));
        assert!(advanced.day_changed);
        assert_eq!(wallet.spent_today, Credits::ZERO);
        assert_eq!(
            wallet
                .debit(&debit("5"), &config)
                .unwrap()
                .usage_day
                .to_string(),
            "2030-01-02"
        );
    }

    #[test]
    fn the_clock_never_goes_backwards() {
        let (mut wallet, config) = new_wallet("2030-01-02T00:00:10Z");
        wallet.advance(at("2030-01-01T12:00:00Z"));
        assert_eq!(wallet.now(), at("2030-01-02T00:00:10Z"));
        let entry = wallet.debit(&debit("1"), &config).unwrap();
        assert_eq!(entry.created_at, at("2030-01-02T00:00:10Z"));
    }

    #[test]
    fn holds_reserve_balance_and_cap_until_captured() {
        let (mut wallet, config) = new_wallet("2030-01-01T10:00:00Z");
        wallet.set_daily_cap(c("50"), &config).unwrap();
        let h = wallet.place_hold(&hold("30", 300), &config).unwrap();
        assert_eq!(
            (wallet.held, wallet.available(), wallet.cap_remaining()),
            (c("30"), c("170"), c("20"))
        );
        assert!(matches!(
            wallet.debit(&debit("21"), &config),
            Err(Rejection::DailyCapReached { .. })
        ));
        let (closed, entry) = wallet.capture(&h.id, c("12.5"), None).unwrap();
        assert_eq!(closed.status, HoldStatus::Captured);
        let entry = entry.unwrap();
        assert_eq!(
            (entry.kind, entry.amount, entry.balance_after),
            (EntryKind::Capture, c("12.5"), c("187.5"))
        );
        assert_eq!(entry.hold_id.as_deref(), Some(h.id.as_str()));
        assert_eq!(
            (wallet.held, wallet.spent_today, wallet.cap_remaining()),
            (Credits::ZERO, c("12.5"), c("37.5"))
        );
    }

    #[test]
    fn capture_rules() {
        let (mut wallet, config) = new_wallet("2030-01-01T10:00:00Z");
        let h = wallet.place_hold(&hold("10", 300), &config).unwrap();
        assert_eq!(
            wallet.capture(&h.id, c("10.0001"), None).unwrap_err(),
            Rejection::CaptureExceedsHold {
                held: c("10"),
                requested: c("10.0001")
            }
        );
        assert_eq!(
            wallet
                .capture("hold_000000000099", c("1"), None)
                .unwrap_err(),
            Rejection::HoldNotFound
        );
        let (closed, entry) = wallet.capture(&h.id, Credits::ZERO, None).unwrap();
        assert!(entry.is_none(), "capturing zero moves no credits");
        assert_eq!(wallet.balance, c("200"));
        // Identical repeat vs. a different amount after closing.
        assert!(matches!(
            wallet.capture(&h.id, Credits::ZERO, Some(&closed)),
            Err(Rejection::HoldAlreadyClosed { .. })
        ));
        assert!(matches!(
            wallet.capture(&h.id, c("1"), Some(&closed)),
            Err(Rejection::HoldNotActive { .. })
        ));
        assert!(matches!(
            wallet.release(&h.id, Some(&closed)),
            Err(Rejection::HoldNotActive { .. })
        ));
    }

    fn usage(model: &str, input: u64, cached: u64, output: u64) -> Usage {
        Usage {
            model: model.into(),
            input_tokens: input,
            cached_input_tokens: cached,
            output_tokens: output,
        }
    }

    /// Places a hold for 10,000 in / 1,000 out of gpt-4o (250 and 1000 per
    /// million: 2.5 + 1 = 3.5 credits) at the rate in force now.
    fn priced_hold(wallet: &mut Wallet, config: &WalletConfig) -> Hold {
        let estimate = UsageEstimate {
            model: "gpt-4o".into(),
            input_tokens: 10_000,
            max_output_tokens: 1_000,
        };
        let (amount, rate) =
            price_usage(&config.rate_card, &estimate.as_usage(), wallet.now()).unwrap();
        assert_eq!(amount, c("3.5"));
        let mut request = hold("1", 300);
        request.amount = amount;
        let pricing = HoldPricing { estimate, rate };
        wallet.place_priced_hold(&request, pricing, config).unwrap()
    }

    #[test]
    fn captures_by_usage_are_priced_at_the_hold_rate_and_never_take_more_than_held() {
        let (mut wallet, config) = new_wallet("2030-01-01T10:00:00Z");
        // Below the hold: 4,000 in (1,000 cached at 125) + 500 out = 0.75 + 0.125 + 0.5.
        let below = priced_hold(&mut wallet, &config);
        let (captured, entry) = wallet
            .capture_usage(&below.id, &usage("gpt-4o", 4_000, 1_000, 500), None)
            .unwrap();
        let entry = entry.unwrap();
        assert_eq!(entry.amount, c("1.375"));
        assert_eq!(entry.unbilled, None);
        let priced = entry.usage.clone().unwrap();
        assert_eq!(priced.rate_id, "rate_gpt-4o_20240101T000000Z");
        assert_eq!(priced.cached_input_tokens, 1_000);
        assert_eq!(captured.captured_amount, Some(c("1.375")));
        assert_eq!(wallet.balance, c("198.625"));
        assert_eq!(wallet.held, Credits::ZERO);
        // Equal to the hold: exactly what was held, nothing unbilled.
        let equal = priced_hold(&mut wallet, &config);
        let (_, entry) = wallet
            .capture_usage(&equal.id, &usage("gpt-4o", 10_000, 0, 1_000), None)
            .unwrap();
        assert_eq!(entry.as_ref().unwrap().amount, c("3.5"));
        assert_eq!(entry.unwrap().unbilled, None);
        // Above the hold: the whole hold is taken, the rest is unbilled.
        let above = priced_hold(&mut wallet, &config);
        let spent_before = wallet.spent_today;
        let (closed, entry) = wallet
            .capture_usage(&above.id, &usage("gpt-4o", 10_000, 0, 3_000), None)
            .unwrap();
        let entry = entry.unwrap();
        assert_eq!(entry.amount, c("3.5"));
        assert_eq!(entry.unbilled, Some(c("2")));
        assert_eq!(closed.unbilled, Some(c("2")));
        assert_eq!(
            wallet.spent_today,
            spent_before.checked_add(c("3.5")).unwrap()
        );
        assert_eq!(wallet.balance, c("191.625"));
        // The same usage again answers as the first; other usage is refused.
        let same = usage("gpt-4o", 10_000, 0, 3_000);
        assert!(matches!(
            wallet.capture_usage(&above.id, &same, Some(&closed)),
            Err(Rejection::HoldAlreadyClosed { .. })
        ));
        assert!(matches!(
            wallet.capture_usage(&above.id, &usage("gpt-4o", 1, 0, 1), Some(&closed)),
            Err(Rejection::HoldNotActive { .. })
        ));
        // Another model, or a hold placed by amount, is not captured by usage.
        let other = priced_hold(&mut wallet, &config);
        assert_eq!(
            wallet.capture_usage(&other.id, &usage("gpt-4o-mini", 1, 0, 1), None),
            Err(Rejection::UsageDoesNotMatchHold)
        );
        let plain = wallet.place_hold(&hold("1", 300), &config).unwrap();
        assert_eq!(
            wallet.capture_usage(&plain.id, &usage("gpt-4o", 1, 0, 1), None),
            Err(Rejection::UsageDoesNotMatchHold)
        );
    }

    #[test]
    fn usage_is_priced_at_the_rate_in_force_at_the_instant() {
        let config = WalletConfig::defaults();
        let u = usage("claude-sonnet-4", 1_000_000, 0, 1_000_000);
        let change = at("2030-01-01T00:00:00Z");
        let before = price_usage(&config.rate_card, &u, change - Duration::seconds(1)).unwrap();
        assert_eq!(before.0, c("1800.01"));
        assert_eq!(before.1.id, "rate_claude-sonnet-4_20240101T000000Z");
        let after = price_usage(&config.rate_card, &u, change).unwrap();
        assert_eq!(after.0, c("1500.01"));
        assert_eq!(after.1.id, "rate_claude-sonnet-4_20300101T000000Z");
        assert_eq!(
            price_usage(&config.rate_card, &usage("gpt-9", 1, 0, 1), change),
            Err(Rejection::UnknownModel)
        );
    }

    #[test]
    fn holds_expire_by_themselves() {
        let (mut wallet, config) = new_wallet("2030-01-01T10:00:00Z");
        let h = wallet.place_hold(&hold("10", 60), &config).unwrap();
        assert!(wallet
            .advance(at("2030-01-01T10:00:59.999Z"))
            .expired
            .is_empty());
        let advanced = wallet.advance(at("2030-01-01T10:01:00Z"));
        assert_eq!(advanced.expired.len(), 1);
        assert_eq!(advanced.expired[0].status, HoldStatus::Expired);
        assert_eq!(
            (wallet.held, wallet.held_today),
            (Credits::ZERO, Credits::ZERO)
        );
        assert!(matches!(
            wallet.capture(&h.id, c("1"), Some(&advanced.expired[0])),
            Err(Rejection::HoldNotActive {
                status: HoldStatus::Expired
            })
        ));
    }

    #[test]
    fn a_capture_counts_on_the_day_its_hold_was_made() {
        let (mut wallet, config) = new_wallet("2030-01-01T23:59:00Z");
        let h = wallet.place_hold(&hold("10", 600), &config).unwrap();
        wallet.advance(at("2030-01-02T00:01:00Z"));
        assert_eq!((wallet.held, wallet.held_today), (c("10"), Credits::ZERO));
        let (_, entry) = wallet.capture(&h.id, c("4"), None).unwrap();
        assert_eq!(entry.unwrap().usage_day.to_string(), "2030-01-01");
        assert_eq!(
            wallet.spent_today,
            Credits::ZERO,
            "yesterday's hold does not spend today's cap"
        );
    }

    #[test]
    fn hold_limits() {
        let (mut wallet, mut config) = new_wallet("2030-01-01T10:00:00Z");
        assert!(matches!(
            wallet.place_hold(&hold("1", 3601), &config),
            Err(Rejection::HoldTtlOutOfRange { .. })
        ));
        assert!(matches!(
            wallet.place_hold(&hold("1", 0), &config),
            Err(Rejection::HoldTtlOutOfRange { .. })
        ));
        config.max_active_holds = 2;
        wallet.place_hold(&hold("1", 60), &config).unwrap();
        wallet.place_hold(&hold("1", 60), &config).unwrap();
        assert_eq!(
            wallet.place_hold(&hold("1", 60), &config).unwrap_err(),
            Rejection::TooManyActiveHolds { limit: 2 }
        );
    }

    #[test]
    fn daily_cap_bounds_and_lowering() {
        let (mut wallet, config) = new_wallet("2030-01-01T10:00:00Z");
        for bad in ["0", "50000.0001"] {
            assert_eq!(
                wallet.set_daily_cap(c(bad), &config),
                Err(Rejection::DailyCapOutOfRange { max: c("50000") })
            );
        }
        wallet.debit(&debit("20"), &config).unwrap();
        wallet.set_daily_cap(c("10"), &config).unwrap();
        assert_eq!(
            wallet.cap_remaining(),
            Credits::ZERO,
            "lowering below today's spend pauses spending"
        );
        assert_eq!(wallet.view(&config).status, "paused_daily_cap");
    }

    #[test]
    fn purchases_add_credits_with_their_payment() {
        let (mut wallet, _) = new_wallet("2030-01-01T10:00:00Z");
        let entry = wallet
            .credit_purchase(&PurchaseCredit {
                source: PurchaseSource::Owner,
                pack_id: "team".into(),
                credits: c("5250"),
                amount_cents: 5000,
                currency: "usd".into(),
                payment_intent_id: "pi_1".into(),
                purchase_id: Some("pur_1".into()),
            })
            .unwrap();
        assert_eq!(
            (entry.kind, entry.balance_after, entry.amount_cents),
            (EntryKind::Purchase, c("5450"), Some(5000))
        );
    }

    #[test]
    fn status_reflects_pauses() {
        let (mut wallet, config) = new_wallet("2030-01-01T10:00:00Z");
        assert_eq!(wallet.view(&config).status, "active");
        wallet.debit(&debit("200"), &config).unwrap();
        let view = wallet.view(&config);
        assert_eq!((view.status, view.resumes_at), ("paused_no_credits", None));
    }

    fn caps(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<Credits>> {
        pairs
            .iter()
            .map(|(f, c)| (f.to_string(), c.map(|c| Credits::parse(c).unwrap())))
            .collect()
    }

    fn spend(feature: &str, amount: &str) -> DebitRequest {
        DebitRequest {
            feature: feature.into(),
            ..debit(amount)
        }
    }

    #[test]
    fn a_feature_cap_stops_that_feature_only_and_resets_at_midnight() {
        let (mut wallet, config) = new_wallet("2030-01-01T10:00:00Z");
        wallet
            .set_feature_caps(&caps(&[("auto_triage", Some("10"))]), &config)
            .unwrap();
        for _ in 0..4 {
            wallet.debit(&spend("auto_triage", "2.5"), &config).unwrap();
        }
        match wallet.debit(&spend("auto_triage", "0.0001"), &config) {
            Err(Rejection::FeatureCapReached {
                feature,
                cap_remaining,
                resumes_at,
                ..
            }) => {
                assert_eq!(feature, "auto_triage");
                assert_eq!(cap_remaining, Credits::ZERO);
                assert_eq!(resumes_at, at("2030-01-02T00:00:00Z"));
            }
            other => panic!("{other:?}"),
        }
        // Other features go on; the organization cap still applies on top.
        wallet.debit(&spend("chat", "50"), &config).unwrap();
        assert_eq!(wallet.feature_spent_today("chat"), c("50"));
        assert_eq!(wallet.spent_today(), c("60"));
        // Midnight UTC: the feature starts from zero again.
        wallet.advance(at("2030-01-02T00:00:00Z"));
        assert_eq!(wallet.feature_cap_remaining("auto_triage"), Some(c("10")));
        wallet.debit(&spend("auto_triage", "10"), &config).unwrap();
    }

    #[test]
    fn holds_count_against_their_feature_on_the_day_they_were_made() {
        let (mut wallet, config) = new_wallet("2030-01-01T23:30:00Z");
        wallet
            .set_feature_caps(&caps(&[("chat", Some("10"))]), &config)
            .unwrap();
        let request = HoldRequest {
            feature: "chat".into(),
            ..hold("8", 3600)
        };
        let held = wallet.place_hold(&request, &config).unwrap();
        assert_eq!(wallet.feature_cap_remaining("chat"), Some(c("2")));
        assert!(matches!(
            wallet.debit(&spend("chat", "3"), &config),
            Err(Rejection::FeatureCapReached { .. })
        ));
        // Captured the next day, it counts on the day the hold was made.
        wallet.advance(at("2030-01-02T00:10:00Z"));
        assert_eq!(wallet.feature_cap_remaining("chat"), Some(c("10")));
        wallet.capture(&held.id, c("8"), None).unwrap();
        assert_eq!(wallet.feature_spent_today("chat"), Credits::ZERO);
        assert_eq!(wallet.feature_cap_remaining("chat"), Some(c("10")));
    }

    #[test]
    fn feature_caps_are_checked_whole_and_the_lower_cap_rules() {
        let (mut wallet, config) = new_wallet("2030-01-01T10:00:00Z");
        let before = wallet.clone();
        for bad in [
            caps(&[("chat", Some("20")), ("auto_triage", Some("501"))]),
            caps(&[("chat", Some("0"))]),
            caps(&[("chat", Some("20")), ("poetry", Some("1"))]),
        ] {
            assert!(matches!(
                wallet.set_feature_caps(&bad, &config),
                Err(Rejection::FeatureCapOutOfRange { .. })
            ));
            assert_eq!(wallet, before, "a refused change changes nothing");
        }
        wallet
            .set_feature_caps(&caps(&[("chat", Some("400"))]), &config)
            .unwrap();
        // The organization's cap may drop below a feature cap: the lower rules.
        wallet.set_daily_cap(c("5"), &config).unwrap();
        assert!(matches!(
            wallet.debit(&spend("chat", "6"), &config),
            Err(Rejection::DailyCapReached { .. })
        ));
        wallet.debit(&spend("chat", "5"), &config).unwrap();
        wallet
            .set_feature_caps(&caps(&[("chat", None)]), &config)
            .unwrap();
        assert!(wallet.feature_caps().is_empty());
        assert_eq!(wallet.view(&config).feature_caps, vec![]);
    }
}
