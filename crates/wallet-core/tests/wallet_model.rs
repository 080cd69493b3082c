//! Property test: random sequences of signups, debits, holds, captures,
//! releases, expiries, purchases, dispute reversals, cap changes and day changes, run against
//! the wallet and against a deliberately simple reference model that
//! recomputes everything from the ledger and the hold list. After every step
//! the SPEC §3 invariants are checked, and, for feature caps (SPEC §9), that a
//! decision never takes a feature past its own cap.

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use wallet_core::wallet::{HoldStatus, PurchaseCredit};
use wallet_core::{
    Credits, DebitRequest, EntryKind, HoldRequest, LedgerEntry, Rejection, Wallet, WalletConfig,
};

/// The features the steps spend on; caps are set on some of them.
const FEATURES: [&str; 3] = ["chat", "auto_triage", "error_analysis"];

#[derive(Clone, Debug)]
enum Step {
    Debit {
        feature: usize,
        units: i64,
    },
    Hold {
        feature: usize,
        units: i64,
        ttl_seconds: i64,
    },
    /// A feature cap in units, or `None` to remove it.
    SetFeatureCap {
        feature: usize,
        units: Option<i64>,
    },
    Capture {
        pick: usize,
        per_mille: i64,
    },
    Release {
        pick: usize,
    },
    Purchase(i64),
    /// A dispute takes back up to this many units (clamped to what is available).
    Reverse(i64),
    SetCap(i64),
    Wait(i64),
    Replay,
}

fn step() -> impl Strategy<Value = Step> {
    // Amounts in units (1/10,000 credit): mostly small enough that caps and
    // balances bind often, sometimes up to the real limits (10,000 credits a
    // debit, 50,000 a cap).
    let amount = prop_oneof![
        6 => 1i64..=400_000,
        1 => 1i64..=100_000_000,
        1 => 99_000_000i64..=100_010_000,
    ];
    let cap = prop_oneof![
        3 => 1i64..=1_000_000,
        1 => 1i64..=500_000_000,
        1 => -10_000i64..=0,
        1 => 499_990_000i64..=500_010_000,
    ];
    prop_oneof![
        4 => (0usize..3, amount.clone()).prop_map(|(feature, units)| Step::Debit { feature, units }),
        2 => (0usize..3, amount, 1i64..=3_600)
            .prop_map(|(feature, units, ttl_seconds)| Step::Hold { feature, units, ttl_seconds }),
        1 => (0usize..3, proptest::option::weighted(0.8, cap))
            .prop_map(|(feature, units)| Step::SetFeatureCap { feature, units }),
        2 => (0usize..8, 0i64..=1_100).prop_map(|(pick, per_mille)| Step::Capture { pick, per_mille }),
        1 => (0usize..8).prop_map(|pick| Step::Release { pick }),
        1 => prop_oneof![3 => 1i64..=2_000_000, 1 => 1i64..=1_200_000_000].prop_map(Step::Purchase),
        1 => (1i64..=2_000_000).prop_map(Step::Reverse),
        1 => prop_oneof![3 => -10_000i64..=6_000_000, 1 => 1i64..=500_010_000].prop_map(Step::SetCap),
        // Mostly short waits, so holds outlive midnight; sometimes whole days.
        3 => (0i64..=600).prop_map(Step::Wait),
        1 => (0i64..=90_000).prop_map(Step::Wait),
        1 => Just(Step::Replay),
    ]
}

/// The reference: only the ledger, the hold list and the cap, from which
/// everything else is recomputed.
struct Model {
    entries: Vec<LedgerEntry>,
    holds: Vec<wallet_core::Hold>,
    cap: i64,
    feature_caps: std::collections::BTreeMap<&'static str, i64>,
    now: DateTime<Utc>,
}

impl Model {
    fn balance(&self) -> i64 {
        self.entries.iter().map(LedgerEntry::signed_amount).sum()
    }
    fn active(&self) -> impl Iterator<Item = &wallet_core::Hold> {
        self.holds
            .iter()
            .filter(|h| h.status == HoldStatus::Active && h.expires_at > self.now)
    }
    fn held(&self) -> i64 {
        self.active().map(|h| h.amount.units()).sum()
    }
    fn today(&self) -> chrono::NaiveDate {
        self.now.date_naive()
    }
    fn spent_today(&self) -> i64 {
        self.entries
            .iter()
            .filter(|e| e.kind.is_usage() && e.usage_day == self.today())
            .map(|e| e.amount.units())
            .sum()
    }
    fn held_today(&self) -> i64 {
        self.active()
            .filter(|h| h.day == self.today())
            .map(|h| h.amount.units())
            .sum()
    }
    fn feature_spent_today(&self, feature: &str) -> i64 {
        self.entries
            .iter()
            .filter(|e| e.kind.is_usage() && e.usage_day == self.today())
            .filter(|e| e.feature.as_deref() == Some(feature))
            .map(|e| e.amount.units())
            .sum()
    }
    fn feature_held_today(&self, feature: &str) -> i64 {
        self.active()
            .filter(|h| h.day == self.today() && h.feature == feature)
            .map(|h| h.amount.units())
            .sum()
    }
    /// Whether a new spend of `units` by `feature` should be accepted.
    fn allows(&self, feature: &str, units: i64, config: &WalletConfig) -> bool {
        units > 0
            && units <= config.max_operation.units()
            && units <= self.balance() - self.held()
            && units <= self.cap - self.spent_today() - self.held_today()
            && self.feature_caps.get(feature).is_none_or(|cap| {
                units <= cap - self.feature_spent_today(feature) - self.feature_held_today(feature)
            })
    }
}

fn replace_hold(model: &mut Model, hold: wallet_core::Hold) {
    let slot = model
        .holds
        .iter_mut()
        .find(|h| h.id == hold.id)
        .expect("known hold");
    *slot = hold;
}

fn check_invariants(wallet: &Wallet, model: &Model) -> Result<(), TestCaseError> {
    prop_assert!(wallet.balance().units() >= 0, "balance >= 0");
    prop_assert!(wallet.held().units() >= 0, "held >= 0");
    prop_assert!(
        wallet.balance().units() - wallet.held().units() >= 0,
        "available >= 0"
    );
    prop_assert_eq!(
        wallet.balance().units(),
        model.balance(),
        "balance = sum of ledger"
    );
    prop_assert_eq!(
        wallet.held().units(),
        model.held(),
        "held = sum of active holds"
    );
    prop_assert_eq!(
        wallet.spent_today().units(),
        model.spent_today(),
        "spent_today from the ledger"
    );
    prop_assert_eq!(
        wallet.held_today().units(),
        model.held_today(),
        "held_today from today's holds"
    );
    prop_assert_eq!(wallet.daily_cap().units(), model.cap);
    for feature in FEATURES {
        prop_assert_eq!(
            wallet.feature_spent_today(feature).units(),
            model.feature_spent_today(feature),
            "feature spent today from the ledger"
        );
        prop_assert_eq!(
            wallet.feature_held_today(feature).units(),
            model.feature_held_today(feature),
            "feature held today from today's holds"
        );
        prop_assert_eq!(
            wallet.feature_caps().get(feature).map(|c| c.units()),
            model.feature_caps.get(feature).copied()
        );
    }
    let mut running = 0;
    for entry in &model.entries {
        prop_assert!(entry.amount.is_positive(), "entry amounts are positive");
        running += entry.signed_amount();
        prop_assert_eq!(
            entry.balance_after.units(),
            running,
            "balance_after is the running sum"
        );
    }
    let ids: std::collections::BTreeSet<&str> =
        model.entries.iter().map(|e| e.id.as_str()).collect();
    prop_assert_eq!(ids.len(), model.entries.len(), "entry ids are unique");
    Ok(())
}

/// A capped feature's spent+held today and its cap, right after a decision.
fn feature_use(wallet: &Wallet, feature: &str) -> Option<(i64, i64)> {
    let cap = wallet.feature_caps().get(feature)?;
    Some((
        wallet.feature_spent_today(feature).units() + wallet.feature_held_today(feature).units(),
        cap.units(),
    ))
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let config = WalletConfig::defaults();
    let start: DateTime<Utc> = "2030-03-10T23:20:00Z".parse().unwrap();
    let (mut wallet, grant) = Wallet::open("org_p", "owner", None, &config, start);
    let mut model = Model {
        entries: grant.into_iter().collect(),
        holds: vec![],
        cap: config.daily_cap_default.units(),
        feature_caps: Default::default(),
        now: start,
    };
    let mut payments = 0u32;
    let mut last_decision: Option<(i64, i64)> = None; // (spent+held after a spend, cap then)
                                                      // For a spend of a capped feature: (its spent+held after it, its cap then).
    let mut last_feature_decision: Option<(i64, i64)> = None;
    check_invariants(&wallet, &model)?;

    for step in steps {
        if let Step::Wait(seconds) = step {
            model.now += Duration::seconds(seconds);
        }
        let advanced = wallet.advance(model.now);
        for expired in advanced.expired {
            let stored = model
                .holds
                .iter_mut()
                .find(|h| h.id == expired.id)
                .expect("known hold");
            prop_assert!(stored.expires_at <= model.now, "only due holds expire");
            *stored = expired;
        }
        match step {
            Step::Wait(_) => {}
            Step::Debit { feature, units } => {
                let feature = FEATURES[feature];
                let expected = model.allows(feature, units, &config);
                let request = DebitRequest {
                    feature: feature.into(),
                    amount: Credits::from_units(units),
                    user_id: Some("u1".into()),
                    project_id: None,
                    metadata: None,
                };
                match wallet.debit(&request, &config) {
                    Ok(entry) => {
                        prop_assert!(expected, "debit accepted that the model refuses");
                        prop_assert_eq!(entry.kind, EntryKind::Debit);
                        model.entries.push(entry);
                        last_decision = Some((
                            wallet.spent_today().units() + wallet.held_today().units(),
                            wallet.daily_cap().units(),
                        ));
                        last_feature_decision = feature_use(&wallet, feature);
                    }
                    Err(rejection) => {
                        prop_assert!(
                            !expected,
                            "debit refused that the model accepts: {rejection:?}"
                        );
                        if let Rejection::FeatureCapReached { feature: named, .. } = &rejection {
                            prop_assert_eq!(named.as_str(), feature);
                        }
                        if let Rejection::InsufficientCredits {
                            available,
                            requested,
                        } = rejection
                        {
                            prop_assert!(requested > available);
                        }
                    }
                }
            }
            Step::Hold {
                feature,
                units,
                ttl_seconds,
            } => {
                let feature = FEATURES[feature];
                let expected = model.allows(feature, units, &config);
                let request = HoldRequest {
                    feature: feature.into(),
                    amount: Credits::from_units(units),
                    user_id: None,
                    project_id: None,
                    ttl_seconds,
                };
                match wallet.place_hold(&request, &config) {
                    Ok(hold) => {
                        prop_assert!(expected, "hold accepted that the model refuses");
                        prop_assert_eq!(
                            hold.expires_at,
                            model.now + Duration::seconds(ttl_seconds)
                        );
                        model.holds.push(hold);
                        last_decision = Some((
                            wallet.spent_today().units() + wallet.held_today().units(),
                            wallet.daily_cap().units(),
                        ));
                        last_feature_decision = feature_use(&wallet, feature);
                    }
                    Err(rejection) => prop_assert!(
                        !expected,
                        "hold refused that the model accepts: {rejection:?}"
                    ),
                }
            }
            Step::Capture { pick, per_mille } => {
                let Some(target) = model.holds.get(pick % model.holds.len().max(1)).cloned() else {
                    continue;
                };
                let units = target.amount.units() * per_mille / 1_000;
                let active = target.status == HoldStatus::Active;
                let closed = (!active).then_some(&target);
                match wallet.capture(&target.id, Credits::from_units(units), closed) {
                    Ok((hold, entry)) => {
                        prop_assert!(
                            active && units <= target.amount.units(),
                            "capture of an inactive hold or too much"
                        );
                        prop_assert_eq!(
                            entry.as_ref().map(|e| e.amount.units()).unwrap_or(0),
                            units
                        );
                        if let Some(entry) = entry {
                            prop_assert_eq!(
                                entry.usage_day,
                                target.day,
                                "a capture counts on its hold's day"
                            );
                            model.entries.push(entry);
                        }
                        replace_hold(&mut model, hold);
                    }
                    Err(Rejection::CaptureExceedsHold { .. }) => {
                        prop_assert!(active && units > target.amount.units())
                    }
                    Err(Rejection::HoldAlreadyClosed { .. }) => {
                        prop_assert_eq!(
                            target.captured_amount,
                            Some(Credits::from_units(units)),
                            "identical repeat only"
                        )
                    }
                    Err(Rejection::HoldNotActive { .. }) => prop_assert!(!active),
                    Err(other) => prop_assert!(false, "unexpected capture rejection {other:?}"),
                }
            }
            Step::Release { pick } => {
                let Some(target) = model.holds.get(pick % model.holds.len().max(1)).cloned() else {
                    continue;
                };
                let active = target.status == HoldStatus::Active;
                match wallet.release(&target.id, (!active).then_some(&target)) {
                    Ok(hold) => {
                        prop_assert!(active);
                        replace_hold(&mut model, hold);
                    }
                    Err(Rejection::HoldAlreadyClosed { .. }) => {
                        prop_assert_eq!(target.status, HoldStatus::Released)
                    }
                    Err(Rejection::HoldNotActive { .. }) => {
                        prop_assert!(!active && target.status != HoldStatus::Released)
                    }
                    Err(other) => prop_assert!(false, "unexpected release rejection {other:?}"),
                }
            }
            Step::Purchase(units) => {
                payments += 1;
                let entry = wallet
                    .credit_purchase(&PurchaseCredit {
                        source: wallet_core::wallet::PurchaseSource::Owner,
                        pack_id: "starter".into(),
                        credits: Credits::from_units(units),
                        amount_cents: 1000,
                        currency: "usd".into(),
                        payment_intent_id: format!("pi_{payments}"),
                        purchase_id: None,
                    })
                    .expect("far below the balance limit");
                model.entries.push(entry);
            }
            Step::Reverse(units) => {
                let available = model.balance() - model.held();
                match wallet.reverse_credits(EntryKind::DisputeReversal, Credits::from_units(units))
                {
                    Some(entry) => {
                        prop_assert_eq!(entry.kind, EntryKind::DisputeReversal);
                        prop_assert_eq!(entry.amount.units(), units.min(available));
                        model.entries.push(entry);
                    }
                    None => {
                        prop_assert_eq!(available, 0, "nothing taken while credits were available")
                    }
                }
            }
            Step::SetFeatureCap { feature, units } => {
                let feature = FEATURES[feature];
                let valid = units.is_none_or(|u| u > 0 && u <= model.cap);
                let change = [(feature.to_string(), units.map(Credits::from_units))]
                    .into_iter()
                    .collect();
                let before = wallet.clone();
                match wallet.set_feature_caps(&change, &config) {
                    Ok(()) => {
                        prop_assert!(valid, "feature cap {units:?} accepted above {}", model.cap);
                        match units {
                            Some(u) => model.feature_caps.insert(feature, u),
                            None => model.feature_caps.remove(feature),
                        };
                    }
                    Err(_) => {
                        prop_assert!(!valid, "feature cap {units:?} refused");
                        prop_assert_eq!(&wallet, &before, "a refused change changes nothing");
                    }
                }
            }
            Step::SetCap(units) => {
                let valid = units > 0 && units <= config.daily_cap_max.units();
                match wallet.set_daily_cap(Credits::from_units(units), &config) {
                    Ok(()) => {
                        prop_assert!(valid);
                        model.cap = units;
                    }
                    Err(_) => prop_assert!(!valid),
                }
            }
            Step::Replay => {
                // Deciding nothing new at the same instant changes nothing.
                let before = wallet.clone();
                wallet.advance(model.now);
                prop_assert_eq!(&wallet, &before);
            }
        }
        if let Some((used, cap)) = last_decision.take() {
            prop_assert!(used <= cap, "a decision never crosses the cap");
        }
        if let Some((used, cap)) = last_feature_decision.take() {
            prop_assert!(
                used <= cap,
                "spent_today(feature) + held_today(feature) <= feature_cap after a decision"
            );
        }
        check_invariants(&wallet, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn wallet_matches_reference_model(steps in proptest::collection::vec(step(), 1..120)) {
        run(steps)?;
    }
}
