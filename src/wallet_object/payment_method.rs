//! The payment method on file, answered from the object's cache and
//! refreshed from Stripe at most once a minute (`payment_method_cache`).

use super::*;

impl Instance {
    /// A payment method request: a read, answered from the cache (Stripe is
    /// asked at most once a minute), or a value the Worker just learned.
    pub(super) async fn payment_method(
        &self,
        op: PaymentMethodOp,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Reply> {
        self.ensure_loaded()?;
        let customer = match self.wallet.borrow().as_ref() {
            None => return Ok(Reply::error(&ApiError::WalletNotFound, now)),
            Some(w) => w.stripe_customer_id().map(str::to_string),
        };
        let Some(customer) = customer else {
            // No Stripe customer yet: no card on file, nothing to ask Stripe.
            return Ok(Reply::json(200, &PaymentMethodSummary::to_json(None)));
        };
        let lookup = match op {
            PaymentMethodOp::Learned { summary } => {
                self.payment_method
                    .borrow_mut()
                    .learned(&customer, summary.clone(), now);
                Ok(summary)
            }
            PaymentMethodOp::Read => self.read_payment_method(&customer, now).await?,
        };
        Ok(match lookup {
            Ok(summary) => Reply::json(200, &PaymentMethodSummary::to_json(summary.as_ref())),
            Err(err) => Reply::error(&err, now),
        })
    }

    /// The cached payment method of `customer`, refreshed from Stripe when
    /// it is a minute old; concurrent readers share one Stripe request.
    pub(super) async fn read_payment_method(
        &self,
        customer: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Lookup> {
        if let Some(cached) = self.payment_method.borrow().cached(customer, now) {
            return Ok(cached);
        }
        let settings = settings(&self.env).map_err(Error::RustError)?;
        let stripe = match &settings.stripe {
            Ok(config) => Stripe::new(config),
            Err(problem) => {
                console_error!("Stripe is not configured: {problem}");
                return Ok(Err(ApiError::Internal));
            }
        };
        let refresh = self.payment_method.borrow_mut().refresh(|| {
            let customer = customer.to_string();
            async move {
                stripe
                    .default_payment_method(&customer)
                    .await
                    .map_err(|err| {
                        console_error!("reading the payment method of {customer}: {err}");
                        err.api_error()
                    })
            }
        });
        let lookup = refresh.clone().await;
        let mut cache = self.payment_method.borrow_mut();
        cache.refreshed(&refresh, customer, &lookup, now);
        Ok(cache.cached(customer, now).unwrap_or(lookup))
    }
}
