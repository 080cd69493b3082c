//! Settings read from the Worker's environment once per isolate and checked
//! before the first request is served: an invalid configuration answers
//! every request with a 500 and logs why, rather than running half-configured.

use std::cell::OnceCell;
use std::rc::Rc;
use wallet_core::deployment::{self, Mode};
use wallet_core::events::{delivery_config, DeliveryConfig};
use wallet_core::stripe::StripeConfig;
use wallet_core::WalletConfig;
use worker::Env;

pub struct Settings {
    pub config: WalletConfig,
    /// Development mode (`wallet_core::deployment`): `ENVIRONMENT =
    /// "development"` with the development JWT secret. Enables `/dev/*`,
    /// `/bench/*` (with `bench_routes`) and `X-Dev-Now`.
    pub development: bool,
    pub jwt_secret: Vec<u8>,
    /// Checked apart from the rest: a Stripe misconfiguration stops purchases
    /// and webhooks (500, logged), never AI usage.
    pub stripe: Result<StripeConfig, String>,
    /// `BENCH_ROUTES = "enabled"` (set only by `make bench`; refused outside
    /// development): the `/bench/*` routes that measure the platform floor.
    pub bench_routes: bool,
    /// Where events are sent (`None`: recorded and listed only). Checked apart
    /// like Stripe: a misconfiguration stops delivery, never AI usage.
    pub events: Result<Option<DeliveryConfig>, String>,
}

thread_local! {
    static SETTINGS: OnceCell<Result<Rc<Settings>, String>> = const { OnceCell::new() };
}

/// A variable or secret as text.
pub fn env_text(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .ok()
        .map(|s| s.to_string())
        .or_else(|| env.var(name).ok().map(|v| v.to_string()))
}

fn read(env: &Env) -> Result<Settings, String> {
    let config = WalletConfig::from_vars(|name| env_text(env, name)).map_err(|e| e.to_string())?;
    let secret = env_text(env, "AUTH_JWT_SECRET");
    let mode = deployment::decide(
        env_text(env, "ENVIRONMENT").as_deref(),
        secret.as_deref(),
        env_text(env, "STRIPE_WEBHOOK_SECRETS").as_deref(),
    )
    .map_err(|refusal| refusal.to_string())?;
    let development = mode == Mode::Development;
    let secret = secret.unwrap_or_default();
    let stripe =
        StripeConfig::from_vars(|name| env_text(env, name), development).map_err(|e| e.to_string());
    let bench_routes = env_text(env, "BENCH_ROUTES").as_deref() == Some("enabled");
    if bench_routes && !development {
        return Err("BENCH_ROUTES may be enabled only in development".into());
    }
    let events = delivery_config(|name| env_text(env, name), development);
    Ok(Settings {
        config,
        development,
        jwt_secret: secret.into_bytes(),
        stripe,
        bench_routes,
        events,
    })
}

pub fn settings(env: &Env) -> Result<Rc<Settings>, String> {
    SETTINGS.with(|cell| cell.get_or_init(|| read(env).map(Rc::new)).clone())
}
