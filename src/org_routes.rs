//! The routes under `/v1/orgs/{org}/…`, once the token was checked against
//! the route table's `access`: each turns a request into what the
//! organization's Durable Object, a report or Stripe must do. Grouped as the
//! product is: settings, spending, buying, reports.

use crate::http::{call_wallet, read_body, Answer, Failure, SearchParams};
use crate::read_limits::{self, ReadClass};
use crate::settings::Settings;
use crate::{purchases, reports};
use serde::de::DeserializeOwned;
use wallet_core::api::{
    check_idempotency_key, fingerprint, parse_batch, parse_body, ApiError, CaptureBody, Command,
    DailyCapBody, DebitBody, FeatureCapsBody, HoldBody, OutboxRequest, PurchaseBody, Query,
    ReleaseBody, Route,
};
use wallet_core::audit::Actor;
use wallet_core::auto_top_up::AutoTopUpBody;
use wallet_core::events::AlertsBody;
use wallet_core::token::Claims;
use worker::{console_error, Env, Method, Request};

/// One authorized request to an organization's route.
pub struct OrgCall<'a> {
    pub req: Request,
    pub env: &'a Env,
    pub settings: &'a Settings,
    pub route: &'static Route,
    pub claims: Claims,
    pub org: String,
    pub now_ms: i64,
}

impl OrgCall<'_> {
    async fn body<T: DeserializeOwned>(&mut self) -> Result<T, Failure> {
        Ok(parse_body(&self.bytes().await?)?)
    }

    async fn bytes(&mut self) -> Result<Vec<u8>, Failure> {
        read_body(&mut self.req, self.route.body_limit).await
    }

    /// A body that must be empty or `{}` (release, refill).
    async fn no_body(&mut self) -> Result<(), Failure> {
        let bytes = self.bytes().await?;
        if !bytes.iter().all(u8::is_ascii_whitespace) {
            parse_body::<ReleaseBody>(&bytes)?;
        }
        Ok(())
    }

    fn idempotency_key(&self) -> Result<String, Failure> {
        let header = self.req.headers().get("idempotency-key")?;
        Ok(check_idempotency_key(header.as_deref())?)
    }

    fn actor(&self) -> Actor {
        Actor {
            sub: self.claims.sub.clone(),
            role: self.claims.role,
        }
    }

    async fn decide(&self, command: Command) -> Answer {
        call_wallet(self.env, &self.org, self.now_ms, command).await
    }
}

/// Dispatches `rest` (the path after `/v1/orgs/{org}/`) to its group.
pub async fn route(call: OrgCall<'_>, rest: &[&str], method: Method) -> Answer {
    match rest.first().copied() {
        Some("wallet" | "daily-cap" | "feature-caps" | "auto-top-up" | "alerts") => {
            settings_route(call, rest, method).await
        }
        Some("debits" | "holds") => spending_route(call, rest, method).await,
        Some("payment-method" | "purchases") => buying_route(call, rest, method).await,
        _ => report_route(call, rest, method).await,
    }
}

async fn settings_route(mut call: OrgCall<'_>, rest: &[&str], method: Method) -> Answer {
    let config = &call.settings.config;
    let actor = call.actor();
    match (rest, method) {
        (["wallet"], Method::Get) => call.decide(Command::View).await,
        (["daily-cap"], Method::Put) => {
            let body: DailyCapBody = call.body().await?;
            body.validate(config)?;
            call.decide(Command::SetDailyCap { body, actor }).await
        }
        (["feature-caps"], Method::Put) => {
            let body: FeatureCapsBody = call.body().await?;
            body.validate(config)?;
            call.decide(Command::SetFeatureCaps { body, actor }).await
        }
        (["auto-top-up"], Method::Get) => call.decide(Command::AutoTopUp).await,
        (["auto-top-up"], Method::Put) => {
            let body: AutoTopUpBody = call.body().await?;
            body.validate(config)?;
            if body.enabled {
                let (env, settings) = (call.env, call.settings);
                purchases::require_payment_method(env, settings, &call.org, call.now_ms).await?;
            }
            call.decide(Command::SetAutoTopUp { body, actor }).await
        }
        (["alerts"], Method::Get) => call.decide(Command::Alerts).await,
        (["alerts"], Method::Put) => {
            let body: AlertsBody = call.body().await?;
            body.validate()?;
            call.decide(Command::SetAlerts { body, actor }).await
        }
        _ => Err(unrouted(call.route)),
    }
}

async fn spending_route(mut call: OrgCall<'_>, rest: &[&str], method: Method) -> Answer {
    let config = &call.settings.config;
    let command = match (rest, method) {
        (["debits"], Method::Post) => {
            let idempotency_key = call.idempotency_key()?;
            let body: DebitBody = call.body().await?;
            body.validate(config)?;
            let fingerprint = fingerprint("debit", &body);
            Command::Debit {
                idempotency_key,
                fingerprint,
                body,
            }
        }
        (["debits", "batch"], Method::Post) => {
            let items = parse_batch(&call.bytes().await?, config)?;
            Command::DebitBatch { items }
        }
        (["holds"], Method::Post) => {
            let idempotency_key = call.idempotency_key()?;
            let body: HoldBody = call.body().await?;
            body.validate(config)?;
            let fingerprint = fingerprint("hold", &body);
            Command::PlaceHold {
                idempotency_key,
                fingerprint,
                body,
            }
        }
        (["holds", hold_id, action @ ("capture" | "release")], Method::Post) => {
            close_hold(&mut call, hold_id, action).await?
        }
        _ => return Err(unrouted(call.route)),
    };
    call.decide(command).await
}

/// `POST …/holds/{hold_id}/capture` and `…/release`.
async fn close_hold(
    call: &mut OrgCall<'_>,
    hold_id: &str,
    action: &str,
) -> Result<Command, Failure> {
    if hold_id.len() > 64 {
        // Read first, as every route does, so a refused body is still a 413.
        call.bytes().await?;
        return Err(ApiError::invalid("hold_id", "is too long").into());
    }
    let hold_id = hold_id.to_string();
    Ok(if action == "capture" {
        let body: CaptureBody = call.body().await?;
        body.validate(&call.settings.config)?;
        Command::Capture { hold_id, body }
    } else {
        call.no_body().await?;
        Command::Release { hold_id }
    })
}

async fn buying_route(mut call: OrgCall<'_>, rest: &[&str], method: Method) -> Answer {
    let (env, settings, now_ms) = (call.env, call.settings, call.now_ms);
    match (rest, method) {
        (["payment-method"], Method::Get) => {
            read_limits::check(env, settings, &call.org, ReadClass::PaymentMethod).await?;
            purchases::payment_method(env, &call.org, now_ms).await
        }
        (["purchases"], Method::Post) => {
            let key = call.idempotency_key()?;
            let body: PurchaseBody = call.body().await?;
            purchases::create(env, settings, &call.org, key, body, now_ms).await
        }
        (["purchases", id], Method::Get) => {
            let role = call.claims.role;
            purchases::get(env, settings, &call.org, role, id, now_ms).await
        }
        _ => Err(unrouted(call.route)),
    }
}

async fn report_route(mut call: OrgCall<'_>, rest: &[&str], method: Method) -> Answer {
    let (env, settings, now_ms) = (call.env, call.settings, call.now_ms);
    let org = call.org.clone();
    // Read here only: a debit never pays for parsing a query.
    let params = SearchParams::of(&call.req)?;
    let q = |name: &str| params.get(name);
    match (rest, method) {
        (["events"], Method::Get) => {
            let (limit, after) = (q("limit"), q("starting_after"));
            let query =
                wallet_core::events::events_query(&org, limit.as_deref(), after.as_deref())?;
            call_wallet(env, &org, now_ms, Query::Events(query)).await
        }
        (["audit"], Method::Get) => {
            let (limit, after, format) = (q("limit"), q("starting_after"), q("format"));
            let (query, csv) = wallet_core::audit::audit_query(
                limit.as_deref(),
                after.as_deref(),
                format.as_deref(),
            )?;
            reports::audit(env, &org, now_ms, query, csv).await
        }
        (["ledger"], Method::Get) => {
            let (query, csv) = wallet_core::ledger::ledger_query(
                q("limit").as_deref(),
                q("starting_after").as_deref(),
                q("from").as_deref(),
                q("to").as_deref(),
                q("format").as_deref(),
            )?;
            reports::ledger(env, &org, now_ms, query, csv).await
        }
        (["ledger", "segments"], Method::Get) => {
            let query = wallet_core::archive::segments_query(
                q("limit").as_deref(),
                q("starting_after").as_deref(),
            )?;
            call_wallet(env, &org, now_ms, Query::Segments(query)).await
        }
        (["ledger", "storage"], Method::Get) => {
            call_wallet(env, &org, now_ms, Query::Storage).await
        }
        // An operator's tool (service token): after a shard was restored or
        // emptied, refill this organization now rather than at its next
        // credit movement.
        (["ledger", "refill"], Method::Post) => {
            call.no_body().await?;
            call_wallet(env, &org, now_ms, OutboxRequest::RefillShard).await
        }
        (["transactions"], Method::Get) => {
            let class = match q("format").as_deref() {
                Some("csv") => ReadClass::TransactionsCsv,
                _ => ReadClass::Transactions,
            };
            read_limits::check(env, settings, &org, class).await?;
            let query = reports::TransactionsQuery {
                format: q("format"),
                limit: q("limit"),
                starting_after: q("starting_after"),
            };
            reports::transactions(env, &org, now_ms, query).await
        }
        (["usage"], Method::Get) => {
            read_limits::check(env, settings, &org, ReadClass::Usage).await?;
            reports::usage(env, &org, now_ms, q("from"), q("to")).await
        }
        _ => Err(unrouted(call.route)),
    }
}

/// A route of the table that no arm handles: a bug, answered 500.
pub fn unrouted(route: &Route) -> Failure {
    console_error!("no handler for {} {}", route.method, route.path);
    ApiError::Internal.into()
}
