//! The AI Wallet Worker: HTTP routes, authentication and validation in front
//! of one Durable Object per organization (`wallet_object`, speaking
//! `wallet_protocol`), which alone moves credits and keeps the ledger
//! (`wallet_store`), and the D1 shards (`ledger_shards`) that hold what the
//! dashboard aggregates. Purchases (`purchases`, `stripe_api`) and Stripe's
//! webhook (`webhook`) feed credits into the same Durable Objects.

mod event_delivery;
mod ledger_shards;
mod payment_method_cache;
mod purchases;
mod read_limits;
mod reports;
mod settings;
mod stripe_api;
mod wallet_object;
mod wallet_protocol;
mod wallet_store;
mod webhook;

pub use wallet_object::WalletObject;

use futures_util::StreamExt;
use read_limits::ReadClass;
use serde_json::{json, Value};
use settings::{settings, Settings};
use wallet_core::api::{
    allow_header, check_idempotency_key, fingerprint, parse_batch, parse_body, routes_of, ApiError,
    BenchRequest, CaptureBody, Command, DailyCapBody, DebitBody, DevPaymentMethodBody,
    FeatureCapsBody, HoldBody, OutboxRequest, PurchaseBody, Query, ReleaseBody, SignupBody,
    WalletRequest,
};
use wallet_core::auto_top_up::AutoTopUpBody;
use wallet_core::events::AlertsBody;
use wallet_core::time::{parse_utc, rfc3339};
use wallet_core::token::{self, Claims, Role};
use worker::*;

/// Who may call a route.
const ANY_ROLE: &[Role] = &[Role::Owner, Role::Admin, Role::Member, Role::Viewer];
const ANY_ROLE_OR_SERVICE: &[Role] = &[
    Role::Owner,
    Role::Admin,
    Role::Member,
    Role::Viewer,
    Role::Service,
];
const OWNER: &[Role] = &[Role::Owner];
const OWNER_OR_ADMIN: &[Role] = &[Role::Owner, Role::Admin];
const SERVICE: &[Role] = &[Role::Service];

#[event(fetch, respond_with_errors)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let path = req.path();
    let response = match settings(&env) {
        Ok(settings) => match route(req, &env, &settings).await {
            Ok(response) | Err(Failure::Answered(response)) => response,
            Err(Failure::Api(ApiError::MethodNotAllowed)) => {
                let response = error_response(&ApiError::MethodNotAllowed, None)?;
                let segments = path_segments(&path);
                response
                    .headers()
                    .set("allow", &allow_header(&routes_of(&segments)))?;
                response
            }
            Err(Failure::Api(err)) => {
                let now = wallet_core::time::from_millis(Date::now().as_millis() as i64);
                error_response(&err, now.and_then(|now| err.retry_after_seconds(now)))?
            }
            Err(Failure::Worker(err)) => {
                console_error!("request failed: {err}");
                error_response(&ApiError::Internal, None)?
            }
        },
        Err(problem) => {
            console_error!("refusing to serve: {problem}");
            error_response(&ApiError::Internal, None)?
        }
    };
    with_standard_headers(response)
}

/// Headers every answer carries (static assets get theirs from
/// public/_headers). A Durable Object's answer has immutable headers, so
/// they are copied onto the response sent.
fn with_standard_headers(response: Response) -> Result<Response> {
    let headers = Headers::new();
    for (name, value) in response.headers().entries() {
        headers.append(&name, &value)?;
    }
    headers.set("x-content-type-options", "nosniff")?;
    Ok(response.with_headers(headers))
}

fn path_segments(path: &str) -> Vec<&str> {
    path.trim_start_matches('/').split('/').collect()
}

/// A request that could not be answered normally.
enum Failure {
    Api(ApiError),
    Worker(Error),
    /// The organization's Durable Object refused; its answer is the request's.
    Answered(Response),
}

impl From<ApiError> for Failure {
    fn from(err: ApiError) -> Failure {
        Failure::Api(err)
    }
}

/// A value the domain refused: 422 naming its field.
impl From<wallet_core::paging::Invalid> for Failure {
    fn from(invalid: wallet_core::paging::Invalid) -> Failure {
        Failure::Api(invalid.into())
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Failure {
        Failure::Worker(err)
    }
}

type Answer = std::result::Result<Response, Failure>;

fn json_response(status: u16, body: &Value) -> Result<Response> {
    Ok(Response::from_json(body)?.with_status(status))
}

fn error_response(err: &ApiError, retry_after: Option<i64>) -> Result<Response> {
    let response = json_response(err.status(), &err.body())?;
    if let Some(seconds) = retry_after {
        response
            .headers()
            .set("retry-after", &seconds.to_string())?;
    }
    Ok(response)
}

/// The time a request is decided at: the clock, or `X-Dev-Now` in development.
fn request_now(req: &Request, settings: &Settings) -> std::result::Result<i64, ApiError> {
    let clock = Date::now().as_millis() as i64;
    if !settings.development {
        return Ok(clock);
    }
    match req.headers().get("x-dev-now").ok().flatten() {
        None => Ok(clock),
        Some(text) => parse_utc(&text)
            .map(|t| t.timestamp_millis())
            .ok_or_else(|| ApiError::invalid("X-Dev-Now", "must be an RFC 3339 UTC time")),
    }
}

fn authenticate(req: &Request, settings: &Settings) -> std::result::Result<Claims, ApiError> {
    let header = req
        .headers()
        .get("authorization")
        .ok()
        .flatten()
        .ok_or(ApiError::Unauthorized)?;
    let token = header
        .strip_prefix("Bearer ")
        .ok_or(ApiError::Unauthorized)?;
    let now_seconds = (Date::now().as_millis() / 1000) as i64;
    token::verify(token.trim(), &settings.jwt_secret, now_seconds)
        .map_err(|_| ApiError::Unauthorized)
}

/// Who makes a settings change, for the audit trail.
fn actor(claims: &Claims) -> wallet_core::audit::Actor {
    wallet_core::audit::Actor {
        sub: claims.sub.clone(),
        role: claims.role,
    }
}

fn authorize(claims: &Claims, org: &str, allowed: &[Role]) -> std::result::Result<(), ApiError> {
    if claims.org != org || !allowed.contains(&claims.role) {
        return Err(ApiError::Forbidden);
    }
    Ok(())
}

/// Reads a request body of at most `limit` bytes (the route's
/// `body_limit`). A declared `Content-Length` over it is refused before
/// reading; a body without one (chunked) is read chunk by chunk and refused
/// (413) as soon as it passes the limit, never buffered whole first.
pub(crate) async fn read_body(
    req: &mut Request,
    limit: usize,
) -> std::result::Result<Vec<u8>, Failure> {
    let too_large = ApiError::PayloadTooLarge { limit_bytes: limit };
    let declared = req
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|l| l.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large.into());
    }
    if req.inner().body().is_none() {
        return Ok(Vec::new());
    }
    let mut stream = req.stream()?;
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > limit {
            return Err(too_large.into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Sends `command` to the organization's Durable Object; its answer is final.
async fn call_wallet(
    env: &Env,
    org: &str,
    now_ms: i64,
    request: impl Into<WalletRequest>,
) -> Answer {
    Ok(wallet_protocol::call(env, org, now_ms, request).await?)
}

async fn route(mut req: Request, env: &Env, settings: &Settings) -> Answer {
    let url = req.url()?;
    let method = req.method();
    let segments: Vec<String> = url
        .path_segments()
        .map(|s| s.map(str::to_string).collect())
        .unwrap_or_default();
    let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
    let query = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };

    // Development and benchmark routes do not exist outside development.
    if matches!(parts.first(), Some(&("dev" | "bench"))) && !settings.development {
        return Err(ApiError::NotFound.into());
    }
    match (parts.as_slice(), method.clone()) {
        // Benchmark floor and counters, only when configured for `make bench`.
        (["bench", "floor", org], Method::Post) if settings.bench_routes => {
            return call_wallet(env, org, 0, BenchRequest::Ping).await;
        }
        (["bench", "storage", org], Method::Get) if settings.bench_routes => {
            return call_wallet(env, org, 0, BenchRequest::StorageStats).await;
        }
        _ => {}
    }
    // The route table knows every path: another method is a 405 (with `Allow`).
    let routes = routes_of(&parts);
    // The request's own method: worker::Method reads any method it does not
    // know (QUERY, PROPFIND…) as GET.
    let method_name = req.inner().method().to_ascii_lowercase();
    let Some(this_route) = routes.iter().find(|r| r.method == method_name) else {
        return Err(if routes.is_empty() {
            ApiError::NotFound
        } else {
            ApiError::MethodNotAllowed
        }
        .into());
    };
    let limit = this_route.body_limit;

    match (parts.as_slice(), method.clone()) {
        (["healthz"], Method::Get) => return Ok(json_response(200, &json!({"status": "ok"}))?),
        (["openapi.json"], Method::Get) => {
            let response = Response::ok(wallet_core::api::OPENAPI_JSON)?;
            response.headers().set("content-type", "application/json")?;
            return Ok(response);
        }
        (["dev", "token"], Method::Post) => {
            let body = read_body(&mut req, limit).await?;
            return Ok(dev_token(&body, settings)?);
        }
        (["dev", "orgs", org, "payment-method"], Method::Post) => {
            if !wallet_core::api::is_org_id(org) {
                return Err(ApiError::invalid("org", "must be a valid organization id").into());
            }
            let body: DevPaymentMethodBody = parse_body(&read_body(&mut req, limit).await?)?;
            let now_ms = request_now(&req, settings)?;
            return purchases::dev_payment_method(env, settings, org, body, now_ms).await;
        }
        (["stripe", "webhook"], Method::Post) => {
            return webhook::receive(req, env, settings, limit).await
        }
        _ => {}
    }
    let claims = authenticate(&req, settings)?;
    let now_ms = request_now(&req, settings)?;
    let config = &settings.config;

    match (parts.as_slice(), method) {
        (["v1", "packs"], Method::Get) => purchases::packs(config),
        (["v1", "orgs"], Method::Post) => {
            let body: SignupBody = parse_body(&read_body(&mut req, limit).await?)?;
            body.validate()?;
            authorize(&claims, &body.org_id, SERVICE)?;
            let org = body.org_id.clone();
            call_wallet(env, &org, now_ms, Command::Open(body)).await
        }
        (["v1", "orgs", org, rest @ ..], method) => {
            if !wallet_core::api::is_org_id(org) {
                return Err(ApiError::invalid(
                    "org",
                    "must be 1 to 64 characters of A-Z, a-z, 0-9, _ or -",
                )
                .into());
            }
            match (rest, method) {
                (["wallet"], Method::Get) => {
                    authorize(&claims, org, ANY_ROLE_OR_SERVICE)?;
                    call_wallet(env, org, now_ms, Command::View).await
                }
                (["daily-cap"], Method::Put) => {
                    authorize(&claims, org, OWNER)?;
                    let body: DailyCapBody = parse_body(&read_body(&mut req, limit).await?)?;
                    body.validate(config)?;
                    let actor = actor(&claims);
                    call_wallet(env, org, now_ms, Command::SetDailyCap { body, actor }).await
                }
                (["feature-caps"], Method::Put) => {
                    authorize(&claims, org, OWNER)?;
                    let body: FeatureCapsBody = parse_body(&read_body(&mut req, limit).await?)?;
                    body.validate(config)?;
                    let actor = actor(&claims);
                    call_wallet(env, org, now_ms, Command::SetFeatureCaps { body, actor }).await
                }
                (["auto-top-up"], Method::Get) => {
                    authorize(&claims, org, ANY_ROLE)?;
                    call_wallet(env, org, now_ms, Command::AutoTopUp).await
                }
                (["auto-top-up"], Method::Put) => {
                    authorize(&claims, org, OWNER)?;
                    let body: AutoTopUpBody = parse_body(&read_body(&mut req, limit).await?)?;
                    body.validate(config)?;
                    if body.enabled {
                        purchases::require_payment_method(env, settings, org, now_ms).await?;
                    }
                    let actor = actor(&claims);
                    call_wallet(env, org, now_ms, Command::SetAutoTopUp { body, actor }).await
                }
                (["alerts"], Method::Get) => {
                    authorize(&claims, org, ANY_ROLE)?;
                    call_wallet(env, org, now_ms, Command::Alerts).await
                }
                (["alerts"], Method::Put) => {
                    authorize(&claims, org, OWNER)?;
                    let body: AlertsBody = parse_body(&read_body(&mut req, limit).await?)?;
                    body.validate()?;
                    let actor = actor(&claims);
                    call_wallet(env, org, now_ms, Command::SetAlerts { body, actor }).await
                }
                (["events"], Method::Get) => {
                    authorize(&claims, org, OWNER_OR_ADMIN)?;
                    let events_query = wallet_core::events::events_query(
                        org,
                        query("limit").as_deref(),
                        query("starting_after").as_deref(),
                    )?;
                    call_wallet(env, org, now_ms, Query::Events(events_query)).await
                }
                (["audit"], Method::Get) => {
                    authorize(&claims, org, OWNER_OR_ADMIN)?;
                    let (audit_query, csv) = wallet_core::audit::audit_query(
                        query("limit").as_deref(),
                        query("starting_after").as_deref(),
                        query("format").as_deref(),
                    )?;
                    reports::audit(env, org, now_ms, audit_query, csv).await
                }
                (["debits"], Method::Post) => {
                    authorize(&claims, org, SERVICE)?;
                    let key =
                        check_idempotency_key(req.headers().get("idempotency-key")?.as_deref())?;
                    let body: DebitBody = parse_body(&read_body(&mut req, limit).await?)?;
                    body.validate(config)?;
                    let fingerprint = fingerprint("debit", &body);
                    call_wallet(
                        env,
                        org,
                        now_ms,
                        Command::Debit {
                            idempotency_key: key,
                            fingerprint,
                            body,
                        },
                    )
                    .await
                }
                (["debits", "batch"], Method::Post) => {
                    authorize(&claims, org, SERVICE)?;
                    let bytes = read_body(&mut req, limit).await?;
                    let items = parse_batch(&bytes, config)?;
                    call_wallet(env, org, now_ms, Command::DebitBatch { items }).await
                }
                (["holds"], Method::Post) => {
                    authorize(&claims, org, SERVICE)?;
                    let key =
                        check_idempotency_key(req.headers().get("idempotency-key")?.as_deref())?;
                    let body: HoldBody = parse_body(&read_body(&mut req, limit).await?)?;
                    body.validate(config)?;
                    let fingerprint = fingerprint("hold", &body);
                    call_wallet(
                        env,
                        org,
                        now_ms,
                        Command::PlaceHold {
                            idempotency_key: key,
                            fingerprint,
                            body,
                        },
                    )
                    .await
                }
                (["holds", hold_id, action @ ("capture" | "release")], Method::Post) => {
                    authorize(&claims, org, SERVICE)?;
                    let bytes = read_body(&mut req, limit).await?;
                    let hold_id = hold_id.to_string();
                    if hold_id.len() > 64 {
                        return Err(ApiError::invalid("hold_id", "is too long").into());
                    }
                    let command = if *action == "capture" {
                        Command::Capture {
                            hold_id,
                            body: parse_body::<CaptureBody>(&bytes)?,
                        }
                    } else {
                        if !bytes.iter().all(u8::is_ascii_whitespace) {
                            parse_body::<ReleaseBody>(&bytes)?;
                        }
                        Command::Release { hold_id }
                    };
                    call_wallet(env, org, now_ms, command).await
                }
                (["payment-method"], Method::Get) => {
                    authorize(&claims, org, ANY_ROLE)?;
                    read_limits::check(env, settings, org, ReadClass::PaymentMethod).await?;
                    purchases::payment_method(env, org, now_ms).await
                }
                (["purchases"], Method::Post) => {
                    authorize(&claims, org, OWNER)?;
                    let key =
                        check_idempotency_key(req.headers().get("idempotency-key")?.as_deref())?;
                    let body: PurchaseBody = parse_body(&read_body(&mut req, limit).await?)?;
                    purchases::create(env, settings, org, key, body, now_ms).await
                }
                (["purchases", id], Method::Get) => {
                    authorize(&claims, org, ANY_ROLE)?;
                    purchases::get(env, settings, org, claims.role, id, now_ms).await
                }
                (["ledger"], Method::Get) => {
                    authorize(&claims, org, OWNER_OR_ADMIN)?;
                    let (ledger_query, csv) = wallet_core::ledger::ledger_query(
                        query("limit").as_deref(),
                        query("starting_after").as_deref(),
                        query("from").as_deref(),
                        query("to").as_deref(),
                        query("format").as_deref(),
                    )?;
                    reports::ledger(env, org, now_ms, ledger_query, csv).await
                }
                (["ledger", "refill"], Method::Post) => {
                    // An operator's tool (service token): after a shard was
                    // restored or emptied, refill this organization now rather
                    // than at its next credit movement.
                    authorize(&claims, org, SERVICE)?;
                    let bytes = read_body(&mut req, limit).await?;
                    if !bytes.iter().all(u8::is_ascii_whitespace) {
                        parse_body::<ReleaseBody>(&bytes)?;
                    }
                    call_wallet(env, org, now_ms, OutboxRequest::RefillShard).await
                }
                (["transactions"], Method::Get) => {
                    authorize(&claims, org, ANY_ROLE)?;
                    let class = match query("format").as_deref() {
                        Some("csv") => ReadClass::TransactionsCsv,
                        _ => ReadClass::Transactions,
                    };
                    read_limits::check(env, settings, org, class).await?;
                    let query = reports::TransactionsQuery {
                        format: query("format"),
                        limit: query("limit"),
                        starting_after: query("starting_after"),
                    };
                    reports::transactions(env, org, now_ms, query).await
                }
                (["usage"], Method::Get) => {
                    authorize(&claims, org, ANY_ROLE)?;
                    read_limits::check(env, settings, org, ReadClass::Usage).await?;
                    reports::usage(env, org, now_ms, query("from"), query("to")).await
                }
                _ => Err(unrouted(this_route)),
            }
        }
        _ => Err(unrouted(this_route)),
    }
}

/// A route of the table that no arm above handles: a bug, answered 500.
fn unrouted(route: &wallet_core::api::Route) -> Failure {
    console_error!("no handler for {} {}", route.method, route.path);
    ApiError::Internal.into()
}

/// Development login: mints a token for any organization and role.
fn dev_token(body: &[u8], settings: &Settings) -> Result<Response> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct DevTokenBody {
        org: String,
        sub: String,
        role: Role,
        #[serde(default)]
        ttl_seconds: Option<i64>,
    }
    let parsed: DevTokenBody = match parse_body(body) {
        Ok(b) => b,
        Err(err) => return error_response(&err, None),
    };
    if !wallet_core::api::is_org_id(&parsed.org) || parsed.sub.is_empty() || parsed.sub.len() > 128
    {
        return error_response(&ApiError::invalid("org", "and sub must be valid ids"), None);
    }
    let ttl = parsed.ttl_seconds.unwrap_or(12 * 3600).clamp(1, 7 * 86_400);
    let now = (Date::now().as_millis() / 1000) as i64;
    let claims = Claims {
        sub: parsed.sub,
        org: parsed.org,
        role: parsed.role,
        exp: now + ttl,
    };
    let token = token::sign(&claims, &settings.jwt_secret);
    let expires_at = wallet_core::time::from_millis((now + ttl) * 1000).map(rfc3339);
    json_response(200, &json!({ "token": token, "expires_at": expires_at }))
}
