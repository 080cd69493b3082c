//! Property test (SPEC §10): purchases, AI spending, refunds issued in
//! Stripe, disputes and their outcomes, in any order and with Stripe's
//! duplicate deliveries, run against the wallet and against a reference
//! model that computes every expected amount from the requests alone (its
//! own balance, never the implementation's). After every step: the balance
//! is the model's and the sum of the ledger, never below zero, and no
//! purchase ever has more taken back than it credited.

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use wallet_core::purchase::{
    close_dispute, dispute, purchase_id, refund, settle, ChargeOutcome, CreditedPayment, Purchase,
};
use wallet_core::stripe::{ChargeRefund, DisputeOutcome, IntentState, IntentStatus};
use wallet_core::{Credits, DebitRequest, EntryKind, LedgerEntry, Wallet, WalletConfig};

const CUSTOMER: &str = "cus_model";
const PACKS: [&str; 3] = ["starter", "team", "business"];

#[derive(Clone, Debug)]
enum Step {
    Buy(usize),
    Spend(i64),
    /// Stripe's cumulative refunded amount for a purchase, in per mille of
    /// its price (a delivery below an earlier one is a stale duplicate).
    Refund {
        pick: usize,
        per_mille: i64,
    },
    Dispute {
        pick: usize,
    },
    Close {
        pick: usize,
        won: bool,
    },
    /// Stripe delivers an earlier event again.
    Redeliver {
        pick: usize,
    },
    Wait(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0usize..3).prop_map(Step::Buy),
        3 => prop_oneof![3 => 1i64..=20_000_000, 1 => 1i64..=300_000_000].prop_map(Step::Spend),
        2 => (0usize..6, 0i64..=1_000).prop_map(|(pick, per_mille)| Step::Refund { pick, per_mille }),
        1 => (0usize..6).prop_map(|pick| Step::Dispute { pick }),
        1 => (0usize..6, any::<bool>()).prop_map(|(pick, won)| Step::Close { pick, won }),
        1 => (0usize..16).prop_map(|pick| Step::Redeliver { pick }),
        1 => (0i64..=90_000).prop_map(Step::Wait),
    ]
}

/// What the model expects of one purchase, in units of 1/10,000 credit.
#[derive(Clone, Debug, Default)]
struct Paid {
    credits: i64,
    price_cents: i64,
    refunded_cents: i64,
    refund_taken: i64,
    unrecovered: i64,
    disputed: bool,
    dispute_taken: i64,
    closed: bool,
    reinstated: i64,
}

impl Paid {
    fn settled_back(&self) -> i64 {
        self.refund_taken + self.unrecovered + self.dispute_taken - self.reinstated
    }
}

/// One purchase as the implementation keeps it.
struct Record {
    purchase: Purchase,
    marker: CreditedPayment,
    payment_intent_id: String,
}

#[derive(Clone, Debug)]
enum Delivery {
    Refund(usize, i64),
    Dispute(usize),
    Close(usize, bool),
}

struct Run {
    wallet: Wallet,
    config: WalletConfig,
    entries: Vec<LedgerEntry>,
    records: Vec<Record>,
    model: Vec<Paid>,
    /// The model's balance, from its own expectations only.
    balance: i64,
    delivered: Vec<Delivery>,
}

impl Run {
    fn new() -> Run {
        let mut config = WalletConfig::defaults();
        config.max_operation = Credits::whole(100_000);
        config.daily_cap_max = Credits::whole(10_000_000);
        let now: DateTime<Utc> = "2030-03-01T09:00:00Z".parse().unwrap();
        let (mut wallet, grant) =
            Wallet::open("org_m", "owner", Some(CUSTOMER.into()), &config, now);
        wallet
            .set_daily_cap(Credits::whole(10_000_000), &config)
            .unwrap();
        let grant = grant.expect("the trial");
        let balance = grant.amount.units();
        Run {
            wallet,
            config,
            entries: vec![grant],
            records: Vec::new(),
            model: Vec::new(),
            balance,
            delivered: Vec::new(),
        }
    }

    fn buy(&mut self, pack: usize) {
        let n = self.records.len();
        let pack = self.config.pack(PACKS[pack]).unwrap().clone();
        let id = purchase_id("org_m", &format!("key-{n}"));
        let now = self.wallet.now();
        let purchase = Purchase::open(&id, &pack, &format!("key-{n}"), "fp", "pm_1", now);
        let intent = IntentState {
            id: format!("pi_{n}"),
            status: IntentStatus::Succeeded,
            amount_cents: pack.price_cents,
            amount_received_cents: Some(pack.price_cents),
            currency: "usd".into(),
            client_secret: None,
            decline_code: None,
            customer: Some(CUSTOMER.into()),
            org_id: Some("org_m".into()),
            pack_id: Some(pack.id.clone()),
            purchase_id: Some(id),
        };
        let outcome = ChargeOutcome::Intent { intent };
        let paid = settle(
            &mut self.wallet,
            Some(purchase),
            None,
            &outcome,
            Some(CUSTOMER),
        )
        .expect("far below the balance limit");
        assert_eq!(paid.entries.len(), 1);
        assert_eq!(paid.entries[0].amount, pack.credits);
        self.entries.extend(paid.entries);
        self.balance += pack.credits.units();
        self.records.push(Record {
            purchase: paid.purchase.unwrap(),
            marker: paid.payment.unwrap(),
            payment_intent_id: format!("pi_{n}"),
        });
        self.model.push(Paid {
            credits: pack.credits.units(),
            price_cents: pack.price_cents,
            ..Paid::default()
        });
    }

    fn spend(&mut self, units: i64) {
        let debit = DebitRequest {
            feature: "chat".into(),
            amount: Credits::from_units(units),
            user_id: None,
            project_id: None,
            metadata: None,
        };
        let result = self.wallet.debit(&debit, &self.config);
        assert_eq!(result.is_ok(), units <= self.balance, "debit of {units}");
        if let Ok(entry) = result {
            self.entries.push(entry);
            self.balance -= units;
        }
    }

    /// Applies a settlement's entries and marker; returns the units the
    /// entries moved (positive: added).
    fn apply(&mut self, i: usize, settlement: wallet_core::purchase::Settlement) -> i64 {
        let moved = settlement
            .entries
            .iter()
            .map(LedgerEntry::signed_amount)
            .sum();
        self.entries.extend(settlement.entries);
        if let Some(marker) = settlement.payment {
            self.records[i].marker = marker;
        }
        if let Some(purchase) = settlement.purchase {
            self.records[i].purchase = purchase;
        }
        moved
    }

    fn refund(&mut self, i: usize, cents: i64) {
        let r = &self.records[i];
        let delivery = ChargeRefund {
            charge_id: format!("ch_{i}"),
            payment_intent_id: Some(r.payment_intent_id.clone()),
            amount_cents: self.model[i].price_cents,
            amount_refunded_cents: cents,
            currency: "usd".into(),
        };
        let settlement = refund(
            &mut self.wallet,
            Some(r.purchase.clone()),
            Some(r.marker.clone()),
            &delivery,
        );
        let moved = self.apply(i, settlement);
        let m = &mut self.model[i];
        let mut expected = 0;
        if cents > m.refunded_cents {
            m.refunded_cents = cents;
            let target = (m.credits as i128 * cents as i128 / m.price_cents as i128) as i64;
            let due = (target - m.settled_back()).max(0);
            let taken = due.min(self.balance);
            m.refund_taken += taken;
            m.unrecovered += due - taken;
            expected = -taken;
        }
        assert_eq!(moved, expected, "refund of {cents} cents on purchase {i}");
        self.balance += expected;
    }

    fn dispute(&mut self, i: usize) {
        let r = &self.records[i];
        let settlement = dispute(
            &mut self.wallet,
            Some(r.purchase.clone()),
            Some(r.marker.clone()),
            &r.payment_intent_id.clone(),
        );
        let moved = self.apply(i, settlement);
        let m = &mut self.model[i];
        let mut expected = 0;
        if !m.disputed {
            m.disputed = true;
            let taken = (m.credits - m.settled_back()).max(0).min(self.balance);
            m.dispute_taken = taken;
            expected = -taken;
        }
        assert_eq!(moved, expected, "dispute on purchase {i}");
        self.balance += expected;
    }

    fn close(&mut self, i: usize, won: bool) {
        let r = &self.records[i];
        let outcome = if won {
            DisputeOutcome::Won
        } else {
            DisputeOutcome::Lost
        };
        let settlement = close_dispute(
            &mut self.wallet,
            Some(r.purchase.clone()),
            Some(r.marker.clone()),
            &outcome,
        )
        .expect("far below the balance limit");
        let moved = self.apply(i, settlement);
        let m = &mut self.model[i];
        let mut expected = 0;
        if m.disputed && !m.closed {
            m.closed = true;
            if won {
                m.reinstated = m.dispute_taken;
                expected = m.dispute_taken;
            }
        }
        assert_eq!(moved, expected, "dispute closed ({won}) on purchase {i}");
        self.balance += expected;
    }

    fn deliver(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Refund(i, cents) => self.refund(i, cents),
            Delivery::Dispute(i) => self.dispute(i),
            Delivery::Close(i, won) => self.close(i, won),
        }
    }

    fn check(&self) {
        let sum: i64 = self.entries.iter().map(LedgerEntry::signed_amount).sum();
        assert_eq!(
            self.wallet.balance().units(),
            self.balance,
            "the model's balance"
        );
        assert_eq!(sum, self.balance, "the balance is the sum of the ledger");
        assert!(self.balance >= 0);
        let mut running = 0;
        for entry in &self.entries {
            running += entry.signed_amount();
            assert_eq!(entry.balance_after.units(), running, "{entry:?}");
        }
        for (m, r) in self.model.iter().zip(&self.records) {
            let taken_back = m.refund_taken + m.dispute_taken - m.reinstated;
            assert!((0..=m.credits).contains(&taken_back));
            assert!(m.settled_back() <= m.credits);
            let c = &r.marker;
            let rec = &c.reconciliation;
            assert_eq!(
                (
                    rec.credits_refunded.units(),
                    rec.credits_unrecovered.units(),
                    c.credits_reversed.units(),
                    rec.credits_reinstated.units(),
                ),
                (m.refund_taken, m.unrecovered, m.dispute_taken, m.reinstated)
            );
            assert_eq!(c.credits_settled_back().units(), m.settled_back());
            assert_eq!(
                r.purchase.reconciliation, *rec,
                "the purchase shows its marker"
            );
        }
    }
}

fn run(steps: &[Step]) {
    let mut run = Run::new();
    for step in steps {
        let count = run.records.len();
        match step.clone() {
            Step::Buy(pack) => run.buy(pack),
            Step::Spend(units) => run.spend(units),
            Step::Refund { pick, per_mille } if count > 0 => {
                let i = pick % count;
                let cents = run.model[i].price_cents * per_mille / 1_000;
                run.delivered.push(Delivery::Refund(i, cents));
                run.refund(i, cents);
            }
            Step::Dispute { pick } if count > 0 => {
                run.delivered.push(Delivery::Dispute(pick % count));
                run.dispute(pick % count);
            }
            Step::Close { pick, won } if count > 0 => {
                run.delivered.push(Delivery::Close(pick % count, won));
                run.close(pick % count, won);
            }
            Step::Redeliver { pick } if !run.delivered.is_empty() => {
                let again = run.delivered[pick % run.delivered.len()].clone();
                run.deliver(again);
            }
            Step::Wait(seconds) => {
                let later = run.wallet.now() + Duration::seconds(seconds);
                run.wallet.advance(later);
            }
            _ => {}
        }
        run.check();
    }
    // Every kind the steps can write, and nothing else.
    assert!(run.entries.iter().all(|e| matches!(
        e.kind,
        EntryKind::TrialGrant
            | EntryKind::Purchase
            | EntryKind::Debit
            | EntryKind::RefundReversal
            | EntryKind::DisputeReversal
            | EntryKind::DisputeReinstatement
    )));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn refunds_and_disputes_in_any_order_keep_the_invariants(
        steps in proptest::collection::vec(step(), 1..60)
    ) {
        run(&steps);
    }
}

#[test]
fn a_refund_then_a_won_dispute_then_the_rest_refunded() {
    run(&[
        Step::Buy(1),
        Step::Spend(50_000_000),
        Step::Refund {
            pick: 0,
            per_mille: 500,
        },
        Step::Dispute { pick: 0 },
        Step::Close { pick: 0, won: true },
        Step::Redeliver { pick: 2 },
        Step::Refund {
            pick: 0,
            per_mille: 1_000,
        },
        Step::Redeliver { pick: 0 },
    ]);
}
