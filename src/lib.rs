//! The AI Wallet Worker: HTTP routes, authentication and validation in front
//! of one Durable Object per organization (`wallet_object`, speaking
//! `wallet_protocol`), which alone moves credits and keeps the ledger
//! (`wallet_store`), and the D1 shards (`ledger_shards`) that hold what the
//! dashboard aggregates. Purchases (`purchases`, `stripe_api`) and Stripe's
//! webhook (`webhook`) feed credits into the same Durable Objects.

mod event_delivery;
mod gzip;
mod http;
mod ledger_shards;
mod org_routes;
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

/// The static assets binding (public/): the dashboard and the API document.
const ASSETS_BINDING: &str = "ASSETS";

use http::{call_wallet, error_response, json_response, path_segments, read_body, Answer, Failure};
use serde_json::json;
use settings::{settings, Settings};
use wallet_core::api::{
    allow_header, parse_body, routes_of, Access, ApiError, BenchRequest, Command,
    DevPaymentMethodBody, Route, SignupBody,
};
use wallet_core::time::{parse_utc, rfc3339};
use wallet_core::token::{self, Claims, Role};
use worker::*;

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

fn authorize(claims: &Claims, org: &str, allowed: &[Role]) -> std::result::Result<(), ApiError> {
    if claims.org != org || !allowed.contains(&claims.role) {
        return Err(ApiError::Forbidden);
    }
    Ok(())
}

async fn route(req: Request, env: &Env, settings: &Settings) -> Answer {
    let path = req.path();
    let parts = path_segments(&path);
    // Development and benchmark routes do not exist outside development.
    if matches!(parts.first(), Some(&("dev" | "bench"))) && !settings.development {
        return Err(ApiError::NotFound.into());
    }
    match (parts.as_slice(), req.method()) {
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
    let Some(this_route) = routes.into_iter().find(|r| r.method == method_name) else {
        let unknown = routes_of(&parts).is_empty();
        return Err(if unknown {
            ApiError::NotFound
        } else {
            ApiError::MethodNotAllowed
        }
        .into());
    };
    match this_route.access {
        Access::Open => open_route(req, env, settings, &parts, this_route).await,
        Access::Token | Access::Org(_) => token_route(req, env, settings, &parts, this_route).await,
    }
}

/// The routes without a token: health, the document, development helpers
/// and Stripe's webhook (which checks its own signature).
async fn open_route(
    mut req: Request,
    env: &Env,
    settings: &Settings,
    parts: &[&str],
    this_route: &'static Route,
) -> Answer {
    let limit = this_route.body_limit;
    match parts {
        ["healthz"] => Ok(json_response(200, &json!({"status": "ok"}))?),
        ["openapi.json"] => openapi_document(env).await,
        ["dev", "token"] => {
            let body = read_body(&mut req, limit).await?;
            Ok(dev_token(&body, settings)?)
        }
        ["dev", "orgs", org, "payment-method"] => {
            if !wallet_core::api::is_org_id(org) {
                return Err(ApiError::invalid("org", "must be a valid organization id").into());
            }
            let body: DevPaymentMethodBody = parse_body(&read_body(&mut req, limit).await?)?;
            let now_ms = request_now(&req, settings)?;
            purchases::dev_payment_method(env, settings, org, body, now_ms).await
        }
        ["stripe", "webhook"] => webhook::receive(req, env, settings, limit).await,
        _ => Err(org_routes::unrouted(this_route)),
    }
}

/// `GET /openapi.json`: the document is the static asset public/openapi.json
/// (kept out of the wasm), answered by the Worker like every API route.
async fn openapi_document(env: &Env) -> Answer {
    let mut asset = env
        .assets(ASSETS_BINDING)?
        .fetch("https://assets.internal/openapi.json", None)
        .await?;
    if asset.status_code() != 200 {
        let status = asset.status_code();
        return Err(Error::RustError(format!("the openapi.json asset answered {status}")).into());
    }
    let response = Response::ok(asset.text().await?)?;
    response.headers().set("content-type", "application/json")?;
    Ok(response)
}

/// The routes that need a bearer token, checked against the table's access
/// before anything else is read.
async fn token_route(
    mut req: Request,
    env: &Env,
    settings: &Settings,
    parts: &[&str],
    this_route: &'static Route,
) -> Answer {
    let claims = authenticate(&req, settings)?;
    let now_ms = request_now(&req, settings)?;
    let roles = match this_route.access {
        Access::Org(roles) => roles,
        Access::Open | Access::Token => &[][..],
    };
    match parts {
        ["v1", "packs"] => purchases::packs(&settings.config),
        ["v1", "rates"] => {
            let now = wallet_core::time::from_millis(now_ms).ok_or(ApiError::Internal)?;
            let rates = wallet_core::api::rates_json(&settings.config.rate_card, now);
            Ok(json_response(200, &rates)?)
        }
        ["v1", "orgs"] => {
            let body: SignupBody = parse_body(&read_body(&mut req, this_route.body_limit).await?)?;
            body.validate()?;
            authorize(&claims, &body.org_id, roles)?;
            let org = body.org_id.clone();
            call_wallet(env, &org, now_ms, Command::Open(body)).await
        }
        ["v1", "orgs", org, rest @ ..] => {
            if !wallet_core::api::is_org_id(org) {
                let message = "must be 1 to 64 characters of A-Z, a-z, 0-9, _ or -";
                return Err(ApiError::invalid("org", message).into());
            }
            authorize(&claims, org, roles)?;
            let method = req.method();
            let call = org_routes::OrgCall {
                req,
                env,
                settings,
                route: this_route,
                claims,
                org: org.to_string(),
                now_ms,
            };
            org_routes::route(call, rest, method).await
        }
        _ => Err(org_routes::unrouted(this_route)),
    }
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
