//! The Worker's HTTP plumbing shared by every route: how a request fails
//! ([`Failure`], [`Answer`]), JSON and error responses, reading a bounded
//! body, and handing a request to the organization's Durable Object.

use crate::wallet_protocol;
use futures_util::StreamExt;
use serde_json::Value;
use wallet_core::api::{ApiError, WalletRequest};
use worker::{Env, Error, Request, Response, Result};

/// A request that could not be answered normally.
pub enum Failure {
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

pub type Answer = std::result::Result<Response, Failure>;

pub fn json_response(status: u16, body: &Value) -> Result<Response> {
    Ok(Response::from_json(body)?.with_status(status))
}

pub fn error_response(err: &ApiError, retry_after: Option<i64>) -> Result<Response> {
    let response = json_response(err.status(), &err.body())?;
    if let Some(seconds) = retry_after {
        response
            .headers()
            .set("retry-after", &seconds.to_string())?;
    }
    Ok(response)
}

/// A request's query parameters, read by the runtime's URL parser
/// (`URLSearchParams`: form-urlencoded, `+` as a space, as browsers read them).
pub struct SearchParams(web_sys::UrlSearchParams);

impl SearchParams {
    pub fn of(req: &Request) -> Result<Self> {
        let url = req.inner().url();
        let query = url.split_once('?').map_or("", |(_, query)| query);
        let query = query.split_once('#').map_or(query, |(query, _)| query);
        Ok(Self(web_sys::UrlSearchParams::new_with_str(query)?))
    }

    /// The first value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<String> {
        self.0.get(name)
    }
}

/// The segments of a request's path, as sent (still percent-encoded):
/// `/v1/orgs/a` is `["v1", "orgs", "a"]`, `/` is `[""]`.
pub fn path_segments(path: &str) -> Vec<&str> {
    path.strip_prefix('/').unwrap_or(path).split('/').collect()
}

/// Reads a request body of at most `limit` bytes (the route's
/// `body_limit`). A declared `Content-Length` over it is refused before
/// reading; a body without one (chunked) is read chunk by chunk and refused
/// (413) as soon as it passes the limit, never buffered whole first.
pub async fn read_body(req: &mut Request, limit: usize) -> std::result::Result<Vec<u8>, Failure> {
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
pub async fn call_wallet(
    env: &Env,
    org: &str,
    now_ms: i64,
    request: impl Into<WalletRequest>,
) -> Answer {
    Ok(wallet_protocol::call(env, org, now_ms, request).await?)
}
