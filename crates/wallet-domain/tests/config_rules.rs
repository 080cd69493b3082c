//! Configuration at its bounds: each limit accepts its largest value and
//! refuses the next, naming the variable.

use std::collections::HashMap;
use wallet_domain::config::{ConfigError, WalletConfig, MAX_LEDGER_SHARDS, MAX_PACK_PRICE_CENTS};

fn with(vars: &[(&str, &str)]) -> Result<WalletConfig, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    WalletConfig::from_vars(|name| map.get(name).cloned())
}

fn refused(vars: &[(&str, &str)]) -> &'static str {
    with(vars).expect_err("refused").variable
}

fn pack(id: &str, name: &str, credits: &str, price_cents: i64) -> String {
    format!(
        r#"{{"id":"{id}","name":"{name}","credits":"{credits}","price_cents":{price_cents},"currency":"usd"}}"#
    )
}

fn packs(list: &[String]) -> String {
    format!("[{}]", list.join(","))
}

#[test]
fn integer_limits_are_inclusive() {
    let config = with(&[
        ("MAX_METADATA_BYTES", "16384"),
        ("IDEMPOTENCY_RETENTION_SECONDS", "2592000"),
    ])
    .unwrap();
    assert_eq!(config.max_metadata_bytes, 16 * 1024);
    assert_eq!(config.idempotency_retention_seconds, 30 * 86_400);
    assert_eq!(
        refused(&[("MAX_METADATA_BYTES", "16385")]),
        "MAX_METADATA_BYTES"
    );
    assert_eq!(
        refused(&[("IDEMPOTENCY_RETENTION_SECONDS", "2592001")]),
        "IDEMPOTENCY_RETENTION_SECONDS"
    );
}

#[test]
fn the_default_daily_cap_may_equal_the_largest_but_not_exceed_it() {
    let same = with(&[("DAILY_CAP_DEFAULT", "700"), ("DAILY_CAP_MAX", "700")]).unwrap();
    assert_eq!(same.daily_cap_default, same.daily_cap_max);
    assert_eq!(
        refused(&[("DAILY_CAP_DEFAULT", "700.0001"), ("DAILY_CAP_MAX", "700")]),
        "DAILY_CAP_DEFAULT"
    );
}

#[test]
fn ledger_shards_are_one_to_the_most_and_named_like_bindings() {
    let names = |n: usize| {
        (0..n)
            .map(|i| format!("DB_{i}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let most = with(&[("LEDGER_SHARDS", &names(MAX_LEDGER_SHARDS))]).unwrap();
    assert_eq!(most.ledger_shards.len(), MAX_LEDGER_SHARDS);
    for bad in [
        names(MAX_LEDGER_SHARDS + 1),
        String::new(),
        "DB,1DB".to_string(),
    ] {
        assert_eq!(
            refused(&[("LEDGER_SHARDS", &bad)]),
            "LEDGER_SHARDS",
            "{bad:.20}"
        );
    }
}

#[test]
fn packs_are_bounded_in_name_and_price_and_listed_once() {
    let longest_name = packs(&[pack("a", &"n".repeat(64), "10", 100)]);
    assert_eq!(with(&[("PACKS", &longest_name)]).unwrap().packs.len(), 1);
    let dearest = packs(&[pack("a", "A", "100000", MAX_PACK_PRICE_CENTS)]);
    assert_eq!(
        with(&[("PACKS", &dearest)]).unwrap().packs[0].price_cents,
        MAX_PACK_PRICE_CENTS
    );
    let bad = [
        packs(&[pack("a", &"n".repeat(65), "10", 100)]),
        packs(&[pack("a", " ", "10", 100)]),
        packs(&[pack("a", "A", "0", 100)]),
        packs(&[pack("a", "A", "10", 0)]),
        packs(&[pack("a", "A", "10", MAX_PACK_PRICE_CENTS + 1)]),
        // The same id twice, not next to each other once sorted by credits.
        packs(&[
            pack("a", "A", "10", 100),
            pack("b", "B", "20", 150),
            pack("a", "A2", "30", 200),
        ]),
    ];
    for list in &bad {
        assert_eq!(refused(&[("PACKS", list)]), "PACKS", "{list}");
    }
    let twice = with(&[("PACKS", &bad[5])]).unwrap_err();
    assert!(twice.problem.contains("listed twice"), "{}", twice.problem);
}

#[test]
fn a_configuration_error_names_its_variable_and_problem() {
    let err = with(&[("MAX_METADATA_BYTES", "0")]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("MAX_METADATA_BYTES"), "{text}");
    assert!(text.contains(&err.problem), "{text}");
    assert!(!err.problem.is_empty());
}
