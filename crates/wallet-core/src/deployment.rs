//! Which mode a deployment runs in, decided once from its variables and
//! secrets before anything is served (SPEC §6). Development mode (`/dev/*`,
//! `/bench/*`, `X-Dev-Now`) needs both `ENVIRONMENT = "development"` and the
//! development JWT secret, so a deployment that carries real secrets never
//! opens it, whatever its `ENVIRONMENT` says: `development` with any other
//! secret is refused, and so are the development secrets anywhere else.

use crate::stripe::DEV_WEBHOOK_SECRET;
use std::fmt;

/// The development JWT secret (SPEC §5); refused outside development.
pub const DEV_JWT_SECRET: &str = "local-dev-jwt-secret";
/// Secrets outside development are at least this long (HS256 keys of 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Local development: development routes and `X-Dev-Now` are on.
    Development,
    /// Anything else: development routes answer 404, `X-Dev-Now` is ignored.
    Production,
}

/// Why a deployment refuses to serve; written to the log, never to clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `ENVIRONMENT = "development"` with a secret that is not the development one.
    DevelopmentWithRealSecret,
    MissingJwtSecret,
    DevJwtSecretOutsideDevelopment,
    ShortJwtSecret,
    DevWebhookSecretOutsideDevelopment,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::DevelopmentWithRealSecret => write!(
                f,
                "ENVIRONMENT is \"development\" but AUTH_JWT_SECRET is not the development \
                 secret: development routes would mint tokens under a real secret; set \
                 ENVIRONMENT to \"production\" (wrangler deploy --env production)"
            ),
            Refusal::MissingJwtSecret => write!(f, "AUTH_JWT_SECRET is not set"),
            Refusal::DevJwtSecretOutsideDevelopment => write!(
                f,
                "AUTH_JWT_SECRET is the development secret, refused outside development"
            ),
            Refusal::ShortJwtSecret => write!(
                f,
                "AUTH_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes outside development"
            ),
            Refusal::DevWebhookSecretOutsideDevelopment => write!(
                f,
                "STRIPE_WEBHOOK_SECRETS lists the development secret {DEV_WEBHOOK_SECRET}, \
                 refused outside development"
            ),
        }
    }
}

/// Decides the mode from `ENVIRONMENT`, `AUTH_JWT_SECRET` and the
/// comma-separated `STRIPE_WEBHOOK_SECRETS` (the rest of the Stripe settings
/// are checked by `StripeConfig`).
pub fn decide(
    environment: Option<&str>,
    jwt_secret: Option<&str>,
    webhook_secrets: Option<&str>,
) -> Result<Mode, Refusal> {
    let secret = jwt_secret.ok_or(Refusal::MissingJwtSecret)?;
    if environment == Some("development") {
        return if secret == DEV_JWT_SECRET {
            Ok(Mode::Development)
        } else {
            Err(Refusal::DevelopmentWithRealSecret)
        };
    }
    if secret == DEV_JWT_SECRET {
        return Err(Refusal::DevJwtSecretOutsideDevelopment);
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(Refusal::ShortJwtSecret);
    }
    let dev_webhook_secret = webhook_secrets
        .unwrap_or_default()
        .split(',')
        .any(|s| s.trim() == DEV_WEBHOOK_SECRET);
    if dev_webhook_secret {
        return Err(Refusal::DevWebhookSecretOutsideDevelopment);
    }
    Ok(Mode::Production)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = "0123456789abcdef0123456789abcdef-real";

    #[test]
    fn development_needs_the_development_secret() {
        assert_eq!(
            decide(
                Some("development"),
                Some(DEV_JWT_SECRET),
                Some("whsec_local_dev")
            ),
            Ok(Mode::Development)
        );
        for secret in [REAL, "short", ""] {
            assert_eq!(
                decide(Some("development"), Some(secret), None),
                Err(Refusal::DevelopmentWithRealSecret),
                "{secret}"
            );
        }
        assert_eq!(
            decide(Some("development"), None, None),
            Err(Refusal::MissingJwtSecret)
        );
    }

    #[test]
    fn anything_else_is_production_and_refuses_development_secrets() {
        for environment in [
            Some("production"),
            Some("staging"),
            Some("Development"),
            None,
        ] {
            assert_eq!(
                decide(environment, Some(REAL), Some("whsec_real_0123")),
                Ok(Mode::Production),
                "{environment:?}"
            );
            assert_eq!(
                decide(environment, Some(DEV_JWT_SECRET), None),
                Err(Refusal::DevJwtSecretOutsideDevelopment)
            );
            assert_eq!(
                decide(environment, Some(&REAL[..MIN_SECRET_BYTES - 1]), None),
                Err(Refusal::ShortJwtSecret)
            );
            assert_eq!(
                decide(environment, Some(REAL), Some("whsec_new, whsec_local_dev ")),
                Err(Refusal::DevWebhookSecretOutsideDevelopment)
            );
        }
        // Messages name the variable but never echo a secret.
        let text = Refusal::DevelopmentWithRealSecret.to_string();
        assert!(text.contains("AUTH_JWT_SECRET") && !text.contains(REAL));
    }
}
