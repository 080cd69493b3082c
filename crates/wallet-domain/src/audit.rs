//! The audit trail of settings changes: who (`sub`, `role`), when, which
//! setting, and its value before and after. Written by the decision that made
//! the change, in the same transaction; a refused change writes nothing.

use crate::csv::csv_line;
pub use crate::ids::audit_id;
use crate::paging::{list_limit, Invalid};
use crate::time::rfc3339;
use crate::token::Role;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Who asked for a change: the token's subject and role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub sub: String,
    pub role: Role,
}

/// The settings the trail records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Setting {
    DailyCap,
    FeatureCaps,
    AutoTopUp,
    Alerts,
}

impl Setting {
    pub fn as_str(self) -> &'static str {
        match self {
            Setting::DailyCap => "daily_cap",
            Setting::FeatureCaps => "feature_caps",
            Setting::AutoTopUp => "auto_top_up",
            Setting::Alerts => "alerts",
        }
    }
}

/// One recorded change. `before` and `after` are the setting's values as
/// the API shows them (a decimal string, or a map of feature caps).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub setting: Setting,
    pub actor: Actor,
    pub at: DateTime<Utc>,
    pub before: Value,
    pub after: Value,
}

fn audit_seq(id: &str) -> Option<u64> {
    let digits = id.strip_prefix("aud_")?;
    (digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

impl AuditRecord {
    /// The record as clients see it, under its id.
    pub fn to_json(&self, seq: u64) -> Value {
        json!({
            "id": audit_id(seq),
            "created_at": rfc3339(self.at),
            "setting": self.setting.as_str(),
            "sub": self.actor.sub,
            "role": self.actor.role,
            "before": self.before,
            "after": self.after,
        })
    }

    /// One CSV line, columns as [`AUDIT_CSV_HEADER`]; values as compact JSON.
    pub fn csv_row(&self, seq: u64) -> String {
        let role = serde_json::to_value(self.actor.role).expect("roles serialize");
        let fields = [
            audit_id(seq),
            rfc3339(self.at),
            self.setting.as_str().to_string(),
            self.actor.sub.clone(),
            role.as_str().unwrap_or_default().to_string(),
            self.before.to_string(),
            self.after.to_string(),
        ];
        csv_line(&fields)
    }
}

pub const AUDIT_CSV_HEADER: &str = "id,created_at,setting,sub,role,before,after\r\n";
/// Records per CSV chunk (one Durable Object read each).
pub const AUDIT_CSV_CHUNK: u32 = 500;

pub fn audit_csv_filename(org_id: &str, today: NaiveDate) -> String {
    format!("audit-{org_id}-{today}.csv")
}

/// A page of the trail: newest first, below `before_seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    pub limit: u32,
    pub before_seq: Option<u64>,
}

/// `GET …/audit` parameters: `limit`, `starting_after=aud_…`, `format`.
pub fn audit_query(
    limit: Option<&str>,
    starting_after: Option<&str>,
    format: Option<&str>,
) -> Result<(AuditQuery, bool), Invalid> {
    let csv = match format {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(Invalid::new("format", "must be json or csv")),
    };
    if csv && (limit.is_some() || starting_after.is_some()) {
        let field = if limit.is_some() {
            "limit"
        } else {
            "starting_after"
        };
        return Err(Invalid::new(
            field,
            "does not apply to format=csv, which exports the whole trail",
        ));
    }
    let limit = list_limit(limit)?;
    let before_seq = starting_after
        .map(|id| {
            audit_seq(id)
                .ok_or_else(|| Invalid::new("starting_after", "must be an audit record id (aud_…)"))
        })
        .transpose()?;
    Ok((
        AuditQuery {
            limit: if csv { AUDIT_CSV_CHUNK } else { limit },
            before_seq,
        },
        csv,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_queries_and_csv() {
        assert_eq!(audit_id(7), "aud_000000000007");
        assert_eq!(audit_seq("aud_000000000007"), Some(7));
        assert_eq!(audit_seq("le_000000000007"), None);
        let (q, csv) = audit_query(Some("5"), Some("aud_000000000009"), None).unwrap();
        assert_eq!((q.limit, q.before_seq, csv), (5, Some(9), false));
        let field = |r: Result<(AuditQuery, bool), Invalid>| r.unwrap_err().field;
        assert_eq!(field(audit_query(Some("0"), None, None)), "limit");
        assert_eq!(
            field(audit_query(None, Some("le_000000000001"), None)),
            "starting_after"
        );
        assert_eq!(field(audit_query(None, None, Some("xml"))), "format");
        assert_eq!(field(audit_query(Some("5"), None, Some("csv"))), "limit");
        let record = AuditRecord {
            setting: Setting::FeatureCaps,
            actor: Actor {
                sub: "ann".into(),
                role: Role::Owner,
            },
            at: "2030-01-01T00:00:00Z".parse().unwrap(),
            before: json!({}),
            after: json!({"chat": "20"}),
        };
        assert_eq!(
            record.csv_row(3),
            "aud_000000000003,2030-01-01T00:00:00.000Z,feature_caps,ann,owner,{},\"{\"\"chat\"\":\"\"20\"\"}\"\r\n"
        );
        assert_eq!(record.to_json(3)["role"], "owner");
    }
}
