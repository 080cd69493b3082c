//! Lists as Stripe pages them (`limit`, `starting_after`, `has_more`), and
//! [`Invalid`]: a request value the rules refuse, naming its field (the wire
//! layer answers it as 422 `invalid_request`).
//!
//! Architecture Invariant: base layer; depends only on `ids`.

use crate::ids::seq_of;

/// Default and largest page of every list route.
pub const LIST_LIMIT_DEFAULT: u32 = 50;
pub const LIST_LIMIT_MAX: u32 = 100;

/// A refused request value: which field, and why (for a person).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: &str, message: impl Into<String>) -> Invalid {
        Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Parses a list route's `limit` (default 50, at most 100).
pub fn list_limit(limit: Option<&str>) -> Result<u32, Invalid> {
    match limit {
        None => Ok(LIST_LIMIT_DEFAULT),
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=LIST_LIMIT_MAX).contains(l))
            .ok_or_else(|| {
                Invalid::new(
                    "limit",
                    format!("must be an integer from 1 to {LIST_LIMIT_MAX}"),
                )
            }),
    }
}

/// Parses `limit` and `starting_after` (a ledger entry id) of a list route.
pub fn list_params(
    limit: Option<&str>,
    starting_after: Option<&str>,
) -> Result<(u32, Option<u64>), Invalid> {
    let limit = list_limit(limit)?;
    let cursor = match starting_after {
        None => None,
        Some(id) => Some(
            seq_of(id)
                .filter(|_| id.starts_with("le_"))
                .ok_or_else(|| {
                    Invalid::new("starting_after", "must be a ledger entry id (le_…)")
                })?,
        ),
    };
    Ok((limit, cursor))
}
