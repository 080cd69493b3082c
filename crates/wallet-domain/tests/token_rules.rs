//! Token verification at its bounds: claim lengths, token length, roles.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use wallet_domain::token::{sign, verify, Claims, Role, TokenError, MAX_TOKEN_CHARS};

const SECRET: &[u8] = b"a test secret";
const NOW: i64 = 1_900_000_000;

fn claims(sub: &str, org: &str) -> Claims {
    Claims {
        sub: sub.to_string(),
        org: org.to_string(),
        role: Role::Member,
        exp: NOW + 60,
    }
}

/// A correctly signed HS256 token over any payload text.
fn signed(payload: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{input}.{signature}")
}

/// A valid token padded with an ignored claim to exactly `chars` characters.
fn token_of_length(chars: usize) -> String {
    let payload = |pad: usize| {
        format!(
            r#"{{"sub":"u","org":"o","role":"member","exp":{},"pad":"{}"}}"#,
            NOW + 60,
            "x".repeat(pad)
        )
    };
    let mut pad = 0;
    while signed(&payload(pad)).len() < chars {
        pad += 1;
    }
    let token = signed(&payload(pad));
    assert_eq!(token.len(), chars, "padding reaches the length exactly");
    token
}

#[test]
fn subject_and_organization_lengths_are_bounded_inclusively() {
    let ok = |sub: &str, org: &str| verify(&sign(&claims(sub, org), SECRET), SECRET, NOW);
    assert!(ok(&"s".repeat(128), "o").is_ok());
    assert!(ok("s", &"o".repeat(64)).is_ok());
    for (sub, org) in [
        (String::new(), "o".to_string()),
        ("s".repeat(129), "o".to_string()),
        ("s".to_string(), String::new()),
        ("s".to_string(), "o".repeat(65)),
    ] {
        assert_eq!(
            ok(&sub, &org),
            Err(TokenError::InvalidClaims),
            "{sub:.5} {org:.5}"
        );
    }
}

#[test]
fn a_token_of_the_longest_accepted_length_is_read_and_one_char_more_is_not() {
    let longest = token_of_length(MAX_TOKEN_CHARS);
    assert_eq!(verify(&longest, SECRET, NOW).map(|c| c.sub), Ok("u".into()));
    let over = token_of_length(MAX_TOKEN_CHARS + 1);
    assert_eq!(verify(&over, SECRET, NOW), Err(TokenError::Malformed));
}

#[test]
fn roles_read_back_by_their_names_and_only_service_is_not_a_person() {
    for role in Role::ALL {
        let json = serde_json::to_string(&role).unwrap();
        assert_eq!(json, format!("\"{}\"", role.as_str()));
        assert_eq!(role.is_member_role(), role != Role::Service, "{role:?}");
    }
    let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names, ["owner", "admin", "member", "viewer", "service"]);
}
