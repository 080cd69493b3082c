//! HS256 JSON Web Tokens: verification of callers' tokens, and minting for
//! the development login. Only HS256 is accepted; `alg: none` and every
//! other algorithm are refused before any signature work.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Tokens longer than this are refused unread.
pub const MAX_TOKEN_CHARS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
    Viewer,
    /// AI-feature backends and the signup hook.
    Service,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Owner,
        Role::Admin,
        Role::Member,
        Role::Viewer,
        Role::Service,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
            Role::Service => "service",
        }
    }

    /// A person of the organization (every role but `service`).
    pub fn is_member_role(self) -> bool {
        !matches!(self, Role::Service)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub org: String,
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    UnsupportedAlgorithm,
    BadSignature,
    Expired,
    InvalidClaims,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length")
}

/// Verifies `token` with `secret` at `now_seconds`.
pub fn verify(token: &str, secret: &[u8], now_seconds: i64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_CHARS {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    let header: Header = serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::UnsupportedAlgorithm);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    let mut check = mac(secret);
    check.update(&token.as_bytes()[..header_len_with_payload(token)]);
    // `verify_slice` compares in constant time.
    check
        .verify_slice(&signature)
        .map_err(|_| TokenError::BadSignature)?;
    let payload_json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims =
        serde_json::from_slice(&payload_json).map_err(|_| TokenError::InvalidClaims)?;
    if claims.sub.is_empty()
        || claims.sub.len() > 128
        || claims.org.is_empty()
        || claims.org.len() > 64
    {
        return Err(TokenError::InvalidClaims);
    }
    if claims.exp <= now_seconds {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// Length of `header.payload`, the signed part.
fn header_len_with_payload(token: &str) -> usize {
    token.rfind('.').expect("three parts were checked")
}

pub fn sign(claims: &Claims, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let mut m = mac(secret);
    m.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"local-dev-jwt-secret";

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "u1".into(),
            org: "org_a".into(),
            role: Role::Owner,
            exp,
        }
    }

    fn encode(part: &str) -> String {
        URL_SAFE_NO_PAD.encode(part)
    }

    #[test]
    fn accepts_a_signed_unexpired_token() {
        let token = sign(&claims(2_000), SECRET);
        assert_eq!(verify(&token, SECRET, 1_000), Ok(claims(2_000)));
    }

    #[test]
    fn refuses_bad_tokens() {
        let good = sign(&claims(2_000), SECRET);
        let payload = good.split('.').nth(1).unwrap();
        let unsigned = format!("{}.{payload}.", encode(r#"{"alg":"none","typ":"JWT"}"#));
        let hs512 = format!("{}.{payload}.xxxx", encode(r#"{"alg":"HS512"}"#));
        let no_exp = {
            let header = encode(r#"{"alg":"HS256"}"#);
            let body = encode(r#"{"sub":"u","org":"o","role":"owner"}"#);
            let mut m = mac(SECRET);
            m.update(format!("{header}.{body}").as_bytes());
            format!(
                "{header}.{body}.{}",
                URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
            )
        };
        let cases: Vec<(String, TokenError)> = vec![
            ("".into(), TokenError::Malformed),
            ("abc".into(), TokenError::Malformed),
            (format!("{good}.extra"), TokenError::Malformed),
            (unsigned, TokenError::UnsupportedAlgorithm),
            (hs512, TokenError::UnsupportedAlgorithm),
            (
                sign(&claims(2_000), b"other-secret"),
                TokenError::BadSignature,
            ),
            (sign(&claims(999), SECRET), TokenError::Expired),
            (sign(&claims(1_000), SECRET), TokenError::Expired),
            (no_exp, TokenError::InvalidClaims),
            ("x".repeat(MAX_TOKEN_CHARS + 1), TokenError::Malformed),
        ];
        for (token, expected) in cases {
            assert_eq!(verify(&token, SECRET, 1_000), Err(expected), "{token}");
        }
    }

    #[test]
    fn tampered_payload_fails_signature() {
        let good = sign(&claims(2_000), SECRET);
        let mut parts: Vec<String> = good.split('.').map(String::from).collect();
        parts[1] = encode(r#"{"sub":"u1","org":"org_b","role":"owner","exp":2000}"#);
        assert_eq!(
            verify(&parts.join("."), SECRET, 1_000),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn unknown_role_is_invalid() {
        let header = encode(r#"{"alg":"HS256"}"#);
        let body = encode(r#"{"sub":"u","org":"o","role":"root","exp":5000}"#);
        let mut m = mac(SECRET);
        m.update(format!("{header}.{body}").as_bytes());
        let token = format!(
            "{header}.{body}.{}",
            URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
        );
        assert_eq!(
            verify(&token, SECRET, 1_000),
            Err(TokenError::InvalidClaims)
        );
    }
}
