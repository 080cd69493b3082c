//! The wallet as the rest of the service sees it, through its public
//! surface only: what it reports, the edges of its rules (a capture of the
//! whole hold, a debit of the largest operation, a feature cap equal to the
//! daily cap), and the consistency checks `restore` makes before a stored
//! row is served.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use wallet_domain::auto_top_up::AutoTopUpBody;
use wallet_domain::events::{AlertsBody, EventType};
use wallet_domain::wallet::{PurchaseSource, StoredWallet};
use wallet_domain::{
    Credits, DebitRequest, HoldRequest, HoldStatus, PurchaseCredit, Rejection, Wallet, WalletConfig,
};

const NOW: &str = "2030-01-01T10:00:00Z";

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

fn c(text: &str) -> Credits {
    Credits::parse(text).unwrap()
}

fn opened() -> (Wallet, WalletConfig) {
    let config = WalletConfig::defaults();
    let (wallet, _) = Wallet::open("acme", "ann", Some("cus_1".into()), &config, at(NOW));
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

fn buy(wallet: &mut Wallet, credits: &str) {
    wallet
        .credit_purchase(&PurchaseCredit {
            source: PurchaseSource::Owner,
            pack_id: "scale".into(),
            credits: c(credits),
            amount_cents: 100_000,
            currency: "usd".into(),
            payment_intent_id: "pi_1".into(),
            purchase_id: None,
        })
        .unwrap();
}

#[test]
fn a_wallet_reports_what_it_holds() {
    let (mut wallet, config) = opened();
    assert_eq!(
        (
            wallet.org_id(),
            wallet.owner_id(),
            wallet.stripe_customer_id()
        ),
        ("acme", "ann", Some("cus_1"))
    );
    assert_eq!(wallet.created_at(), at(NOW));
    assert_eq!(wallet.day().to_string(), "2030-01-01");
    assert_eq!(wallet.daily_cap(), c("500"));
    assert_eq!(wallet.next_seq(), 2, "the trial took the first number");
    wallet.debit(&debit("10"), &config).unwrap();
    let placed = wallet.place_hold(&hold("5", 60), &config).unwrap();
    assert_eq!(
        (wallet.balance(), wallet.held(), wallet.available()),
        (c("190"), c("5"), c("185"))
    );
    assert_eq!(
        (wallet.spent_today(), wallet.held_today()),
        (c("10"), c("5"))
    );
    assert_eq!(wallet.next_seq(), 4);
    assert_eq!(wallet.holds().len(), 1);
    assert_eq!(wallet.holds()[&placed.id].status, HoldStatus::Active);
}

#[test]
fn hold_statuses_have_their_wire_names() {
    let names: Vec<&str> = [
        HoldStatus::Active,
        HoldStatus::Captured,
        HoldStatus::Released,
        HoldStatus::Expired,
    ]
    .into_iter()
    .map(HoldStatus::as_str)
    .collect();
    assert_eq!(names, ["active", "captured", "released", "expired"]);
}

#[test]
fn the_shard_and_the_customer_are_recorded_once() {
    let config = WalletConfig::defaults();
    let (mut wallet, _) = Wallet::open("acme", "ann", None, &config, at(NOW));
    assert_eq!(
        (wallet.ledger_shard(), wallet.stripe_customer_id()),
        (None, None)
    );
    wallet.assign_ledger_shard("DB_1");
    wallet.assign_ledger_shard("DB_2");
    assert_eq!(wallet.ledger_shard(), Some("DB_1"), "a shard never moves");
    assert!(wallet.record_stripe_customer("cus_1"));
    assert!(!wallet.record_stripe_customer("cus_2"));
    assert_eq!(wallet.stripe_customer_id(), Some("cus_1"));
}

#[test]
fn events_are_numbered_in_order() {
    let (mut wallet, _) = opened();
    assert_eq!(wallet.next_event_seq(), 1);
    assert_eq!(wallet.take_event_seq(), 1);
    assert_eq!(wallet.take_event_seq(), 2);
    assert_eq!(wallet.next_event_seq(), 3);
}

#[test]
fn the_clock_moves_only_forward() {
    let (mut wallet, _) = opened();
    assert!(!wallet.advance(at(NOW)).clock_moved, "the same instant");
    assert!(!wallet.advance(at("2030-01-01T09:00:00Z")).clock_moved);
    assert_eq!(wallet.now(), at(NOW));
    let later = wallet.advance(at("2030-01-01T10:00:01Z"));
    assert!(later.clock_moved && !later.day_changed);
    assert_eq!(wallet.now(), at("2030-01-01T10:00:01Z"));
}

#[test]
fn the_edges_of_spending_are_inside() {
    let (mut wallet, config) = opened();
    // A capture of the whole hold.
    let placed = wallet.place_hold(&hold("5", 60), &config).unwrap();
    let (captured, entry) = wallet.capture(&placed.id, c("5"), None).unwrap();
    assert_eq!(captured.captured_amount, Some(c("5")));
    assert_eq!(entry.unwrap().amount, c("5"));
    let placed = wallet.place_hold(&hold("5", 60), &config).unwrap();
    assert_eq!(
        wallet.capture(&placed.id, c("5.0001"), None),
        Err(Rejection::CaptureExceedsHold {
            held: c("5"),
            requested: c("5.0001")
        })
    );

    wallet.release(&placed.id, None).unwrap();
    // A hold of the whole balance, captured whole: the balance goes to zero.
    let everything = wallet.available();
    let all = wallet
        .place_hold(&hold(&everything.to_string(), 60), &config)
        .unwrap();
    assert_eq!(wallet.available(), Credits::ZERO);
    assert!(wallet.capture(&all.id, everything, None).is_ok());
    assert_eq!(wallet.balance(), Credits::ZERO);
    // An empty wallet is a consistent one.
    let (row, holds) = (wallet.stored(), wallet.holds().values().cloned().collect());
    assert!(Wallet::restore(row, holds).is_ok());

    // A debit of the largest operation.
    buy(&mut wallet, "20000");
    wallet.set_daily_cap(c("50000"), &config).unwrap();
    assert_eq!(config.max_operation, c("10000"));
    assert!(wallet.debit(&debit("10000"), &config).is_ok());
    assert_eq!(
        wallet.debit(&debit("10000.0001"), &config),
        Err(Rejection::AmountOutOfRange {
            max: config.max_operation
        })
    );

    // A feature cap equal to the organization's cap.
    let caps = |cap: &str| -> BTreeMap<String, Option<Credits>> {
        [("chat".to_string(), Some(c(cap)))].into()
    };
    assert_eq!(wallet.set_feature_caps(&caps("50000"), &config), Ok(()));
    assert_eq!(wallet.feature_caps()[&"chat".to_string()], c("50000"));
    assert!(wallet
        .set_feature_caps(&caps("50000.0001"), &config)
        .is_err());
    assert_eq!(wallet.feature_caps().len(), 1);
}

#[test]
fn a_release_repeated_answers_as_the_first_and_other_closed_holds_are_not_active() {
    let (mut wallet, config) = opened();
    let placed = wallet.place_hold(&hold("5", 60), &config).unwrap();
    let released = wallet.release(&placed.id, None).unwrap();
    assert_eq!(released.status, HoldStatus::Released);
    assert_eq!(
        wallet.release(&placed.id, Some(&released)),
        Err(Rejection::HoldAlreadyClosed {
            status: HoldStatus::Released
        })
    );
    let mut expired = released.clone();
    expired.status = HoldStatus::Expired;
    assert_eq!(
        wallet.release(&placed.id, Some(&expired)),
        Err(Rejection::HoldNotActive {
            status: HoldStatus::Expired
        })
    );
    assert_eq!(
        wallet.release(&placed.id, None),
        Err(Rejection::HoldNotFound)
    );
}

#[test]
fn settings_and_alerts_go_through_the_wallet() {
    let (mut wallet, config) = opened();
    let refused = wallet.set_auto_top_up(&AutoTopUpBody {
        enabled: true,
        threshold: None,
        pack_id: Some("starter".into()),
        monthly_limit: None,
    });
    assert_eq!(refused.unwrap_err().field, "threshold");
    assert!(!wallet.auto_top_up().enabled && wallet.auto_top_up().pack_id.is_none());

    wallet.set_alerts(&AlertsBody {
        low_balance_threshold: Some(Some(c("150"))),
    });
    assert_eq!(wallet.alerts().low_balance_threshold, Some(c("150")));
    assert!(wallet.watch_alerts(false).is_empty(), "200 is above 150");
    wallet.debit(&debit("60"), &config).unwrap();
    let due = wallet.watch_alerts(false);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].0, EventType::LowBalance);
    assert!(!wallet.alerts().low_balance_armed);
}

/// A wallet with a hold made yesterday (still active, held but not held
/// today), one made today, and spending today; stored.
fn stored() -> (StoredWallet, Vec<wallet_domain::Hold>) {
    let config = WalletConfig::defaults();
    let (mut wallet, _) = Wallet::open("acme", "ann", None, &config, at("2030-01-01T23:50:00Z"));
    wallet.place_hold(&hold("5", 3600), &config).unwrap();
    wallet.advance(at("2030-01-02T00:10:00Z"));
    wallet.place_hold(&hold("3", 3600), &config).unwrap();
    wallet.debit(&debit("2"), &config).unwrap();
    let holds = wallet.holds().values().cloned().collect();
    (wallet.stored(), holds)
}

fn restore_error(edit: impl FnOnce(&mut StoredWallet, &mut Vec<wallet_domain::Hold>)) -> String {
    let (mut row, mut holds) = stored();
    edit(&mut row, &mut holds);
    Wallet::restore(row, holds).unwrap_err().to_string()
}

#[test]
fn a_consistent_stored_wallet_is_restored_as_it_was() {
    let (row, holds) = stored();
    assert_eq!((row.held, row.held_today), (c("8"), c("3")));
    let wallet = Wallet::restore(row.clone(), holds).unwrap();
    assert_eq!(wallet.stored(), row);
    assert_eq!(wallet.holds().len(), 2);
    // Edges that are still consistent: every feature's spending is today's
    // spending, held equals the balance, caps are positive.
    let (mut row, holds) = stored();
    row.feature_spent_today
        .insert("chat".into(), row.spent_today);
    row.balance = row.held;
    row.feature_caps.insert("chat".into(), c("0.0001"));
    assert!(Wallet::restore(row, holds).is_ok());
}

#[test]
fn a_stored_wallet_that_disagrees_with_its_holds_is_refused() {
    let message = restore_error(|_, holds| holds[0].status = HoldStatus::Released);
    assert!(
        message.starts_with("stored wallet is inconsistent: "),
        "{message}"
    );
    assert!(message.contains("is not active"), "{message}");
    let message = restore_error(|row, holds| {
        row.next_seq = wallet_domain::ids::seq_of(&holds[1].id).unwrap()
    });
    assert!(message.contains("past next_seq"), "{message}");
    let message = restore_error(|row, _| row.held = c("9"));
    assert!(
        message.contains("held 9 / held_today 3 stored"),
        "{message}"
    );
    let message = restore_error(|row, _| row.held_today = c("8"));
    assert!(message.contains("add up to 8 / 3"), "{message}");
    let message = restore_error(|row, _| {
        row.feature_spent_today.insert(
            "chat".into(),
            row.spent_today.checked_add(c("0.0001")).unwrap(),
        );
    });
    assert!(message.contains("more than spent_today"), "{message}");
    let message = restore_error(|row, _| {
        row.feature_caps.insert("chat".into(), Credits::ZERO);
    });
    assert!(message.contains("feature cap chat is 0"), "{message}");
    let message = restore_error(|row, _| row.balance = c("7.9999"));
    assert!(message.contains("does not cover held"), "{message}");
    let message = restore_error(|row, holds| {
        holds.clear();
        (row.held, row.held_today) = (Credits::ZERO, Credits::ZERO);
        row.balance = Credits::from_units(-1);
    });
    assert!(message.contains("does not cover held"), "{message}");
}
