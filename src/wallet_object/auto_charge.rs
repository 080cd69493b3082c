//! The charge of an auto top-up, as a task of its own beside the alarm (a
//! slow Stripe delays neither replication nor events): claimed in one
//! decision, sent with the purchase's key, settled in another; an answer
//! that never came is resent within the key's window, then ends.

use super::*;

/// How long an auto top-up whose PaymentIntent is processing waits for
/// Stripe's webhook before the alarm asks Stripe itself (and between asks).
const INTENT_POLL_SECONDS: i64 = 60;

impl Instance {
    /// The auto top-up in flight, if any.
    pub(super) fn in_flight_purchase(&self) -> Option<String> {
        self.wallet
            .borrow()
            .as_ref()
            .and_then(|w| w.auto_top_up().in_flight.clone())
    }

    /// Starts the task that sends the auto top-up in flight to Stripe, unless
    /// one runs already. The task arms the alarm for its own retry when it
    /// ends, and at once when another auto top-up started meanwhile.
    pub(super) fn start_charge(self: &Rc<Self>) {
        if let Err(err) = self.ensure_loaded() {
            console_error!("auto top-up charge not started: {err}");
            return;
        }
        let Some(handled) = self.in_flight_purchase() else {
            return;
        };
        if self.charging.replace(true) {
            return;
        }
        let instance = Rc::clone(self);
        wasm_bindgen_futures::spawn_local(async move {
            let retry = match instance.send_auto_top_up().await {
                Ok(retry) => retry,
                Err(err) => {
                    console_error!("auto top-up charge failed, retrying: {err}");
                    Some(instance.charge_backoff_ms())
                }
            };
            instance.charging.set(false);
            if let Some(delay) = retry {
                instance.arm_alarm(delay);
            } else if instance
                .in_flight_purchase()
                .is_some_and(|id| id != handled)
            {
                instance.arm_alarm(0.0);
            }
        });
    }

    /// The charge of the auto top-up in flight, when it is due: the default
    /// payment method on file is claimed for it in one decision, Stripe is
    /// asked (with the purchase's derived idempotency key), and the outcome
    /// settles it in another. Returns when to try again, if it must be.
    pub(super) async fn send_auto_top_up(&self) -> Result<Option<f64>> {
        self.ensure_loaded()?;
        let (org_id, customer, purchase_id, clock) = match self.wallet.borrow().as_ref() {
            Some(w) => match &w.auto_top_up().in_flight {
                Some(id) => (
                    w.org_id().to_string(),
                    w.stripe_customer_id().map(str::to_string),
                    id.clone(),
                    w.now(),
                ),
                None => return Ok(None),
            },
            None => return Ok(None),
        };
        let sql = self.state.storage().sql();
        let Some(purchase) = wallet_store::purchase(&sql, &purchase_id)? else {
            return Err(Error::RustError(format!(
                "auto top-up {purchase_id} of {org_id} is in flight but not stored"
            )));
        };
        let now = clock
            .max(wallet_core::time::from_millis(Date::now().as_millis() as i64).unwrap_or(clock));
        let settings = settings(&self.env).map_err(Error::RustError)?;
        let stripe = match &settings.stripe {
            Ok(config) => Stripe::new(config),
            Err(problem) => {
                return Err(Error::RustError(format!(
                    "Stripe is not configured: {problem}"
                )))
            }
        };
        if purchase.resend_window_closed(now) {
            // Stripe never answered, and no longer remembers the key: a resend
            // could charge twice, so it ends here, failed, and auto top-up is
            // off until the owner enables it again. (Had Stripe charged it,
            // its webhook still credits the payment once.)
            console_error!(
                "auto top-up {purchase_id} of {org_id}: no answer from Stripe within {} h; ending it as failed",
                RESEND_WINDOW_SECONDS / 3600
            );
            self.decide_and_commit(
                Command::PurchaseSettle {
                    purchase_id: Some(purchase_id),
                    outcome: ChargeOutcome::Refused {
                        payment_intent_id: None,
                        decline_code: None,
                    },
                },
                now,
            )?;
            return Ok(None);
        }
        if !purchase.needs_auto_charge(now) {
            return self.follow_sent_charge(&stripe, &purchase, now).await;
        }
        self.claim_and_charge(&stripe, &org_id, customer, purchase, now)
            .await
    }

    /// An auto top-up whose charge was sent: Stripe answered "processing"
    /// (its webhook settles it; when none has come for a while, Stripe is
    /// asked), or another send is under way (its lease). Returns when to look
    /// again.
    pub(super) async fn follow_sent_charge(
        &self,
        stripe: &Stripe,
        purchase: &Purchase,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<f64>> {
        let (Some(intent_id), PurchaseStatus::Processing) =
            (&purchase.payment_intent_id, purchase.status)
        else {
            return Ok(purchase.charge_started_at.map(|at| {
                let due = at + chrono::Duration::seconds(CHARGE_LEASE_SECONDS);
                ((due - now).num_milliseconds().max(0) as f64) + 1_000.0
            }));
        };
        let waited = now - purchase.updated_at;
        let poll = chrono::Duration::seconds(INTENT_POLL_SECONDS);
        if waited < poll {
            return Ok(Some((poll - waited).num_milliseconds() as f64 + 1_000.0));
        }
        match stripe.payment_intent(intent_id).await {
            Ok(intent) => {
                self.decide_and_commit(
                    Command::PurchaseSettle {
                        purchase_id: Some(purchase.id.clone()),
                        outcome: ChargeOutcome::Intent { intent },
                    },
                    now,
                )?;
            }
            Err(err) => console_error!("refreshing auto top-up {}: {err}", purchase.id),
        }
        Ok(Some(INTENT_POLL_SECONDS as f64 * 1000.0))
    }

    /// Claims the charge (its lease) in one decision, sends it, and settles
    /// Stripe's answer in another. Returns when to try again, if it must be.
    pub(super) async fn claim_and_charge(
        &self,
        stripe: &Stripe,
        org_id: &str,
        customer: Option<String>,
        purchase: Purchase,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<f64>> {
        // A resend repeats the first attempt: a card changed since then must
        // not turn an unknown outcome into a charge with other parameters
        // (Stripe refuses those under the same key).
        let method = match (&purchase.payment_method_id, &customer) {
            (Some(sent), _) => Some(sent.clone()),
            (None, None) => None,
            (None, Some(customer)) => {
                let found = stripe
                    .default_payment_method(customer)
                    .await
                    .map_err(|e| Error::RustError(e.to_string()))?;
                self.payment_method
                    .borrow_mut()
                    .learned(customer, found.clone(), now);
                found.map(|m| m.id)
            }
        };
        let claimed = self.decide_and_commit(
            Command::AutoTopUpSend {
                purchase_id: purchase.id.clone(),
                payment_method_id: method,
            },
            now,
        )?;
        let Ok(PurchaseStartReply::Existing {
            purchase,
            send_charge: true,
        }) = serde_json::from_str::<PurchaseStartReply>(&claimed.body)
        else {
            return Ok(None);
        };
        let customer = customer.unwrap_or_default();
        let outcome = stripe_api::charge_purchase(stripe, org_id, &customer, &purchase).await;
        let unknown = outcome == ChargeOutcome::Unknown;
        self.decide_and_commit(
            Command::PurchaseSettle {
                purchase_id: Some(purchase.id.clone()),
                outcome,
            },
            now,
        )?;
        if unknown {
            return Ok(Some(self.charge_backoff_ms()));
        }
        self.replica.charge_failures.set(0);
        Ok(None)
    }

    pub(super) fn charge_backoff_ms(&self) -> f64 {
        next_backoff_ms(&self.replica.charge_failures)
    }
}
