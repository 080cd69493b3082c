//! Purchases through their public surface: when a charge may be sent again
//! (the resend window and the lease at their edges), which purchases count
//! as sent or may be canceled, how a request claims a purchase first seen in
//! a Stripe event, and what settling, refunding and disputing record.

use chrono::{DateTime, Duration, Utc};
use wallet_domain::purchase::{
    self, credits_for_payment, ChargeOutcome, CreditRefusal, Purchase, PurchaseStatus, Start,
    CHARGE_LEASE_SECONDS, RESEND_WINDOW_SECONDS,
};
use wallet_domain::stripe::{ChargeRefund, IntentState, IntentStatus};
use wallet_domain::wallet::{PurchaseSource, Wallet};
use wallet_domain::{Credits, WalletConfig};

const NOW: &str = "2030-01-01T10:00:00Z";

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

fn c(text: &str) -> Credits {
    Credits::parse(text).unwrap()
}

fn starter() -> wallet_domain::Pack {
    WalletConfig::defaults().pack("starter").unwrap().clone()
}

/// An owner's purchase whose charge was sent at `NOW` and got no answer.
fn unanswered() -> Purchase {
    Purchase::open("pur_1", &starter(), "k", "f", "pm_1", at(NOW))
}

fn auto() -> Purchase {
    Purchase::auto_top_up("pur_2", "auto-top-up/2030-01/1", &starter(), at(NOW))
}

fn after(seconds: i64) -> DateTime<Utc> {
    at(NOW) + Duration::seconds(seconds)
}

#[test]
fn purchase_statuses_have_their_wire_names() {
    let names: Vec<&str> = [
        PurchaseStatus::Processing,
        PurchaseStatus::RequiresAction,
        PurchaseStatus::Succeeded,
        PurchaseStatus::Failed,
        PurchaseStatus::Disputed,
        PurchaseStatus::Canceled,
    ]
    .into_iter()
    .map(PurchaseStatus::as_str)
    .collect();
    let expected = [
        "processing",
        "requires_action",
        "succeeded",
        "failed",
        "disputed",
        "canceled",
    ];
    assert_eq!(names, expected);
}

#[test]
fn an_unanswered_charge_is_resent_only_while_stripe_remembers_its_key() {
    assert_eq!(RESEND_WINDOW_SECONDS, 23 * 3600);
    let mut p = unanswered();
    // The first request is still sending it: nobody else may.
    assert!(!p.needs_charge(after(CHARGE_LEASE_SECONDS - 1)));
    assert!(
        p.needs_charge(after(CHARGE_LEASE_SECONDS)),
        "the lease ran out"
    );
    // A send under way past the window is not ended under it.
    p.charge_started_at = Some(after(RESEND_WINDOW_SECONDS - 10));
    assert!(!p.resend_window_closed(after(RESEND_WINDOW_SECONDS)));
    p.charge_started_at = None;
    for seconds in [0, 3600, 22 * 3600, RESEND_WINDOW_SECONDS - 1] {
        assert!(p.needs_charge(after(seconds)), "{seconds}s");
        assert!(!p.resend_window_closed(after(seconds)), "{seconds}s");
    }
    for seconds in [RESEND_WINDOW_SECONDS, RESEND_WINDOW_SECONDS + 3600] {
        assert!(!p.needs_charge(after(seconds)), "{seconds}s");
        assert!(p.resend_window_closed(after(seconds)), "{seconds}s");
    }
    // Answered: nothing to resend, no window to close.
    p.payment_intent_id = Some("pi_1".into());
    assert!(!p.resend_window_closed(after(RESEND_WINDOW_SECONDS)));
}

#[test]
fn only_an_auto_top_up_purchase_is_charged_by_auto_top_up() {
    let a = auto();
    assert!(a.needs_auto_charge(at(NOW)));
    assert!(!a.needs_auto_charge(after(RESEND_WINDOW_SECONDS)));
    let mut owner = unanswered();
    owner.charge_started_at = None;
    assert!(owner.needs_charge(at(NOW)) && !owner.needs_auto_charge(at(NOW)));
}

#[test]
fn a_charge_counts_as_sent_once_anything_of_it_is_recorded() {
    let unsent = auto();
    assert!(!unsent.charge_was_sent());
    let sent_with = |edit: fn(&mut Purchase)| {
        let mut p = auto();
        edit(&mut p);
        p.charge_was_sent()
    };
    assert!(sent_with(|p| p.payment_method_id = Some("pm_1".into())));
    assert!(sent_with(|p| p.payment_intent_id = Some("pi_1".into())));
    assert!(sent_with(|p| p.charge_started_at = Some(at(NOW))));
}

#[test]
fn only_an_unsent_processing_auto_top_up_is_canceled() {
    let mut a = auto();
    assert!(a.cancel_unsent(after(5)));
    assert_eq!(
        (a.status, a.updated_at),
        (PurchaseStatus::Canceled, after(5))
    );
    assert!(!a.cancel_unsent(after(6)), "already canceled");
    // An owner's purchase, even one never sent, is the owner's.
    let mut owner = auto();
    owner.source = PurchaseSource::Owner;
    assert!(!owner.cancel_unsent(at(NOW)));
    assert_eq!(owner.status, PurchaseStatus::Processing);
    let mut sent = auto();
    sent.payment_method_id = Some("pm_1".into());
    assert!(!sent.cancel_unsent(at(NOW)));
}

#[test]
fn a_request_claims_a_purchase_first_seen_in_stripe_only_for_the_same_pack() {
    let mut seen = unanswered();
    seen.idempotency_key = None;
    seen.fingerprint = None;
    match purchase::start(Some(seen.clone()), "k", "f", "starter", after(1)) {
        Start::Existing {
            purchase,
            send_charge: false,
            changed: true,
        } => {
            assert_eq!(purchase.idempotency_key.as_deref(), Some("k"));
            assert_eq!(purchase.fingerprint.as_deref(), Some("f"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        purchase::start(Some(seen), "k", "f", "team", after(1)),
        Start::KeyReused
    );
}

#[test]
fn a_pack_priced_at_nothing_buys_nothing() {
    let credits = c("1000");
    assert_eq!(
        credits_for_payment(credits, 0, Some(100), "usd"),
        Err(CreditRefusal::NothingReceived)
    );
    assert_eq!(
        credits_for_payment(credits, 1000, Some(0), "usd"),
        Err(CreditRefusal::NothingReceived)
    );
    assert_eq!(
        credits_for_payment(credits, 1000, Some(1000), "usd"),
        Ok(credits)
    );
}

fn wallet() -> Wallet {
    let config = WalletConfig::defaults();
    let (wallet, _) = Wallet::open("acme", "ann", Some("cus_1".into()), &config, at(NOW));
    wallet
}

fn intent(status: IntentStatus, decline_code: Option<&str>) -> ChargeOutcome {
    ChargeOutcome::Intent {
        intent: IntentState {
            id: "pi_1".into(),
            status,
            amount_cents: 1000,
            amount_received_cents: Some(1000),
            currency: "usd".into(),
            client_secret: Some("pi_1_secret".into()),
            decline_code: decline_code.map(str::to_string),
            customer: Some("cus_1".into()),
            org_id: Some("acme".into()),
            pack_id: Some("starter".into()),
            purchase_id: Some("pur_1".into()),
        },
    }
}

#[test]
fn a_purchase_follows_its_intent_and_says_when_it_changed() {
    let mut w = wallet();
    let s = purchase::settle(
        &mut w,
        Some(unanswered()),
        None,
        &intent(IntentStatus::Processing, None),
        Some("cus_1"),
    )
    .unwrap();
    assert!(s.purchase_changed, "it now names its PaymentIntent");
    let p = s.purchase.unwrap();
    assert_eq!(p.payment_intent_id.as_deref(), Some("pi_1"));
    // The same news again changes nothing.
    let again = purchase::settle(
        &mut w,
        Some(p.clone()),
        None,
        &intent(IntentStatus::Processing, None),
        Some("cus_1"),
    )
    .unwrap();
    assert!(!again.purchase_changed);

    // Declined: failed with the decline code; waiting for the buyer: its secret, no code.
    let failed = purchase::settle(
        &mut w,
        Some(p.clone()),
        None,
        &intent(IntentStatus::RequiresPaymentMethod, Some("card_declined")),
        Some("cus_1"),
    )
    .unwrap()
    .purchase
    .unwrap();
    assert_eq!(failed.status, PurchaseStatus::Failed);
    assert_eq!(failed.decline_code.as_deref(), Some("card_declined"));
    let waiting = purchase::settle(
        &mut w,
        Some(p),
        None,
        &intent(
            IntentStatus::RequiresAction,
            Some("authentication_required"),
        ),
        Some("cus_1"),
    )
    .unwrap()
    .purchase
    .unwrap();
    assert_eq!(waiting.status, PurchaseStatus::RequiresAction);
    assert_eq!(waiting.decline_code, None);
    assert_eq!(waiting.client_secret.as_deref(), Some("pi_1_secret"));
}

#[test]
fn a_credit_records_what_was_received_and_its_entry() {
    let mut w = wallet();
    let s = purchase::settle(
        &mut w,
        Some(unanswered()),
        None,
        &intent(IntentStatus::Succeeded, None),
        Some("cus_1"),
    )
    .unwrap();
    let entry = &s.entries[0];
    let marker = s.payment.unwrap();
    assert_eq!(marker.amount_received_cents, 1000);
    assert_eq!(marker.entry_seq, Some(entry.seq));
    assert_eq!(marker.entry_id.as_deref(), Some(entry.id.as_str()));
    assert_eq!(s.purchase.unwrap().status, PurchaseStatus::Succeeded);
}

#[test]
fn a_refusal_never_moves_a_paid_or_canceled_purchase() {
    let refused = ChargeOutcome::Refused {
        payment_intent_id: Some("pi_9".into()),
        decline_code: Some("card_declined".into()),
    };
    for status in [
        PurchaseStatus::Succeeded,
        PurchaseStatus::Disputed,
        PurchaseStatus::Canceled,
    ] {
        let mut p = unanswered();
        p.status = status;
        let s = purchase::settle(&mut wallet(), Some(p), None, &refused, None).unwrap();
        assert!(!s.purchase_changed, "{status:?}");
        assert_eq!(s.purchase.unwrap().status, status);
    }
    let s = purchase::settle(&mut wallet(), Some(unanswered()), None, &refused, None).unwrap();
    assert!(s.purchase_changed);
    assert_eq!(s.purchase.unwrap().status, PurchaseStatus::Failed);
}

#[test]
fn a_refund_of_a_paid_purchase_is_mirrored_on_the_purchase_once() {
    let mut w = wallet();
    let paid = purchase::settle(
        &mut w,
        Some(unanswered()),
        None,
        &intent(IntentStatus::Succeeded, None),
        Some("cus_1"),
    )
    .unwrap();
    let (purchase, marker) = (paid.purchase.unwrap(), paid.payment.unwrap());
    w.advance(after(60));
    let refund = ChargeRefund {
        charge_id: "ch_1".into(),
        payment_intent_id: Some("pi_1".into()),
        amount_cents: 1000,
        amount_refunded_cents: 250,
        currency: "usd".into(),
    };
    let s = purchase::refund(&mut w, Some(purchase), Some(marker), &refund);
    assert!(s.purchase_changed);
    let refunded = s.purchase.unwrap();
    assert_eq!(refunded.reconciliation.amount_refunded_cents, 250);
    assert_eq!(refunded.reconciliation.credits_refunded, c("250"));
    assert_eq!(refunded.updated_at, after(60));
    // Stripe's redelivery: nothing new.
    let again = purchase::refund(&mut w, Some(refunded), s.payment, &refund);
    assert!(!again.purchase_changed && again.entries.is_empty());
}
