//! Per-organization limits on the reads that cost a D1 shard or Stripe work
//! (usage, transactions, CSV exports, the payment method), so that a loop
//! reading one organization cannot take the shard or the Stripe account's
//! rate limit from everyone else. Debits, holds and captures are never
//! limited here: the caps govern them.
//!
//! Counted by the Workers rate-limiting bindings of wrangler.toml
//! (`[[ratelimits]]`), keyed by read class and organization. A deployment
//! without the binding serves unlimited (logged once per isolate) rather than
//! failing the reads.

use crate::settings::Settings;
use std::cell::Cell;
use wallet_core::api::ApiError;
use worker::{console_error, Env};

/// Reads limited together: each class has its own budget per organization.
#[derive(Clone, Copy, Debug)]
pub enum ReadClass {
    Usage,
    Transactions,
    /// `transactions?format=csv`: a whole history per request.
    TransactionsCsv,
    PaymentMethod,
}

/// A `[[ratelimits]]` binding and its `simple.period` in wrangler.toml (the
/// binding does not tell it; `Retry-After` is that period).
struct Limiter {
    binding: &'static str,
    period_seconds: i64,
}

/// Usage and payment-method reads, 100 per 10 s per organization and class:
/// far above a dashboard, even with many members on it, and low enough to
/// stop a loop.
const READS: Limiter = Limiter {
    binding: "READ_LIMITER",
    period_seconds: 10,
};
/// Transactions pages, 300 per 10 s per organization: a client paging
/// through a long history (at most 100 entries a page) is not a loop.
const PAGES: Limiter = Limiter {
    binding: "PAGE_LIMITER",
    period_seconds: 10,
};
/// 10 CSV exports per minute per organization.
const EXPORTS: Limiter = Limiter {
    binding: "EXPORT_LIMITER",
    period_seconds: 60,
};

impl ReadClass {
    fn name(self) -> &'static str {
        match self {
            ReadClass::Usage => "usage",
            ReadClass::Transactions => "transactions",
            ReadClass::TransactionsCsv => "transactions_csv",
            ReadClass::PaymentMethod => "payment_method",
        }
    }

    fn limiter(self) -> &'static Limiter {
        match self {
            ReadClass::Usage | ReadClass::PaymentMethod => &READS,
            ReadClass::Transactions => &PAGES,
            ReadClass::TransactionsCsv => &EXPORTS,
        }
    }
}

thread_local! {
    /// Whether this isolate has logged a missing or failing binding.
    static LOGGED: Cell<bool> = const { Cell::new(false) };
}

fn log_once(problem: String) {
    if !LOGGED.with(|logged| logged.replace(true)) {
        console_error!("read limits are not applied: {problem}");
    }
}

/// Answers 429 `rate_limited` once `org` has used its budget of `class`.
/// `make bench` (`bench_routes`, development only) measures the reads
/// themselves, so it is not limited.
pub async fn check(
    env: &Env,
    settings: &Settings,
    org: &str,
    class: ReadClass,
) -> Result<(), ApiError> {
    if settings.bench_routes {
        return Ok(());
    }
    let limiter = class.limiter();
    let binding = match env.rate_limiter(limiter.binding) {
        Ok(binding) => binding,
        Err(err) => {
            log_once(format!("binding {}: {err}", limiter.binding));
            return Ok(());
        }
    };
    match binding.limit(format!("{}:{org}", class.name())).await {
        Ok(outcome) if outcome.success => Ok(()),
        Ok(_) => Err(ApiError::RateLimited {
            retry_after_seconds: limiter.period_seconds,
        }),
        Err(err) => {
            log_once(format!("binding {}: {err}", limiter.binding));
            Ok(())
        }
    }
}
