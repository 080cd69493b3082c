//! The organization's payment method on file, as its Durable Object keeps it
//! for `GET …/payment-method`: read from Stripe at most once a minute, so
//! readers cannot spend the Stripe account's rate limit, and replaced at once
//! whenever a purchase, an auto top-up or the development card route reads
//! or sets it. Concurrent reads of a stale value share one Stripe request.
//! Kept in the instance's memory: a new instance reads Stripe once more.

use crate::stripe_api::PaymentMethodSummary;
use chrono::{DateTime, Duration, Utc};
use futures_util::future::{FutureExt, LocalBoxFuture, Shared};
use std::future::Future;
use wallet_core::api::ApiError;

/// How long a value read from Stripe answers reads.
pub const FRESH_SECONDS: i64 = 60;
/// After Stripe failed to answer, how long reads get the last value (or the
/// failure) before Stripe is asked again.
pub const FAILED_RETRY_SECONDS: i64 = 10;

/// What one read of Stripe gives: the default payment method, if any.
pub type Lookup = Result<Option<PaymentMethodSummary>, ApiError>;

/// A read of Stripe under way, awaited by every reader that needs it.
pub type Refresh = Shared<LocalBoxFuture<'static, Lookup>>;

#[derive(Default)]
pub struct PaymentMethodCache {
    /// The Stripe customer `value` belongs to.
    customer: Option<String>,
    /// The default payment method as last read (`Some(None)`: none on file).
    value: Option<Option<PaymentMethodSummary>>,
    read_at: Option<DateTime<Utc>>,
    /// The last failed read, and how it failed.
    failed: Option<(DateTime<Utc>, ApiError)>,
    /// The read of Stripe under way. A value learned meanwhile drops it, so
    /// that it cannot replace that value with what it read earlier.
    refresh: Option<Refresh>,
}

impl PaymentMethodCache {
    /// The answer for `customer` at `now` without asking Stripe, if there is
    /// one: a value read within the last minute, or, shortly after a failed
    /// read, the last value (else that failure).
    pub fn cached(&self, customer: &str, now: DateTime<Utc>) -> Option<Lookup> {
        if self.customer.as_deref() != Some(customer) {
            return None;
        }
        let within = |at: DateTime<Utc>, seconds: i64| now - at < Duration::seconds(seconds);
        if let (Some(value), Some(read_at)) = (&self.value, self.read_at) {
            if within(read_at, FRESH_SECONDS) {
                return Some(Ok(value.clone()));
            }
        }
        match &self.failed {
            Some((at, err)) if within(*at, FAILED_RETRY_SECONDS) => Some(match &self.value {
                Some(value) => Ok(value.clone()),
                None => Err(err.clone()),
            }),
            _ => None,
        }
    }

    /// The read of Stripe under way, or a new one made by `start`.
    pub fn refresh<F>(&mut self, start: impl FnOnce() -> F) -> Refresh
    where
        F: Future<Output = Lookup> + 'static,
    {
        self.refresh
            .get_or_insert_with(|| start().boxed_local().shared())
            .clone()
    }

    /// Keeps what `refresh` read for `customer`: once (its first reader
    /// does), and only if no value was learned since it started.
    pub fn refreshed(
        &mut self,
        refresh: &Refresh,
        customer: &str,
        lookup: &Lookup,
        now: DateTime<Utc>,
    ) {
        if !self.refresh.as_ref().is_some_and(|r| r.ptr_eq(refresh)) {
            return;
        }
        self.refresh = None;
        if self.customer.as_deref() != Some(customer) {
            self.customer = Some(customer.to_string());
            self.value = None;
            self.read_at = None;
        }
        match lookup {
            Ok(value) => {
                self.value = Some(value.clone());
                self.read_at = Some(now);
                self.failed = None;
            }
            Err(err) => self.failed = Some((now, err.clone())),
        }
    }

    /// A value just read from (or set at) Stripe by a purchase, an auto
    /// top-up or the development card route: it answers reads from now on.
    pub fn learned(
        &mut self,
        customer: &str,
        value: Option<PaymentMethodSummary>,
        now: DateTime<Utc>,
    ) {
        self.refresh = None;
        self.customer = Some(customer.to_string());
        self.value = Some(value);
        self.read_at = Some(now);
        self.failed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0).unwrap()
    }

    fn card(last4: &str) -> Option<PaymentMethodSummary> {
        Some(PaymentMethodSummary {
            id: format!("pm_{last4}"),
            type_: "card".into(),
            brand: Some("visa".into()),
            last4: Some(last4.into()),
        })
    }

    /// Runs one refresh that answers `lookup` at `now`, as the object does.
    fn refresh_with(cache: &mut PaymentMethodCache, lookup: Lookup, now: DateTime<Utc>) {
        let refresh = cache.refresh(|| async move { lookup });
        let read = refresh.clone().now_or_never().expect("ready");
        cache.refreshed(&refresh, "cus_1", &read, now);
    }

    #[test]
    fn a_value_read_from_stripe_answers_for_a_minute() {
        let mut cache = PaymentMethodCache::default();
        assert_eq!(cache.cached("cus_1", at(0)), None);
        refresh_with(&mut cache, Ok(card("4242")), at(0));
        assert_eq!(cache.cached("cus_1", at(59)), Some(Ok(card("4242"))));
        assert_eq!(cache.cached("cus_1", at(60)), None);
        assert_eq!(cache.cached("cus_2", at(1)), None, "another customer");
    }

    #[test]
    fn readers_of_a_stale_value_share_one_refresh() {
        let mut cache = PaymentMethodCache::default();
        let mut started = 0;
        let first = cache.refresh(|| {
            started += 1;
            async { Ok(None) }
        });
        let second = cache.refresh(|| {
            started += 1;
            async { Ok(None) }
        });
        assert_eq!(started, 1);
        assert!(first.ptr_eq(&second));
    }

    #[test]
    fn a_learned_value_shows_at_once_and_an_older_refresh_cannot_replace_it() {
        let mut cache = PaymentMethodCache::default();
        refresh_with(&mut cache, Ok(card("4242")), at(0));
        let old = cache.refresh(|| async { Ok(card("4242")) });
        cache.learned("cus_1", card("4444"), at(10));
        assert_eq!(cache.cached("cus_1", at(10)), Some(Ok(card("4444"))));
        let read = old.clone().now_or_never().unwrap();
        cache.refreshed(&old, "cus_1", &read, at(11));
        assert_eq!(cache.cached("cus_1", at(11)), Some(Ok(card("4444"))));
    }

    #[test]
    fn after_a_failed_read_the_last_value_answers_and_stripe_is_asked_again_later() {
        let mut cache = PaymentMethodCache::default();
        refresh_with(&mut cache, Err(ApiError::PaymentProviderUnavailable), at(0));
        let failed = Some(Err(ApiError::PaymentProviderUnavailable));
        assert_eq!(cache.cached("cus_1", at(9)), failed);
        assert_eq!(cache.cached("cus_1", at(10)), None);
        refresh_with(&mut cache, Ok(card("4242")), at(10));
        refresh_with(
            &mut cache,
            Err(ApiError::PaymentProviderUnavailable),
            at(80),
        );
        assert_eq!(cache.cached("cus_1", at(85)), Some(Ok(card("4242"))));
        assert_eq!(cache.cached("cus_1", at(90)), None);
    }
}
