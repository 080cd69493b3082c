//! The HTTP API's data: request bodies and their validation, the commands the
//! Worker sends to an organization's Durable Object, response shapes, and the
//! stable error codes every rejection maps to.

use crate::config::WalletConfig;
use crate::json_path::path_of_error;
use crate::money::Credits;
use crate::purchase::{ChargeOutcome, Purchase};
use crate::rate_card::{Usage, UsageEstimate, MAX_TOKENS};
use crate::time::rfc3339;
use crate::token::Role;
use crate::wallet::{Hold, LedgerEntry, Metadata, Rejection};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// One route of the HTTP surface: the home of what the Worker and the
/// OpenAPI document must agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Lower case, as OpenAPI spells it.
    pub method: &'static str,
    /// OpenAPI path template.
    pub path: &'static str,
    /// Largest request body read; 0 for routes that read none.
    pub body_limit: usize,
    /// Every status the route can answer (the document lists exactly these).
    /// A method the path does not take answers 405 with `Allow` instead.
    pub statuses: &'static [u16],
    /// Who may call it.
    pub access: Access,
}

/// Who may call a route: the Worker checks this before anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No bearer token: health, the document, development helpers (404
    /// outside development) and Stripe's signed webhook.
    Open,
    /// Any valid token.
    Token,
    /// A token of the organization named (by the path, or by the body of
    /// the signup hook) with one of these roles.
    Org(&'static [Role]),
}

pub const ANY_ROLE: &[Role] = &[Role::Owner, Role::Admin, Role::Member, Role::Viewer];
pub const ANY_ROLE_OR_SERVICE: &[Role] = &[
    Role::Owner,
    Role::Admin,
    Role::Member,
    Role::Viewer,
    Role::Service,
];
pub const OWNER: &[Role] = &[Role::Owner];
pub const OWNER_OR_ADMIN: &[Role] = &[Role::Owner, Role::Admin];
pub const SERVICE: &[Role] = &[Role::Service];

const fn route(
    method: &'static str,
    path: &'static str,
    body_limit: usize,
    statuses: &'static [u16],
    access: Access,
) -> Route {
    Route {
        method,
        path,
        body_limit,
        statuses,
        access,
    }
}

/// Answers of a route with no body and no token.
const PUBLIC_READ: &[u16] = &[200, 500];
/// Answers of a development route (404 outside development).
const DEV_TOKEN: &[u16] = &[200, 400, 404, 413, 422, 500];
/// An organization's read route: 422 names a bad `org`, query or `X-Dev-Now`.
const ORG_READ: &[u16] = &[200, 401, 403, 404, 422, 500];
/// A read that costs a shard or Stripe work: ORG_READ plus 429 `rate_limited`.
const ORG_LIMITED_READ: &[u16] = &[200, 401, 403, 404, 422, 429, 500];
/// An organization's route with a JSON body.
const ORG_WRITE: &[u16] = &[200, 400, 401, 403, 404, 413, 422, 500];
/// Debits and holds: ORG_WRITE answering 201, plus 402, 409 and 429.
/// And 507 `ledger_storage_full` where a debit may be refused (SPEC §11).
const ORG_SPEND: &[u16] = &[201, 400, 401, 402, 403, 404, 409, 413, 422, 429, 500, 507];
const HOLD_CLOSE: &[u16] = &[200, 400, 401, 403, 404, 409, 413, 422, 500];
/// A capture moves credits: HOLD_CLOSE plus 507 `ledger_storage_full`.
const HOLD_CAPTURE: &[u16] = &[200, 400, 401, 403, 404, 409, 413, 422, 500, 507];

/// Every route the Worker answers. The OpenAPI document must describe
/// exactly these, each with exactly its statuses (checked by a test).
pub const ROUTES: &[Route] = &[
    route("get", "/healthz", 0, PUBLIC_READ, Access::Open),
    route("get", "/openapi.json", 0, PUBLIC_READ, Access::Open),
    route(
        "post",
        "/dev/token",
        MAX_BODY_BYTES,
        DEV_TOKEN,
        Access::Open,
    ),
    route(
        "post",
        "/dev/orgs/{org}/payment-method",
        MAX_BODY_BYTES,
        &[200, 400, 404, 413, 422, 500, 503],
        Access::Open,
    ),
    route(
        "post",
        "/v1/orgs",
        MAX_BODY_BYTES,
        &[200, 201, 400, 401, 403, 409, 413, 422, 500],
        Access::Org(SERVICE),
    ),
    route(
        "get",
        "/v1/orgs/{org}/wallet",
        0,
        ORG_READ,
        Access::Org(ANY_ROLE_OR_SERVICE),
    ),
    route(
        "put",
        "/v1/orgs/{org}/daily-cap",
        MAX_BODY_BYTES,
        ORG_WRITE,
        Access::Org(OWNER),
    ),
    route(
        "put",
        "/v1/orgs/{org}/feature-caps",
        MAX_BODY_BYTES,
        ORG_WRITE,
        Access::Org(OWNER),
    ),
    route(
        "get",
        "/v1/orgs/{org}/audit",
        0,
        ORG_READ,
        Access::Org(OWNER_OR_ADMIN),
    ),
    route(
        "get",
        "/v1/orgs/{org}/auto-top-up",
        0,
        ORG_READ,
        Access::Org(ANY_ROLE),
    ),
    // 409 payment_method_required; 503 when Stripe does not answer the check.
    route(
        "put",
        "/v1/orgs/{org}/auto-top-up",
        MAX_BODY_BYTES,
        &[200, 400, 401, 403, 404, 409, 413, 422, 500, 503],
        Access::Org(OWNER),
    ),
    route(
        "get",
        "/v1/orgs/{org}/alerts",
        0,
        ORG_READ,
        Access::Org(ANY_ROLE),
    ),
    route(
        "put",
        "/v1/orgs/{org}/alerts",
        MAX_BODY_BYTES,
        ORG_WRITE,
        Access::Org(OWNER),
    ),
    route(
        "get",
        "/v1/orgs/{org}/events",
        0,
        ORG_READ,
        Access::Org(OWNER_OR_ADMIN),
    ),
    route(
        "post",
        "/v1/orgs/{org}/debits",
        MAX_BODY_BYTES,
        ORG_SPEND,
        Access::Org(SERVICE),
    ),
    route(
        "post",
        "/v1/orgs/{org}/debits/batch",
        MAX_BATCH_BODY_BYTES,
        &[200, 400, 401, 403, 404, 413, 422, 500, 507],
        Access::Org(SERVICE),
    ),
    route(
        "post",
        "/v1/orgs/{org}/holds",
        MAX_BODY_BYTES,
        ORG_SPEND,
        Access::Org(SERVICE),
    ),
    route(
        "post",
        "/v1/orgs/{org}/holds/{hold_id}/capture",
        MAX_BODY_BYTES,
        HOLD_CAPTURE,
        Access::Org(SERVICE),
    ),
    route(
        "post",
        "/v1/orgs/{org}/holds/{hold_id}/release",
        MAX_BODY_BYTES,
        HOLD_CLOSE,
        Access::Org(SERVICE),
    ),
    route(
        "get",
        "/v1/orgs/{org}/ledger",
        0,
        ORG_READ,
        Access::Org(OWNER_OR_ADMIN),
    ),
    route(
        "get",
        "/v1/orgs/{org}/ledger/segments",
        0,
        ORG_READ,
        Access::Org(OWNER_OR_ADMIN),
    ),
    route(
        "get",
        "/v1/orgs/{org}/ledger/storage",
        0,
        ORG_READ,
        Access::Org(OWNER_OR_ADMIN),
    ),
    route(
        "post",
        "/v1/orgs/{org}/ledger/refill",
        MAX_BODY_BYTES,
        &[202, 400, 401, 403, 404, 413, 422, 500],
        Access::Org(SERVICE),
    ),
    // 422: only an `X-Dev-Now` that is not a time (development).
    route("get", "/v1/packs", 0, &[200, 401, 422, 500], Access::Token),
    route("get", "/v1/rates", 0, &[200, 401, 422, 500], Access::Token),
    route(
        "get",
        "/v1/orgs/{org}/payment-method",
        0,
        &[200, 401, 403, 404, 422, 429, 500, 503],
        Access::Org(ANY_ROLE),
    ),
    route(
        "post",
        "/v1/orgs/{org}/purchases",
        MAX_BODY_BYTES,
        &[201, 400, 401, 403, 404, 409, 413, 422, 500, 503],
        Access::Org(OWNER),
    ),
    route(
        "get",
        "/v1/orgs/{org}/purchases/{purchase_id}",
        0,
        ORG_READ,
        Access::Org(ANY_ROLE),
    ),
    // Unauthenticated: a bad or stale signature is 400; 5xx makes Stripe retry.
    route(
        "post",
        "/stripe/webhook",
        MAX_WEBHOOK_BODY_BYTES,
        &[200, 400, 413, 500, 503],
        Access::Open,
    ),
    route(
        "get",
        "/v1/orgs/{org}/transactions",
        0,
        ORG_LIMITED_READ,
        Access::Org(ANY_ROLE),
    ),
    route(
        "get",
        "/v1/orgs/{org}/usage",
        0,
        ORG_LIMITED_READ,
        Access::Org(ANY_ROLE),
    ),
];

fn template_matches(template: &str, segments: &[&str]) -> bool {
    let parts: Vec<&str> = template.trim_start_matches('/').split('/').collect();
    parts.len() == segments.len()
        && parts
            .iter()
            .zip(segments)
            .all(|(part, segment)| part.starts_with('{') || part == segment)
}

/// The routes of a request path (its segments), one per method it takes;
/// none for a path that is not the API's.
pub fn routes_of(segments: &[&str]) -> Vec<&'static Route> {
    ROUTES
        .iter()
        .filter(|r| template_matches(r.path, segments))
        .collect()
}

/// The `Allow` header of a path's 405: its methods, upper case.
pub fn allow_header(routes: &[&Route]) -> String {
    let methods: Vec<String> = routes.iter().map(|r| r.method.to_uppercase()).collect();
    methods.join(", ")
}

/// Most debits in one batch.
pub const MAX_BATCH_ITEMS: usize = 1000;
/// A batch's body limit: 1,000 items do not fit the usual 16 KiB.
pub const MAX_BATCH_BODY_BYTES: usize = 512 * 1024;

/// Largest request body accepted (16 KiB).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Largest Stripe webhook body accepted: events embed whole objects.
pub const MAX_WEBHOOK_BODY_BYTES: usize = 512 * 1024;
pub const MAX_ORG_ID_CHARS: usize = 64;
pub const MAX_REF_ID_CHARS: usize = 128;
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
pub const MAX_METADATA_KEYS: usize = 20;
pub const MAX_METADATA_KEY_CHARS: usize = 40;
pub const MAX_METADATA_VALUE_CHARS: usize = 500;
pub use crate::paging::{list_limit, list_params, Invalid, LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    Unauthorized,
    Forbidden,
    WalletNotFound,
    NotFound,
    MethodNotAllowed,
    InvalidJson(String),
    InvalidRequest {
        field: String,
        message: String,
    },
    /// The body passed the route's limit (`Route::body_limit`).
    PayloadTooLarge {
        limit_bytes: usize,
    },
    IdempotencyKeyReused,
    /// A signup repeated for an existing organization with another owner.
    WalletOwnerConflict,
    /// A purchase needs a default payment method on the Stripe customer.
    PaymentMethodRequired,
    PurchaseNotFound,
    /// Stripe could not be reached or did not answer in time; retrying with
    /// the same Idempotency-Key is safe.
    PaymentProviderUnavailable,
    /// A webhook whose `Stripe-Signature` is missing, wrong or stale.
    InvalidSignature,
    /// Too many reads of one kind (usage, transactions, CSV exports, payment
    /// method) for this organization; `Retry-After` says when to try again.
    RateLimited {
        retry_after_seconds: i64,
    },
    Rejected(Rejection),
    /// The organization's Durable Object is past `OBJECT_BYTES_BUDGET`
    /// (archiving has not kept up): spending is refused until it is not.
    LedgerStorageFull,
    Internal,
}

/// A value the domain refused is a 422 naming its field.
impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> ApiError {
        ApiError::InvalidRequest {
            field: invalid.field,
            message: invalid.message,
        }
    }
}

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.told().status
    }

    /// The stable snake_case code clients match on.
    pub fn code(&self) -> &'static str {
        self.told().code
    }

    /// Seconds a client should wait before retrying, for `Retry-After`.
    pub fn retry_after_seconds(&self, now: DateTime<Utc>) -> Option<i64> {
        match self {
            ApiError::Rejected(
                Rejection::DailyCapReached { resumes_at, .. }
                | Rejection::FeatureCapReached { resumes_at, .. },
            ) => {
                let ms = (*resumes_at - now).num_milliseconds().max(0);
                Some((ms + 999) / 1000)
            }
            ApiError::RateLimited {
                retry_after_seconds,
            } => Some(*retry_after_seconds),
            _ => None,
        }
    }

    /// The JSON error body: `code`, `message` and the variant's details.
    /// Messages are written for people; nothing internal leaks.
    pub fn body(&self) -> Value {
        let told = self.told();
        let mut error = Map::new();
        error.insert("code".into(), json!(told.code));
        for (name, value) in told.details {
            error.insert(name.into(), value);
        }
        error.insert("message".into(), json!(told.message));
        json!({ "error": error })
    }

    /// What a client is told of this error: one declaration per variant.
    fn told(&self) -> Told {
        match self {
            ApiError::Unauthorized => Told::new(401, "unauthorized", "A valid bearer token is required."),
            ApiError::Forbidden => Told::new(403, "forbidden", "This token may not perform this action on this organization."),
            ApiError::WalletNotFound => Told::new(404, "wallet_not_found", "No wallet exists for this organization."),
            ApiError::NotFound => Told::new(404, "not_found", "No such route."),
            ApiError::PurchaseNotFound => Told::new(404, "purchase_not_found", "No such purchase."),
            ApiError::MethodNotAllowed => Told::new(405, "method_not_allowed", "This route does not accept that method."),
            ApiError::InvalidJson(detail) => Told::new(400, "invalid_json", format!("The body is not valid JSON: {detail}")),
            ApiError::InvalidSignature => Told::new(400, "invalid_signature", "The Stripe-Signature header is missing, invalid or too old."),
            ApiError::InvalidRequest { field, message } => {
                Told::new(422, "invalid_request", format!("{field} {message}")).with("field", json!(field))
            }
            ApiError::PayloadTooLarge { limit_bytes } => Told::new(
                413,
                "payload_too_large",
                format!("The body is larger than this route's limit of {limit_bytes} bytes."),
            )
            .with("limit_bytes", json!(limit_bytes)),
            ApiError::IdempotencyKeyReused => Told::new(409, "idempotency_key_reused", "This Idempotency-Key was already used with a different request."),
            ApiError::WalletOwnerConflict => Told::new(409, "wallet_owner_conflict", "This organization already has a wallet with a different owner."),
            ApiError::PaymentMethodRequired => Told::new(409, "payment_method_required", "Add a default payment method to the organization before buying credits."),
            ApiError::PaymentProviderUnavailable => Told::new(503, "payment_provider_unavailable", "The payment provider is unavailable; retry with the same Idempotency-Key."),
            ApiError::RateLimited { retry_after_seconds } => Told::new(
                429,
                "rate_limited",
                format!("Too many reads of this kind for this organization; retry in {retry_after_seconds} seconds."),
            ),
            ApiError::LedgerStorageFull => Told::new(507, "ledger_storage_full", "This organization's ledger storage is full until its oldest entries are archived; retry later."),
            ApiError::Internal => Told::new(500, "internal_error", "Something went wrong on our side; the request may be retried."),
            ApiError::Rejected(r) => rejection_told(r),
        }
    }
}

/// What a client is told of an error: status, code, message and details.
struct Told {
    status: u16,
    code: &'static str,
    message: String,
    details: Vec<(&'static str, Value)>,
}

impl Told {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Told {
        Told {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    fn with(mut self, name: &'static str, value: Value) -> Told {
        self.details.push((name, value));
        self
    }
}

/// What a client is told of a refused operation.
fn rejection_told(r: &Rejection) -> Told {
    match r {
        Rejection::InsufficientCredits { .. }
        | Rejection::DailyCapReached { .. }
        | Rejection::FeatureCapReached { .. } => spend_refusal_told(r),
        Rejection::FeatureCapOutOfRange { feature, max } => {
            let field = format!("caps.{feature}");
            let message = if max.is_positive() {
                format!("{field} must be greater than 0 and at most the daily cap, {max}")
            } else {
                format!("{field} is not a feature")
            };
            Told::new(422, "invalid_request", message).with("field", json!(field))
        }
        Rejection::AmountOutOfRange { max } => Told::new(
            422,
            "invalid_request",
            format!("amount must be greater than 0 and at most {max}"),
        )
        .with("field", json!("amount")),
        Rejection::DailyCapOutOfRange { max } => Told::new(
            422,
            "invalid_request",
            format!("daily_cap must be greater than 0 and at most {max}"),
        )
        .with("field", json!("daily_cap")),
        Rejection::HoldTtlOutOfRange { max_seconds } => Told::new(
            422,
            "invalid_request",
            format!("ttl_seconds must be between 1 and {max_seconds}"),
        )
        .with("field", json!("ttl_seconds")),
        Rejection::CaptureExceedsHold { held, requested } => Told::new(
            422,
            "invalid_request",
            "amount must be between 0 and the held amount",
        )
        .with("field", json!("amount"))
        .with("held", json!(held))
        .with("requested", json!(requested)),
        Rejection::TooManyActiveHolds { limit } => Told::new(
            409,
            "too_many_active_holds",
            "Too many holds are active; capture or release some first.",
        )
        .with("limit", json!(limit)),
        Rejection::HoldNotFound => Told::new(404, "hold_not_found", "No such hold."),
        Rejection::HoldNotActive { status } | Rejection::HoldAlreadyClosed { status } => Told::new(
            409,
            "hold_not_active",
            format!("The hold is {} and can no longer change.", status.as_str()),
        )
        .with("hold_status", json!(status.as_str())),
        Rejection::BalanceOverflow => Told::new(
            409,
            "balance_limit_reached",
            "The balance would exceed the largest amount a wallet holds.",
        ),
        Rejection::UnknownModel
        | Rejection::InvalidUsage { .. }
        | Rejection::UsageDoesNotMatchHold => usage_refusal_told(r),
    }
}

/// What a client is told of usage that cannot be priced.
fn usage_refusal_told(r: &Rejection) -> Told {
    match r {
        Rejection::UnknownModel => Told::new(
            422,
            "unknown_model",
            "The rate card has no rate in force for this model (see GET /v1/rates).",
        )
        .with("field", json!("usage.model")),
        Rejection::InvalidUsage { field } => Told::new(
            422,
            "invalid_request",
            format!(
                "usage.{field}: token counts are integers from 0 to {MAX_TOKENS}, cached_input_tokens at most input_tokens"
            ),
        )
        .with("field", json!(format!("usage.{field}"))),
        Rejection::UsageDoesNotMatchHold => Told::new(
            422,
            "invalid_request",
            "usage: this hold was not placed from a usage_estimate of this model; capture it by amount or by the estimate's model",
        )
        .with("field", json!("usage")),
        _ => unreachable!("only usage refusals come here"),
    }
}

/// What a client is told of a debit or hold refused for want of credits or
/// cap room.
fn spend_refusal_told(r: &Rejection) -> Told {
    match r {
        Rejection::InsufficientCredits { available, requested } => {
            Told::new(402, "insufficient_credits", "Not enough credits are available for this operation.")
                .with("available", json!(available))
                .with("requested", json!(requested))
        }
        Rejection::DailyCapReached { resumes_at, daily_cap, cap_remaining, requested } => Told::new(
            429,
            "daily_cap_reached",
            "The daily spend cap is reached; AI features resume at 00:00 UTC.",
        )
        .with("resumes_at", json!(rfc3339(*resumes_at)))
        .with("daily_cap", json!(daily_cap))
        .with("cap_remaining", json!(cap_remaining))
        .with("requested", json!(requested)),
        Rejection::FeatureCapReached { feature, resumes_at, feature_cap, cap_remaining, requested } => Told::new(
            429,
            "feature_cap_reached",
            format!("The daily cap of {feature} is reached; it resumes at 00:00 UTC, other features go on."),
        )
        .with("feature", json!(feature))
        .with("resumes_at", json!(rfc3339(*resumes_at)))
        .with("feature_cap", json!(feature_cap))
        .with("cap_remaining", json!(cap_remaining))
        .with("requested", json!(requested)),
        _ => unreachable!("only spend refusals come here"),
    }
}

/// Parses a JSON body into `T`, naming the offending field on failure.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    parse_body_within(bytes, MAX_BODY_BYTES)
}

/// `parse_body` with a route-specific size limit.
pub fn parse_body_within<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, ApiError> {
    if bytes.len() > limit {
        return Err(ApiError::PayloadTooLarge { limit_bytes: limit });
    }
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => ApiError::invalid("body", "must be a JSON object"),
                Err(e) => ApiError::InvalidJson(e.to_string()),
            },
        );
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = T::deserialize(&mut de).map_err(|err| match err.classify() {
        serde_json::error::Category::Syntax
        | serde_json::error::Category::Eof
        | serde_json::error::Category::Io => ApiError::InvalidJson(err.to_string()),
        // A field error in a body that is not even JSON is a JSON error.
        serde_json::error::Category::Data => {
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Err(syntax) => ApiError::InvalidJson(syntax.to_string()),
                Ok(_) => data_error(&path_of_error(bytes, &err), &err.to_string()),
            }
        }
    })?;
    de.end().map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    Ok(value)
}

/// Turns serde's data error into a 422 naming the field.
fn data_error(path: &str, message: &str) -> ApiError {
    // serde's text is "... at line L column C"; the position adds nothing for a field error.
    let message = message.split(" at line ").next().unwrap_or(message);
    let quoted = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string)
    };
    if let Some(field) = quoted("missing field `") {
        return ApiError::invalid(&field, "is required");
    }
    if let Some(field) = quoted("unknown field `") {
        return ApiError::invalid(&field, "is not a known field");
    }
    let field = if path.is_empty() || path == "." {
        "body"
    } else {
        path
    };
    ApiError::invalid(field, message)
}

pub fn is_org_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_ORG_ID_CHARS
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_org_id(field: &str, text: &str) -> Result<(), ApiError> {
    if is_org_id(text) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("must be 1 to {MAX_ORG_ID_CHARS} characters of A-Z, a-z, 0-9, _ or -"),
        ))
    }
}

/// Caller references (user, project, customer ids): printable, bounded.
fn check_ref_id(field: &str, text: &str) -> Result<(), ApiError> {
    if text.is_empty()
        || text.chars().count() > MAX_REF_ID_CHARS
        || text.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(
            field,
            format!("must be 1 to {MAX_REF_ID_CHARS} printable characters"),
        ));
    }
    Ok(())
}

fn check_optional_ref(field: &str, text: &Option<String>) -> Result<(), ApiError> {
    text.as_deref().map_or(Ok(()), |t| check_ref_id(field, t))
}

fn check_feature(feature: &str, config: &WalletConfig) -> Result<(), ApiError> {
    if config.is_feature(feature) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "feature",
            format!("must be one of: {}", config.features.join(", ")),
        ))
    }
}

fn check_metadata(metadata: &Option<Metadata>, config: &WalletConfig) -> Result<(), ApiError> {
    let Some(metadata) = metadata else {
        return Ok(());
    };
    if metadata.len() > MAX_METADATA_KEYS {
        return Err(ApiError::invalid(
            "metadata",
            format!("may have at most {MAX_METADATA_KEYS} keys"),
        ));
    }
    for (key, value) in metadata {
        if key.is_empty() || key.chars().count() > MAX_METADATA_KEY_CHARS {
            return Err(ApiError::invalid(
                "metadata",
                format!("keys must be 1 to {MAX_METADATA_KEY_CHARS} characters"),
            ));
        }
        if value.chars().count() > MAX_METADATA_VALUE_CHARS {
            return Err(ApiError::invalid(
                &format!("metadata.{key}"),
                format!("must be at most {MAX_METADATA_VALUE_CHARS} characters"),
            ));
        }
    }
    let bytes = serde_json::to_string(metadata).map_or(usize::MAX, |json| json.len());
    if bytes > config.max_metadata_bytes {
        return Err(ApiError::invalid(
            "metadata",
            format!(
                "may take at most {} bytes of JSON in all (this one takes {bytes})",
                config.max_metadata_bytes
            ),
        ));
    }
    Ok(())
}

/// Token counts within bounds and a model the rate card knows (whether a
/// rate is in force is decided with the operation, at its instant).
fn check_usage(usage: &Usage, config: &WalletConfig) -> Result<(), ApiError> {
    let counts = [
        ("input_tokens", usage.input_tokens),
        ("cached_input_tokens", usage.cached_input_tokens),
        ("output_tokens", usage.output_tokens),
    ];
    if let Some((field, _)) = counts.iter().find(|(_, n)| *n > MAX_TOKENS) {
        return Err(ApiError::Rejected(Rejection::InvalidUsage { field }));
    }
    if usage.cached_input_tokens > usage.input_tokens {
        return Err(ApiError::Rejected(Rejection::InvalidUsage {
            field: "cached_input_tokens",
        }));
    }
    if !config.rate_card.knows(&usage.model) {
        return Err(ApiError::Rejected(Rejection::UnknownModel));
    }
    Ok(())
}

/// Exactly one of `amount` and `usage` (or `usage_estimate`), each valid.
fn check_amount_or_usage(
    amount: Option<Credits>,
    usage: Option<&Usage>,
    usage_field: &str,
    config: &WalletConfig,
) -> Result<(), ApiError> {
    match (amount, usage) {
        (Some(amount), None) => check_spend_amount(amount, config),
        (None, Some(usage)) => {
            check_usage(usage, config).map_err(|e| rename_usage_field(e, usage_field))
        }
        _ => Err(ApiError::invalid(
            "amount",
            format!("give exactly one of amount and {usage_field}"),
        )),
    }
}

/// Names a usage error's field under `usage_estimate` where that was sent.
fn rename_usage_field(e: ApiError, usage_field: &str) -> ApiError {
    match e {
        ApiError::Rejected(Rejection::InvalidUsage { field }) if usage_field != "usage" => {
            ApiError::invalid(
                &format!("{usage_field}.{field}"),
                format!("token counts are integers from 0 to {MAX_TOKENS}"),
            )
        }
        other => other,
    }
}

/// Deserializes a field that may be absent but, when present, is never null.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

fn check_spend_amount(amount: Credits, config: &WalletConfig) -> Result<(), ApiError> {
    if !amount.is_positive() || amount > config.max_operation {
        return Err(ApiError::Rejected(Rejection::AmountOutOfRange {
            max: config.max_operation,
        }));
    }
    Ok(())
}

/// The `Idempotency-Key` header: required on debits, holds and purchases.
pub fn check_idempotency_key(header: Option<&str>) -> Result<String, ApiError> {
    let field = "Idempotency-Key";
    let key = header.ok_or_else(|| ApiError::invalid(field, "header is required"))?;
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_CHARS
        || !key.bytes().all(|b| (0x21..=0x7e).contains(&b))
    {
        return Err(ApiError::invalid(
            field,
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters"),
        ));
    }
    Ok(key.to_string())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignupBody {
    pub org_id: String,
    pub owner_id: String,
    #[serde(default)]
    pub stripe_customer_id: Option<String>,
}

impl SignupBody {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_org_id("org_id", &self.org_id)?;
        check_ref_id("owner_id", &self.owner_id)?;
        if let Some(customer) = &self.stripe_customer_id {
            if !customer.starts_with("cus_")
                || customer.len() > 64
                || !customer
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(ApiError::invalid(
                    "stripe_customer_id",
                    "must be a Stripe customer id (cus_…)",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebitBody {
    pub feature: String,
    /// Absent when priced from `usage`; skipped when absent so the
    /// fingerprint of a debit by amount is what it always was.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub amount: Option<Credits>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

impl DebitBody {
    pub fn validate(&self, config: &WalletConfig) -> Result<(), ApiError> {
        check_feature(&self.feature, config)?;
        check_amount_or_usage(self.amount, self.usage.as_ref(), "usage", config)?;
        check_optional_ref("user_id", &self.user_id)?;
        check_optional_ref("project_id", &self.project_id)?;
        check_metadata(&self.metadata, config)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    debits: Vec<Value>,
}

/// One batch item as sent: a debit body plus its own idempotency key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItemBody {
    idempotency_key: String,
    feature: String,
    #[serde(default, deserialize_with = "present")]
    amount: Option<Credits>,
    #[serde(default, deserialize_with = "present")]
    usage: Option<Usage>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    metadata: Option<Metadata>,
}

/// A batch item after validation: a debit to decide, or its error already.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchSlot {
    Debit {
        idempotency_key: String,
        fingerprint: String,
        body: DebitBody,
    },
    Invalid {
        idempotency_key: Option<String>,
        status: u16,
        error: Value,
    },
}

/// Parses a batch: the envelope must be valid as a whole (at most
/// `MAX_BATCH_ITEMS` items); each item is validated on its own, so one bad
/// item becomes that item's error and the others still run.
pub fn parse_batch(bytes: &[u8], config: &WalletConfig) -> Result<Vec<BatchSlot>, ApiError> {
    let batch: BatchBody = parse_body_within(bytes, MAX_BATCH_BODY_BYTES)?;
    if batch.debits.is_empty() || batch.debits.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::invalid(
            "debits",
            format!("must list 1 to {MAX_BATCH_ITEMS} debits"),
        ));
    }
    Ok(batch
        .debits
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            let key = value
                .get("idempotency_key")
                .and_then(Value::as_str)
                .map(str::to_string);
            match batch_item(value, config) {
                Ok(slot) => slot,
                Err(err) => {
                    let err = match err {
                        ApiError::InvalidRequest { field, message } => ApiError::InvalidRequest {
                            field: format!("debits[{index}].{field}"),
                            message,
                        },
                        other => other,
                    };
                    BatchSlot::Invalid {
                        idempotency_key: key,
                        status: err.status(),
                        error: err.body()["error"].clone(),
                    }
                }
            }
        })
        .collect())
}

fn batch_item(value: Value, config: &WalletConfig) -> Result<BatchSlot, ApiError> {
    if !value.is_object() {
        return Err(ApiError::invalid("item", "must be a JSON object"));
    }
    // From its text, so a data error's position names the field.
    let text = serde_json::to_vec(&value).expect("a JSON value serializes");
    let item: BatchItemBody = serde_json::from_slice(&text)
        .map_err(|err| data_error(&path_of_error(&text, &err), &err.to_string()))?;
    let idempotency_key = check_idempotency_key(Some(&item.idempotency_key)).map_err(|_| {
        ApiError::invalid(
            "idempotency_key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters"),
        )
    })?;
    let body = DebitBody {
        feature: item.feature,
        amount: item.amount,
        usage: item.usage,
        user_id: item.user_id,
        project_id: item.project_id,
        metadata: item.metadata,
    };
    body.validate(config)?;
    // Same fingerprint as the single-debit route: a key is one debit either way.
    let fingerprint = fingerprint("debit", &body);
    Ok(BatchSlot::Debit {
        idempotency_key,
        fingerprint,
        body,
    })
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldBody {
    pub feature: String,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub amount: Option<Credits>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub usage_estimate: Option<UsageEstimate>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
}

impl HoldBody {
    pub fn validate(&self, config: &WalletConfig) -> Result<(), ApiError> {
        check_feature(&self.feature, config)?;
        let estimate = self.usage_estimate.as_ref().map(UsageEstimate::as_usage);
        check_amount_or_usage(self.amount, estimate.as_ref(), "usage_estimate", config)?;
        check_optional_ref("user_id", &self.user_id)?;
        check_optional_ref("project_id", &self.project_id)?;
        match self.ttl_seconds {
            Some(ttl) if !(1..=config.hold_ttl_max_seconds).contains(&ttl) => {
                Err(ApiError::Rejected(Rejection::HoldTtlOutOfRange {
                    max_seconds: config.hold_ttl_max_seconds,
                }))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureBody {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub amount: Option<Credits>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub usage: Option<Usage>,
}

impl CaptureBody {
    /// Exactly one of `amount` (0 or more) and `usage`.
    pub fn validate(&self, config: &WalletConfig) -> Result<(), ApiError> {
        match (&self.amount, &self.usage) {
            (Some(_), None) => Ok(()),
            (None, Some(usage)) => check_usage(usage, config),
            _ => Err(ApiError::invalid(
                "amount",
                "give exactly one of amount and usage",
            )),
        }
    }
}

/// A release takes no fields; an empty body is allowed too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseBody {
    pub pack_id: String,
}

impl PurchaseBody {
    pub fn validate(&self, config: &WalletConfig) -> Result<(), ApiError> {
        if config.pack(&self.pack_id).is_none() {
            let ids: Vec<&str> = config.packs.iter().map(|p| p.id.as_str()).collect();
            return Err(ApiError::invalid(
                "pack_id",
                format!("must be one of: {}", ids.join(", ")),
            ));
        }
        Ok(())
    }
}

/// Development only: makes a Stripe test payment method the organization's
/// default, e.g. `pm_card_visa`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevPaymentMethodBody {
    pub payment_method: String,
}

impl DevPaymentMethodBody {
    pub fn validate(&self) -> Result<(), ApiError> {
        let pm = &self.payment_method;
        if !pm.starts_with("pm_")
            || pm.len() > 64
            || !pm.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(ApiError::invalid(
                "payment_method",
                "must be a Stripe payment method id such as pm_card_visa",
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DailyCapBody {
    pub daily_cap: Credits,
}

impl DailyCapBody {
    pub fn validate(&self, config: &WalletConfig) -> Result<(), ApiError> {
        if !self.daily_cap.is_positive() || self.daily_cap > config.daily_cap_max {
            return Err(ApiError::Rejected(Rejection::DailyCapOutOfRange {
                max: config.daily_cap_max,
            }));
        }
        Ok(())
    }
}

/// `PUT …/feature-caps`: `{"caps": {"auto_triage": "200", "chat": null}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureCapsBody {
    pub caps: std::collections::BTreeMap<String, Option<Credits>>,
}

impl FeatureCapsBody {
    /// Features must be configured ones; caps positive and at most the
    /// largest daily cap (the wallet checks them against its own cap).
    pub fn validate(&self, config: &WalletConfig) -> Result<(), ApiError> {
        if self.caps.is_empty() {
            return Err(ApiError::invalid("caps", "must name at least one feature"));
        }
        for (feature, cap) in &self.caps {
            let field = format!("caps.{feature}");
            if !config.is_feature(feature) {
                return Err(ApiError::invalid(&field, "is not a feature"));
            }
            if let Some(cap) = cap {
                if !cap.is_positive() || *cap > config.daily_cap_max {
                    return Err(ApiError::invalid(
                        &field,
                        format!(
                            "must be greater than 0 and at most the daily cap (at most {})",
                            config.daily_cap_max
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A stable digest of a request, to tell a replay from a reuse of its key.
pub fn fingerprint(route: &str, body: &impl Serialize) -> String {
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(body).expect("request bodies serialize"));
    hex::encode(&hasher.finalize()[..16])
}

/// What the Worker asks an organization's Durable Object to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    Open(SignupBody),
    View,
    SetDailyCap {
        body: DailyCapBody,
        actor: crate::audit::Actor,
    },
    SetFeatureCaps {
        body: FeatureCapsBody,
        actor: crate::audit::Actor,
    },
    Debit {
        idempotency_key: String,
        fingerprint: String,
        body: DebitBody,
    },
    DebitBatch {
        items: Vec<BatchSlot>,
    },
    PlaceHold {
        idempotency_key: String,
        fingerprint: String,
        body: HoldBody,
    },
    Capture {
        hold_id: String,
        body: CaptureBody,
    },
    Release {
        hold_id: String,
    },
    /// The organization's Stripe customer: `{"stripe_customer_id": …}`.
    StripeCustomer,
    /// Records the Stripe customer unless one is recorded; answers the one kept.
    SetStripeCustomer {
        stripe_customer_id: String,
    },
    /// A purchase request arrives: answers a [`PurchaseStartReply`]; writes
    /// only to claim a resend of an unanswered charge.
    PurchaseStart {
        purchase_id: String,
        idempotency_key: String,
        fingerprint: String,
        pack_id: String,
    },
    /// Creates the purchase about to be charged to `payment_method_id` (or,
    /// when a concurrent request did first, answers as `PurchaseStart`).
    PurchaseOpen {
        purchase_id: String,
        idempotency_key: String,
        fingerprint: String,
        pack_id: String,
        payment_method_id: String,
    },
    /// Answers the stored [`Purchase`].
    PurchaseGet {
        purchase_id: String,
    },
    /// Applies a charge outcome (the purchase's own Stripe answer, a webhook
    /// or a refresh) and answers the purchase, if one is known.
    PurchaseSettle {
        purchase_id: Option<String>,
        outcome: ChargeOutcome,
    },
    /// `charge.dispute.created` for one of this organization's payments.
    Dispute {
        payment_intent_id: String,
        dispute_id: String,
    },
    /// `charge.refunded` for one of this organization's payments.
    Refund {
        payment_intent_id: String,
        refund: crate::stripe::ChargeRefund,
    },
    /// `charge.dispute.closed` for one of this organization's payments.
    DisputeClosed {
        payment_intent_id: String,
        dispute_id: String,
        outcome: crate::stripe::DisputeOutcome,
    },
    /// The D1 shard that holds this organization's reports: `{"ledger_shard": …}`.
    LedgerShard,
    /// `GET …/auto-top-up`.
    AutoTopUp,
    /// `PUT …/auto-top-up`; the Worker checked the payment method on file
    /// when it enables.
    SetAutoTopUp {
        body: crate::auto_top_up::AutoTopUpBody,
        actor: crate::audit::Actor,
    },
    /// `GET …/alerts`.
    Alerts,
    SetAlerts {
        body: crate::events::AlertsBody,
        actor: crate::audit::Actor,
    },
    /// Auto top-up's charge is due (sent by the object's alarm): the default
    /// payment method on file now, `None` when there is none. Answers a
    /// [`PurchaseStartReply::Existing`].
    AutoTopUpSend {
        purchase_id: String,
        payment_method_id: Option<String>,
    },
}

/// The Durable Object's answer to `PurchaseStart` and `PurchaseOpen`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PurchaseStartReply {
    /// No purchase has this key; nothing was written.
    New { stripe_customer_id: Option<String> },
    /// The purchase; `send_charge`: this request must send the charge request.
    Existing {
        purchase: Box<Purchase>,
        send_charge: bool,
    },
}

/// The Durable Object's answer to `PurchaseSettle` and `Dispute`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseReply {
    pub purchase: Option<Purchase>,
}

/// The Durable Object's answer to the customer commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerReply {
    pub stripe_customer_id: Option<String>,
}

/// Everything asked of an organization's Durable Object, one kind per way
/// it is answered, each matched in one place in the object.
// One per request, deserialized and moved once: boxing the large variant
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalletRequest {
    /// Decided by the machine on a copy of the wallet, committed, answered.
    Decide(Command),
    /// A page of the object's own tables; nothing is decided.
    Read(Query),
    /// The outboxes' delivery: events to the queue consumer, entries to the
    /// organization's D1 shard.
    Outbox(OutboxRequest),
    /// `make bench`'s floor and counters.
    Bench(BenchRequest),
}

/// A page of the object's own tables, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    Ledger(crate::ledger::LedgerQuery),
    Audit(crate::audit::AuditQuery),
    Events(crate::events::EventsQuery),
    /// The ledger's sealed segments, oldest first.
    Segments(crate::archive::SegmentsQuery),
    /// The object's storage: live and archived entries, bytes and budget.
    Storage,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxRequest {
    /// The oldest events not yet delivered, in order (the queue consumer).
    EventsPending { limit: u32 },
    /// The receiver answered 2xx to event `seq`.
    EventDelivered { seq: u64 },
    /// An attempt to deliver event `seq` failed; answers its attempts so far.
    EventFailed { seq: u64 },
    /// Checks the shard's watermark at once and sends it whatever it lacks
    /// (an operator refilling a restored or emptied shard).
    RefillShard,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BenchRequest {
    /// Answer at once, touching nothing.
    Ping,
    /// Storage rows this instance has written.
    StorageStats,
}

impl From<Command> for WalletRequest {
    fn from(command: Command) -> WalletRequest {
        WalletRequest::Decide(command)
    }
}

impl From<Query> for WalletRequest {
    fn from(query: Query) -> WalletRequest {
        WalletRequest::Read(query)
    }
}

impl From<OutboxRequest> for WalletRequest {
    fn from(request: OutboxRequest) -> WalletRequest {
        WalletRequest::Outbox(request)
    }
}

impl From<BenchRequest> for WalletRequest {
    fn from(request: BenchRequest) -> WalletRequest {
        WalletRequest::Bench(request)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The request's time, milliseconds since the Unix epoch.
    pub now_ms: i64,
    pub request: WalletRequest,
}

/// A ledger entry as clients see it.
pub fn entry_json(entry: &LedgerEntry) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), json!(entry.id));
    out.insert("kind".into(), json!(entry.kind.as_str()));
    out.insert("amount".into(), json!(entry.amount));
    out.insert("balance_after".into(), json!(entry.balance_after));
    out.insert("created_at".into(), json!(rfc3339(entry.created_at)));
    if entry.kind.is_usage() {
        // Spending entries always carry their attribution, null when absent.
        out.insert("feature".into(), json!(entry.feature));
        out.insert("user_id".into(), json!(entry.user_id));
        out.insert("project_id".into(), json!(entry.project_id));
        out.insert("usage_day".into(), json!(entry.usage_day));
    }
    let optional = [
        ("hold_id", entry.hold_id.as_ref().map(|v| json!(v))),
        ("pack_id", entry.pack_id.as_ref().map(|v| json!(v))),
        ("amount_cents", entry.amount_cents.map(|v| json!(v))),
        ("currency", entry.currency.as_ref().map(|v| json!(v))),
        (
            "payment_intent_id",
            entry.payment_intent_id.as_ref().map(|v| json!(v)),
        ),
        ("purchase_id", entry.purchase_id.as_ref().map(|v| json!(v))),
        ("source", entry.source.map(|v| json!(v.as_str()))),
        ("metadata", entry.metadata.as_ref().map(|v| json!(v))),
        ("usage", entry.usage.as_ref().map(|v| json!(v))),
        ("unbilled", entry.unbilled.map(|v| json!(v))),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            out.insert(name.into(), value);
        }
    }
    Value::Object(out)
}

/// `GET /v1/rates`: every rate, ordered by model then `effective_from`,
/// each saying whether it is its model's rate in force at `now`.
pub fn rates_json(card: &crate::rate_card::RateCard, now: DateTime<Utc>) -> Value {
    let data: Vec<Value> = card
        .rates()
        .iter()
        .map(|rate| {
            json!({
                "id": rate.id,
                "model": rate.model,
                "input_per_million": rate.input_per_million,
                "cached_input_per_million": rate.cached_input_per_million,
                "output_per_million": rate.output_per_million,
                "per_request": rate.per_request,
                "effective_from": rfc3339(rate.effective_from),
                "in_force": card.is_in_force(rate, now),
            })
        })
        .collect();
    json!({ "data": data })
}

/// A hold as clients see it, with its capture entry when there is one.
pub fn hold_json(hold: &Hold, capture: Option<&LedgerEntry>) -> Value {
    let mut out = json!({
        "id": hold.id,
        "status": hold.status.as_str(),
        "amount": hold.amount,
        "feature": hold.feature,
        "user_id": hold.user_id,
        "project_id": hold.project_id,
        "created_at": rfc3339(hold.created_at),
        "expires_at": rfc3339(hold.expires_at),
        "captured_amount": hold.captured_amount,
    });
    if let Some(pricing) = &hold.pricing {
        out["usage_estimate"] = json!(pricing.estimate);
        out["rate_id"] = json!(pricing.rate.id);
    }
    if let Some(usage) = &hold.captured_usage {
        out["captured_usage"] = json!(usage);
        out["unbilled"] = json!(hold.unbilled.unwrap_or(Credits::ZERO));
    }
    if hold.status == crate::wallet::HoldStatus::Captured {
        out["entry"] = capture.map(entry_json).unwrap_or(Value::Null);
    }
    out
}

#[cfg(test)]
mod tests {
    /// The OpenAPI 3.1 description the Worker serves at `/openapi.json`: a
    /// static asset, read through the `ASSETS` binding (kept out of the wasm).
    const OPENAPI_JSON: &str = include_str!("../../../public/openapi.json");
    use super::*;
    use proptest::prelude::*;

    fn field_of(err: ApiError) -> String {
        match err {
            ApiError::InvalidRequest { field, .. } => field,
            other => panic!("expected invalid_request, got {other:?}"),
        }
    }

    /// `parse_body` as it was with the path tracked while deserializing
    /// (serde_path_to_error): the reference the error-path scan must match.
    fn parse_tracking_paths<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return parse_body(bytes);
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                        Err(syntax) => ApiError::InvalidJson(syntax.to_string()),
                        Ok(_) => data_error(&path, &inner.to_string()),
                    }
                }
                _ => ApiError::InvalidJson(inner.to_string()),
            }
        })?;
        de.end().map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        Ok(value)
    }

    /// Any JSON value, a few levels deep.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e6f64..1e6).prop_map(|f| json!(f)),
            "[a-z0-9 .,:{}\\[\\]\"\\\\-]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_\"]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Valid bodies of every route, each with nested objects where it has them.
    fn valid_bodies() -> Vec<Value> {
        vec![
            json!({"feature": "chat", "amount": "1.5", "user_id": "u", "project_id": "p",
                   "metadata": {"k": "v"},
                   "usage": {"model": "gpt-4o", "input_tokens": 10, "cached_input_tokens": 2, "output_tokens": 3}}),
            json!({"feature": "chat", "amount": "2", "ttl_seconds": 60, "user_id": "u"}),
            json!({"amount": "1", "usage": {"model": "gpt-4o", "input_tokens": 1, "output_tokens": 1}}),
            json!({"org_id": "org_1", "owner_id": "u", "stripe_customer_id": "cus_1"}),
            json!({"daily_cap": "10"}),
            json!({"caps": {"chat": "5", "triage": null}}),
            json!({"lists": [1, 2, 3], "nested": {"more": [[4], [5, 6]]}}),
        ]
    }

    /// Every place in `value` where a value sits: (path of keys/indexes).
    fn places(value: &Value, at: Vec<Value>, out: &mut Vec<Vec<Value>>) {
        match value {
            Value::Object(map) => map.iter().for_each(|(k, v)| {
                let mut here = at.clone();
                here.push(json!(k));
                out.push(here.clone());
                places(v, here, out);
            }),
            Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| {
                let mut here = at.clone();
                here.push(json!(i));
                out.push(here.clone());
                places(v, here, out);
            }),
            _ => {}
        }
    }

    fn replace_at(value: &mut Value, path: &[Value], with: Value) {
        let slot = path.iter().fold(value, |v, step| match step {
            Value::String(k) => &mut v[k.as_str()],
            step => &mut v[step.as_u64().unwrap() as usize],
        });
        *slot = with;
    }

    fn check_same_errors<T: DeserializeOwned>(text: &str) {
        let scanned = parse_body::<T>(text.as_bytes()).err();
        let tracked = parse_tracking_paths::<T>(text.as_bytes()).err();
        assert_eq!(scanned, tracked, "{text}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// Whatever value is put anywhere in a valid body (or added to it),
        /// compact or pretty, the error names the field serde_path_to_error
        /// names.
        #[test]
        fn error_paths_match_paths_tracked_while_deserializing(
            body in 0usize..7,
            pick in any::<prop::sample::Index>(),
            with in any_json(),
            added in proptest::option::of("[a-z_]{1,6}"),
            pretty in any::<bool>(),
        ) {
            let mut value = valid_bodies()[body].clone();
            let mut spots = Vec::new();
            places(&value, Vec::new(), &mut spots);
            match added {
                Some(key) => { value[key.as_str()] = with; }
                None => replace_at(&mut value, &spots[pick.index(spots.len())], with),
            }
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            check_same_errors::<DebitBody>(&text);
            check_same_errors::<HoldBody>(&text);
            check_same_errors::<CaptureBody>(&text);
            check_same_errors::<SignupBody>(&text);
            check_same_errors::<DailyCapBody>(&text);
            check_same_errors::<FeatureCapsBody>(&text);
            check_same_errors::<BatchItemBody>(&text);
            check_same_errors::<crate::auto_top_up::AutoTopUpBody>(&text);
            check_same_errors::<crate::events::AlertsBody>(&text);
            // Arrays within arrays, so indexes are named too.
            check_same_errors::<std::collections::BTreeMap<String, Vec<u8>>>(&text);
            check_same_errors::<std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<Vec<u8>>>>>(&text);
        }
    }

    #[test]
    fn body_errors_name_the_field() {
        let cfg = WalletConfig::defaults();
        let cases: &[(&str, &str)] = &[
            (r#"{"feature":"chat","amount":5}"#, "amount"),
            (r#"{"feature":"chat","amount":"1e3"}"#, "amount"),
            (r#"{"feature":"chat","amount":"1.00001"}"#, "amount"),
            (r#"{"feature":"chat","amount":null}"#, "amount"),
            (r#"{"feature":"chat","usage":null}"#, "usage"),
            (
                r#"{"feature":"chat","usage":{"model":"gpt-4o","input_tokens":-1,"output_tokens":0}}"#,
                "usage.input_tokens",
            ),
            (
                r#"{"feature":"chat","usage":{"model":"gpt-4o","input_tokens":1.5,"output_tokens":0}}"#,
                "usage.input_tokens",
            ),
            (
                r#"{"feature":"chat","usage":{"model":"gpt-4o","input_tokens":1}}"#,
                "output_tokens",
            ),
            (
                r#"{"feature":"chat","amount":"1","colour":"red"}"#,
                "colour",
            ),
            (r#"{"feature":"chat","amount":"1","user_id":7}"#, "user_id"),
            (r#"[1,2]"#, "body"),
        ];
        for (body, field) in cases {
            let err = parse_body::<DebitBody>(body.as_bytes()).unwrap_err();
            assert_eq!(field_of(err), *field, "{body}");
        }
        let semantic: &[(&str, &str)] = &[
            (r#"{"feature":"poetry","amount":"1"}"#, "feature"),
            (r#"{"feature":"chat","amount":"0"}"#, "amount"),
            (r#"{"feature":"chat","amount":"10000.0001"}"#, "amount"),
            (r#"{"feature":"chat","amount":"1","user_id":""}"#, "user_id"),
            // Exactly one of amount and usage.
            (r#"{"feature":"chat"}"#, "amount"),
            (
                r#"{"feature":"chat","amount":"1","usage":{"model":"gpt-4o","input_tokens":1,"output_tokens":1}}"#,
                "amount",
            ),
            (
                r#"{"feature":"chat","usage":{"model":"gpt-4o","input_tokens":1,"cached_input_tokens":2,"output_tokens":1}}"#,
                "usage.cached_input_tokens",
            ),
            (
                r#"{"feature":"chat","usage":{"model":"gpt-4o","input_tokens":100000001,"output_tokens":1}}"#,
                "usage.input_tokens",
            ),
            (
                r#"{"feature":"chat","usage":{"model":"gpt-4o","input_tokens":1,"output_tokens":100000001}}"#,
                "usage.output_tokens",
            ),
            (
                r#"{"feature":"chat","usage":{"model":"gpt-9","input_tokens":1,"output_tokens":1}}"#,
                "usage.model",
            ),
        ];
        for (body, field) in semantic {
            let parsed: DebitBody = parse_body(body.as_bytes()).unwrap();
            let err = parsed.validate(&cfg).unwrap_err();
            assert_eq!(err.status(), 422, "{body}");
            assert_eq!(err.body()["error"]["field"], *field, "{body}");
        }
        let long_user = format!(
            r#"{{"feature":"chat","amount":"1","user_id":"{}"}}"#,
            "u".repeat(129)
        );
        let parsed: DebitBody = parse_body(long_user.as_bytes()).unwrap();
        assert_eq!(
            parsed.validate(&cfg).unwrap_err().body()["error"]["field"],
            "user_id"
        );
    }

    #[test]
    fn malformed_and_oversized_bodies() {
        assert!(matches!(
            parse_body::<DebitBody>(b"{\"feature\":"),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(
            parse_body::<DebitBody>(b"not json"),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(
            parse_body::<DebitBody>(b""),
            Err(ApiError::InvalidJson(_))
        ));
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        let err = parse_body::<DebitBody>(&big).unwrap_err();
        assert_eq!(
            err,
            ApiError::PayloadTooLarge {
                limit_bytes: MAX_BODY_BYTES
            }
        );
        assert_eq!(err.body()["error"]["limit_bytes"], 16 * 1024);
        let batch = vec![b' '; MAX_BATCH_BODY_BYTES + 1];
        assert_eq!(
            parse_batch(&batch, &WalletConfig::defaults())
                .unwrap_err()
                .body()["error"]["limit_bytes"],
            512 * 1024
        );
    }

    #[test]
    fn openapi_describes_exactly_the_routes() {
        let doc: Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let mut described: Vec<(String, String)> = vec![];
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                described.push((method.clone(), path.clone()));
            }
        }
        described.sort();
        let mut routes: Vec<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        routes.sort();
        assert_eq!(described, routes);
        // Every $ref resolves.
        let text = OPENAPI_JSON;
        for part in text.split("\"$ref\": \"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "missing schema {name}"
            );
        }
    }

    /// Each operation documents exactly the statuses its route answers, every
    /// error with the error schema; a route with a body can answer 400 and
    /// 413 (naming the route's limit), one with a token 401, one of an
    /// organization 422 (and 403 with a token).
    #[test]
    fn openapi_documents_every_status_of_every_route() {
        let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        for route in ROUTES {
            let op = &doc["paths"][route.path][route.method];
            let name = format!("{} {}", route.method, route.path);
            let responses = op["responses"].as_object().expect(&name);
            let mut documented: Vec<u16> = responses
                .keys()
                .map(|k| k.parse().unwrap_or_else(|_| panic!("{name}: status {k}")))
                .collect();
            documented.sort();
            let mut answered = route.statuses.to_vec();
            answered.sort();
            assert_eq!(documented, answered, "{name}: documented statuses");
            for (status, response) in responses {
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                if status.as_str() >= "400" {
                    assert_eq!(
                        schema, "#/components/schemas/Error",
                        "{name}: {status} must use the error schema"
                    );
                }
            }
            assert!(
                route.statuses.contains(&500),
                "{name}: every route can fail"
            );
            let takes_body = op.get("requestBody").is_some();
            assert_eq!(takes_body, route.body_limit > 0, "{name}: body limit");
            if takes_body {
                for status in [400, 413] {
                    assert!(route.statuses.contains(&status), "{name}: {status}");
                }
                let described = responses["413"]["description"].as_str().unwrap_or("");
                assert!(
                    described.contains(&route.body_limit.to_string()),
                    "{name}: the 413 names the limit {}",
                    route.body_limit
                );
            }
            let public = op["security"].as_array().is_some_and(Vec::is_empty);
            assert_eq!(public, route.access == Access::Open, "{name}: access");
            assert_eq!(
                route.statuses.contains(&401),
                !public,
                "{name}: 401 exactly when a token is required"
            );
            if route.path.contains("{org}") {
                // A bad organization id is a 422 naming `org`.
                assert!(route.statuses.contains(&422), "{name}: 422");
                assert_eq!(route.statuses.contains(&403), !public, "{name}: 403");
            }
        }
    }

    #[test]
    fn paths_resolve_to_their_routes_and_methods() {
        let allow = |path: &str| {
            let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            allow_header(&routes_of(&segments))
        };
        assert_eq!(allow("/healthz"), "GET");
        assert_eq!(allow("/v1/orgs"), "POST");
        assert_eq!(allow("/v1/orgs/acme/debits/batch"), "POST");
        assert_eq!(allow("/v1/orgs/acme/holds/h_1/capture"), "POST");
        assert_eq!(allow("/v1/orgs/acme/purchases"), "POST");
        assert_eq!(allow("/v1/orgs/acme/purchases/pur_1"), "GET");
        assert_eq!(allow("/v1/orgs/acme/wallet"), "GET");
        assert_eq!(allow("/v1/orgs/acme/nothing"), "");
        assert_eq!(allow("/v1/orgs/acme/holds/h_1"), "");
        // No path has two routes of one method.
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {} twice",
                    a.method,
                    a.path
                );
            }
        }
    }

    #[test]
    fn batch_items_fail_alone() {
        let cfg = WalletConfig::defaults();
        let body = br#"{"debits":[
            {"idempotency_key":"a","feature":"chat","amount":"1"},
            {"idempotency_key":"b","feature":"chat","amount":2},
            {"idempotency_key":"c","feature":"poetry","amount":"1"},
            {"feature":"chat","amount":"1"},
            7
        ]}"#;
        let slots = parse_batch(body, &cfg).unwrap();
        assert!(
            matches!(&slots[0], BatchSlot::Debit { idempotency_key, .. } if idempotency_key == "a")
        );
        let fields: Vec<String> = slots[1..]
            .iter()
            .map(|s| match s {
                BatchSlot::Invalid {
                    status: 422, error, ..
                } => error["field"].as_str().unwrap().to_string(),
                other => panic!("expected an invalid item, got {other:?}"),
            })
            .collect();
        assert_eq!(
            fields,
            [
                "debits[1].amount",
                "debits[2].feature",
                "debits[3].idempotency_key",
                "debits[4].item"
            ]
        );
        assert!(parse_batch(br#"{"debits":[]}"#, &cfg).is_err());
        let too_many = format!(
            r#"{{"debits":[{}]}}"#,
            vec!["{}"; MAX_BATCH_ITEMS + 1].join(",")
        );
        assert_eq!(
            field_of(parse_batch(too_many.as_bytes(), &cfg).unwrap_err()),
            "debits"
        );
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        assert!(check_idempotency_key(None).is_err());
        assert!(check_idempotency_key(Some("")).is_err());
        assert!(check_idempotency_key(Some("has space")).is_err());
        assert!(check_idempotency_key(Some(&"k".repeat(256))).is_err());
        assert_eq!(check_idempotency_key(Some("abc-123")).unwrap(), "abc-123");
    }

    #[test]
    fn fingerprints_ignore_formatting_but_not_content() {
        let a: DebitBody = parse_body(br#"{"feature":"chat","amount":"1.50"}"#).unwrap();
        let b: DebitBody = parse_body(br#"{ "amount": "1.5", "feature": "chat" }"#).unwrap();
        let c: DebitBody = parse_body(br#"{"feature":"chat","amount":"1.6"}"#).unwrap();
        assert_eq!(fingerprint("debit", &a), fingerprint("debit", &b));
        assert_ne!(fingerprint("debit", &a), fingerprint("debit", &c));
        assert_ne!(fingerprint("debit", &a), fingerprint("hold", &a));
        // Usage is part of the request: other tokens are another request; an
        // absent cached count is 0; a debit by amount fingerprints as it always did.
        let usage = |body: &str| -> DebitBody {
            parse_body(format!(r#"{{"feature":"chat","usage":{body}}}"#).as_bytes()).unwrap()
        };
        let u = usage(r#"{"model":"gpt-4o","input_tokens":10,"output_tokens":5}"#);
        let u0 = usage(
            r#"{"model":"gpt-4o","input_tokens":10,"cached_input_tokens":0,"output_tokens":5}"#,
        );
        let u6 = usage(r#"{"model":"gpt-4o","input_tokens":10,"output_tokens":6}"#);
        let mini = usage(r#"{"model":"gpt-4o-mini","input_tokens":10,"output_tokens":5}"#);
        assert_eq!(fingerprint("debit", &u), fingerprint("debit", &u0));
        assert_ne!(fingerprint("debit", &u), fingerprint("debit", &u6));
        assert_ne!(fingerprint("debit", &u), fingerprint("debit", &mini));
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"feature":"chat","amount":"1.5","user_id":null,"project_id":null,"metadata":null}"#
        );
    }

    #[test]
    fn list_params_are_bounded() {
        assert_eq!(list_params(None, None).unwrap(), (50, None));
        assert_eq!(
            list_params(Some("100"), Some("le_000000000007")).unwrap(),
            (100, Some(7))
        );
        for bad in ["0", "101", "-1", "ten"] {
            assert!(list_params(Some(bad), None).is_err(), "{bad}");
        }
        assert!(list_params(None, Some("hold_000000000001")).is_err());
        assert!(list_params(None, Some("le_1")).is_err());
    }

    #[test]
    fn daily_cap_errors_carry_retry_after() {
        let resumes_at = crate::time::parse_utc("2030-01-02T00:00:00Z").unwrap();
        let now = crate::time::parse_utc("2030-01-01T23:59:58.5Z").unwrap();
        let err = ApiError::Rejected(Rejection::DailyCapReached {
            resumes_at,
            daily_cap: Credits::whole(5),
            cap_remaining: Credits::ZERO,
            requested: Credits::whole(1),
        });
        assert_eq!(err.status(), 429);
        assert_eq!(err.retry_after_seconds(now), Some(2));
        assert_eq!(
            err.body()["error"]["resumes_at"],
            "2030-01-02T00:00:00.000Z"
        );
    }

    #[test]
    fn null_is_not_an_auto_top_up_setting() {
        for body in [
            r#"{"enabled":false,"threshold":null}"#,
            r#"{"enabled":false,"pack_id":null}"#,
            r#"{"enabled":false,"monthly_limit":null}"#,
        ] {
            let field = body.split('"').nth(3).unwrap();
            let err = parse_body::<crate::auto_top_up::AutoTopUpBody>(body.as_bytes()).unwrap_err();
            assert_eq!(err.body()["error"]["field"], field, "{body}");
        }
        let absent: crate::auto_top_up::AutoTopUpBody =
            parse_body(br#"{"enabled":false}"#).unwrap();
        assert_eq!(absent.threshold, None);
        // It travels to the Durable Object and back as it came.
        let envelope = serde_json::to_string(&absent).unwrap();
        assert_eq!(
            serde_json::from_str::<crate::auto_top_up::AutoTopUpBody>(&envelope).unwrap(),
            absent
        );
    }
}
