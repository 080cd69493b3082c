//! The decision machine over a small in-memory store that keeps what each
//! decision writes, as the Durable Object's tables do: what is read before
//! a command, when the wallet row is (and is not) written, which events a
//! decision records, and how batches, stored holds, settings, purchases,
//! refunds and disputes are answered.

use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::HashMap;
use wallet_core::api::{
    BatchSlot, CaptureBody, Command, DailyCapBody, DebitBody, FeatureCapsBody, HoldBody, SignupBody,
};
use wallet_core::audit::Actor;
use wallet_core::auto_top_up::{AutoTopUpBody, DisabledReason};
use wallet_core::decision::{
    decide, execute, reads_for, Decision, Loaded, Reads, StoredReply, StoredState, WalletWrite,
    Write,
};
use wallet_core::events::{AlertsBody, Event};
use wallet_core::purchase::{
    purchase_id, ChargeOutcome, CreditedPayment, Purchase, PurchaseStatus,
};
use wallet_core::stripe::{ChargeRefund, DisputeOutcome, IntentState, IntentStatus};
use wallet_core::token::Role;
use wallet_core::wallet::Wallet;
use wallet_core::{Credits, Hold, WalletConfig};

const NOW: &str = "2030-01-01T10:00:00Z";

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

fn c(text: &str) -> Credits {
    Credits::parse(text).unwrap()
}

fn owner() -> Actor {
    Actor {
        sub: "ann".into(),
        role: Role::Owner,
    }
}

/// The object's tables, as far as decisions read them back.
#[derive(Default)]
struct Memory {
    wallet: Option<Wallet>,
    replies: HashMap<String, StoredReply>,
    responses: HashMap<u64, String>,
    holds: HashMap<String, Hold>,
    purchases: HashMap<String, Purchase>,
    markers: HashMap<String, CreditedPayment>,
}

impl StoredState for Memory {
    type Error = ();

    fn load(&self, reads: &Reads) -> Result<Loaded, ()> {
        let mut loaded = Loaded::default();
        for key in &reads.idempotency_keys {
            if let Some(reply) = self.replies.get(key) {
                loaded.replies.insert(key.clone(), reply.clone());
            }
        }
        if let Some(id) = &reads.closed_hold_id {
            loaded.closed_hold = self.holds.get(id).cloned();
            let seq = loaded
                .closed_hold
                .as_ref()
                .and_then(|h| h.capture_entry_id.as_deref())
                .and_then(wallet_core::wallet::seq_of);
            loaded.first_capture_response = seq.and_then(|s| self.responses.get(&s).cloned());
        }
        if let Some(id) = &reads.purchase_id {
            loaded.purchase = self.purchases.get(id).cloned();
        }
        if let Some(pi) = &reads.payment_intent_id {
            loaded.purchase_by_intent = self
                .purchases
                .values()
                .find(|p| p.payment_intent_id.as_deref() == Some(pi))
                .cloned();
            loaded.credited_payment = self.markers.get(pi).cloned();
        }
        Ok(loaded)
    }
}

impl Memory {
    fn opened(customer: Option<&str>) -> Memory {
        let mut memory = Memory::default();
        let d = memory.run(
            &Command::Open(SignupBody {
                org_id: "acme".into(),
                owner_id: "ann".into(),
                stripe_customer_id: customer.map(str::to_string),
            }),
            NOW,
        );
        assert_eq!(d.reply.status, 201);
        memory
    }

    /// Reads, decides, and commits what the decision wrote.
    fn run(&mut self, command: &Command, now: &str) -> Decision {
        let config = WalletConfig::defaults();
        self.run_with(command, now, &config)
    }

    fn run_with(&mut self, command: &Command, now: &str, config: &WalletConfig) -> Decision {
        let d = execute(self.wallet.as_ref(), command, &*self, config, at(now)).unwrap();
        for write in &d.writes {
            match write {
                Write::Op(op) => {
                    if let Some(response) = &op.answer_text() {
                        self.responses.insert(op.seq, response.clone());
                        if let Some((key, fingerprint)) = &op.idempotency {
                            self.replies.insert(
                                key.clone(),
                                StoredReply {
                                    fingerprint: fingerprint.clone(),
                                    status: op.status,
                                    response: response.clone(),
                                },
                            );
                        }
                    }
                }
                Write::Hold(h) => {
                    self.holds.insert(h.id.clone(), h.clone());
                }
                Write::Purchase(p) => {
                    self.purchases.insert(p.id.clone(), p.clone());
                }
                Write::CreditedPayment(m) => {
                    self.markers.insert(m.payment_intent_id.clone(), m.clone());
                }
                Write::Audit(_) | Write::Event(_) => {}
            }
        }
        if let Some((wallet, _)) = &d.wallet {
            self.wallet = Some(wallet.clone());
        }
        d
    }

    fn wallet(&self) -> &Wallet {
        self.wallet.as_ref().unwrap()
    }
}

fn events(d: &Decision) -> Vec<&Event> {
    d.writes
        .iter()
        .filter_map(|w| match w {
            Write::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn event_types(d: &Decision) -> Vec<&'static str> {
    events(d).iter().map(|e| e.event_type.as_str()).collect()
}

/// The `data` of the decision's only event of `event_type`.
fn event_data(d: &Decision, event_type: &str) -> Value {
    let found: Vec<Value> = events(d)
        .iter()
        .filter(|e| e.event_type.as_str() == event_type)
        .map(|e| serde_json::from_str::<Value>(&e.body).unwrap()["data"].clone())
        .collect();
    assert_eq!(found.len(), 1, "one {event_type} in {:?}", event_types(d));
    found[0].clone()
}

fn audits(d: &Decision) -> usize {
    d.writes
        .iter()
        .filter(|w| matches!(w, Write::Audit(_)))
        .count()
}

fn body(d: &Decision) -> Value {
    serde_json::from_str(&d.reply.body).unwrap()
}

fn debit_body(amount: &str) -> DebitBody {
    DebitBody {
        feature: "chat".into(),
        amount: Some(c(amount)),
        usage: None,
        user_id: None,
        project_id: None,
        metadata: None,
    }
}

fn debit(key: &str, amount: &str) -> Command {
    Command::Debit {
        idempotency_key: key.into(),
        fingerprint: format!("{key}/{amount}"),
        body: debit_body(amount),
    }
}

fn hold(key: &str, amount: &str) -> Command {
    Command::PlaceHold {
        idempotency_key: key.into(),
        fingerprint: key.into(),
        body: HoldBody {
            feature: "chat".into(),
            amount: Some(c(amount)),
            usage_estimate: None,
            user_id: None,
            project_id: None,
            ttl_seconds: Some(600),
        },
    }
}

fn capture(hold_id: &str, amount: &str) -> Command {
    Command::Capture {
        hold_id: hold_id.into(),
        body: CaptureBody {
            amount: Some(c(amount)),
            usage: None,
        },
    }
}

fn auto_top_up(enabled: bool, threshold: Option<&str>, pack: Option<&str>) -> Command {
    Command::SetAutoTopUp {
        body: AutoTopUpBody {
            enabled,
            threshold: threshold.map(c),
            pack_id: pack.map(str::to_string),
            monthly_limit: None,
        },
        actor: owner(),
    }
}

fn intent(id: &str, org: &str, status: IntentStatus, purchase: &Purchase) -> ChargeOutcome {
    ChargeOutcome::Intent {
        intent: IntentState {
            id: id.into(),
            status,
            amount_cents: purchase.amount_cents,
            amount_received_cents: Some(purchase.amount_cents),
            currency: "usd".into(),
            client_secret: Some("pi_secret".into()),
            decline_code: None,
            customer: Some("cus_1".into()),
            org_id: Some(org.into()),
            pack_id: Some(purchase.pack_id.clone()),
            purchase_id: Some(purchase.id.clone()),
        },
    }
}

fn settle(purchase: &Purchase, outcome: ChargeOutcome) -> Command {
    Command::PurchaseSettle {
        purchase_id: Some(purchase.id.clone()),
        outcome,
    }
}

/// An owner's purchase of `starter`, opened and about to be charged.
fn owner_purchase(memory: &mut Memory) -> Purchase {
    let id = purchase_id("acme", "buy-1");
    let d = memory.run(
        &Command::PurchaseOpen {
            purchase_id: id.clone(),
            idempotency_key: "buy-1".into(),
            fingerprint: "f".into(),
            pack_id: "starter".into(),
            payment_method_id: "pm_1".into(),
        },
        NOW,
    );
    assert!(
        d.wallet.is_none(),
        "opening a purchase leaves the wallet row"
    );
    memory.purchases[&id].clone()
}

#[test]
fn reads_name_only_stored_holds_and_the_intent_an_outcome_names() {
    let mut memory = Memory::opened(Some("cus_1"));
    let wallet = memory.wallet().clone();
    assert_eq!(reads_for(None, &Command::View), Reads::default());
    // Only a well-formed hold id that is not active in memory is read.
    let read = |id: &str| reads_for(Some(&wallet), &capture(id, "1")).closed_hold_id;
    assert_eq!(
        read("hold_000000000099").as_deref(),
        Some("hold_000000000099")
    );
    for not_a_hold in ["hold_99", "hold_x", "le_000000000099", "h_000000000099"] {
        assert_eq!(read(not_a_hold), None, "{not_a_hold}");
        let release = Command::Release {
            hold_id: not_a_hold.into(),
        };
        assert_eq!(reads_for(Some(&wallet), &release), Reads::default());
    }

    // A settlement reads the purchase it names and the PaymentIntent's marker.
    let purchase = owner_purchase(&mut memory);
    let reads = reads_for(
        Some(&wallet),
        &settle(
            &purchase,
            intent("pi_7", "acme", IntentStatus::Processing, &purchase),
        ),
    );
    assert_eq!(reads.purchase_id.as_deref(), Some(purchase.id.as_str()));
    assert_eq!(reads.payment_intent_id.as_deref(), Some("pi_7"));
    let refused = |pi: Option<&str>| ChargeOutcome::Refused {
        payment_intent_id: pi.map(str::to_string),
        decline_code: None,
    };
    let reads = reads_for(Some(&wallet), &settle(&purchase, refused(Some("pi_8"))));
    assert_eq!(reads.payment_intent_id.as_deref(), Some("pi_8"));
    let reads = reads_for(Some(&wallet), &settle(&purchase, refused(None)));
    assert_eq!(reads.payment_intent_id, None);
    let unknown = Command::PurchaseSettle {
        purchase_id: Some("pur_not_an_id".into()),
        outcome: ChargeOutcome::Unknown,
    };
    assert_eq!(reads_for(Some(&wallet), &unknown), Reads::default());
}

#[test]
fn a_capture_or_release_repeated_on_a_stored_hold_answers_as_the_first() {
    let mut memory = Memory::opened(None);
    let d = memory.run(&hold("h1", "5"), NOW);
    let first_id = body(&d)["id"].as_str().unwrap().to_string();
    let first = memory.run(&capture(&first_id, "3"), NOW);
    assert_eq!(first.reply.status, 200);
    assert_eq!(body(&first)["entry"]["kind"], "capture");

    // The hold is closed: the same capture is read from storage and answers
    // the first response byte for byte, writing nothing.
    let again = memory.run(&capture(&first_id, "3"), NOW);
    assert_eq!(again.reply, first.reply);
    assert!(again.writes.is_empty() && again.wallet.is_none());
    // Another amount cannot change it.
    let other = memory.run(&capture(&first_id, "2"), NOW);
    assert_eq!(other.reply.status, 409);
    assert_eq!(body(&other)["error"]["hold_status"], "captured");
    let release = Command::Release {
        hold_id: first_id.clone(),
    };
    assert_eq!(memory.run(&release, NOW).reply.status, 409);

    // A released hold: the release repeats, a capture is refused.
    let d = memory.run(&hold("h2", "5"), NOW);
    let second_id = body(&d)["id"].as_str().unwrap().to_string();
    let release = Command::Release {
        hold_id: second_id.clone(),
    };
    let first = memory.run(&release, NOW);
    assert_eq!(body(&first)["status"], "released");
    let again = memory.run(&release, NOW);
    assert_eq!(
        (again.reply.status, body(&again)["status"].clone()),
        (200, "released".into())
    );
    assert!(again.wallet.is_none());
    let refused = memory.run(&capture(&second_id, "1"), NOW);
    assert_eq!(body(&refused)["error"]["code"], "hold_not_active");
    // A hold never made is not found.
    let missing = memory.run(&capture("hold_000000000099", "1"), NOW);
    assert_eq!(missing.reply.status, 404);
}

#[test]
fn a_repeated_signup_answers_the_wallet_and_another_owner_conflicts() {
    let mut memory = Memory::opened(None);
    let signup = |owner: &str, customer: Option<&str>| {
        Command::Open(SignupBody {
            org_id: "acme".into(),
            owner_id: owner.into(),
            stripe_customer_id: customer.map(str::to_string),
        })
    };
    let d = memory.run(&signup("ann", None), NOW);
    assert_eq!(d.reply.status, 200);
    assert_eq!(body(&d)["balance"], "200");
    assert!(d.wallet.is_none() && d.writes.is_empty(), "no second trial");
    // A customer the wallet lacks is recorded.
    let d = memory.run(&signup("ann", Some("cus_1")), NOW);
    assert_eq!(d.reply.status, 200);
    let (wallet, how) = d.wallet.expect("the customer is stored");
    assert_eq!(
        (wallet.stripe_customer_id(), how),
        (Some("cus_1"), WalletWrite::Update)
    );
    let d = memory.run(&signup("bob", None), NOW);
    assert_eq!(d.reply.status, 409);
    assert_eq!(body(&d)["error"]["code"], "wallet_owner_conflict");
    assert!(d.wallet.is_none());
}

#[test]
fn the_first_stripe_customer_recorded_stays() {
    let mut memory = Memory::opened(None);
    let set = |id: &str| Command::SetStripeCustomer {
        stripe_customer_id: id.into(),
    };
    let d = memory.run(&set("cus_1"), NOW);
    assert_eq!(body(&d)["stripe_customer_id"], "cus_1");
    let (wallet, _) = d.wallet.expect("the customer is stored");
    assert_eq!(wallet.stripe_customer_id(), Some("cus_1"));
    let d = memory.run(&set("cus_2"), NOW);
    assert_eq!(body(&d)["stripe_customer_id"], "cus_1");
    assert!(d.wallet.is_none());
}

#[test]
fn settings_changes_are_audited_and_written_only_when_they_change_something() {
    let mut memory = Memory::opened(None);
    let alerts = |threshold: &str| Command::SetAlerts {
        body: AlertsBody {
            low_balance_threshold: Some(Some(c(threshold))),
        },
        actor: owner(),
    };
    let d = memory.run(&alerts("20"), NOW);
    assert_eq!(body(&d)["low_balance_threshold"], "20");
    assert_eq!((audits(&d), event_types(&d)), (1, vec!["settings.changed"]));
    assert!(d.wallet.is_some());
    let d = memory.run(&alerts("20"), NOW);
    assert_eq!(body(&d)["low_balance_threshold"], "20");
    assert_eq!((audits(&d), d.writes.len()), (0, 0));
    assert!(
        d.wallet.is_none(),
        "the same threshold again changes nothing"
    );
    // The alerts view is answered to a plain read too.
    let d = memory.run(&Command::Alerts, NOW);
    assert_eq!(body(&d)["low_balance_threshold"], "20");
    assert_eq!(body(&d)["low_balance"], false);

    let caps = |cap: &str| Command::SetFeatureCaps {
        body: FeatureCapsBody {
            caps: [("chat".to_string(), Some(c(cap)))].into(),
        },
        actor: owner(),
    };
    let d = memory.run(&caps("10"), NOW);
    assert_eq!((audits(&d), event_types(&d)), (1, vec!["settings.changed"]));
    assert!(d.wallet.is_some());
    let d = memory.run(&caps("10"), NOW);
    assert_eq!((audits(&d), d.writes.len()), (0, 0));
    assert!(d.wallet.is_none());
    assert_eq!(body(&d)["feature_caps"][0]["daily_cap"], "10");

    let cap = Command::SetDailyCap {
        body: DailyCapBody {
            daily_cap: c("500"),
        },
        actor: owner(),
    };
    let d = memory.run(&cap, NOW);
    assert_eq!((d.reply.status, audits(&d)), (200, 0), "the default again");
}

#[test]
fn a_refused_auto_top_up_change_answers_its_error_not_the_settings() {
    let mut memory = Memory::opened(None);
    let d = memory.run(&auto_top_up(true, None, Some("starter")), NOW);
    assert_eq!(d.reply.status, 422);
    assert_eq!(body(&d)["error"]["field"], "threshold");
    assert!(d.wallet.is_none() && d.writes.is_empty());
    let d = memory.run(&Command::AutoTopUp, NOW);
    assert_eq!(body(&d)["enabled"], false);
}

/// A wallet with auto top-up on (threshold 150, starter) whose debit of 60
/// started its first purchase, not yet sent.
fn crossed() -> (Memory, Purchase) {
    let mut memory = Memory::opened(Some("cus_1"));
    memory.run(&auto_top_up(true, Some("150"), Some("starter")), NOW);
    let d = memory.run(&debit("big", "60"), NOW);
    let id = memory.wallet().auto_top_up().in_flight.clone().unwrap();
    assert!(d.wake);
    (memory, memorized(&memory_purchases(&d), &id))
}

fn memory_purchases(d: &Decision) -> Vec<Purchase> {
    d.writes
        .iter()
        .filter_map(|w| match w {
            Write::Purchase(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

fn memorized(purchases: &[Purchase], id: &str) -> Purchase {
    purchases.iter().find(|p| p.id == id).unwrap().clone()
}

#[test]
fn another_threshold_keeps_the_unsent_charge_and_another_pack_cancels_it() {
    let (mut memory, purchase) = crossed();
    let d = memory.run(&auto_top_up(true, Some("120"), None), NOW);
    assert_eq!(d.reply.status, 200);
    assert!(memory_purchases(&d).is_empty(), "nothing canceled");
    assert_eq!(
        memory.wallet().auto_top_up().in_flight.as_deref(),
        Some(purchase.id.as_str())
    );
    assert_eq!(
        memory.purchases[&purchase.id].status,
        PurchaseStatus::Processing
    );
    let d = memory.run(&auto_top_up(true, None, Some("team")), NOW);
    assert_eq!(
        memory.purchases[&purchase.id].status,
        PurchaseStatus::Canceled
    );
    // Available (140) is above the new threshold (120): nothing starts again.
    assert_eq!(memory_purchases(&d).len(), 1);
    assert!(memory.wallet().auto_top_up().in_flight.is_none());
}

#[test]
fn a_payment_intent_credits_once_and_only_for_its_own_organization() {
    let mut memory = Memory::opened(Some("cus_1"));
    let purchase = owner_purchase(&mut memory);

    // Another organization's PaymentIntent: ignored, nothing written.
    let foreign = memory.run(
        &settle(
            &purchase,
            intent("pi_1", "globex", IntentStatus::Succeeded, &purchase),
        ),
        NOW,
    );
    assert_eq!(foreign.reply.status, 200);
    assert_eq!(body(&foreign)["purchase"], Value::Null);
    assert!(foreign.writes.is_empty() && foreign.wallet.is_none());
    assert!(!foreign.notes.is_empty());

    // Still processing: the purchase follows, the wallet row stays.
    let d = memory.run(
        &settle(
            &purchase,
            intent("pi_1", "acme", IntentStatus::Processing, &purchase),
        ),
        NOW,
    );
    assert!(d.wallet.is_none() && event_types(&d).is_empty());
    assert_eq!(body(&d)["purchase"]["status"], "processing");

    // Succeeded: credited once, with its event.
    let outcome = intent("pi_1", "acme", IntentStatus::Succeeded, &purchase);
    let d = memory.run(&settle(&purchase, outcome.clone()), NOW);
    assert_eq!(body(&d)["purchase"]["status"], "succeeded");
    assert_eq!(memory.wallet().balance(), c("1200"));
    assert!(d.entry_written);
    let data = event_data(&d, "purchase.succeeded");
    assert_eq!(data["purchase_id"], purchase.id.as_str());
    assert_eq!(
        (data["credits"].clone(), data["source"].clone()),
        ("1000".into(), "owner".into())
    );
    // Stripe's redelivery: nothing more, not even the wallet row.
    let again = memory.run(&settle(&purchase, outcome), NOW);
    assert_eq!(body(&again)["purchase"]["status"], "succeeded");
    assert!(event_types(&again).is_empty() && again.wallet.is_none());
    assert!(!again.entry_written);
    assert_eq!(memory.wallet().balance(), c("1200"));
}

#[test]
fn an_unanswered_charge_changes_only_the_purchase() {
    let mut memory = Memory::opened(Some("cus_1"));
    let purchase = owner_purchase(&mut memory);
    let d = memory.run(&settle(&purchase, ChargeOutcome::Unknown), NOW);
    assert_eq!(body(&d)["purchase"]["status"], "processing");
    assert!(d.wallet.is_none() && event_types(&d).is_empty());
}

#[test]
fn an_auto_top_up_that_needs_the_buyer_or_is_declined_switches_auto_top_up_off() {
    for (status, declined) in [
        (IntentStatus::RequiresAction, false),
        (IntentStatus::RequiresPaymentMethod, true),
    ] {
        let (mut memory, purchase) = crossed();
        let send = Command::AutoTopUpSend {
            purchase_id: purchase.id.clone(),
            payment_method_id: Some("pm_1".into()),
        };
        let d = memory.run(&send, NOW);
        assert!(
            d.reply.body.contains("\"send_charge\":true"),
            "{}",
            d.reply.body
        );
        let mut outcome = intent("pi_9", "acme", status, &purchase);
        if let ChargeOutcome::Intent { intent } = &mut outcome {
            intent.decline_code = declined.then(|| "card_declined".to_string());
        }
        let d = memory.run(&settle(&purchase, outcome), NOW);
        let failed = event_data(&d, "auto_top_up.failed");
        assert_eq!(failed["reason"], "payment_failed");
        assert_eq!(failed["purchase_id"], purchase.id.as_str());
        let auto = memory.wallet().auto_top_up();
        assert!(!auto.enabled && auto.in_flight.is_none());
        assert_eq!(auto.disabled_reason, Some(DisabledReason::PaymentFailed));
        if declined {
            let data = event_data(&d, "purchase.failed");
            assert_eq!(data["purchase_id"], purchase.id.as_str());
            assert_eq!(data["pack_id"], "starter");
            assert_eq!(data["source"], "auto_top_up");
            assert_eq!(data["decline_code"], "card_declined");
            assert_eq!(failed["decline_code"], "card_declined");
        } else {
            assert_eq!(event_types(&d), ["auto_top_up.failed"]);
        }
    }
}

/// A wallet that bought `starter` (1,200 credits) and spent `spent` of it.
fn paid(spent: &str) -> (Memory, Purchase) {
    let mut memory = Memory::opened(Some("cus_1"));
    let purchase = owner_purchase(&mut memory);
    let outcome = intent("pi_1", "acme", IntentStatus::Succeeded, &purchase);
    memory.run(&settle(&purchase, outcome), NOW);
    memory.run(&debit("spend", spent), NOW);
    (memory, purchase)
}

#[test]
fn a_refund_takes_back_its_share_with_its_event_and_an_unknown_payment_changes_nothing() {
    let (mut memory, purchase) = paid("100");
    let refund = |pi: &str, refunded: i64| Command::Refund {
        payment_intent_id: pi.into(),
        refund: ChargeRefund {
            charge_id: "ch_1".into(),
            payment_intent_id: Some(pi.into()),
            amount_cents: 1000,
            amount_refunded_cents: refunded,
            currency: "usd".into(),
        },
    };
    let d = memory.run(&refund("pi_1", 500), NOW);
    assert_eq!(memory.wallet().balance(), c("600"));
    let data = event_data(&d, "purchase.refunded");
    assert_eq!(data["purchase_id"], purchase.id.as_str());
    assert_eq!(data["payment_intent_id"], "pi_1");
    assert_eq!(data["charge_id"], "ch_1");
    assert_eq!(data["credits_taken_back"], "500");
    assert_eq!(data["credits"], "1000");
    assert_eq!(data["amount_refunded_cents"], 500);
    assert!(d.wallet.is_some() && d.entry_written);

    let d = memory.run(&refund("pi_unknown", 500), NOW);
    assert!(event_types(&d).is_empty());
    assert!(
        d.wallet.is_none(),
        "a payment not ours leaves the wallet row"
    );
}

#[test]
fn a_dispute_takes_back_credits_and_its_close_is_news_once() {
    let (mut memory, purchase) = paid("100");
    let dispute = Command::Dispute {
        payment_intent_id: "pi_1".into(),
        dispute_id: "dp_1".into(),
    };
    let d = memory.run(&dispute, NOW);
    let data = event_data(&d, "purchase.disputed");
    assert_eq!(data["dispute_id"], "dp_1");
    assert_eq!(data["purchase_id"], purchase.id.as_str());
    assert_eq!(data["credits_reversed"], "1000");
    assert_eq!(memory.wallet().balance(), c("100"));

    let closed = |outcome: DisputeOutcome| Command::DisputeClosed {
        payment_intent_id: "pi_1".into(),
        dispute_id: "dp_1".into(),
        outcome,
    };
    let d = memory.run(&closed(DisputeOutcome::Won), NOW);
    let data = event_data(&d, "purchase.dispute_closed");
    assert_eq!(
        (data["status"].clone(), data["dispute_id"].clone()),
        ("won".into(), "dp_1".into())
    );
    assert_eq!(data["credits_reinstated"], "1000");
    assert_eq!(memory.wallet().balance(), c("1100"));
    // Stripe's redelivery: no second event, no second reinstatement, no wallet row.
    let d = memory.run(&closed(DisputeOutcome::Won), NOW);
    assert!(event_types(&d).is_empty() && d.wallet.is_none());
    assert_eq!(memory.wallet().balance(), c("1100"));
}

#[test]
fn batch_results_carry_the_entry_or_the_error_and_a_reused_key_conflicts() {
    let mut memory = Memory::opened(None);
    let slot = |key: &str, amount: &str| BatchSlot::Debit {
        idempotency_key: key.into(),
        fingerprint: format!("{key}/{amount}"),
        body: debit_body(amount),
    };
    let invalid = BatchSlot::Invalid {
        idempotency_key: Some("bad".into()),
        status: 422,
        error: serde_json::json!({"code": "invalid_request", "field": "debits[4].amount"}),
    };
    let batch = Command::DebitBatch {
        items: vec![
            slot("a", "2"),
            slot("a", "3"),
            slot("b", "1000"),
            slot("a", "2"),
            invalid,
        ],
    };
    let d = memory.run(&batch, NOW);
    assert_eq!(d.reply.status, 200);
    let results = body(&d)["results"].as_array().unwrap().clone();
    let shape = |r: &Value| (r.get("entry").is_some(), r.get("error").is_some());
    assert_eq!(results[0]["status"], 201);
    assert_eq!(shape(&results[0]), (true, false));
    assert_eq!(results[0]["entry"]["kind"], "debit");
    assert_eq!(results[0]["entry"]["amount"], "2");
    assert_eq!(results[1]["status"], 409);
    assert_eq!(shape(&results[1]), (false, true));
    assert_eq!(results[1]["error"]["code"], "idempotency_key_reused");
    assert_eq!(results[2]["status"], 402);
    assert_eq!(results[2]["error"]["code"], "insufficient_credits");
    assert_eq!(results[3], results[0], "the key's first use, again");
    assert_eq!(results[4]["idempotency_key"], "bad");
    assert_eq!(results[4]["error"]["field"], "debits[4].amount");
    assert_eq!(memory.wallet().balance(), c("198"));
}

#[test]
fn a_hold_refused_at_the_daily_cap_records_the_cap_event() {
    let mut memory = Memory::opened(None);
    let cap = Command::SetDailyCap {
        body: DailyCapBody { daily_cap: c("10") },
        actor: owner(),
    };
    memory.run(&cap, NOW);
    let d = memory.run(&hold("h", "11"), NOW);
    assert_eq!(d.reply.status, 429);
    assert_eq!(event_types(&d), ["wallet.daily_cap_reached"]);
    assert!(d.wallet.is_some(), "the event's day is stored");
    assert!(d.reply.retry_after.is_some());
}

#[test]
fn an_auto_top_up_started_by_a_read_is_stored() {
    // The catalogue lost `starter` for a while: crossing the threshold then
    // started nothing. Once it is back, the next decision, even a read,
    // starts the purchase and writes the wallet that records it in flight.
    let mut memory = Memory::opened(Some("cus_1"));
    memory.run(&auto_top_up(true, Some("150"), Some("starter")), NOW);
    let mut without = WalletConfig::defaults();
    without.packs.retain(|p| p.id != "starter");
    let d = memory.run_with(&debit("big", "60"), NOW, &without);
    assert!(memory_purchases(&d).is_empty());
    let d = memory.run(&Command::View, NOW);
    assert_eq!(memory_purchases(&d).len(), 1);
    let (wallet, _) = d.wallet.expect("the purchase in flight is stored");
    assert!(wallet.auto_top_up().in_flight.is_some());
}

#[test]
fn a_decision_that_moves_the_alert_rules_stores_them_even_without_an_event() {
    // A stored row whose rules lag its figures (depleted, yet credits are
    // available): the next decision re-arms the rule, fires nothing, and
    // stores the rule's new state.
    let memory = Memory::opened(None);
    let mut stored = memory.wallet().stored();
    stored.alerts.depleted = true;
    let wallet = Wallet::restore(stored, Vec::new()).unwrap();
    let config = WalletConfig::defaults();
    let d = decide(
        Some(&wallet),
        &Command::View,
        &Loaded::default(),
        &config,
        at(NOW),
    );
    assert!(event_types(&d).is_empty());
    let (after, _) = d.wallet.expect("the rule's state is stored");
    assert!(!after.alerts().depleted);
    let d = decide(
        Some(&after),
        &Command::View,
        &Loaded::default(),
        &config,
        at(NOW),
    );
    assert!(d.wallet.is_none());
}

#[test]
fn the_same_auto_top_up_settings_again_leave_the_wallet_row_unwritten() {
    let mut memory = Memory::opened(Some("cus_1"));
    let enable = auto_top_up(true, Some("150"), Some("starter"));
    let d = memory.run(&enable, NOW);
    assert_eq!((audits(&d), d.wallet.is_some()), (1, true));
    let d = memory.run(&enable, NOW);
    assert_eq!(d.reply.status, 200);
    assert_eq!(body(&d)["enabled"], true);
    assert!(d.writes.is_empty() && d.wallet.is_none());
}

#[test]
fn a_second_payment_intent_for_a_purchase_credits_on_its_own_marker() {
    // The purchase follows its first PaymentIntent; another one that names
    // it and succeeded was paid too, so it credits (once), and the wallet
    // row is written although the purchase itself does not move.
    let mut memory = Memory::opened(Some("cus_1"));
    let purchase = owner_purchase(&mut memory);
    let first = intent("pi_1", "acme", IntentStatus::Succeeded, &purchase);
    memory.run(&settle(&purchase, first), NOW);
    assert_eq!(memory.wallet().balance(), c("1200"));
    let second = intent("pi_2", "acme", IntentStatus::Succeeded, &purchase);
    let d = memory.run(&settle(&purchase, second.clone()), NOW);
    assert!(d.entry_written);
    let (wallet, _) = d.wallet.expect("the credit is stored");
    assert_eq!(wallet.balance(), c("2200"));
    assert!(memory.markers.contains_key("pi_2"));
    assert_eq!(
        memory.purchases[&purchase.id].payment_intent_id.as_deref(),
        Some("pi_1")
    );
    let again = memory.run(&settle(&purchase, second), NOW);
    assert!(!again.entry_written && again.wallet.is_none());
    assert_eq!(memory.wallet().balance(), c("2200"));
}
