//! Wallet configuration, read once from the Worker's variables and validated
//! before any request is served. Nothing here has a hidden default that the
//! configuration cannot override.

use crate::money::Credits;
use crate::rate_card::{RateCard, DEFAULT_RATE_CARD};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use std::str::FromStr;

pub const DEFAULT_FEATURES: &str =
    "chat,auto_triage,error_analysis,incident_timeline,release_analysis,nl_alerts";
pub const DEFAULT_PACKS: &str = r#"[
 {"id":"starter","name":"Starter","credits":"1000","price_cents":1000,"currency":"usd"},
 {"id":"team","name":"Team","credits":"5250","price_cents":5000,"currency":"usd"},
 {"id":"business","name":"Business","credits":"22000","price_cents":20000,"currency":"usd"},
 {"id":"scale","name":"Scale","credits":"120000","price_cents":100000,"currency":"usd"}
]"#;
/// Largest price of one pack: keeps cents far inside ±2^53 and Stripe's limits.
pub const MAX_PACK_PRICE_CENTS: i64 = 99_999_999;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pack {
    pub id: String,
    pub name: String,
    pub credits: Credits,
    pub price_cents: i64,
    pub currency: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalletConfig {
    pub credits_per_usd: Decimal,
    pub trial_credits: Credits,
    pub daily_cap_default: Credits,
    pub daily_cap_max: Credits,
    /// Largest single debit, hold or capture.
    pub max_operation: Credits,
    pub features: Vec<String>,
    pub packs: Vec<Pack>,
    pub hold_ttl_default_seconds: i64,
    pub hold_ttl_max_seconds: i64,
    /// Active holds one organization may have at once.
    pub max_active_holds: usize,
    /// How long idempotency records are kept (at least 24 hours).
    pub idempotency_retention_seconds: i64,
    /// Every D1 binding that holds a ledger shard (`LEDGER_SHARDS`).
    pub ledger_shards: Vec<String>,
    /// The shards new organizations are assigned to (`LEDGER_SHARDS_OPEN`,
    /// default all of them).
    pub ledger_shards_open: Vec<String>,
    /// Most bytes of JSON an entry's `metadata` may take (`MAX_METADATA_BYTES`).
    pub max_metadata_bytes: usize,
    /// What each model's tokens cost, effective-dated (`RATE_CARD`).
    pub rate_card: RateCard,
    /// The ledger's live window and segments (SPEC §11): entries past
    /// `ledger_live_entries` are sealed to R2, oldest first, in segments of
    /// `ledger_segment_entries` (`LEDGER_LIVE_ENTRIES`, `LEDGER_SEGMENT_ENTRIES`).
    pub ledger_live_entries: u64,
    pub ledger_segment_entries: u64,
    /// The object's storage budget (`OBJECT_BYTES_BUDGET`): past it, new
    /// entries are refused (507); at 50% and 80% `wallet.storage_high` fires.
    pub object_bytes_budget: u64,
}

/// The shard of organizations created before shards existed.
pub const LEGACY_LEDGER_SHARD: &str = "DB";
/// More shards than this is a configuration mistake, not a plan.
pub const MAX_LEDGER_SHARDS: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "configuration variable {}: {}",
            self.variable, self.problem
        )
    }
}

impl ConfigError {
    fn new(variable: &'static str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            variable,
            problem: problem.into(),
        }
    }
}

/// The named variables, each read with its documented default.
struct Vars<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Vars<'_> {
    fn text(&self, name: &'static str, default: &str) -> String {
        (self.0)(name).unwrap_or_else(|| default.to_string())
    }

    /// A positive credit amount, parsed exactly.
    fn credits(&self, name: &'static str, default: &str) -> Result<Credits, ConfigError> {
        let value = Credits::parse(self.text(name, default).trim())
            .map_err(|e| ConfigError::new(name, e.message()))?;
        if !value.is_positive() {
            return Err(ConfigError::new(name, "must be positive"));
        }
        Ok(value)
    }

    /// An integer from 1 to `max`.
    fn integer(&self, name: &'static str, default: &str, max: i64) -> Result<i64, ConfigError> {
        let value: i64 = self
            .text(name, default)
            .trim()
            .parse()
            .map_err(|_| ConfigError::new(name, "must be an integer"))?;
        if value <= 0 || value > max {
            return Err(ConfigError::new(
                name,
                format!("must be between 1 and {max}"),
            ));
        }
        Ok(value)
    }

    /// A positive (or, with `zero_ok`, non-negative) decimal.
    fn decimal(
        &self,
        name: &'static str,
        default: &str,
        zero_ok: bool,
    ) -> Result<Decimal, ConfigError> {
        Decimal::from_str(self.text(name, default).trim())
            .ok()
            .filter(|d| d.is_sign_positive() && (zero_ok || !d.is_zero()))
            .ok_or_else(|| {
                let kind = if zero_ok { "non-negative" } else { "positive" };
                ConfigError::new(name, format!("must be a {kind} decimal"))
            })
    }
}

/// `CREDITS_PER_USD` and the trial grant it makes of `TRIAL_USD`. Rounding
/// rule: trial credits are truncated toward zero at four fractional digits,
/// so a grant never exceeds the configured dollars.
fn trial(vars: &Vars) -> Result<(Decimal, Credits), ConfigError> {
    let credits_per_usd = vars.decimal("CREDITS_PER_USD", "100", false)?;
    let trial_usd = vars.decimal("TRIAL_USD", "2", true)?;
    let trial_credits = trial_usd
        .checked_mul(credits_per_usd)
        .map(|d| d.round_dp_with_strategy(4, RoundingStrategy::ToZero))
        .and_then(|d| Credits::from_decimal(d).ok())
        .ok_or_else(|| ConfigError::new("TRIAL_USD", "trial credits out of range"))?;
    Ok((credits_per_usd, trial_credits))
}

/// `FEATURES`: a comma-separated list of identifiers.
fn features(text: &str) -> Result<Vec<String>, ConfigError> {
    let features: Vec<String> = text
        .split(',')
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect();
    if features.is_empty() || features.iter().any(|f| !is_identifier(f, 64)) {
        return Err(ConfigError::new(
            "FEATURES",
            "must be a comma-separated list of identifiers ([a-z0-9_], at most 64 chars)",
        ));
    }
    Ok(features)
}

/// `LEDGER_SHARDS` and the open ones among them (`LEDGER_SHARDS_OPEN`,
/// default all).
fn shards(vars: &Vars) -> Result<(Vec<String>, Vec<String>), ConfigError> {
    let ledger_shards = shard_list(
        "LEDGER_SHARDS",
        &vars.text("LEDGER_SHARDS", LEGACY_LEDGER_SHARD),
    )?;
    let ledger_shards_open = match (vars.0)("LEDGER_SHARDS_OPEN") {
        None => ledger_shards.clone(),
        Some(open) => shard_list("LEDGER_SHARDS_OPEN", &open)?,
    };
    if let Some(stray) = ledger_shards_open
        .iter()
        .find(|name| !ledger_shards.contains(name))
    {
        return Err(ConfigError::new(
            "LEDGER_SHARDS_OPEN",
            format!("{stray} is not listed in LEDGER_SHARDS"),
        ));
    }
    Ok((ledger_shards, ledger_shards_open))
}

/// `LEDGER_LIVE_ENTRIES`, `LEDGER_SEGMENT_ENTRIES` (at most the live
/// window: a segment is sealed only from entries past it) and
/// `OBJECT_BYTES_BUDGET` (at most the object's 10 GB).
fn archive(vars: &Vars) -> Result<(u64, u64, u64), ConfigError> {
    let live = vars.integer("LEDGER_LIVE_ENTRIES", "1000000", 100_000_000)?;
    let segment = vars.integer("LEDGER_SEGMENT_ENTRIES", "100000", 1_000_000)?;
    if segment > live {
        return Err(ConfigError::new(
            "LEDGER_SEGMENT_ENTRIES",
            "exceeds LEDGER_LIVE_ENTRIES",
        ));
    }
    let budget = vars.integer("OBJECT_BYTES_BUDGET", "5000000000", 10_000_000_000)?;
    Ok((live as u64, segment as u64, budget as u64))
}

impl WalletConfig {
    /// Builds the configuration from named variables; `lookup` returns a
    /// variable's text or `None` when it is unset (the documented default applies).
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<WalletConfig, ConfigError> {
        let vars = Vars(&lookup);
        let (credits_per_usd, trial_credits) = trial(&vars)?;
        let daily_cap_default = vars.credits("DAILY_CAP_DEFAULT", "500")?;
        let daily_cap_max = vars.credits("DAILY_CAP_MAX", "50000")?;
        if daily_cap_default > daily_cap_max {
            return Err(ConfigError::new(
                "DAILY_CAP_DEFAULT",
                "exceeds DAILY_CAP_MAX",
            ));
        }
        let hold_ttl_max_seconds = vars.integer("HOLD_TTL_MAX_SECONDS", "3600", 86_400)?;
        let idempotency_retention_seconds =
            vars.integer("IDEMPOTENCY_RETENTION_SECONDS", "86400", 30 * 86_400)?;
        if idempotency_retention_seconds < 86_400 {
            return Err(ConfigError::new(
                "IDEMPOTENCY_RETENTION_SECONDS",
                "must be at least 86400 (24 hours)",
            ));
        }
        let (ledger_shards, ledger_shards_open) = shards(&vars)?;
        let (ledger_live_entries, ledger_segment_entries, object_bytes_budget) = archive(&vars)?;
        Ok(WalletConfig {
            ledger_live_entries,
            ledger_segment_entries,
            object_bytes_budget,
            ledger_shards,
            ledger_shards_open,
            credits_per_usd,
            trial_credits,
            daily_cap_default,
            daily_cap_max,
            max_operation: vars.credits("MAX_OPERATION_CREDITS", "10000")?,
            features: features(&vars.text("FEATURES", DEFAULT_FEATURES))?,
            packs: parse_packs(&vars.text("PACKS", DEFAULT_PACKS))?,
            hold_ttl_default_seconds: vars.integer(
                "HOLD_TTL_DEFAULT_SECONDS",
                "300",
                hold_ttl_max_seconds,
            )?,
            hold_ttl_max_seconds,
            max_active_holds: vars.integer("MAX_ACTIVE_HOLDS", "1000", 100_000)? as usize,
            idempotency_retention_seconds,
            // Metadata is stored with its entry for good: what it may cost is bounded.
            max_metadata_bytes: vars.integer("MAX_METADATA_BYTES", "1024", 16 * 1024)? as usize,
            rate_card: RateCard::parse(&vars.text("RATE_CARD", DEFAULT_RATE_CARD))
                .map_err(|e| ConfigError::new("RATE_CARD", e))?,
        })
    }

    pub fn defaults() -> WalletConfig {
        WalletConfig::from_vars(|_| None).expect("built-in defaults are valid")
    }

    pub fn is_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    pub fn pack(&self, id: &str) -> Option<&Pack> {
        self.packs.iter().find(|p| p.id == id)
    }

    /// The open shard a new organization is assigned to: a stable hash of its
    /// id (FNV-1a, 64 bits) over the open shards, so the same id always lands
    /// on the same shard for a given open list. The assignment is then stored
    /// in the wallet and never recomputed.
    pub fn shard_for_new_org(&self, org_id: &str) -> &str {
        let hash = org_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let open = &self.ledger_shards_open;
        &open[(hash % open.len() as u64) as usize]
    }
}

/// A comma-separated list of D1 binding names: `[A-Za-z_][A-Za-z0-9_]*`,
/// at least one, none twice.
fn shard_list(variable: &'static str, text: &str) -> Result<Vec<String>, ConfigError> {
    let names: Vec<String> = text
        .split(',')
        .map(|name| name.trim().to_string())
        .collect();
    let valid = |name: &str| {
        name.len() <= 64
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if names.is_empty() || names.len() > MAX_LEDGER_SHARDS || !names.iter().all(|n| valid(n)) {
        return Err(ConfigError {
            variable,
            problem: format!(
                "must be a comma-separated list of 1 to {MAX_LEDGER_SHARDS} D1 binding names"
            ),
        });
    }
    if let Some(twice) = names
        .iter()
        .enumerate()
        .find(|(i, name)| names[..*i].contains(name))
    {
        return Err(ConfigError {
            variable,
            problem: format!("{} is listed twice", twice.1),
        });
    }
    Ok(names)
}

/// Lowercase identifier: `[a-z0-9_]`, 1..=max chars.
pub fn is_identifier(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn parse_packs(json: &str) -> Result<Vec<Pack>, ConfigError> {
    let problem = |p: String| ConfigError {
        variable: "PACKS",
        problem: p,
    };
    let mut packs: Vec<Pack> = serde_json::from_str(json)
        .map_err(|e| problem(format!("not a JSON list of packs: {e}")))?;
    if packs.is_empty() {
        return Err(problem("must list at least one pack".into()));
    }
    for pack in &packs {
        if !is_identifier(&pack.id, 32) {
            return Err(problem(format!(
                "pack id {:?} must match [a-z0-9_]{{1,32}}",
                pack.id
            )));
        }
        if pack.name.trim().is_empty() || pack.name.len() > 64 {
            return Err(problem(format!(
                "pack {} needs a name of 1 to 64 characters",
                pack.id
            )));
        }
        if !pack.credits.is_positive() || !(1..=MAX_PACK_PRICE_CENTS).contains(&pack.price_cents) {
            return Err(problem(format!(
                "pack {} needs positive credits and a price of 1 to {MAX_PACK_PRICE_CENTS} cents",
                pack.id
            )));
        }
        if pack.currency != "usd" {
            return Err(problem(format!("pack {} must be priced in usd", pack.id)));
        }
    }
    packs.sort_by_key(|p| p.credits);
    for pair in packs.windows(2) {
        let (small, large) = (&pair[0], &pair[1]);
        if small.id == large.id || packs.iter().filter(|p| p.id == small.id).count() > 1 {
            return Err(problem(format!("pack id {} is listed twice", small.id)));
        }
        if small.credits == large.credits {
            return Err(problem(format!(
                "packs {} and {} give the same credits",
                small.id, large.id
            )));
        }
        // Cheaper per credit: large.price / large.credits < small.price / small.credits,
        // compared by cross-multiplication in i128 so nothing rounds.
        let lhs = large.price_cents as i128 * small.credits.units() as i128;
        let rhs = small.price_cents as i128 * large.credits.units() as i128;
        if lhs >= rhs {
            return Err(problem(format!(
                "pack {} must cost less per credit than the smaller pack {}",
                large.id, small.id
            )));
        }
    }
    Ok(packs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> Result<WalletConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        WalletConfig::from_vars(|name| map.get(name).cloned())
    }

    #[test]
    fn shards_are_assigned_by_a_stable_hash_over_the_open_ones() {
        let vars = |shards: &'static str, open: Option<&'static str>| {
            move |name: &str| match name {
                "LEDGER_SHARDS" => Some(shards.to_string()),
                "LEDGER_SHARDS_OPEN" => open.map(str::to_string),
                _ => None,
            }
        };
        let two = WalletConfig::from_vars(vars("DB,DB_1", None)).unwrap();
        assert_eq!(two.ledger_shards_open, ["DB", "DB_1"]);
        let orgs: Vec<String> = (0..200).map(|i| format!("org-{i}")).collect();
        let on_first = orgs
            .iter()
            .filter(|o| two.shard_for_new_org(o) == "DB")
            .count();
        // Both shards take organizations, roughly evenly.
        assert!((60..=140).contains(&on_first), "{on_first} of 200 on DB");
        for org in &orgs {
            assert_eq!(two.shard_for_new_org(org), two.shard_for_new_org(org));
        }
        // Closing a shard sends every new organization to the open ones.
        let one_open = WalletConfig::from_vars(vars("DB,DB_1,DB_2", Some("DB_2"))).unwrap();
        assert!(orgs.iter().all(|o| one_open.shard_for_new_org(o) == "DB_2"));
        // FNV-1a of the id, fixed forever: an assignment must not change between releases.
        let fnv = |s: &str| {
            s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100000001b3)
            })
        };
        assert_eq!(fnv("a"), 0xaf63dc4c8601ec8c);
        for org in &orgs {
            assert_eq!(
                two.shard_for_new_org(org),
                ["DB", "DB_1"][(fnv(org) % 2) as usize]
            );
        }
        for bad in ["", "DB,DB", "DB,9x", "DB, ,DB_1"] {
            assert!(WalletConfig::from_vars(vars(bad, None)).is_err(), "{bad:?}");
        }
        let stray = WalletConfig::from_vars(vars("DB", Some("DB_1"))).unwrap_err();
        assert_eq!(stray.variable, "LEDGER_SHARDS_OPEN");
        assert_eq!(
            WalletConfig::defaults().ledger_shards,
            [LEGACY_LEDGER_SHARD]
        );
    }

    #[test]
    fn defaults_follow_the_spec() {
        let cfg = WalletConfig::defaults();
        assert_eq!(cfg.trial_credits, Credits::whole(200));
        assert_eq!(cfg.daily_cap_default, Credits::whole(500));
        assert_eq!(cfg.daily_cap_max, Credits::whole(50_000));
        assert_eq!(cfg.max_operation, Credits::whole(10_000));
        assert_eq!(cfg.features.len(), 6);
        let ids: Vec<&str> = cfg.packs.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["starter", "team", "business", "scale"]);
        assert_eq!(cfg.pack("team").unwrap().credits, Credits::whole(5250));
        assert_eq!(cfg.ledger_live_entries, 1_000_000);
        assert_eq!(cfg.ledger_segment_entries, 100_000);
        assert_eq!(cfg.object_bytes_budget, 5_000_000_000);
    }

    #[test]
    fn archive_settings_are_read_and_bounded() {
        let cfg = with(&[
            ("LEDGER_LIVE_ENTRIES", "1000"),
            ("LEDGER_SEGMENT_ENTRIES", "500"),
            ("OBJECT_BYTES_BUDGET", "65536"),
        ])
        .unwrap();
        assert_eq!(
            (
                cfg.ledger_live_entries,
                cfg.ledger_segment_entries,
                cfg.object_bytes_budget
            ),
            (1000, 500, 65536)
        );
        let bad: &[(&str, &str)] = &[
            ("LEDGER_LIVE_ENTRIES", "0"),
            ("LEDGER_LIVE_ENTRIES", "many"),
            ("LEDGER_SEGMENT_ENTRIES", "1000001"),
            ("OBJECT_BYTES_BUDGET", "10000000001"),
            ("OBJECT_BYTES_BUDGET", "-1"),
        ];
        for (name, value) in bad {
            assert_eq!(with(&[(name, value)]).unwrap_err().variable, *name);
        }
        let wider = with(&[
            ("LEDGER_LIVE_ENTRIES", "10"),
            ("LEDGER_SEGMENT_ENTRIES", "11"),
        ]);
        assert_eq!(wider.unwrap_err().variable, "LEDGER_SEGMENT_ENTRIES");
    }

    #[test]
    fn trial_truncates_toward_zero() {
        let cfg = with(&[("TRIAL_USD", "0.333333"), ("CREDITS_PER_USD", "1")]).unwrap();
        assert_eq!(cfg.trial_credits, Credits::parse("0.3333").unwrap());
    }

    #[test]
    fn rejects_bad_configuration() {
        let bad: &[(&str, &str, &str)] = &[
            ("DAILY_CAP_DEFAULT", "60000", "DAILY_CAP_DEFAULT"),
            ("DAILY_CAP_MAX", "0", "DAILY_CAP_MAX"),
            ("MAX_OPERATION_CREDITS", "-5", "MAX_OPERATION_CREDITS"),
            ("FEATURES", "chat,Bad Feature", "FEATURES"),
            ("FEATURES", "", "FEATURES"),
            ("CREDITS_PER_USD", "0", "CREDITS_PER_USD"),
            (
                "IDEMPOTENCY_RETENTION_SECONDS",
                "3600",
                "IDEMPOTENCY_RETENTION_SECONDS",
            ),
            (
                "HOLD_TTL_DEFAULT_SECONDS",
                "7200",
                "HOLD_TTL_DEFAULT_SECONDS",
            ),
            ("PACKS", "[]", "PACKS"),
            ("PACKS", "not json", "PACKS"),
            ("RATE_CARD", "not json", "RATE_CARD"),
            ("RATE_CARD", r#"[{"model":"m"}]"#, "RATE_CARD"),
        ];
        for (name, value, variable) in bad {
            let err = with(&[(name, value)]).unwrap_err();
            assert_eq!(err.variable, *variable, "{name}={value}");
        }
    }

    #[test]
    fn larger_packs_must_be_cheaper_per_credit() {
        let same_rate = r#"[{"id":"a","name":"A","credits":"100","price_cents":100,"currency":"usd"},
                            {"id":"b","name":"B","credits":"200","price_cents":200,"currency":"usd"}]"#;
        assert!(with(&[("PACKS", same_rate)])
            .unwrap_err()
            .problem
            .contains("less per credit"));
        let duplicate = r#"[{"id":"a","name":"A","credits":"100","price_cents":100,"currency":"usd"},
                            {"id":"a","name":"B","credits":"200","price_cents":150,"currency":"usd"}]"#;
        assert!(with(&[("PACKS", duplicate)])
            .unwrap_err()
            .problem
            .contains("twice"));
        let good = r#"[{"id":"b","name":"B","credits":"200","price_cents":150,"currency":"usd"},
                       {"id":"a","name":"A","credits":"100","price_cents":100,"currency":"usd"}]"#;
        let cfg = with(&[("PACKS", good)]).unwrap();
        assert_eq!(cfg.packs[0].id, "a", "packs are listed smallest first");
    }
}
